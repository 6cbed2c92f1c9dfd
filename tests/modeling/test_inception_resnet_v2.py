"""Inception-ResNet v2 as the TF OD API's faster_rcnn_inception_resnet_v2_keras extractor: parameter
counts, output shapes and outputs (with the same weights) equal to TF's, its scale-less batch norm and
its 'SAME' paddings by hand."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from tests.helpers.inception_resnet_v2 import PARITY, set_tf_fixture_weights

from raredet.modeling.inception_resnet_v2 import BatchNormNoScale, ConvBN, InceptionResnetV2

# tests/fixtures/inception_resnet_v2/make_counts.py, run with TF 2.15.1 and the TF OD API:
# FasterRCNNInceptionResnetV2KerasFeatureExtractor(is_training=True, first_stage_features_stride=16,
# batch_norm_trainable=False), its Keras model's trainable_variables / non_trainable_variables and its
# proposal / box-classifier models' trainable variables.
TF_TRAINABLE = 54_276_192  # conv kernels, the residual 1x1 convs' biases, batch-norm betas
TF_NON_TRAINABLE = 60_544  # batch-norm moving means and variances
TF_FIRST_STAGE_TRAINABLE = 26_855_264
TF_SECOND_STAGE_TRAINABLE = 27_420_928
FIRST_STAGE_MODULES = ("stem", "mixed_5b", "block35", "mixed_6a", "block17")


@pytest.fixture(scope="module")
def network() -> InceptionResnetV2:
    torch.manual_seed(0)
    return InceptionResnetV2().eval()


def test_parameter_counts_equal_tf(network):
    params = dict(network.named_parameters())
    assert sum(p.numel() for p in params.values()) == TF_TRAINABLE
    first = sum(p.numel() for n, p in params.items() if n.split(".")[0] in FIRST_STAGE_MODULES)
    assert first == TF_FIRST_STAGE_TRAINABLE
    assert TF_TRAINABLE - first == TF_SECOND_STAGE_TRAINABLE
    stats = sum(b.numel() for n, b in network.named_buffers() if n.endswith(("running_mean", "running_var")))
    assert stats == TF_NON_TRAINABLE


@pytest.mark.parametrize(("size", "cells"), [(64, 4), (100, 7)])  # TF's block17_20_ac shapes (same script)
def test_first_stage_is_stride_16_same_padded(network, size, cells):
    with torch.no_grad():
        out = network.proposal_features(torch.zeros(1, 3, size, size))
    assert out.shape == (1, 1088, cells, cells)


@pytest.mark.parametrize(("crop", "cells"), [(17, 9), (14, 7)])  # TF's conv_7b_ac shapes (same script)
def test_second_stage_on_crops(network, crop, cells):
    with torch.no_grad():
        out = network.box_classifier_features(torch.zeros(1, 1088, crop, crop))
    assert out.shape == (1, 1536, cells, cells)
    assert (out >= 0).all()  # conv_7b_ac: ReLU


def test_batch_norm_has_no_scale_and_frozen_uses_moving_statistics():
    bn = BatchNormNoScale(1, frozen=True).train()
    assert [n for n, _ in bn.named_parameters()] == ["bias"]  # TF's beta only (scale=False)
    bn.running_mean.fill_(1.0)
    bn.running_var.fill_(4.0)
    with torch.no_grad():
        bn.bias.fill_(0.5)
    x = torch.tensor([3.0, 5.0]).reshape(2, 1, 1, 1)
    out = bn(x).flatten()
    # (x - 1) / sqrt(4 + 0.001) + 0.5, the moving statistics even in training; the statistics unchanged
    expected = [(3 - 1) / math.sqrt(4.001) + 0.5, (5 - 1) / math.sqrt(4.001) + 0.5]
    assert out.tolist() == pytest.approx(expected, rel=1e-6)
    assert bn.running_mean.item() == 1.0
    out.sum().backward()
    assert bn.bias.grad is not None and bn.bias.grad.item() == pytest.approx(2.0)  # beta trains (TF)


def test_trainable_batch_norm_uses_the_batch_and_updates_with_decay_0_9997():
    bn = BatchNormNoScale(1, frozen=False).train()
    x = torch.tensor([1.0, 3.0]).reshape(2, 1, 1, 1)
    out = bn(x).flatten()
    # batch mean 2, biased variance 1: (x - 2) / sqrt(1.001)
    assert out.tolist() == pytest.approx([-1 / math.sqrt(1.001), 1 / math.sqrt(1.001)], rel=1e-6)
    # moving mean: 0.9997 * 0 + 0.0003 * 2 (torch updates with the unbiased variance 2)
    assert bn.running_mean.item() == pytest.approx(0.0006)
    assert bn.running_var.item() == pytest.approx(0.9997 + 0.0003 * 2.0)


def test_stride_2_conv_pads_after_only_as_tf_same():
    # 4x4 input, 3x3 kernel of ones, stride 2: TF's 'SAME' pads 0 before and 1 after, so output (0, 0)
    # sums rows/cols 0..2 and output (1, 1) rows/cols 2..3 (the padding row/col is 0)
    layer = ConvBN(1, 1, 3, frozen=True, stride=2).eval()
    with torch.no_grad():
        layer[0].weight.fill_(1.0)
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    out = layer(x)[0, 0] * math.sqrt(1.001)  # undo the batch norm's 1 / sqrt(1 + eps)
    expected = [0 + 1 + 2 + 4 + 5 + 6 + 8 + 9 + 10, 2 + 3 + 6 + 7 + 10 + 11,
                8 + 9 + 10 + 12 + 13 + 14, 10 + 11 + 14 + 15]
    assert out.flatten().tolist() == pytest.approx(expected)


def test_average_pool_branch_averages_inside_the_map_only(network):
    pool = network.mixed_5b.branches[3][0]  # Keras AveragePooling2D(3, 1, 'same'): padding not counted
    x = torch.arange(9.0).reshape(1, 1, 3, 3)
    out = pool(x)[0, 0]
    assert out[0, 0].item() == pytest.approx((0 + 1 + 3 + 4) / 4)
    assert out[1, 1].item() == pytest.approx(sum(range(9)) / 9)


@pytest.fixture(scope="module")
def parity() -> dict:
    return json.loads(PARITY.read_text())["extractor"]


@pytest.fixture(scope="module")
def tf_weighted(parity) -> InceptionResnetV2:
    network = InceptionResnetV2().eval()
    assert set_tf_fixture_weights(network) == parity["layers"]  # 448 layers, the same count as Keras'
    return network


def _every_8th_channel(out: torch.Tensor) -> np.ndarray:
    return out[0, ::8].permute(1, 2, 0).numpy()  # NCHW -> [H, W, C / 8], as the fixture stores NHWC


@pytest.mark.parametrize("case", [0, 1], ids=["64px", "100px"])
def test_first_stage_equals_tensorflow(tf_weighted, parity, case):
    expected = parity["first_stage"][case]
    size = expected["size"]
    x = np.random.default_rng(expected["seed"]).uniform(-1.0, 1.0, (1, size, size, 3)).astype(np.float32)
    with torch.no_grad():
        out = tf_weighted.proposal_features(torch.from_numpy(x).permute(0, 3, 1, 2))
    assert list(out.permute(0, 2, 3, 1).shape) == expected["shape"]
    np.testing.assert_allclose(_every_8th_channel(out), np.array(expected["every_8th_channel"]), atol=1e-5)


@pytest.mark.parametrize("case", [0, 1], ids=["5px", "17px"])
def test_second_stage_equals_tensorflow(tf_weighted, parity, case):
    expected = parity["second_stage"][case]
    crop = expected["crop"]
    x = 0.5 * np.random.default_rng(expected["seed"]).standard_normal((1, crop, crop, 1088))
    x = x.astype(np.float32)
    with torch.no_grad():
        out = tf_weighted.box_classifier_features(torch.from_numpy(x).permute(0, 3, 1, 2))
    assert list(out.permute(0, 2, 3, 1).shape) == expected["shape"]
    np.testing.assert_allclose(_every_8th_channel(out), np.array(expected["every_8th_channel"]), atol=1e-5)
