"""Optimizer, learning-rate schedule and EMA from `train_config.optimizer`."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from google.protobuf.message import Message
from torch import nn

from raredet.builders.messages import message_kwargs, oneof_choice, refused_as_config_error
from raredet.engine import optim
from raredet.protos import train_pb2

LEARNING_RATES: dict[str, Callable[..., optim.LearningRateSchedule]] = {
    "constant_learning_rate": optim.ConstantLearningRate,
    "exponential_decay_learning_rate": optim.ExponentialDecayLearningRate,
    "manual_step_learning_rate": optim.ManualStepLearningRate,
    "cosine_decay_learning_rate": optim.CosineDecayLearningRate,
}


OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "momentum_optimizer": optim.momentum_optimizer,
    "adam_optimizer": optim.adam_optimizer,
    "rms_prop_optimizer": optim.rms_prop_optimizer,
}


def build_learning_rate(msg: Message, where: str) -> optim.LearningRateSchedule:
    name, make, sub = oneof_choice(msg, "learning_rate", LEARNING_RATES, where)
    kwargs = message_kwargs(sub)
    if name == "manual_step_learning_rate":
        kwargs["schedule"] = list(sub.schedule)  # entries keep their default learning_rate
    with refused_as_config_error(name):
        return make(**kwargs)


def build_optimizer(
    train_config: train_pb2.TrainConfig, model: nn.Module, l2_weights: Mapping[str, float]
) -> tuple[torch.optim.Optimizer, optim.LearningRateSchedule, optim.ModelEma | None]:
    """Optimizer over the trainable parameters (weight decay per L2 map), its schedule, and EMA."""
    where = "train_config.optimizer"
    name, make, sub = oneof_choice(train_config.optimizer, "optimizer", OPTIMIZERS, where)
    with refused_as_config_error("train_config"):
        params = optim.trainable_parameters(
            model, list(train_config.freeze_variables), list(train_config.update_trainable_variables)
        )
    # add_regularization_loss: false drops the L2 terms, as the TF OD API leaves them out of the loss.
    groups = optim.weight_decay_groups(params, l2_weights if train_config.add_regularization_loss else {})
    with refused_as_config_error(""):  # momentum_optimizer_value, named by the optimizer
        optimizer = make(groups, **message_kwargs(sub, skip=("learning_rate",)))
    schedule = build_learning_rate(sub.learning_rate, f"{where}.{name}.learning_rate")
    opt_msg = train_config.optimizer
    ema = None
    if opt_msg.use_moving_average:
        with refused_as_config_error("optimizer"):
            ema = optim.ModelEma(model, opt_msg.moving_average_decay)
    return optimizer, schedule, ema
