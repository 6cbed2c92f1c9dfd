"""`conv_hyperparams` (a TF OD API `Hyperparams` message) -> `modeling.layers.ConvHyperparams`, as the
TF OD API's hyperparams_builder reads it: an unset field takes the message's default."""

from __future__ import annotations

from raredet.builders.messages import _enum_name, field_value, message_kwargs
from raredet.errors import ConfigError
from raredet.modeling.layers import ACTIVATIONS, ConvHyperparams
from raredet.protos import hyperparams_pb2


def build_conv_hyperparams(msg: hyperparams_pb2.Hyperparams,
                           where: str = "conv_hyperparams") -> ConvHyperparams:
    """The parts of `msg` raredet acts on; `where` names the field in error messages."""
    activation = _enum_name(msg, "activation")
    if activation not in ACTIVATIONS:
        raise ConfigError(f"{where}.activation: unknown {activation!r}; valid: {sorted(ACTIVATIONS)}")
    regularizer = msg.regularizer.WhichOneof("regularizer_oneof")
    if regularizer == "l1_regularizer":
        raise ConfigError(f"{where}.regularizer: l1_regularizer is not supported; use l2_regularizer")
    initializer = msg.initializer.WhichOneof("initializer_oneof")
    norm = msg.WhichOneof("normalizer_oneof")
    if norm == "group_norm":
        raise ConfigError(f"{where}.group_norm is not supported; use batch_norm")
    bn = getattr(msg, norm) if norm is not None else hyperparams_pb2.BatchNorm()
    return ConvHyperparams(
        activation=activation,
        l2_weight=field_value(msg.regularizer.l2_regularizer, "weight") if regularizer else 0.0,
        initializer=initializer or "",
        initializer_args=message_kwargs(getattr(msg.initializer, initializer)) if initializer else {},
        use_batch_norm=norm is not None,
        bn_decay=field_value(bn, "decay"),
        bn_center=bn.center,
        bn_scale=bn.scale,
        bn_epsilon=field_value(bn, "epsilon"),
        bn_train=bn.train,
        force_use_bias=msg.force_use_bias,
    )
