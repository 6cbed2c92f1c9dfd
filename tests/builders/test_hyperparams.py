"""builders/hyperparams.py: a conv_hyperparams block -> ConvHyperparams, each value worked out from the block
as written here and hyperparams.proto's defaults for what it leaves unset."""

from __future__ import annotations

import pytest
from tests.helpers.builders import parse

from raredet.builders.hyperparams import build_conv_hyperparams
from raredet.errors import ConfigError
from raredet.modeling.layers import ConvHyperparams
from raredet.protos import hyperparams_pb2


def test_conv_hyperparams_take_the_block_and_the_proto_defaults():
    msg = parse("""activation: RELU_6
        regularizer { l2_regularizer { weight: 0.0004 } }
        initializer { truncated_normal_initializer { stddev: 0.03 } }
        batch_norm { decay: 0.97 scale: true epsilon: 0.001 }
        force_use_bias: true""", hyperparams_pb2.Hyperparams())
    assert build_conv_hyperparams(msg) == ConvHyperparams(
        activation="RELU_6", l2_weight=0.0004, initializer="truncated_normal_initializer",
        initializer_args={"stddev": 0.03},  # mean left unset: not passed, the initializer's default applies
        use_batch_norm=True, bn_decay=0.97, bn_center=True, bn_scale=True, bn_epsilon=0.001,
        bn_train=True,  # center and train unset: their proto defaults, true
        force_use_bias=True)


def test_sync_batch_norm_reads_as_batch_norm_and_no_normalizer_means_none():
    synced = build_conv_hyperparams(parse("sync_batch_norm { decay: 0.9 train: false }",
                                          hyperparams_pb2.Hyperparams()))
    assert (synced.use_batch_norm, synced.bn_decay, synced.bn_train) == (True, 0.9, False)
    plain = build_conv_hyperparams(parse("activation: SWISH", hyperparams_pb2.Hyperparams()))
    assert (plain.activation, plain.use_batch_norm, plain.l2_weight, plain.initializer) == (
        "SWISH", False, 0.0, "")


@pytest.mark.parametrize(("text", "message"), [
    ("regularizer { l1_regularizer { } }",
     "box_predictor.conv_hyperparams.regularizer: l1_regularizer is not supported; use l2_regularizer"),
    ("group_norm { }", "box_predictor.conv_hyperparams.group_norm is not supported; use batch_norm"),
])
def test_unsupported_choices_name_the_field(text: str, message: str) -> None:
    msg = parse(text, hyperparams_pb2.Hyperparams())
    with pytest.raises(ConfigError) as err:
        build_conv_hyperparams(msg, "box_predictor.conv_hyperparams")
    assert str(err.value) == message
