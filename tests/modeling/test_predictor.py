"""The box predictors: the output layout matches the anchor order, the class bias init, the shared
tower, per-level shapes; a tower without depth is a config error."""

import math

import torch
from tests.helpers.ssd import conv_hyperparams

from raredet.modeling.anchors import MultiscaleAnchorGenerator
from raredet.modeling.predictor import (
    ConvolutionalBoxPredictor,
    WeightSharedConvolutionalBoxPredictor,
)

HP = conv_hyperparams({"batch_norm": {"scale": True}, "activation": "RELU_6"})


def _position_maps(sizes):
    """One channel per level whose value at (y, x) is 1000 * level + 10 * y + x."""
    return [
        (1000 * i + 10 * torch.arange(h)[:, None] + torch.arange(w)[None, :]).float()[None, None]
        for i, (h, w) in enumerate(sizes)
    ]


def test_weight_shared_layout_matches_anchor_order():
    n, k = 2, 3
    pred = WeightSharedConvolutionalBoxPredictor(k, n, [1, 1], HP, kernel_size=1)
    with torch.no_grad():
        pred.box_head.weight.fill_(1.0)
        pred.box_head.bias.copy_(torch.arange(n * 4, dtype=torch.float32))
        pred.class_head.weight.fill_(0.0)
        pred.class_head.bias.copy_(torch.arange(n * k, dtype=torch.float32))
    sizes = [(2, 3), (1, 2)]
    cls, box = pred(_position_maps(sizes))
    anchors = MultiscaleAnchorGenerator(3, 4, 1.0, [1.0, 2.0], 1)((16, 24), sizes)
    assert box.shape == (1, len(anchors), 4) and cls.shape == (1, len(anchors), k)
    # Anchor order: level, row, column, anchor in cell -> entry = position value + a * 4 + coordinate.
    i = 0
    for level, (h, w) in enumerate(sizes):
        for y in range(h):
            for x in range(w):
                for a in range(n):
                    expected = 1000 * level + 10 * y + x + a * 4 + torch.arange(4.0)
                    torch.testing.assert_close(box[0, i], expected)
                    torch.testing.assert_close(cls[0, i], a * k + torch.arange(float(k)))
                    i += 1


def test_class_bias_init_and_shared_tower():
    pred = WeightSharedConvolutionalBoxPredictor(
        4,
        6,
        [8] * 3,
        HP,
        num_layers_before_predictor=2,
        depth=8,
        class_prediction_bias_init=-math.log((1 - 0.01) / 0.01),  # sigmoid(b) = 0.01 (Lin et al. 2017, 4.1)
        share_prediction_tower=True,
    ).eval()
    cls, _ = pred([torch.zeros(1, 8, s, s) for s in (4, 2, 1)])
    # With zero input and conv without bias before BN (running stats 0/1, beta 0), logits = the bias.
    torch.testing.assert_close(torch.sigmoid(cls), torch.full_like(cls, 0.01))
    assert pred.class_tower is None
    assert len(pred.box_tower.norms) == 3  # one set of batch norms per level, shared convs


def test_convolutional_predictor_per_level_shapes():
    pred = ConvolutionalBoxPredictor(5, 6, [16, 8], HP, kernel_size=3, use_depthwise=True).eval()
    cls, box = pred([torch.zeros(2, 16, 4, 4), torch.zeros(2, 8, 2, 2)])
    assert cls.shape == (2, (16 + 4) * 6, 5) and box.shape == (2, (16 + 4) * 6, 4)


def test_tower_without_depth_is_refused():
    import pytest

    with pytest.raises(ValueError, match="depth must be positive"):
        WeightSharedConvolutionalBoxPredictor(2, 6, [8, 8], HP, num_layers_before_predictor=2)
