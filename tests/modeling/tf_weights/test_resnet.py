"""SSD ResNet-FPN loaded from a checkpoint the TF OD API wrote, against TensorFlow's own outputs.

The fixture (tests/fixtures/tf_models/ssd_resnet50_v1_fpn, see its WRITTEN_BY) is the zoo's
ssd_resnet50_v1_fpn_640x640 config at depth multiplier 1/64 on a 160x192 image, every variable drawn
at random (batch-norm statistics included), and TF 2.15.1's ``predict`` / ``postprocess`` outputs: the
expectations here are TensorFlow's numbers.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import torch
from tests.helpers.tf_weights import assert_detections_equal_tf, build
from torch import nn

from raredet.modeling import load_checkpoint_weights
from raredet.modeling.backbones import KerasFixedPaddingConv2d, ResNet
from raredet.modeling.layers import ReLU6
from raredet.modeling.tf_compat import TFSameMaxPool2d, use_tf_same_padding
from raredet.modeling.tf_weights import resnet
from raredet.tfcheckpoint import open_checkpoint

FIXTURES = Path(__file__).parents[2] / "fixtures" / "tf_models"
FOLDER = FIXTURES / "ssd_resnet50_v1_fpn"


@functools.cache
def tf_loaded() -> tuple[nn.Module, dict, dict]:
    model = build(FOLDER)
    load_checkpoint_weights(model, FOLDER / "checkpoint" / "ckpt-0", "full")
    tf = dict(np.load(FOLDER / "tf_outputs.npz"))
    image = torch.from_numpy(tf["resized_image"].astype(np.float32)).permute(2, 0, 1)[None]
    with torch.no_grad():
        outputs = model.eval()(image)
    return model, outputs, tf


def test_raw_predictions_equal_tensorflows():
    _, out, tf = tf_loaded()
    tf_logits = tf["predict/class_predictions_with_background"][:, 1:]  # TF's background column first
    assert out["cls_logits"].shape[1:] == tf_logits.shape
    assert np.abs(out["cls_logits"][0].numpy() - tf_logits).max() < 1e-4
    assert np.abs(out["box_deltas"][0].numpy() - tf["predict/box_encodings"]).max() < 1e-4
    assert np.abs(tf_logits).max() > 1.0  # the comparison is not between near-zero numbers
    height, width = tf["resized_image"].shape[:2]
    anchors = out["anchors"].numpy()[:, [1, 0, 3, 2]] / np.array([height, width] * 2)
    assert np.abs(anchors - tf["predict/anchors"]).max() < 1e-5


def test_detections_equal_tensorflows():
    model, out, tf = tf_loaded()
    assert_detections_equal_tf(model, out, tf)


def test_keras_order_matches_the_layer_names_tf_wrote():
    ckpt = open_checkpoint(FOLDER / "checkpoint" / "ckpt-0")
    root = f"model/{resnet.BACKBONE_ROOT}/layer_with_weights-"
    names = {}  # layer_with_weights index -> Keras layer name, from each variable's full name
    for key, full_name in ckpt.full_names().items():
        path = ckpt.info(key).object_path
        if path.startswith(root):
            names[int(path[len(root):].split("/")[0])] = full_name.rsplit("/", 1)[0]
    expected = [name for name, _ in resnet.keras_layer_order(50)]
    assert [names[i] for i in range(len(names))] == expected
    assert expected[6:12] == ["conv2_block1_0_conv", "conv2_block1_3_conv", "conv2_block1_0_bn",
                              "conv2_block1_3_bn", "conv2_block2_1_conv", "conv2_block2_1_bn"]


def test_every_tf_variable_is_read_and_every_tensor_loaded():
    model = build(FOLDER)
    report = load_checkpoint_weights(model, FOLDER / "checkpoint" / "ckpt-0", "full")
    assert not report.missing and not report.unexpected and not report.shape_mismatch
    assert report.parts["backbone"][0] == report.parts["backbone"][1] > 250


def test_detection_type_loads_backbone_and_fpn_not_the_predictor():
    model = build(FOLDER)
    before = model.box_predictor.class_head.weight.detach().clone()
    report = load_checkpoint_weights(model, FOLDER / "checkpoint" / "ckpt-0", "detection")
    assert torch.equal(model.box_predictor.class_head.weight, before)
    assert report.parts["fpn"][0] == report.parts["fpn"][1] > 0
    assert report.parts["box_predictor"][0] == 0


def test_tf_conventions_follow_the_keras_resnet():
    model = tf_loaded()[0]
    backbone = model.feature_extractor.backbone
    first = backbone.layer2[0]
    # ResNet v1.0: the stride on the 1x1 reduce conv (Keras convN_block1_1_conv), not on the 3x3
    assert first.conv1.stride == (2, 2) and first.conv2.stride == (1, 1)
    # the stem pads 3 on each side (Keras' _fixed_padding), the max pool as TF's 'SAME'
    assert type(backbone.conv1) is KerasFixedPaddingConv2d and backbone.conv1.padding == (3, 3)
    assert type(backbone.maxpool) is TFSameMaxPool2d
    # override_base_feature_extractor_hyperparams: the conv_hyperparams' RELU_6 and epsilon 0.001
    assert isinstance(first.relu, ReLU6) and first.bn1.eps == pytest.approx(0.001)
    assert model.pixel_mean.flatten().tolist() == pytest.approx([123.68, 116.779, 103.939])
    assert model.pixel_std.flatten().tolist() == [1.0, 1.0, 1.0]


def test_a_torchvision_build_is_torchvisions():
    model = build(FOLDER, "torchvision")  # what a model given torchvision weights computes with
    backbone = model.feature_extractor.backbone
    first = backbone.layer2[0]
    assert first.conv1.stride == (1, 1) and first.conv2.stride == (2, 2)  # v1.5
    assert type(backbone.conv1) is nn.Conv2d and type(backbone.maxpool) is nn.MaxPool2d
    assert isinstance(first.relu, nn.ReLU) and first.bn1.eps == 1e-5


def test_stem_keeps_its_fixed_padding_whatever_the_order():
    backbone = ResNet(50, 0.125, 8, keras_widths=True)
    use_tf_same_padding(backbone)  # switches the stem to TF 'SAME' (2 before, 3 after on 64)...
    backbone.use_tf_conventions()  # ...which the Keras ResNet does not do: back to 3 and 3
    assert type(backbone.conv1) is KerasFixedPaddingConv2d and backbone.conv1.padding == (3, 3)
    x = torch.randn(1, 3, 64, 64)
    reference = nn.functional.conv2d(nn.functional.pad(x, (3, 3, 3, 3)), backbone.conv1.weight, stride=2)
    assert torch.allclose(backbone.conv1(x), reference)


def test_keras_widths_scale_each_conv_on_its_own():
    # Keras: max(int(c * m), min_depth) per conv; at 1/64 with min_depth 4 the stem and stage 1 are 4
    # wide, stage 1's expansion int(256 / 64) = 4 (not 4 x 4), stage 4's 2048 / 64 = 32.
    backbone = ResNet(50, 1 / 64, 4, keras_widths=True)
    assert backbone.conv1.out_channels == 4
    assert backbone.out_channels == {2: 4, 3: 8, 4: 16, 5: 32}
    assert backbone.layer1[0].downsample is not None  # Keras projects in every stage's first block
    assert ResNet(50).out_channels == ResNet(50, keras_widths=True).out_channels == {
        2: 256, 3: 512, 4: 1024, 5: 2048}


def test_a_zoo_keras_resnet_is_built_as_tfs_by_default():
    """`ssd_resnet50_v1_fpn_keras` from scratch: the Keras ResNet v1 (stride on the first 1x1)."""
    first = build(FOLDER).feature_extractor.backbone.layer2[0]
    assert first.conv1.stride == (2, 2) and first.conv2.stride == (1, 1)
