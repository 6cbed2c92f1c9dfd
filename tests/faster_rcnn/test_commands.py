"""Faster R-CNN through the commands: export (TorchScript, ONNX) reproduces PyTorch, eval and predict
run, resume is bit-exact with class weights and the Seesaw loss's state."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from tests.faster_rcnn.test_zoo_configs import small_copy
from tests.helpers.tiny_pipeline import make_data

from raredet import builders, config
from raredet.commands.evaluate import eval_from_config
from raredet.commands.export import export_model
from raredet.commands.predict import predict
from raredet.engine.checkpoint import load_checkpoint, save_checkpoint
from raredet.engine.train import train

ZOO_NAME = "faster_rcnn_resnet50_v1_640x640_coco17_tpu-8.config"
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::UserWarning")]


def scaled_checkpoint(data: Path, images: int) -> tuple[Path, Path]:
    """(checkpoint folder data/run, config): synthetic data in `data` and a checkpoint of the untrained
    small zoo model whose class and box layers are scaled by 0.01, so scores spread around 1/4 (an
    untrained ResNet's pooled features are large) and boxes stay near their anchors / proposals:
    distinct detections to compare, no degenerate ties."""
    torch.set_num_threads(1)
    make_data(data, images=images)
    path = small_copy(ZOO_NAME, data)
    loaded = config.load(path)
    torch.manual_seed(0)
    model, _ = builders.build_model(builders.model_message(loaded.pipeline))
    state = model.state_dict()
    for key in ("box_head.cls.weight", "box_head.box.weight", "rpn.box.0.weight"):
        state[key] = state[key] * 0.01
    run = data / "run"
    save_checkpoint(run, 1, {"model": state, "config_text": config.effective_config_text(loaded.pipeline),
                             "label_map_text": loaded.label_map.to_pbtxt()})
    return run, path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> tuple[Path, Path]:
    return scaled_checkpoint(tmp_path_factory.mktemp("frcnn_cmd"), images=6)


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_export_reproduces_pytorch_detections(model_dir, tmp_path, fmt):
    run, _ = model_dir
    report = export_model(run, fmt, tmp_path / f"model.{fmt}")
    found = re.search(r"checked: the same (\d+) detections as PyTorch", report)
    assert found, report
    assert int(found.group(1)) > 0  # a comparison of something


def test_eval_and_predict_run(model_dir, tmp_path):
    run, path = model_dir
    metrics = eval_from_config(path, run, out_dir=tmp_path / "eval", device="cpu")
    assert "DetectionBoxes_Precision/mAP" in str(metrics)
    result = predict(run, [str(path.parent / "images")], tmp_path / "pred", min_score=0.0)
    assert "detection" in result.summary()
    assert (tmp_path / "pred" / "detections.json").exists()


SEESAW_AND_WEIGHTS = """
    second_stage_class_weights { auto { scheme: SQRT_INVERSE_FREQUENCY } }
    second_stage_seesaw_loss { }
"""


def test_resume_is_bit_exact_with_seesaw_and_class_weights(tmp_path):
    torch.set_num_threads(1)
    data = tmp_path / "data"
    make_data(data, images=6)
    path = small_copy(ZOO_NAME, data)
    text = path.read_text().replace("    use_static_shapes: true",
                                    SEESAW_AND_WEIGHTS + "    use_static_shapes: true")
    # The synthetic boxes are 3-13 pixels in 64-pixel images: upscale to 256, anchors of 16 and 32
    # pixels, RPN codes near 0 at the start (proposals near anchors) and 64 proposals, so that the
    # second stage samples positives (and the Seesaw counts move) within 4 steps.
    text = text.replace("min_dimension: 64", "min_dimension: 256")
    text = text.replace("max_dimension: 64", "max_dimension: 256")
    text = text.replace("stddev: 0.01", "stddev: 0.0001")
    text = text.replace("scales: [0.25, 0.5, 1.0, 2.0]", "scales: [0.0625, 0.125]")
    text = text.replace("first_stage_max_proposals: 16", "first_stage_max_proposals: 64")
    path.write_text(text)
    loaded = config.load(path)

    def components(steps: int):
        return builders.build_training(loaded, seed=3, num_train_steps=steps, num_workers=0)

    straight = components(4)
    train(straight, tmp_path / "a", progress=False)
    train(components(2), tmp_path / "b", progress=False)
    resumed = components(4)
    assert train(resumed, tmp_path / "b", progress=False).step == 4
    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    assert straight.criterion.seesaw_counts.sum() > 0
    assert torch.equal(straight.criterion.seesaw_counts, resumed.criterion.seesaw_counts)
    saved = load_checkpoint(tmp_path / "b" / "ckpt-4.pt")
    assert torch.equal(saved["loss"]["seesaw_counts"], straight.criterion.seesaw_counts)
