"""Faster R-CNN ResNet-50 V1 loaded from a checkpoint the TF OD API wrote, against TensorFlow's outputs.

The fixture (tests/fixtures/tf_models/faster_rcnn_resnet50_v1, see its WRITTEN_BY) is the zoo's
faster_rcnn_resnet50_v1_640x640 config on a 96x128 image padded to 128x128; the config has no depth
multiplier, so the writer narrowed the OD API's own Keras ResNet-50 to 1/64 (its ``depth_multiplier``
argument) and this test builds raredet's the same way. Expectations are TensorFlow's numbers.

Covered: every tensor loads; the first stage (RPN objectness and box encodings per anchor, anchors),
the proposals (NMS on unclipped boxes, then clipped to the true 96x128 image: 29 of 32 kept), the
second stage's raw outputs (K + 1 logits with TF's background column, the shared box encodings) and
the detections equal TF's -- through ``model(images)`` + ``postprocess(outputs, image_sizes)`` (the
proposals computed again for the true size), through ``forward(images, image_sizes=...)``, and on a
128x128 image that fills the input (``tf_outputs_128x128.npz``, the same weights).
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
from raredet.builders import faster_rcnn as builders_faster_rcnn
from raredet.modeling import faster_rcnn, load_checkpoint_weights
from raredet.modeling.backbones import ResNet

FOLDER = Path(__file__).parents[2] / "fixtures" / "tf_models" / "faster_rcnn_resnet50_v1"
NARROW = functools.partial(ResNet, depth_multiplier=1 / 64, min_depth=4, keras_widths=True)


def build(monkeypatch: pytest.MonkeyPatch) -> nn.Module:
    monkeypatch.setattr(builders_faster_rcnn, "ResNet", NARROW)  # as the fixture writer narrowed TF's
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fields raredet parses but does not act on
        loaded = raredet.config.load(FOLDER / "pipeline.config")
    model, _ = builders.build_model(builders.model_message(loaded.pipeline))
    return model.eval()


def run(model: nn.Module, outputs: str = "tf_outputs.npz") -> tuple[dict, dict]:
    tf = dict(np.load(FOLDER / outputs))
    image = torch.from_numpy(tf["resized_image"].astype(np.float32)).permute(2, 0, 1)[None]
    with torch.no_grad():
        return model(image), tf


def loaded(monkeypatch: pytest.MonkeyPatch) -> nn.Module:
    model = build(monkeypatch)
    load_checkpoint_weights(model, FOLDER / "checkpoint" / "ckpt-0", "full")
    return model


def true_size(tf: dict) -> torch.Tensor:
    return torch.from_numpy(tf["true_image_shape"][:2].astype(np.int64))[None]


def assert_second_stage_equals(out: dict, tf: dict) -> None:
    """Proposals (TF: absolute ymin, xmin, ymax, xmax, zero padded), K + 1 logits, box encodings."""
    n = int(tf["predict/num_proposals"])
    assert int(out["proposal_valid"][0].sum()) == n
    proposals = out["proposals"][0].numpy()[:, [1, 0, 3, 2]]
    assert np.abs(proposals - tf["predict/proposal_boxes"]).max() < 1e-3  # pixels of a 128 input
    logits = tf["predict/class_predictions_with_background"][:n]  # background first, as raredet's
    assert np.abs(out["cls_logits"][0, :n].numpy() - logits).max() < 1e-4 * np.abs(logits).max()
    encodings = tf["predict/refined_box_encodings"][:n]  # [P, 1, 4]: one box shared by the classes
    assert out["box_deltas"].shape[2:] == encodings.shape[1:]
    assert np.abs(out["box_deltas"][0, :n].numpy() - encodings).max() < 1e-4 * np.abs(encodings).max()


def assert_detections_equal(det: dict, tf: dict) -> None:
    """TF's boxes are normalised to the true image (its clip window), raredet's in input pixels."""
    height, width = (int(v) for v in tf["true_image_shape"][:2])
    n = int(tf["postprocess/num_detections"])
    assert int(det["num_detections"][0]) == n
    boxes = det["detection_boxes"][0, :n].numpy()[:, [1, 0, 3, 2]] / np.array([height, width] * 2)
    assert np.abs(boxes - tf["postprocess/detection_boxes"][:n]).max() < 1e-5
    scores = det["detection_scores"][0, :n].numpy()
    assert np.abs(scores - tf["postprocess/detection_scores"][:n]).max() < 1e-5
    assert (det["detection_classes"][0, :n].numpy() == tf["postprocess/detection_classes"][:n]).all()


def test_full_checkpoint_loads_every_tensor(monkeypatch):
    model = build(monkeypatch)
    report = load_checkpoint_weights(model, FOLDER / "checkpoint" / "ckpt-0", "full")
    assert not report.missing and not report.unexpected and not report.shape_mismatch
    assert report.parts["rpn"] == (6, 6) and report.parts["second_stage"] == (4, 4)
    assert model.weights_convention == "tf"


def test_first_stage_equals_tensorflows(monkeypatch):
    model = build(monkeypatch)
    load_checkpoint_weights(model, FOLDER / "checkpoint" / "ckpt-0", "full")
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
    report = load_checkpoint_weights(model, FOLDER / "classification" / "ckpt-0", "classification")
    assert report.parts["backbone"][0] == report.parts["backbone"][1] > 250
    assert torch.equal(model.rpn.conv.weight, before)
    full = build(monkeypatch)
    load_checkpoint_weights(full, FOLDER / "checkpoint" / "ckpt-0", "full")
    for name, tensor in full.backbone.state_dict().items():  # the same Keras ResNet, saved twice
        assert torch.equal(tensor, model.backbone.state_dict()[name]), name


def test_detection_checkpoint_loads_both_feature_extractors(monkeypatch):
    # restore_from_objects('detection'): _feature_extractor_for_{proposal,box_classifier}_features
    model = build(monkeypatch)
    rpn_before = model.rpn.conv.weight.detach().clone()
    head_before = model.box_head.cls.weight.detach().clone()
    report = load_checkpoint_weights(model, FOLDER / "checkpoint" / "ckpt-0", "detection")
    assert report.parts["backbone"][0] == report.parts["backbone"][1] > 250
    assert not report.unexpected
    assert torch.equal(model.rpn.conv.weight, rpn_before)
    assert torch.equal(model.box_head.cls.weight, head_before)
    full = build(monkeypatch)
    load_checkpoint_weights(full, FOLDER / "checkpoint" / "ckpt-0", "full")
    layer4 = dict(full.backbone.layer4.named_parameters())
    for name, tensor in model.backbone.layer4.named_parameters():  # conv5, from the box classifier's
        assert torch.equal(tensor, layer4[name]), name


def test_proposals_are_clipped_to_the_true_image_after_nms(monkeypatch):
    model = loaded(monkeypatch)
    out, tf = run(model)
    assert int(tf["predict/num_proposals"]) == 29  # 3 of NMS's 32 lie in the padding (rows 96..128)
    refined = model.with_image_sizes(out, true_size(tf))
    assert_second_stage_equals(refined, tf)
    assert float(refined["proposals"][0, :, 3].max()) <= 96.0


def test_postprocess_with_the_true_size_gives_tensorflows_detections(monkeypatch):
    model = loaded(monkeypatch)
    out, tf = run(model)  # forward saw the padded 128x128 input only
    det = model.postprocess(out, true_size(tf))
    assert_detections_equal(det, tf)
    assert_second_stage_equals(out, tf)  # postprocess replaced the entries it computed again
    scores = tf["postprocess/detection_scores"]
    assert scores.max() > 0.99 and scores.min() < 0.01  # not saturated: the score converter counts


def test_forward_with_image_sizes_equals_tensorflow(monkeypatch):
    model = loaded(monkeypatch)
    tf = dict(np.load(FOLDER / "tf_outputs.npz"))
    image = torch.from_numpy(tf["resized_image"].astype(np.float32)).permute(2, 0, 1)[None]
    with torch.no_grad():
        out = model(image, image_sizes=true_size(tf))
    assert_second_stage_equals(out, tf)
    assert_detections_equal(model.postprocess(out, true_size(tf)), tf)


def test_forward_alone_finds_the_true_size_in_tfs_zero_padding(monkeypatch):
    """`model(image)` on TF's resized image as it is (96 rows of content, 32 zero rows below): the
    proposals, second stage and detections are TF's without being told the true size."""
    model = loaded(monkeypatch)
    tf = dict(np.load(FOLDER / "tf_outputs.npz"))
    image = torch.from_numpy(tf["resized_image"].astype(np.float32)).permute(2, 0, 1)[None]
    assert image[..., 96:, :].abs().max() == 0 and image[..., 95, :].abs().max() > 0
    with torch.no_grad():
        out = model(image)
    assert out["image_sizes"].tolist() == true_size(tf).tolist()
    assert_second_stage_equals(out, tf)
    assert_detections_equal(model.postprocess(out, true_size(tf)), tf)


def test_an_image_filling_the_input_equals_tensorflow(monkeypatch):
    model = loaded(monkeypatch)
    out, tf = run(model, "tf_outputs_128x128.npz")
    assert tf["true_image_shape"][:2].tolist() == [128, 128]
    assert_second_stage_equals(out, tf)
    assert_detections_equal(model.postprocess(out, true_size(tf)), tf)


def test_a_batch_of_a_padded_and_a_full_image_equals_tensorflow_per_image(monkeypatch):
    model = loaded(monkeypatch)
    padded, full = (dict(np.load(FOLDER / name)) for name in ("tf_outputs.npz", "tf_outputs_128x128.npz"))
    images = torch.stack([torch.from_numpy(tf["resized_image"].astype(np.float32)).permute(2, 0, 1)
                          for tf in (padded, full)])
    sizes = torch.cat([true_size(padded), true_size(full)])
    with torch.no_grad():
        out = model(images)
        det = model.postprocess(out, sizes)
        refined = model.with_image_sizes(out, sizes)
    for b, tf in enumerate((padded, full)):
        keys = ("proposals", "proposal_valid", "cls_logits", "box_deltas")
        assert_second_stage_equals({k: refined[k][b:b + 1] for k in keys}, tf)
        assert_detections_equal({k: v[b:b + 1] for k, v in det.items()}, tf)


FPN_FOLDER = FOLDER.parent / "faster_rcnn_resnet50_v1_fpn"


def test_fpn_variant_equals_tensorflow(monkeypatch):
    # faster_rcnn_resnet50_fpn_keras (FPN_FOLDER/WRITTEN_BY): ResNet at 1/64, box classifier fc 16 wide
    monkeypatch.setattr(builders_faster_rcnn, "ResNet", NARROW)
    monkeypatch.setattr(faster_rcnn, "FPN_FC_DEPTH", 16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = raredet.config.load(FPN_FOLDER / "pipeline.config").pipeline
    model = builders.build_model(builders.model_message(config))[0].eval()
    report = load_checkpoint_weights(model, FPN_FOLDER / "checkpoint" / "ckpt-0", "full")
    assert not report.missing and not report.unexpected and not report.shape_mismatch
    assert report.parts["fpn"][0] == report.parts["fpn"][1] > 0
    assert report.parts["box_classifier"] == (8, 8)  # fc1, fc2 (weight, bias), the batch norm (4)
    tf = dict(np.load(FPN_FOLDER / "tf_outputs.npz"))
    image = torch.from_numpy(tf["resized_image"].astype(np.float32)).permute(2, 0, 1)[None]
    with torch.no_grad():
        out = model(image)
        det = model.postprocess(out, true_size(tf))
        refined = model.with_image_sizes(out, true_size(tf))
    objectness = tf["predict/rpn_objectness_predictions_with_background"]  # 5 levels, 6 anchors a cell
    assert np.abs(out["rpn_objectness"][0].numpy() - objectness).max() < 1e-4 * np.abs(objectness).max()
    assert np.abs(out["anchors"].numpy()[:, [1, 0, 3, 2]] - tf["predict/anchors"]).max() < 1e-4
    # every proposal here (~25 px) is cropped on level 2 (fpn_feature_levels: 56 px and more go higher);
    # the choice of level is compared on the full-size model (bench/tf_parity.py, docs/faster_rcnn.md)
    assert_second_stage_equals(refined, tf)  # box_deltas [P, K, 4]: one box per class
    assert_detections_equal(det, tf)


def test_fpn_detection_checkpoint_loads_backbone_fpn_and_box_classifier(monkeypatch):
    # restore_from_objects('detection'): both feature-extractor models, i.e. with the FPN variant also the
    # FPN and the box classifier's fc layers; not the RPN nor the mask_rcnn_box_predictor
    monkeypatch.setattr(builders_faster_rcnn, "ResNet", NARROW)
    monkeypatch.setattr(faster_rcnn, "FPN_FC_DEPTH", 16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = raredet.config.load(FPN_FOLDER / "pipeline.config").pipeline
    model = builders.build_model(builders.model_message(config))[0]
    report = load_checkpoint_weights(model, FPN_FOLDER / "checkpoint" / "ckpt-0", "detection")
    for part in ("backbone", "fpn", "box_classifier"):
        assert report.parts[part][0] == report.parts[part][1] > 0, part
    assert report.parts["rpn"][0] == 0 and report.parts["box_head"][0] == 0  # parts not read: module names
