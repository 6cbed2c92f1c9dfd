"""The TF2 zoo's eight EfficientDet configs (verbatim in src/raredet/zoo/configs): they build with
the TF OD API's anchor counts and BiFPN settings, `config check` acts on `bifpn` and
`add_background_class`, and D0 trains two steps from the CLI on a small synthetic set."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from tests.helpers.zoo import small_copy

from raredet import builders
from raredet import config as cfg
from raredet.cli import main
from raredet.commands.config import check as config_check
from raredet.commands.trained import load_trained_model
from raredet.data.synth import make_synthetic_dataset
from raredet.errors import ConfigError
from raredet.protos import pipeline_pb2
from raredet.zoo import CONFIG_DIR

ZOO = CONFIG_DIR
D0 = "ssd_efficientdet_d0_512x512_coco17_tpu-8.config"
# config -> (native size, EfficientNet variant, BiFPN iterations, filters, combine, predictor layers)
EFFICIENTDETS = {
    D0: (512, "b0", 3, 64, "fast_attention", 3),
    "ssd_efficientdet_d1_640x640_coco17_tpu-8.config": (640, "b1", 4, 88, "fast_attention", 3),
    "ssd_efficientdet_d2_768x768_coco17_tpu-8.config": (768, "b2", 5, 112, "fast_attention", 3),
    "ssd_efficientdet_d3_896x896_coco17_tpu-32.config": (896, "b3", 6, 160, "fast_attention", 4),
    "ssd_efficientdet_d4_1024x1024_coco17_tpu-32.config": (1024, "b4", 7, 224, "fast_attention", 4),
    "ssd_efficientdet_d5_1280x1280_coco17_tpu-32.config": (1280, "b5", 7, 288, "fast_attention", 4),
    "ssd_efficientdet_d6_1408x1408_coco17_tpu-32.config": (1408, "b6", 8, 384, "sum", 5),
    "ssd_efficientdet_d7_1536x1536_coco17_tpu-32.config": (1536, "b6", 8, 384, "sum", 5),
}


def _parse(name: str) -> pipeline_pb2.TrainEvalPipelineConfig:
    return cfg.parse_text(
        (ZOO / name).read_text(encoding="utf-8"), pipeline_pb2.TrainEvalPipelineConfig(), ZOO / name
    )


@pytest.mark.parametrize("name", sorted(EFFICIENTDETS))
def test_zoo_efficientdet_builds_with_the_tf_od_api_anchor_count(name):
    size, variant, iterations, filters, combine, layers = EFFICIENTDETS[name]
    with torch.device("meta"):  # shapes only: D6/D7 have 42M parameters
        model, _ = builders.build_model(_parse(name).model.ssd)
        out = model.eval()(torch.zeros(1, 3, size, size))
    # The TF OD API's count: levels 3..7, ceil(size / 2^level) cells a side, 3 scales x 3 aspect ratios.
    expected = sum(math.ceil(size / 2**level) ** 2 for level in range(3, 8)) * 3 * 3
    assert out["anchors"].shape == (expected, 4) and out["cls_logits"].shape == (1, expected, 90)
    extractor = model.feature_extractor
    assert extractor.backbone.variant == variant
    # 2 extra-level nodes, then per iteration 4 top-down and 4 bottom-up nodes.
    assert len(extractor.bifpn.nodes) == 2 + 8 * iterations
    assert extractor.out_channels == [filters] * 5
    assert {n.combine.method for n in extractor.bifpn.nodes if n.combine is not None} == {combine}
    assert len(model.box_predictor.box_tower.convs) == layers


def test_d0_anchor_count_by_hand():
    # 512: 64, 32, 16, 8, 4 cells a side -> 4096 + 1024 + 256 + 64 + 16 = 5456 cells, 9 anchors each.
    assert sum(math.ceil(512 / 2**lv) ** 2 for lv in range(3, 8)) * 9 == 5456 * 9 == 49104


def test_config_check_acts_on_bifpn_and_add_background_class():
    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore", cfg.ConfigWarning)
        summary = config_check(ZOO / D0)
    assert "ssd_efficientnet-b0_bifpn_keras" in summary
    ignored = cfg.not_acted_on(_parse(D0))
    assert "model.ssd.feature_extractor.bifpn" not in ignored
    assert "model.ssd.add_background_class" not in ignored
    assert "model.ssd.inplace_batchnorm_update" in ignored  # still reported: it has no effect here


def _variant(tmp_path: Path, old: str, new: str) -> Path:
    text = (ZOO / D0).read_text(encoding="utf-8")
    assert old in text
    path = tmp_path / "variant.config"
    path.write_text(text.replace(old, new), encoding="utf-8")
    return path


def test_add_background_class_false_needs_background_as_zeros(tmp_path):
    path = _variant(tmp_path, "encode_background_as_zeros: true", "encode_background_as_zeros: false")
    with pytest.raises(ConfigError, match="add_background_class: is false while encode_background_as_zeros"):
        cfg.load(path)


def test_add_background_class_false_refuses_softmax(tmp_path):
    focal = "weighted_sigmoid_focal {\n          alpha: 0.25\n          gamma: 1.5\n        }"
    path = _variant(tmp_path, focal, "weighted_softmax { }")
    with pytest.raises(ConfigError, match="add_background_class: is false, but weighted_softmax needs"):
        cfg.load(path)


def test_add_background_class_true_is_accepted(tmp_path):
    path = _variant(tmp_path, "add_background_class: false", "add_background_class: true")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", cfg.ConfigWarning)
        assert cfg.load(path).pipeline.model.ssd.add_background_class


def _small_d0(data_dir: Path, size: int = 128) -> Path:
    """The zoo D0 config with only what a user changes (tests/helpers/zoo.py's `small_copy`)."""
    return small_copy(D0, data_dir, size)


@pytest.mark.slow  # end-to-end CLI: builds and trains EfficientDet-D0 (3.9M parameters) at 128 x 128
def test_zoo_d0_trains_two_steps_from_the_cli(tmp_path):
    make_synthetic_dataset(tmp_path, images=6, image_size=64, num_shards=1, min_val_boxes=1, val_fraction=0.3)
    config = _small_d0(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", cfg.ConfigWarning)
        assert main(["config", "check", str(config)]) == 0
        assert (
            main(
                [
                    "train",
                    "--pipeline_config_path",
                    str(config),
                    "--model_dir",
                    str(tmp_path / "run"),
                    "--num_train_steps",
                    "2",
                    "--device",
                    "cpu",
                ]
            )
            == 0
        )
    rows = [json.loads(line) for line in (tmp_path / "run" / "train" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(math.isfinite(r["Loss/total_loss"]) and r["Loss/regularization_loss"] > 0 for r in rows)
    assert (tmp_path / "run" / "ckpt-2.pt").exists()
    _check_onnx_export(tmp_path / "run", tmp_path / "d0.onnx")


def _check_onnx_export(model_dir: Path, out: Path) -> None:
    """`raredet export --format onnx` of the 2-step D0 (whose scores nearly all tie at the prior's 0.01),
    and the file run in ONNX Runtime against the PyTorch model: the same number of detections and the
    same sorted scores per image, and every exported detection one of PyTorch's scored candidates
    (that class's score within 1e-4 at an anchor whose decoded box is within 0.01 px)."""
    ort = pytest.importorskip("onnxruntime")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter's deprecation notices
        assert main(["export", "--model_dir", str(model_dir), "--format", "onnx", "--out", str(out)]) == 0
    trained = load_trained_model(model_dir)
    model = trained.model.eval()
    generator = torch.Generator().manual_seed(5)
    images = torch.randint(0, 256, (2, 3, 128, 128), dtype=torch.uint8, generator=generator)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    boxes, scores, classes, num = session.run(None, {"images": images.numpy()})
    with torch.no_grad():
        outputs = model(images)
        sizes = torch.tensor([[128, 128]] * 2)
        want = model.postprocess(outputs, sizes)
        cand_boxes, cand_scores = (t.numpy() for t in model.scored_boxes(outputs, sizes))
    assert num.tolist() == want["num_detections"].tolist() and num.min() > 0
    ids = np.asarray(trained.label_map.ids)
    for b, n in enumerate(num.tolist()):
        np.testing.assert_allclose(np.sort(scores[b, :n]), np.sort(want["detection_scores"][b, :n].numpy()),
                                   atol=1e-5)
        for j in range(n):  # at most 100 detections
            column = int(np.flatnonzero(ids == classes[b, j])[0])
            genuine = (np.abs(cand_scores[b, :, column] - scores[b, j]) <= 1e-4) & (
                np.abs(cand_boxes[b] - boxes[b, j]).max(axis=-1) <= 1e-2)
            assert genuine.any(), (b, j)


@pytest.mark.slow  # end-to-end CLI: three short D0 runs
def test_zoo_d0_resume_is_bit_exact_with_drop_connect(tmp_path):
    make_synthetic_dataset(tmp_path, images=6, image_size=64, num_shards=1, min_val_boxes=1, val_fraction=0.3)
    config = str(_small_d0(tmp_path))

    def train(run: str, steps: int) -> None:
        args = ["train", "--pipeline_config_path", config, "--model_dir", str(tmp_path / run)]
        assert main([*args, "--num_train_steps", str(steps), "--device", "cpu"]) == 0

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", cfg.ConfigWarning)
        train("straight", 4)
        train("resumed", 2)
        train("resumed", 4)
    straight = torch.load(tmp_path / "straight" / "ckpt-4.pt", weights_only=False)["model"]
    resumed = torch.load(tmp_path / "resumed" / "ckpt-4.pt", weights_only=False)["model"]
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    # Drop-connect is on in those blocks: a residual block after the first has a nonzero rate.
    with torch.device("meta"):
        model, _ = builders.build_model(_parse(D0).model.ssd)
    blocks = [b for stage in model.backbone.features[1:] for b in stage]
    assert any(b.use_res_connect and b.drop_prob > 0 for b in blocks)
