"""The Faster R-CNN model: torchvision-named backbones (ResNet-152 too), stride-16 first stage, output
shapes, shared vs per-class boxes, classification fine-tuning into the backbone; the FPN crop level of
a box. (Its builder's config errors: tests/builders/test_faster_rcnn.py.)"""

from __future__ import annotations

import pytest
import torch
from google.protobuf import text_format

from raredet.builders.faster_rcnn import build_faster_rcnn
from raredet.modeling.backbones import ResNet
from raredet.modeling.calibration import Calibration
from raredet.modeling.faster_rcnn import FasterRCNN, fpn_levels_of_boxes
from raredet.modeling.pretrained import load_checkpoint_weights
from raredet.protos import faster_rcnn_pb2

SMALL = """num_classes: 3 first_stage_max_proposals: 8 initial_crop_size: 6 maxpool_kernel_size: 2
maxpool_stride: 2 feature_extractor {{ type: "faster_rcnn_resnet50_keras" }}
first_stage_anchor_generator {{ grid_anchor_generator {{ scales: [0.25, 0.5]
                                                        aspect_ratios: [0.5, 1.0, 2.0] }} }}
second_stage_box_predictor {{ mask_rcnn_box_predictor {{ share_box_across_classes: {share} }} }}
second_stage_post_processing {{ score_converter: SOFTMAX }} {extra}"""


def _model(share: bool = True, extra: str = "", calibration: Calibration | None = None) -> FasterRCNN:
    """A small ResNet-50 Faster R-CNN: 3 classes, 6 grid anchors per cell, 8 proposals, 6x6 crops."""
    msg = text_format.Parse(SMALL.format(share=str(share).lower(), extra=extra), faster_rcnn_pb2.FasterRcnn())
    return build_faster_rcnn(msg, calibration)


def test_resnet152_parameter_count_matches_torchvision():
    # torchvision's documented resnet152 count minus the ImageNet classifier (2048 * 1000 + 1000)
    assert sum(p.numel() for p in ResNet(152).parameters()) == 60_192_808 - 2_049_000


@pytest.mark.parametrize("share", [True, False])
def test_shapes_stride_16_and_box_sharing(share):
    torch.manual_seed(0)
    model = _model(share=share)
    out = model(torch.rand(2, 3, 64, 96) * 255)
    # conv4 at stride 16: a 4 x 6 map, 6 anchors per cell
    assert out["anchors"].shape == (4 * 6 * 6, 4)
    assert out["rpn_objectness"].shape == (2, 144, 2) and out["rpn_box_deltas"].shape == (2, 144, 4)
    assert out["proposals"].shape == (2, 8, 4)
    assert out["cls_logits"].shape == (2, 8, 4)  # K + 1, background first
    assert out["box_deltas"].shape == (2, 8, 1 if share else 3, 4)
    det = model.eval().postprocess(model(torch.rand(1, 3, 64, 96) * 255), torch.tensor([[50, 96]]))
    n = int(det["num_detections"][0])
    assert n > 0 and (det["detection_boxes"][0, :n, 3] <= 50).all()  # clipped to the true image


def test_classification_checkpoint_loads_every_backbone_tensor(tmp_path):
    torch.manual_seed(1)
    backbone = ResNet(50)
    path = tmp_path / "resnet50.pth"
    torch.save({**backbone.state_dict(), "fc.weight": torch.zeros(1000, 2048)}, path)
    model = _model()
    report = load_checkpoint_weights(model, path, "classification")
    assert report.missing == [] and report.unexpected == ["fc.weight"]
    assert torch.equal(model.backbone.layer4[2].conv3.weight, backbone.layer4[2].conv3.weight)  # conv5 too


def test_training_forward_with_targets_runs_the_second_stage_on_the_sampled_minibatch():
    torch.manual_seed(0)
    model = _model(extra="second_stage_batch_size: 4").train()
    targets = {"boxes": torch.tensor([[[8.0, 8.0, 40.0, 40.0]], [[0.0, 0.0, 0.0, 0.0]]]),
               "labels": torch.tensor([[1], [-1]]), "weights": torch.tensor([[1.0], [0.0]])}
    images = torch.rand(2, 3, 64, 64) * 255
    everything = model(images)  # no targets: every proposal (batch norms are frozen: same features)
    assert everything["proposals"].shape == (2, 8, 4)
    out = model(images, targets)
    assert out["proposals"].shape == (2, 4, 4) and out["cls_logits"].shape == (2, 4, 4)
    # every valid proposal is eligible (image 1 has no box: all background): min(4, valid) are sampled
    expected = everything["proposal_valid"].sum(1).clamp(max=4)
    assert torch.equal(out["proposal_valid"].sum(1), expected)


def test_operating_points_map_the_softmax_scores_and_set_the_nms_threshold():
    model = _model()
    model.set_operating_points(Calibration.piecewise_linear(3, {0: ([0.0, 0.2, 1.0], [0.0, 0.5, 1.0])}), 0.5)
    scores = model.score_converter(torch.zeros(1, 4))  # softmax of 4 equal logits: 0.25 per column
    # class 0: 0.25 in [0.2, 1): a = 0.05 / 0.8, 0.5 + a * 0.5 = 0.53125; classes 1, 2 unchanged
    assert torch.allclose(scores, torch.tensor([[0.53125, 0.25, 0.25]]))
    assert model.non_max_suppression.score_threshold == 0.5


def test_calibration_config_acts_in_the_tf_od_api_order():
    """second_stage_post_processing.calibration_config: temperature divides all K + 1 logits before
    the softmax; a per-class map then acts on the foreground score of its class id (column k = id
    k + 1, background dropped); operating points come last."""
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    warm = _model(calibration=Calibration.temperature_scaling(3, 2.0))
    e = [1.0, 2.718281828459045 ** 0.5, 2.718281828459045, 2.718281828459045 ** 1.5]  # exp(logit / 2)
    want = torch.tensor([[x / sum(e) for x in e[1:]]])
    torch.testing.assert_close(warm.score_converter(logits), want)
    # id 2 (column 1): 0 -> 0, 1 -> 0.5 on [0, 1]; the others pass through
    mapped = _model(calibration=Calibration.piecewise_linear(3, {1: ([0.0, 1.0], [0.0, 0.5])}))
    plain = torch.softmax(logits, dim=-1)[:, 1:]
    torch.testing.assert_close(mapped.score_converter(logits), plain * torch.tensor([1.0, 0.5, 1.0]))


def test_fpn_crop_levels_by_hand():
    # floor(log2(side / 224)) + num_levels - 2 with 4 maps: 111 -> -2 + 2 = 0, 113 -> -1 + 2 = 1,
    # 223 -> 1, 225 -> 0 + 2 = 2, 449 -> 1 + 2 = 3, 2000 -> clamped to 3, 10 -> clamped to 0
    sides = torch.tensor([111.0, 113.0, 223.0, 225.0, 449.0, 2000.0, 10.0])
    boxes = torch.stack([torch.zeros(7), torch.zeros(7), sides, sides], dim=-1)[None]
    assert fpn_levels_of_boxes(boxes, (640, 640), 4).tolist() == [[0, 1, 1, 2, 3, 3, 0]]


def test_fpn_levels_equal_tensorflows_at_the_boundaries():
    # TF 2.15.1's object_detection.utils.ops.fpn_feature_levels(5, 3, sqrt(640 * 480) / 224, boxes) on
    # square s x s px boxes normalised to a 640 x 480 image (run 2026-12-07): the levels printed below
    sides = [16, 55.9, 56, 56.1, 100, 111.9, 112, 112.1, 224, 300, 447, 448, 449, 600]
    tf_levels = [0, 0, 1, 1, 1, 1, 2, 2, 3, 3, 3, 4, 4, 4]
    boxes = torch.tensor([[[0.0, 0.0, s, s] for s in sides]])
    assert fpn_levels_of_boxes(boxes, (640, 480), 5).tolist() == [tf_levels]
