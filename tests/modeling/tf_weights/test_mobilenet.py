"""SSD MobileNet families loaded from checkpoints the TF OD API wrote, against TensorFlow's own outputs.

The fixtures (tests/fixtures/tf_models/<family>/, see each WRITTEN_BY) hold a checkpoint saved as the zoo
saves ``ckpt-0``, every variable drawn at random (batch-norm statistics included), and TF 2.15.1's
``predict`` / ``postprocess`` outputs on a fixed image: the expectations here are TensorFlow's numbers.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import torch
from tests.helpers.tf_weights import assert_detections_equal_tf, build

from raredet.modeling import load_checkpoint_weights
from raredet.modeling.tf_compat import TFSameConv2d
from raredet.modeling.tf_weights import mobilenet
from raredet.tfcheckpoint import open_checkpoint

FIXTURES = Path(__file__).parents[2] / "fixtures" / "tf_models"
FAMILIES = ["ssd_mobilenet_v2_fpnlite", "ssd_mobilenet_v2", "ssd_mobilenet_v1_fpn"]


@functools.cache
def tf_loaded(family: str) -> tuple[torch.nn.Module, dict, dict]:
    folder = FIXTURES / family
    model = build(folder)
    load_checkpoint_weights(model, folder / "checkpoint" / "ckpt-0", "full")
    tf = dict(np.load(folder / "tf_outputs.npz"))
    image = torch.from_numpy(tf["resized_image"]).permute(2, 0, 1)[None]
    with torch.no_grad():
        outputs = model.eval()(image)
    return model, outputs, tf


@pytest.mark.parametrize("family", FAMILIES)
def test_raw_predictions_equal_tensorflows(family):
    _, out, tf = tf_loaded(family)
    # TF's class predictions carry a background column first; raredet's do not.
    tf_logits = tf["predict/class_predictions_with_background"][:, 1:]
    assert out["cls_logits"].shape[1:] == tf_logits.shape
    assert np.abs(out["cls_logits"][0].numpy() - tf_logits).max() < 1e-4
    assert np.abs(out["box_deltas"][0].numpy() - tf["predict/box_encodings"]).max() < 1e-4
    assert np.abs(tf_logits).max() > 0.1  # the comparison is not between near-zero numbers


@pytest.mark.parametrize("family", FAMILIES)
def test_detections_equal_tensorflows(family):
    model, out, tf = tf_loaded(family)
    assert_detections_equal_tf(model, out, tf)


@pytest.mark.parametrize("family", FAMILIES)
def test_backbone_order_matches_the_keras_layer_names_tf_wrote(family):
    folder = FIXTURES / family
    model = build(folder)
    ckpt = open_checkpoint(folder / "checkpoint" / "ckpt-0")
    names = {}  # layer_with_weights index -> Keras layer name, from each variable's full name
    for path, key in ckpt.variables().items():
        if path.startswith("model/_feature_extractor/classification_backbone/layer_with_weights-"):
            index = int(path.split("layer_with_weights-")[1].split("/")[0])
            names[index] = ckpt.info(key).full_name.rsplit("/", 1)[0]
    assert [names[i] for i in range(len(names))] == mobilenet.keras_layer_names(model)


def test_tf_conventions_after_loading():
    model, _, _ = tf_loaded("ssd_mobilenet_v2_fpnlite")
    assert model.weights_convention == "tf"
    assert torch.equal(model.pixel_mean.flatten(), torch.full((3,), 127.5))
    assert torch.equal(model.pixel_std.flatten(), torch.full((3,), 127.5))
    stem = model.feature_extractor.backbone.features[0][0]
    assert isinstance(stem, TFSameConv2d)
    # Keras MobileNetV2's batch norms under the override: the config's epsilon 0.001 and decay 0.997.
    bn = model.feature_extractor.backbone.features[0][1]
    assert bn.eps == pytest.approx(1e-3) and bn.momentum == pytest.approx(0.003)
    assert model.feature_extractor.fpn.tf_top_down


def test_a_torchvision_build_keeps_torchvision_conventions():
    """What a model given torch weights (a torchvision backbone, a raredet checkpoint) computes with."""
    model = build(FIXTURES / "ssd_mobilenet_v2_fpnlite", "torchvision")
    assert model.weights_convention == "torchvision"
    assert torch.allclose(model.pixel_mean.flatten(), torch.tensor([0.485, 0.456, 0.406]) * 255)
    assert type(model.feature_extractor.backbone.features[0][0]) is torch.nn.Conv2d
    assert model.feature_extractor.backbone.features[0][1].eps == pytest.approx(1e-5)
    assert not model.feature_extractor.fpn.tf_top_down


def test_a_zoo_keras_extractor_is_built_with_tfs_conventions_by_default():
    """`ssd_mobilenet_v2_fpn_keras` from scratch computes as the TF OD API's model does (issue #32)."""
    model = build(FIXTURES / "ssd_mobilenet_v2_fpnlite")
    assert model.weights_convention == "tf"
    assert torch.allclose(model.pixel_mean.flatten(), torch.full((3,), 127.5))
    assert model.feature_extractor.backbone.features[0][1].eps == pytest.approx(1e-3)  # the config's
    assert model.feature_extractor.fpn.tf_top_down
