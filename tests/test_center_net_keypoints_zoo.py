"""The zoo's 4 CenterNet keypoint configs pass `config check`; the ResNet-50 FPN one trains two steps on
TF records with keypoints, predicts them and evaluates them.

Each config as a user edits it: 3 classes, 64-pixel images, batch 2, the data paths and a keypoint label
map (the person item with COCO's 17 keypoints); every other field verbatim, the keypoint task's included.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from raredet import config
from raredet.builders.model import build_model
from raredet.commands import config as config_cmd
from raredet.commands.evaluate import eval_from_config
from raredet.commands.train import train_from_config
from raredet.data.tfrecord import encode_example, write_tfrecord
from raredet.errors import ConfigError
from raredet.zoo import CONFIG_DIR

NAME = "centernet_resnet50_v1_fpn_512x512_kpts_coco17_tpu-8.config"
KPTS = sorted(p.name for p in CONFIG_DIR.glob("centernet_*kpts*.config"))
COCO_KEYPOINTS = ("nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder",
                  "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip",
                  "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle")


def _png(rng: np.random.Generator, size: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _record(rng: np.random.Generator, index: int, size: int = 64) -> bytes:
    """One image: a person (class 1) with 17 keypoints inside its box (a third not labelled) and a
    class-2 box without keypoints (all zero, visibility 0: absent, as the TF OD API writes them)."""
    lo = rng.uniform(0.05, 0.35, (2, 2))
    hi = lo + rng.uniform(0.3, 0.6, (2, 2))
    boxes = np.clip(np.concatenate([lo, hi], 1), 0, 1)  # xmin, ymin, xmax, ymax normalised
    kx = rng.uniform(boxes[0, 0], boxes[0, 2], 17)
    ky = rng.uniform(boxes[0, 1], boxes[0, 3], 17)
    visibility = rng.choice([0, 1, 2], 17)
    return encode_example({
        "image/encoded": _png(rng, size), "image/format": "png", "image/height": size, "image/width": size,
        "image/source_id": str(index),
        "image/object/bbox/xmin": boxes[:, 0], "image/object/bbox/ymin": boxes[:, 1],
        "image/object/bbox/xmax": boxes[:, 2], "image/object/bbox/ymax": boxes[:, 3],
        "image/object/class/label": [1, 2],
        "image/object/keypoint/x": np.concatenate([kx, np.zeros(17)]),
        "image/object/keypoint/y": np.concatenate([ky, np.zeros(17)]),
        "image/object/keypoint/visibility": np.concatenate([visibility, np.zeros(17, dtype=np.int64)]),
    })


def write_data(out: Path) -> None:
    rng = np.random.default_rng(0)
    for split, count in (("train", 4), ("val", 2)):
        write_tfrecord(out / f"{split}-00000-of-00001.tfrecord", [_record(rng, i) for i in range(count)])
    (out / "label_map.pbtxt").write_text(
        'item { name: "person" id: 1 }\nitem { name: "bicycle" id: 2 }\nitem { name: "car" id: 3 }\n',
        encoding="utf-8")
    keypoints = " ".join(f'keypoints {{ id: {i} label: "{k}" }}' for i, k in enumerate(COCO_KEYPOINTS))
    person = f'item {{ name: "/m/01g317" id: 1 {keypoints} }}\n'
    (out / "keypoints.pbtxt").write_text(person, encoding="utf-8")


def small_kpts_copy(out: Path, name: str = NAME) -> Path:
    """The zoo config `name` with 3 classes, 64-pixel images, batch 2 and the data in `out`."""
    text = (CONFIG_DIR / name).read_text(encoding="utf-8")
    text = re.sub(r"(min_dimension|max_dimension): \d+", r"\1: 64", text)
    text = re.sub(r"num_classes: \d+", "num_classes: 3", text)
    text = re.sub(r"batch_size: \d+", "batch_size: 2", text, count=1)
    text = re.sub(r"max_(height|width)_padding: \d+", r"max_\1_padding: 16", text)
    text = re.sub(r'fine_tune_checkpoint(_type)?: "[^"]*"', "", text)
    text = text.replace('keypoint_label_map_path: "PATH_TO_BE_CONFIGURED"',
                        f'keypoint_label_map_path: "{out / "keypoints.pbtxt"}"')
    text = text.replace("PATH_TO_BE_CONFIGURED/label_map.txt", "label_map.pbtxt")
    text = re.sub(r'"PATH_TO_BE_CONFIGURED/train[^"]*"', '"train-*.tfrecord"', text)
    text = re.sub(r'"PATH_TO_BE_CONFIGURED/val[^"]*"', '"val-*.tfrecord"', text)
    path = out / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("kpts")
    write_data(out)
    return out


@pytest.fixture(scope="module")
def config_path(data_dir: Path) -> Path:
    return small_kpts_copy(data_dir)


@pytest.mark.parametrize("name", KPTS)
def test_every_kpts_config_checks(data_dir: Path, name: str) -> None:
    assert len(KPTS) == 4
    report = config_cmd.check(small_kpts_copy(data_dir, name))
    assert "keypoint_estimation_task" in report and "OK" in report


@pytest.mark.slow  # about 45 s on 2 cores: ResNet-50 FPN for two steps, then one evaluation
def test_the_kpts_config_trains_two_steps_and_evaluates_keypoints(config_path: Path, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    result = train_from_config(config_path, tmp_path / "run", num_train_steps=2, num_workers=0, device="cpu")
    assert result.step == 2 and (tmp_path / "run" / "ckpt-2.pt").exists()
    losses = result.last_losses
    # the log names the object-detection terms; the keypoint terms are the rest of the total
    keypoint_terms = losses["total_loss"] - losses["classification_loss"] - losses["localization_loss"] \
        - losses.get("regularization_loss", 0.0)
    assert np.isfinite(losses["total_loss"]) and keypoint_terms > 0.1
    # eval_config's coco_keypoint_metrics for "person" score the predicted keypoints (COCO's 17 sigmas)
    metrics = eval_from_config(config_path, tmp_path / "run", device="cpu")
    assert "Keypoints_Precision/mAP ByCategory/person" in metrics
    assert 0.0 <= metrics["Keypoints_Precision/mAP ByCategory/person"] <= 1.0


def test_the_built_model_predicts_17_keypoints_per_detection(config_path: Path) -> None:
    loaded = config.load(config_path)
    model, _ = build_model(loaded.pipeline.model.center_net, loaded.label_map.ids)
    model.eval()
    images = torch.randint(0, 255, (2, 3, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        detections = model.postprocess(model(images), torch.tensor([[64, 64], [64, 48]]))
    keypoints, scores = detections["detection_keypoints"], detections["detection_keypoint_scores"]
    assert tuple(keypoints.shape) == (2, 100, 17, 2) and tuple(scores.shape) == (2, 100, 17)
    kept = torch.arange(100) < detections["num_detections"][:, None]
    person = (detections["detection_classes"] == 0) & kept
    assert person.any()  # an untrained heatmap peaks in every class
    assert torch.isfinite(keypoints).all() and (scores[person] > 0).all()
    assert (keypoints[~person] == 0).all() and (scores[~person] == 0).all()


def test_a_relative_keypoint_label_map_path_is_read_from_the_configs_folder(
        data_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = small_kpts_copy(data_dir)
    relative = path.with_name("relative_" + path.name)
    relative.write_text(path.read_text(encoding="utf-8").replace(str(data_dir / "keypoints.pbtxt"),
                                                                 "keypoints.pbtxt"), encoding="utf-8")
    monkeypatch.chdir(tmp_path)  # not the config's folder
    resolved = config.load(relative).pipeline.model.center_net.keypoint_label_map_path
    assert resolved == str(data_dir / "keypoints.pbtxt")
    report = config_cmd.check(relative)
    assert "keypoint_estimation_task" in report and "keypoint_label_map_path" not in report


@pytest.mark.parametrize("name", KPTS)
def test_the_verbatim_kpts_config_checks_with_a_note_and_train_refuses_it(name: str) -> None:
    # as the zoo ships it: keypoint_label_map_path "PATH_TO_BE_CONFIGURED", like its data paths
    report = config_cmd.check(CONFIG_DIR / name)
    assert report.splitlines()[0].endswith(": OK")
    assert ("model.center_net.keypoint_label_map_path: " + str(CONFIG_DIR / "PATH_TO_BE_CONFIGURED")
            + " not found, so the keypoint task was not checked") in report
    loaded = config.load(CONFIG_DIR / name)
    with pytest.raises(ConfigError, match="keypoint_label_map_path: .*PATH_TO_BE_CONFIGURED does not exist"):
        build_model(loaded.pipeline.model.center_net)


@pytest.mark.slow  # ResNet-50 V2 for two steps at 64 px
def test_the_resnet_v2_kpts_config_trains_two_steps(data_dir: Path, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    path = small_kpts_copy(data_dir, "centernet_resnet50_v2_512x512_kpts_coco17_tpu-8.config")
    result = train_from_config(path, tmp_path / "run", num_train_steps=2, num_workers=0, device="cpu")
    assert result.step == 2 and np.isfinite(result.last_losses["total_loss"])
