"""Backbones: torchvision's names and shapes, strides, widths, frozen batch norm."""

import pytest
import torch

from raredet.modeling.backbones import MobileNetV1, MobileNetV2, ResNet, mobilenet_v2_last_depth, scaled_depth
from raredet.modeling.layers import FrozenBatchNorm2d

# torchvision's documented parameter counts (resnet18 11,689,512 ...) minus the ImageNet classifier:
# fc is 512*1000 + 1000 (BasicBlock) or 2048*1000 + 1000 (Bottleneck); MobileNetV2's is 1280*1000 + 1000.
TORCHVISION_COUNTS = [
    (lambda: ResNet(18), 11_689_512 - 513_000),
    (lambda: ResNet(34), 21_797_672 - 513_000),
    (lambda: ResNet(50), 25_557_032 - 2_049_000),
    (lambda: ResNet(152), 60_192_808 - 2_049_000),
    (lambda: MobileNetV2(), 3_504_872 - 1_281_000),
]


@pytest.mark.parametrize(("make", "expected"), TORCHVISION_COUNTS)
def test_parameter_counts_match_torchvision(make, expected):
    assert sum(p.numel() for p in make().parameters()) == expected


def test_resnet_names_and_shapes():
    shapes = {k: tuple(v.shape) for k, v in ResNet(50).state_dict().items()}
    assert shapes["conv1.weight"] == (64, 3, 7, 7)
    assert shapes["layer1.0.downsample.0.weight"] == (256, 64, 1, 1)
    assert shapes["layer2.0.conv2.weight"] == (128, 128, 3, 3)  # v1.5: stride on the 3x3
    assert shapes["layer4.2.conv3.weight"] == (2048, 512, 1, 1)
    assert shapes["layer3.5.bn3.running_var"] == (1024,)
    assert "layer1.0.bn1.num_batches_tracked" in shapes
    assert not any(k.startswith("fc") for k in shapes)


def test_mobilenet_names_and_shapes():
    shapes = {k: tuple(v.shape) for k, v in MobileNetV2().state_dict().items()}
    assert shapes["features.0.0.weight"] == (32, 3, 3, 3)
    assert shapes["features.1.conv.0.0.weight"] == (32, 1, 3, 3)  # t=1: depthwise first
    assert shapes["features.1.conv.1.weight"] == (16, 32, 1, 1)
    assert shapes["features.2.conv.0.0.weight"] == (96, 16, 1, 1)
    assert shapes["features.2.conv.3.running_mean"] == (24,)
    assert shapes["features.17.conv.2.weight"] == (320, 960, 1, 1)
    assert shapes["features.18.0.weight"] == (1280, 320, 1, 1)


def test_levels_have_strides_4_to_32():
    x = torch.zeros(1, 3, 64, 96)
    for model in (ResNet(18, 0.25), MobileNetV2(0.35)):
        out = model.eval()(x)
        assert {lv: tuple(t.shape[-2:]) for lv, t in out.items()} == {
            2: (16, 24),
            3: (8, 12),
            4: (4, 6),
            5: (2, 3),
        }
        assert {lv: t.shape[1] for lv, t in out.items()} == model.out_channels


def test_scaled_depth_rounding():
    assert [scaled_depth(c, 0.25, 8) for c in (64, 128, 256, 512)] == [16, 32, 64, 128]
    assert [scaled_depth(c, 0.125, 16) for c in (64, 128, 256, 512)] == [16, 16, 32, 64]
    assert scaled_depth(32, 0.35, 8) == 16  # 11.2 rounds to 8, < 90% of 11.2, so up to 16
    assert scaled_depth(1280, 1.0) == 1280
    assert ResNet(18, 0.25, 8).out_channels == {2: 16, 3: 32, 4: 64, 5: 128}


def test_frozen_batchnorm_uses_running_stats_and_does_not_train():
    model = ResNet(18, 0.25, freeze_batchnorm=True)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(isinstance(m, FrozenBatchNorm2d) for m in bns)
    assert all(not m.weight.requires_grad and not m.bias.requires_grad for m in bns)
    x = torch.randn(2, 3, 32, 32)
    before = bns[0].running_mean.clone()
    train_out = model.train()(x)[5]
    eval_out = model.eval()(x)[5]
    torch.testing.assert_close(train_out, eval_out)
    assert torch.equal(bns[0].running_mean, before)


def test_mobilenet_v1_matches_keras_mobilenet_count():
    # Keras documents MobileNet (alpha 1.0, 224) at 4,253,864 parameters: that counts the classifier
    # (a 1x1 conv 1024 -> 1000 with bias: 1,025,000) and the batch norms' moving mean and variance,
    # which are buffers here. Batch-normalised channels: 32 after the stem, then each block's depthwise
    # (its input width) and pointwise (its output width).
    widths = [32, 64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024]
    bn_channels = 32 + sum(c_in + c_out for c_in, c_out in zip(widths[:-1], widths[1:], strict=True))
    expected = 4_253_864 - 1_025_000 - 2 * bn_channels
    assert sum(p.numel() for p in MobileNetV1().parameters()) == expected


def test_mobilenet_v1_names_levels_and_widths():
    model = MobileNetV1()
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes["stem.0.weight"] == (32, 3, 3, 3)
    assert shapes["blocks.0.depthwise.0.weight"] == (32, 1, 3, 3)  # Keras conv_dw_1
    assert shapes["blocks.0.pointwise.0.weight"] == (64, 32, 1, 1)  # Keras conv_pw_1
    assert shapes["blocks.12.pointwise.1.running_var"] == (1024,)
    assert model.out_channels == {2: 128, 3: 256, 4: 512, 5: 1024}
    out = model.eval()(torch.zeros(1, 3, 64, 96))
    assert {lv: tuple(t.shape[-2:]) for lv, t in out.items()} == {
        2: (16, 24),
        3: (8, 12),
        4: (4, 6),
        5: (2, 3),
    }
    # TF OD API widths: max(int(c * multiplier), min_depth), no rounding to 8; FPN-lite narrows the top.
    narrow = MobileNetV1(0.3, min_depth=16, top_depths=(512, 256))
    assert narrow.out_channels == {2: 38, 3: 76, 4: 153, 5: 76}
    assert narrow.stem[0].out_channels == 16  # int(32 * 0.3) = 9 -> min_depth


def test_mobilenet_v2_last_conv_width_is_the_tf_od_apis():
    # Keras (the *_keras extractors): the layer override sets Conv_1 to 1280 and scales it only by a
    # multiplier below 1, make_divisible(1280 * a, 8): 0.5 -> 640, 0.35 -> 448, 0.75 -> 960; 1.4 -> 1280.
    widths = [mobilenet_v2_last_depth(a, 16) for a in (1.0, 0.5, 0.35, 0.75, 1.4)]
    assert widths == [1280, 640, 448, 960, 1280]
    assert mobilenet_v2_last_depth(0.01, 16) == 16  # 12.8 -> 16 (rounding), then the min_depth floor
    assert mobilenet_v2_last_depth(0.001, 24) == 24  # 1.28 -> 8 -> min_depth 24
    # TF1 slim: V2_DEF's last op scaled by any multiplier; the FPN-lite narrowing makes it 256 first.
    assert mobilenet_v2_last_depth(1.4, 16, keras=False) == 1792  # 1280 * 1.4
    assert mobilenet_v2_last_depth(1.0, 16, keras=False, narrow=True) == 256
    assert mobilenet_v2_last_depth(0.5, 16, keras=False, narrow=True) == 128
    model = MobileNetV2(0.5, 16, last_depth=mobilenet_v2_last_depth(0.5, 16))
    assert model.out_channels[5] == 640 and model.features[18][0].weight.shape == (640, 160, 1, 1)
