"""Mask R-CNN's mask head (the TF OD API's Keras MaskRCNNMaskHead): depth, shapes, parameter count,
outputs equal to TF's with the same weights; the mask targets cropped from instance masks, by hand;
detection_masks from a small Mask R-CNN."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from google.protobuf import text_format
from tests.helpers.inception_resnet_v2 import PARITY, set_tf_fixture_weights

from raredet.builders.faster_rcnn import build_faster_rcnn
from raredet.modeling.layers import ConvHyperparams
from raredet.modeling.mask_head import MaskHead, mask_predictor_conv_depth, mask_targets
from raredet.protos import faster_rcnn_pb2

HP = ConvHyperparams(initializer="truncated_normal_initializer", initializer_args={"stddev": 0.01})


def test_automatic_depth_is_tf_formula():
    # 2 ** round((2 log2 C + 3 log2 K) / 5): 1536 features, 90 classes -> (21.17 + 19.47) / 5 = 8.13 -> 256
    assert mask_predictor_conv_depth(1536, 90) == 256
    # 3 classes: (21.17 + 4.75) / 5 = 5.18 -> 32
    assert mask_predictor_conv_depth(1536, 3) == 32
    assert round((2 * math.log2(1536) + 3 * math.log2(3)) / 5) == 5


def test_zoo_head_parameter_count_equals_tf():
    # tests/fixtures/inception_resnet_v2/make_counts.py: TF's MaskRCNNMaskHead(num_classes=90, 33x33,
    # 4 conv layers, depth 0) on [2, 9, 9, 1536] features has 4,926,810 parameters and outputs
    # [2, 1, 90, 33, 33]; by hand 1536*256*9+256 + 2*(256*256*9+256) + 256*90*9+90
    head = MaskHead(1536, 90, HP, mask_height=33, mask_width=33, mask_prediction_num_conv_layers=4,
                    mask_prediction_conv_depth=0)
    assert sum(p.numel() for p in head.parameters()) == 4_926_810
    assert head(torch.zeros(2, 1536, 9, 9)).shape == (2, 90, 33, 33)


def test_class_agnostic_and_convolve_then_upsample_shapes():
    agnostic = MaskHead(8, 5, HP, mask_height=6, mask_width=4, masks_are_class_agnostic=True)
    assert agnostic(torch.zeros(3, 8, 3, 3)).shape == (3, 1, 6, 4)
    # convs at 3x3, nearest-neighbour x2 (each cell repeated), conv, last conv: 6x6
    upsample = MaskHead(8, 5, HP, mask_height=6, mask_width=6, mask_prediction_conv_depth=4,
                        convolve_then_upsample_masks=True)
    assert upsample(torch.zeros(3, 8, 3, 3)).shape == (3, 5, 6, 6)
    assert upsample.upsample_conv[0].in_channels == 4


def test_resize_first_is_bilinear_with_aligned_corners():
    head = MaskHead(1, 1, ConvHyperparams(), mask_height=3, mask_width=3, mask_prediction_num_conv_layers=1)
    with torch.no_grad():  # the last conv passes its input through: a centre tap of 1, no bias
        head.last.weight.zero_()
        head.last.weight[0, 0, 1, 1] = 1.0
        head.last.bias.zero_()
    features = torch.tensor([[0.0, 2.0], [4.0, 6.0]]).reshape(1, 1, 2, 2)
    # align_corners: corners kept, the middle samples halfway (TF's resize_bilinear(align_corners=True))
    assert head(features)[0, 0].tolist() == [[0.0, 1.0, 2.0], [2.0, 3.0, 4.0], [4.0, 5.0, 6.0]]


@pytest.mark.parametrize("upsample", [False, True], ids=["resize_first", "convolve_then_upsample"])
def test_outputs_equal_tensorflow(upsample):
    # tests/fixtures/inception_resnet_v2/make_parity.py: TF's MaskRCNNMaskHead(num_classes=3, 6x6 masks,
    # 3 conv layers of depth 8) on [2, 3, 3, 16] features, every conv given the fixture's weights
    expected = json.loads(PARITY.read_text())["mask_head"][int(upsample)]
    assert expected["convolve_then_upsample"] == upsample
    head = MaskHead(16, 3, HP, mask_height=6, mask_width=6, mask_prediction_num_conv_layers=3,
                    mask_prediction_conv_depth=8, convolve_then_upsample_masks=upsample)
    assert set_tf_fixture_weights(head) == (4 if upsample else 3)
    x = np.random.default_rng(expected["seed"]).standard_normal((2, 3, 3, 16)).astype(np.float32)
    with torch.no_grad():
        out = head(torch.from_numpy(x).permute(0, 3, 1, 2))
    np.testing.assert_allclose(out.numpy(), np.array(expected["logits"]), atol=1e-5)


def test_mask_target_of_a_box_aligned_square_by_hand():
    # 8x8 image, instance 1 a 4x4 square of ones at rows/cols 2..5; box (x1, y1, x2, y2) = (2, 2, 6, 6).
    # crop_and_resize to 3x3: y = 2/8 * 7 + i * (4/8 * 7) / 2 = 1.75, 3.5, 5.25 (the same in x), so the
    # samples read 0.75 (between row 1 = 0 and row 2 = 1), 1, 0.75 (between row 5 = 1 and row 6 = 0)
    masks = torch.zeros(1, 2, 8, 8, dtype=torch.uint8)
    masks[0, 1, 2:6, 2:6] = 1
    masks[0, 0] = 1  # instance 0 is everywhere: picking it by mistake would give ones
    boxes = torch.tensor([[[2.0, 2.0, 6.0, 6.0], [2.0, 2.0, 6.0, 6.0]]])
    targets = mask_targets(masks, torch.tensor([[1, 0]]), boxes, (3, 3))
    edge = [0.75, 1.0, 0.75]
    assert targets[0, 0].flatten().tolist() == pytest.approx([a * b for a in edge for b in edge])
    assert targets[0, 1].flatten().tolist() == pytest.approx([1.0] * 9)


def test_mask_target_samples_outside_the_image_are_zero():
    masks = torch.ones(1, 1, 4, 4, dtype=torch.uint8)
    # box x from -4 to 4 (4 px wide image): x samples at -4/4*3 = -3, 0, 3 -> 0, 1, 1; rectangular 2x3
    targets = mask_targets(masks, torch.tensor([[0]]), torch.tensor([[[-4.0, 0.0, 4.0, 4.0]]]), (2, 3))
    assert targets[0, 0].tolist() == [[0.0, 1.0, 1.0], [0.0, 1.0, 1.0]]


SMALL_MASK_RCNN = """num_classes: 3 number_of_stages: 3 first_stage_max_proposals: 4 initial_crop_size: 5
maxpool_kernel_size: 1 maxpool_stride: 1 feature_extractor { type: "faster_rcnn_resnet50_keras" }
first_stage_anchor_generator { grid_anchor_generator { scales: [0.25, 0.5] aspect_ratios: [1.0] } }
second_stage_box_predictor { mask_rcnn_box_predictor { predict_instance_masks: true mask_height: 6
  mask_width: 6 mask_prediction_num_conv_layers: 2 mask_prediction_conv_depth: 8
  conv_hyperparams { op: CONV initializer { truncated_normal_initializer { stddev: 0.01 } } } } }
second_stage_post_processing { batch_non_max_suppression { max_detections_per_class: 3
  max_total_detections: 3 } score_converter: SOFTMAX }"""


def test_detection_masks_are_the_sigmoid_of_each_detections_class_channel():
    torch.manual_seed(0)
    model = build_faster_rcnn(text_format.Parse(SMALL_MASK_RCNN, faster_rcnn_pb2.FasterRcnn())).eval()
    images = torch.rand(1, 3, 64, 64) * 255
    with torch.no_grad():
        outputs = model(images)
        det = model.postprocess(outputs, torch.tensor([[64, 64]]))
        assert "mask_logits" not in outputs  # inference: masks for the detections only
        masks = det["detection_masks"]
        assert masks.shape == (1, 3, 6, 6)
        assert ((masks > 0) & (masks < 1)).all()
        # the first detection's mask again from its box, through the public pieces
        box = det["detection_boxes"][:, :1]
        crops = model._crops([outputs["features_to_crop_0"]], box, (64, 64))
        logits = model.mask_head(model.backbone.layer4(crops))  # [1, 3 classes, 6, 6]
        own = int(det["detection_classes"][0, 0])
    assert torch.allclose(masks[0, 0], torch.sigmoid(logits[0, own]), atol=1e-6)
