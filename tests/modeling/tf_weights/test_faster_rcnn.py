"""Faster R-CNN ResNet-50 V1 loaded from a checkpoint the TF OD API wrote, against TensorFlow's outputs.

The fixture (tests/fixtures/tf_models/faster_rcnn_resnet50_v1, see its WRITTEN_BY) is the zoo's
faster_rcnn_resnet50_v1_640x640 config on a 96x128 image padded to 128x128; the config has no depth
multiplier, so the writer narrowed the OD API's own Keras ResNet-50 to 1/64 (its ``depth_multiplier``
argument) and this test builds raredet's the same way. Expectations are TensorFlow's numbers.

Covered: every tensor loads, the first stage (RPN objectness and box encodings per anchor, anchors)
equals TF's. Not yet: the proposals and what follows (TF clips proposals to the true image after
NMS, see the family report), so the second stage is not compared here.
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import raredet.config
from raredet import builders
from raredet.modeling import faster_rcnn, load_fine_tune_checkpoint
from raredet.modeling.backbones import ResNet

FOLDER = Path(__file__).parents[2] / "fixtures" / "tf_models" / "faster_rcnn_resnet50_v1"
NARROW = functools.partial(ResNet, depth_multiplier=1 / 64, min_depth=4, keras_widths=True)


def build(monkeypatch: pytest.MonkeyPatch) -> nn.Module:
    monkeypatch.setattr(faster_rcnn, "ResNet", NARROW)  # as the fixture writer narrowed TF's
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fields raredet parses but does not act on
        loaded = raredet.config.load(FOLDER / "pipeline.config")
    model, _ = builders.build_model(builders.model_message(loaded.config))
    return model.eval()


def run(model: nn.Module) -> tuple[dict, dict]:
    tf = dict(np.load(FOLDER / "tf_outputs.npz"))
    image = torch.from_numpy(tf["resized_image"].astype(np.float32)).permute(2, 0, 1)[None]
    with torch.no_grad():
        return model(image), tf


def test_full_checkpoint_loads_every_tensor(monkeypatch):
    model = build(monkeypatch)
    report = load_fine_tune_checkpoint(model, FOLDER / "checkpoint" / "ckpt-0", "full")
    assert not report.missing and not report.unexpected and not report.shape_mismatch
    assert report.parts["rpn"] == (6, 6) and report.parts["second_stage"] == (4, 4)
    assert model.weights_convention == "tf"


def test_first_stage_equals_tensorflows(monkeypatch):
    model = build(monkeypatch)
    load_fine_tune_checkpoint(model, FOLDER / "checkpoint" / "ckpt-0", "full")
    out, tf = run(model)
    objectness = tf["predict/rpn_objectness_predictions_with_background"]  # [A, 2] background, object
    assert np.abs(out["rpn_objectness"][0].numpy() - objectness).max() < 1e-3 * np.abs(objectness).max()
    encodings = tf["predict/rpn_box_encodings"]
    assert np.abs(out["rpn_box_deltas"][0].numpy() - encodings).max() < 1e-3 * np.abs(encodings).max()
    assert np.abs(objectness).max() > 1.0
    # TF's anchors: absolute ymin, xmin, ymax, xmax, clipped to the (padded) image
    assert np.abs(out["anchors"].numpy()[:, [1, 0, 3, 2]] - tf["predict/anchors"]).max() < 1e-4


def test_classification_checkpoint_loads_the_backbone_only(monkeypatch):
    model = build(monkeypatch)
    before = model.rpn.conv.weight.detach().clone()
    report = load_fine_tune_checkpoint(model, FOLDER / "classification" / "ckpt-0", "classification")
    assert report.parts["backbone"][0] == report.parts["backbone"][1] > 250
    assert torch.equal(model.rpn.conv.weight, before)
    full = build(monkeypatch)
    load_fine_tune_checkpoint(full, FOLDER / "checkpoint" / "ckpt-0", "full")
    for name, tensor in full.backbone.state_dict().items():  # the same Keras ResNet, saved twice
        assert torch.equal(tensor, model.backbone.state_dict()[name]), name


def test_detection_checkpoint_loads_both_feature_extractors(monkeypatch):
    # restore_from_objects('detection'): _feature_extractor_for_{proposal,box_classifier}_features
    model = build(monkeypatch)
    rpn_before = model.rpn.conv.weight.detach().clone()
    head_before = model.box_head.cls.weight.detach().clone()
    report = load_fine_tune_checkpoint(model, FOLDER / "checkpoint" / "ckpt-0", "detection")
    assert report.parts["backbone"][0] == report.parts["backbone"][1] > 250
    assert not report.unexpected
    assert torch.equal(model.rpn.conv.weight, rpn_before)
    assert torch.equal(model.box_head.cls.weight, head_before)
    full = build(monkeypatch)
    load_fine_tune_checkpoint(full, FOLDER / "checkpoint" / "ckpt-0", "full")
    layer4 = dict(full.backbone.layer4.named_parameters())
    for name, tensor in model.backbone.layer4.named_parameters():  # conv5, from the box classifier's
        assert torch.equal(tensor, layer4[name]), name
