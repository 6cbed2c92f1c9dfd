"""conv_hyperparams (as builders.hyperparams reads it), initialisers, batch-norm settings and L2 weights."""

import math

import pytest
import torch
from tests.helpers.ssd import conv_hyperparams
from torch import nn

from raredet.errors import ConfigError
from raredet.modeling.layers import ConvNormAct, l2_weights_of


def test_defaults_are_the_tf_od_api_ones():
    hp = conv_hyperparams({})
    assert (hp.activation, hp.l2_weight, hp.use_batch_norm) == ("RELU", 0.0, False)
    bn = conv_hyperparams({"batch_norm": {}})
    assert (bn.bn_decay, bn.bn_center, bn.bn_scale, bn.bn_epsilon, bn.bn_train) == (
        0.999,
        True,
        False,
        0.001,
        True,
    )
    assert conv_hyperparams({"regularizer": {"l2_regularizer": {}}}).l2_weight == 1.0


def test_batch_norm_settings():
    hp = conv_hyperparams({"batch_norm": {"decay": 0.97, "epsilon": 0.01}})
    bn = hp.norm(8, freeze_batchnorm=False)
    assert bn.momentum == pytest.approx(0.03) and bn.eps == pytest.approx(0.01)
    assert not bn.weight.requires_grad and bn.bias.requires_grad  # scale: false -> gamma fixed at 1
    conv = hp.conv(4, 8, 3)
    assert conv.bias is None  # batch norm supplies the shift
    assert conv_hyperparams({}).conv(4, 8, 3).bias is not None


@pytest.mark.parametrize(
    ("initializer", "expected_std"),
    [
        ({"random_normal_initializer": {"stddev": 0.05}}, 0.05),
        # A normal truncated at +-2 sigma has std 0.8796 sigma.
        ({"truncated_normal_initializer": {"stddev": 0.1}}, 0.1 * 0.8796),
        # Keras variance scaling, fan_in = 64 * 3 * 3: std sqrt(2 / 576).
        ({"variance_scaling_initializer": {"factor": 2.0}}, math.sqrt(2 / 576)),
        (
            {"variance_scaling_initializer": {"factor": 1.0, "uniform": True, "mode": "FAN_OUT"}},
            math.sqrt(1 / 1152),
        ),
    ],
)
def test_initializers_give_the_stated_spread(initializer, expected_std):
    torch.manual_seed(0)
    conv = conv_hyperparams({"initializer": initializer}).conv(64, 128, 3)
    assert conv.weight.std().item() == pytest.approx(expected_std, rel=0.03)
    assert conv.bias is not None and conv.bias.abs().sum() == 0


def test_activations():
    x = torch.tensor([-1.0, 3.0, 8.0])
    acts = {
        name: conv_hyperparams({"activation": name}).act()(x) for name in ("NONE", "RELU", "RELU_6")
    }
    assert (
        acts["NONE"].tolist() == [-1, 3, 8]
        and acts["RELU"].tolist() == [0, 3, 8]
        and acts["RELU_6"].tolist() == [0, 3, 6]
    )
    swish = conv_hyperparams({"activation": "SWISH"}).act()(x)
    torch.testing.assert_close(swish, x * torch.sigmoid(x))


def test_bad_hyperparams_name_the_field():
    with pytest.raises(ConfigError, match=r"^box_predictor.conv_hyperparams.regularizer: l1_regularizer"):
        conv_hyperparams({"regularizer": {"l1_regularizer": {}}}, "box_predictor.conv_hyperparams")
    with pytest.raises(ConfigError, match=r"^conv_hyperparams.group_norm is not supported; use batch_norm"):
        conv_hyperparams({"group_norm": {}})


def test_l2_weights_cover_conv_kernels_only():
    hp = conv_hyperparams({"regularizer": {"l2_regularizer": {"weight": 0.5}}, "batch_norm": {}})
    # TF OD API FPN rule (Keras SeparableConv2D with kernel_* remapped to depthwise_* only): the
    # depthwise kernel (0.0) is regularised, the pointwise one (0.1) is not; BN (1) never.
    block = nn.Sequential(ConvNormAct(hp, 4, 8, 3, depthwise=True))
    assert l2_weights_of(block, "head") == {"head.0.0.weight": 0.5}
    # SSD extra-layer rule: the other way round. regularize_depthwise plays no part (Keras ignores it).
    block = nn.Sequential(ConvNormAct(hp, 4, 8, 3, depthwise=True, depthwise_hp=False, pointwise_hp=True))
    assert l2_weights_of(block) == {"0.1.weight": 0.5}
    assert l2_weights_of(nn.Sequential(ConvNormAct(hp, 4, 8, 3))) == {"0.0.weight": 0.5}


def test_kernels_without_hyperparams_take_keras_glorot_uniform():
    torch.manual_seed(0)
    hp = conv_hyperparams({"initializer": {"random_normal_initializer": {"stddev": 1e-4}}})
    depthwise, pointwise = hp.separable(64, 32, 3, depthwise_hp=False, pointwise_hp=False)
    # Keras fans: depthwise kernel [3, 3, 64, 1] -> fan_in 576, fan_out 9; pointwise [1, 1, 64, 32].
    for conv, limit in ((depthwise, math.sqrt(6 / (576 + 9))), (pointwise, math.sqrt(6 / (64 + 32)))):
        assert conv.weight.abs().max().item() <= limit
        assert conv.weight.abs().max().item() > 0.95 * limit  # uniform fills the range
    assert l2_weights_of(nn.Sequential(depthwise, pointwise)) == {}


def test_variance_scaling_on_a_depthwise_kernel_uses_keras_fan_in():
    torch.manual_seed(0)
    hp = conv_hyperparams({"initializer": {"variance_scaling_initializer": {"factor": 2.0}}})
    depthwise = hp.conv(256, 256, 3, groups=256)
    # Keras reads the kernel [3, 3, 256, 1]: fan_in = 3 * 3 * 256 (torch would say 9).
    assert depthwise.weight.std().item() == pytest.approx(math.sqrt(2 / 2304), rel=0.03)


def test_training_batch_norm_accepts_a_single_value_per_channel():
    bn = conv_hyperparams({"batch_norm": {"scale": True}}).norm(4, freeze_batchnorm=False).train()
    x = torch.full((1, 4, 1, 1), 3.0)
    # Running stats are mean 0, var 1 at start: the value passes through (up to epsilon).
    torch.testing.assert_close(bn(x), x / math.sqrt(1 + 0.001))
    assert bn(torch.randn(2, 4, 1, 1)).shape == (2, 4, 1, 1)


def test_in_place_relu6_gradient_reuses_the_activation_and_a_second_backward_fails_loudly():
    from raredet.modeling.layers import ReLU6

    x = torch.tensor([-1.0, 2.0, 7.0, 3.0, 0.5], requires_grad=True)
    y = ReLU6(inplace=True)(x * 2)  # pre-activations -2, 4, 14, 6, 1: only 4 and 1 lie strictly inside
    weights = torch.tensor([1.0, 10.0, 100.0, 1000.0, 10000.0])
    (y * weights).sum().backward(retain_graph=True)
    assert x.grad is not None and x.grad.tolist() == [0.0, 20.0, 0.0, 0.0, 20000.0]  # 2 * weight inside
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        (y * weights).sum().backward()  # the activation's memory now holds its gradient

    base = torch.tensor([[-1.0, 2.0], [7.0, 3.0]], requires_grad=True) * 1.0
    view = base[:, 1]  # a view: the backward must leave the base's storage alone
    out = ReLU6(inplace=True)(view)
    (out * torch.tensor([1.0, 10.0])).sum().backward()
    assert base.tolist() == [[-1.0, 2.0], [7.0, 3.0]]
