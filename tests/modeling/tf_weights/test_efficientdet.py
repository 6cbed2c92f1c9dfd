"""EfficientDet loaded from a checkpoint the TF OD API wrote, against TensorFlow's own outputs.

The fixture (tests/fixtures/tf_models/efficientdet_d0/, see WRITTEN_BY) is the zoo's D0 config with 3
classes, a 256x256 image, a 2-iteration 16-wide BiFPN and 16-deep predictor, its EfficientNet-b0 at
width 0.07 (the OD API refuses a depth_multiplier for it; the fixture writer narrows TF's own model, so
the model here is narrowed the same way): every block, kernel, stride, squeeze-excitation and name of
b0 is kept. Every variable is drawn at random (batch-norm statistics included); the expectations are TF
2.15.1's ``predict`` / ``postprocess`` outputs (at every 5th anchor, ``anchor_index``) and TF's own
object paths of the classification checkpoint (``classification_paths.json``).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from tests.helpers.tf_weights import assert_detections_equal_tf
from torch import nn

import raredet.config
from raredet import builders
from raredet.modeling import efficientnet, load_checkpoint_weights
from raredet.modeling.predictor import WeightSharedConvolutionalBoxPredictor
from raredet.modeling.tf_compat import apply_weights_convention
from raredet.modeling.tf_weights import efficientdet
from raredet.modeling.tf_weights.ssd_parts import weight_shared_maps
from raredet.tfcheckpoint import open_checkpoint

FOLDER = Path(__file__).parents[2] / "fixtures" / "tf_models" / "efficientdet_d0"
WIDTH = 0.07  # write_efficientdet_fixture.py --width (WRITTEN_BY)


@pytest.fixture
def narrow_b0(monkeypatch):
    monkeypatch.setitem(efficientnet.EFFICIENTNET_VARIANTS, "b0", (WIDTH, 1.0))


def build() -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fields raredet parses but does not act on
        loaded = raredet.config.load(FOLDER / "pipeline.config")
    model, _ = builders.build_model(builders.model_message(loaded.pipeline))
    return model.eval()


def tf_outputs() -> dict[str, np.ndarray]:
    return dict(np.load(FOLDER / "tf_outputs.npz"))


def run(model: nn.Module, tf: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    image = torch.from_numpy(tf["resized_image"]).permute(2, 0, 1)[None].float()
    with torch.no_grad():
        return model(image)


def loaded(checkpoint_type: str = "full"):
    model = build()
    report = load_checkpoint_weights(model, FOLDER / "checkpoint" / "ckpt-0", checkpoint_type)
    return model, report


def test_raw_predictions_equal_tensorflows(narrow_b0):
    model, _ = loaded()
    tf = tf_outputs()
    out, index = run(model, tf), tf["anchor_index"]
    assert out["cls_logits"].shape[1] == 12276  # levels 3..7 of 256x256, 9 anchors per cell
    # add_background_class: false -> TF's class predictions have K columns, no background.
    logits, tf_logits = out["cls_logits"][0, index].numpy(), tf["predict/class_predictions_with_background"]
    assert logits.shape == tf_logits.shape
    assert np.abs(logits - tf_logits).max() < 1e-4
    assert np.abs(out["box_deltas"][0, index].numpy() - tf["predict/box_encodings"]).max() < 1e-4
    assert np.abs(tf_logits).std() > 0.05  # not a comparison of near-constant numbers
    # TF's anchors: normalised (ymin, xmin, ymax, xmax); raredet's: xyxy pixels.
    anchors = out["anchors"][index].numpy()[:, [1, 0, 3, 2]] / 256.0
    assert np.abs(anchors - tf["predict/anchors"]).max() < 1e-6


def test_detections_equal_tensorflows(narrow_b0):
    model, _ = loaded()
    tf = tf_outputs()
    det = model.postprocess(run(model, tf), torch.tensor([[256, 256]]))
    tf_scores = tf["postprocess/detection_scores"]
    n = int((tf_scores > 0.01).sum())
    assert n > 10 and int(det["num_detections"][0]) >= n
    boxes = det["detection_boxes"][0, :n].numpy()[:, [1, 0, 3, 2]] / 256.0
    assert np.abs(boxes - tf["postprocess/detection_boxes"][:n]).max() < 1e-3
    assert np.abs(det["detection_scores"][0, :n].numpy() - tf_scores[:n]).max() < 1e-3
    assert (det["detection_classes"][0, :n].numpy() == tf["postprocess/detection_classes"][:n]).all()


def test_detections_on_a_padded_image_equal_tensorflows(narrow_b0):
    """A 192x256 image in the 256x256 input (``tf_outputs_192x256.npz``; the resizer pads below it). TF
    clips the kept boxes to the true image, drops those wholly in the padding and only then keeps the
    best 100 (with the cut first, 99 would be left), its boxes normalised to the true image. TF's SSD
    normalises the image and then pads it with zeros (``ssd_meta_arch.preprocess``); the model is given
    TF's resized image as it is, zero-padded in pixels, and must see TF's preprocessed input."""
    model, _ = loaded()
    tf = dict(np.load(FOLDER / "tf_outputs_192x256.npz"))
    height = int(tf["true_image_shape"][0])
    assert height < tf["resized_image"].shape[0]
    image = torch.from_numpy(tf["resized_image"]).permute(2, 0, 1)[None].float()
    assert image[..., height:, :].abs().max() == 0  # TF's resizer padded with zeros
    with torch.no_grad():
        out = model(image)
    logits = out["cls_logits"][0, tf["anchor_index"]].numpy()
    assert np.abs(logits - tf["predict/class_predictions_with_background"]).max() < 1e-4
    assert_detections_equal_tf(model, out, tf)


def test_every_tensor_loads_and_only_the_unused_classifier_is_left(narrow_b0):
    model, report = loaded()
    assert not report.missing and not report.shape_mismatch
    assert set(report.parts) == {"backbone", "bifpn", "box_predictor"}
    assert all(done == total for done, total in report.parts.values())
    # What the detector never reads: the classification network's top conv, its batch norm, its logits.
    leftover = {path.split("/")[3] + "/" + path.split("/")[4] for path in report.unexpected}
    assert all("/classification_backbone/" in p for p in report.unexpected), report.unexpected
    assert len(report.unexpected) == 7 and len(leftover) == 7


def test_tf_batch_norm_epsilon_is_what_makes_the_difference(narrow_b0):
    """The fixture sees the EfficientNet's epsilon: back at torchvision's 1e-5, outputs move."""
    model, _ = loaded()
    tf = tf_outputs()
    for module in model.feature_extractor.backbone.modules():
        if isinstance(module, nn.BatchNorm2d):
            assert module.eps == 1e-3
            module.eps = 1e-5
    logits = run(model, tf)["cls_logits"][0, tf["anchor_index"]].numpy()
    assert np.abs(logits - tf["predict/class_predictions_with_background"]).max() > 1e-3


def test_detection_checkpoint_type_leaves_the_predictor(narrow_b0):
    model, report = loaded("detection")
    assert report.parts["box_predictor"][0] == 0
    assert report.parts["backbone"][0] == report.parts["backbone"][1] > 0
    assert report.parts["bifpn"][0] == report.parts["bifpn"][1] > 0
    ckpt = open_checkpoint(FOLDER / "checkpoint" / "ckpt-0")
    stem = ckpt.tensor(ckpt.variables()["model/_feature_extractor/_efficientnet/layer_with_weights-0/kernel"])
    torch.testing.assert_close(model.feature_extractor.backbone.features[0][0].weight,
                               torch.from_numpy(np.array(stem)).permute(3, 2, 0, 1))


def test_classification_paths_name_the_layers_the_detection_checkpoint_names(narrow_b0):
    """TF's classification checkpoint (root ``feature_extractor``) numbers the EfficientNet's layers as
    the detection checkpoint's ``_efficientnet`` does: each map reads a variable of the same full name."""
    model = build()
    ckpt = open_checkpoint(FOLDER / "checkpoint" / "ckpt-0")
    variables = ckpt.variables()
    shapes = {p: tuple(ckpt.info(k).shape) for p, k in variables.items()}
    detection = {m.target: m.source for m in efficientdet.tensor_maps(model, shapes) if m.part == "backbone"}
    tf_classification = json.loads((FOLDER / "classification_paths.json").read_text())["variables"]
    maps = efficientdet.classification_maps(model, {})
    assert len(maps) == len(detection) > 200
    for item in maps:
        full_name, shape = tf_classification[item.source]
        assert full_name == ckpt.info(variables[detection[item.target]]).full_name
        assert tuple(shape) == shapes[detection[item.target]]


def test_background_column_is_dropped_per_anchor():
    """EfficientDet's depthwise predictor from a TF class head with a background column
    (add_background_class: true): 2 anchors x (1 + 2 classes) -> raredet's 2 x 2."""
    predictor = WeightSharedConvolutionalBoxPredictor(2, 2, [8], {}, 1, 8, use_depthwise=True)
    source = "m/_box_predictor/_prediction_heads/class_predictions_with_background/_class_predictor_layers/0"
    maps = weight_shared_maps(predictor, "p", "m", {f"{source}/bias": (6,)})
    heads = {m.target: m.out_index for m in maps if m.target.startswith("p.class_head")}
    assert heads == {"p.class_head.0.weight": None, "p.class_head.1.weight": (1, 2, 4, 5),
                     "p.class_head.1.bias": (1, 2, 4, 5)}
    same_width = weight_shared_maps(predictor, "p", "m", {f"{source}/bias": (4,)})
    assert all(m.out_index is None for m in same_width)


def test_a_rebuilt_model_with_tf_conventions_computes_as_tf(narrow_b0):
    """What eval/predict/resume do with a raredet checkpoint of a TF-loaded model: build, switch to
    TF's conventions, load the state dict. The EfficientNet's epsilon comes back with the switch."""
    model, _ = loaded()
    rebuilt = build()
    apply_weights_convention(rebuilt, "tf")
    rebuilt.load_state_dict(model.state_dict())
    tf = tf_outputs()
    logits = run(rebuilt, tf)["cls_logits"][0, tf["anchor_index"]].numpy()
    assert np.abs(logits - tf["predict/class_predictions_with_background"]).max() < 1e-4
