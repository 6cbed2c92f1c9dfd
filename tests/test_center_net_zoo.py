"""The TF2 zoo's 11 CenterNet configs: each passes `config check` (as a user's copy: 3 classes, the
synthetic data) or is refused with an error naming the task or field it needs; the ResNet-101 one trains
two steps, is evaluated (per-class report and operating points) and exported."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from tests.helpers.tiny_pipeline import make_data
from tests.helpers.zoo import small_copy

from raredet import builders
from raredet.commands import config as config_cmd
from raredet.commands.evaluate import eval_from_config
from raredet.commands.export import export_model
from raredet.commands.train import train_from_config
from raredet.config import ConfigWarning, load
from raredet.errors import ConfigError
from raredet.zoo import CONFIG_DIR

CENTER_NET = sorted(p.name for p in CONFIG_DIR.glob("cent*.config"))
RESNET101 = "centernet_resnet101_v1_fpn_512x512_coco17_tpu-8.config"
# What a refusal of a config with a further task names: the task's field (or a field of it).
TASK_WORDS = ("keypoint", "deepmac")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("center_net_data")
    make_data(out, images=6)
    return out


def test_the_zoo_has_11_center_net_configs():
    assert len(CENTER_NET) == 11


@pytest.mark.parametrize("name", CENTER_NET)
def test_config_check_passes_or_names_the_missing_task(name, data_dir):
    path = small_copy(name, data_dir)
    try:
        with warnings.catch_warnings(), torch.device("meta"):  # shapes only: hourglass-104 is big
            warnings.simplefilter("ignore", ConfigWarning)
            report = config_cmd.check(path)
    except ConfigError as err:
        assert any(word in str(err) for word in TASK_WORDS), str(err)
        assert "model.center_net." in str(err)
        return
    assert "model:        center_net" in report and ": OK" in report
    assert "object_detection_task" in report


def test_densepose_and_tracking_are_refused_by_name(data_dir, tmp_path):
    text = small_copy(RESNET101, data_dir).read_text()
    for block, field in (("densepose_estimation_task { class_id: 0 }", "densepose_estimation_task"),
                         ("track_estimation_task { num_track_ids: 3 }", "track_estimation_task"),
                         ("temporal_offset_task { }", "temporal_offset_task")):
        path = tmp_path / f"{field}.config"
        path.write_text(text.replace("object_center_params {", block + "\nobject_center_params {", 1))
        with pytest.raises(ConfigError, match=rf"model\.center_net\.{field}: .*not supported"):
            config_cmd.check(path)


@pytest.mark.slow  # ResNet-101 at 128 px with the zoo's 200-pixel padding: about a minute on 2 cores
@pytest.mark.filterwarnings("ignore::raredet.config.validate.ConfigWarning")  # the zoo's TPU fields
def test_resnet101_trains_two_steps_evaluates_and_exports(data_dir, tmp_path):
    torch.set_num_threads(2)
    path = small_copy(RESNET101, data_dir)
    run = tmp_path / "run"
    result = train_from_config(path, run, num_train_steps=2, num_workers=0, device="cpu")
    assert result.step == 2 and (run / "ckpt-2.pt").exists()
    assert all(torch.isfinite(torch.tensor(v)) for v in result.last_losses.values())
    metrics = eval_from_config(path, run, out_dir=tmp_path / "eval", device="cpu")
    assert "DetectionBoxes_Precision/mAP" in metrics
    points = json.loads((tmp_path / "eval" / "operating_points.json").read_text())
    assert {c["class_name"] for c in points["classes"]} <= {"scratch", "dent", "crack"}
    fmt = "onnx" if _has_onnxruntime() else "torchscript"
    said = export_model(run, fmt, tmp_path / f"model.{fmt}")  # raises ExportError unless it reproduces
    # PyTorch's detections; a two-step model's tied peaks may be named as such ("tied scores")
    assert "checked: the same" in said or "tied scores" in said


@pytest.mark.slow  # Hourglass-104 (two stacks, ~190M parameters) forward on the CPU at 128 px
@pytest.mark.filterwarnings("ignore::raredet.config.validate.ConfigWarning")
def test_hourglass104_builds_and_runs_forward(data_dir):
    loaded = load(small_copy("centernet_hourglass104_512x512_coco17_tpu-8.config", data_dir))
    model, _ = builders.build_model(builders.model_message(loaded.pipeline), loaded.label_map.ids)
    model.eval()
    with torch.no_grad():
        out = model(torch.zeros(1, 3, 128, 128, dtype=torch.uint8))
        det = model.postprocess(out, torch.tensor([[128, 128]]))
    assert out["object_center"].shape == (2, 1, 3, 32, 32)  # two stacks, stride 4
    assert det["detection_boxes"].shape == (1, 100, 4) and bool(torch.isfinite(det["detection_scores"]).all())


def _has_onnxruntime() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def test_user_copy_keeps_the_zoo_model_block(data_dir):
    text = Path(small_copy(RESNET101, data_dir)).read_text()
    assert 'type: "resnet_v2_101"' in text and "penalty_reduced_logistic_focal_loss" in text
    assert "num_classes: 3" in text


@pytest.mark.slow  # two CPU training steps of an hourglass (hourglass_10, TF's smallest, for time)
@pytest.mark.filterwarnings("ignore::raredet.config.validate.ConfigWarning")  # the zoo's TPU fields
def test_hourglass_config_trains_two_steps(data_dir, tmp_path):
    # At 128 px hourglass_104's fifth stage is 1x1: its batch norms see two values per channel at batch 2
    # and their gradient is rounding noise over a vanishing deviation (inf, in TF too; see
    # modeling/hourglass.py); TF's hourglass_10 keeps the zoo config's everything else and trains here.
    torch.set_num_threads(2)
    path = small_copy("centernet_hourglass104_512x512_coco17_tpu-8.config", data_dir)
    path.write_text(path.read_text().replace('type: "hourglass_104"', 'type: "hourglass_10"'))
    result = train_from_config(path, tmp_path / "run", num_train_steps=2, num_workers=0, device="cpu")
    assert result.step == 2
    assert all(torch.isfinite(torch.tensor(v)) for v in result.last_losses.values())
