"""builders/optim.py: schedules, optimizers and EMA built with the config's values; a schedule's,
optimizer's or EMA's refusal of a config value reaches the user as a ConfigError naming the field, with
the whole message as written here."""

from __future__ import annotations

import pytest
import torch
from google.protobuf import text_format
from tests.helpers.builders import parse
from torch import nn

from raredet import builders
from raredet.errors import ConfigError
from raredet.protos import optimizer_pb2, train_pb2

MOMENTUM = "momentum_optimizer {{ learning_rate {{ {rate} }} momentum_optimizer_value: {momentum} }}"
CONSTANT = "constant_learning_rate { learning_rate: 0.1 }"


def _build(text: str) -> None:
    builders.build_optimizer(text_format.Parse(text, train_pb2.TrainConfig()), nn.Linear(1, 1), {})


def _optimizer(rate: str = CONSTANT, momentum: float = 0.9, extra: str = "") -> str:
    return f"optimizer {{ {MOMENTUM.format(rate=rate, momentum=momentum)} {extra} }}"


@pytest.mark.parametrize(("rate", "message"), [
    ("exponential_decay_learning_rate { decay_steps: 0 }",
     "exponential_decay_learning_rate.decay_steps must be > 0, got 0"),
    ("manual_step_learning_rate { schedule { step: 20 } schedule { step: 10 } }",
     "manual_step_learning_rate.schedule steps must be positive and increasing, got [20, 10]"),
    ("manual_step_learning_rate { warmup: true }",
     "manual_step_learning_rate.warmup needs at least one schedule entry"),
    ("cosine_decay_learning_rate { total_steps: 10 warmup_steps: 20 }",
     "cosine_decay_learning_rate.total_steps must be positive and at least warmup_steps + "
     "hold_base_rate_steps, got 10 < 20 + 0"),
    ("cosine_decay_learning_rate { learning_rate_base: 0.01 warmup_learning_rate: 0.1 }",
     "cosine_decay_learning_rate.learning_rate_base must be >= warmup_learning_rate, got 0.01 < 0.1"),
])
def test_schedule_refusals_name_the_schedule(rate: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _build(_optimizer(rate))
    assert str(caught.value) == message


def test_optimizer_and_ema_refusals_name_the_field() -> None:
    with pytest.raises(ConfigError) as caught:
        _build(_optimizer(momentum=1.0))
    assert str(caught.value) == "momentum_optimizer_value must be in [0, 1), got 1.0"
    with pytest.raises(ConfigError) as caught:
        _build(_optimizer(extra="use_moving_average: true moving_average_decay: 1.5"))
    assert str(caught.value) == "optimizer.moving_average_decay must be in [0, 1], got 1.5"


@pytest.mark.parametrize(("field", "message"), [
    ("freeze_variables",
     "train_config.freeze_variables[1]: 'backbone[(' is not a valid regular expression (unterminated "
     "character set at position 8); escape special characters such as [ ( . with a backslash"),
    ("update_trainable_variables",
     "train_config.update_trainable_variables[1]: 'backbone[(' is not a valid regular expression "
     "(unterminated character set at position 8); escape special characters such as [ ( . with a "
     "backslash"),
])
def test_bad_variable_regex_is_a_config_error(field: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _build(f'{_optimizer()} {field}: "bias" {field}: "backbone[("')
    assert str(caught.value) == message


def test_freezing_everything_names_both_fields() -> None:
    with pytest.raises(ConfigError) as caught:
        _build(f'{_optimizer()} freeze_variables: ".*"')
    assert str(caught.value) == ("train_config.freeze_variables / update_trainable_variables leave no "
                                 "parameter to train; freeze=['.*'], update=[]")


def test_oneof_error_lists_valid_choices():
    with pytest.raises(ConfigError, match="train_config.optimizer: is not set; valid choices: "
                                          "momentum_optimizer, adam_optimizer, rms_prop_optimizer"):
        builders.build_optimizer(train_pb2.TrainConfig(), torch.nn.Linear(1, 1), {})


def test_learning_rates():
    lr = parse("manual_step_learning_rate { initial_learning_rate: 0.1 schedule { step: 5 } "
                "schedule { step: 10 learning_rate: 0.01 } }", optimizer_pb2.LearningRate())
    sched = builders.build_learning_rate(lr, "x")
    assert [sched(s) for s in (0, 5, 10)] == pytest.approx([0.1, 0.002, 0.01])  # 0.002: proto default
    lr = parse("cosine_decay_learning_rate { learning_rate_base: 1.0 total_steps: 10 warmup_steps: 0 }",
                optimizer_pb2.LearningRate())
    assert builders.build_learning_rate(lr, "x")(5) == pytest.approx(0.5)


def test_optimizer_fields_freeze_and_ema():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 1), torch.nn.Conv2d(1, 1, 1))
    tc = parse("""optimizer { rms_prop_optimizer { learning_rate { constant_learning_rate { } }
                     decay: 0.8 epsilon: 0.5 momentum_optimizer_value: 0.7 } }
                   freeze_variables: "^0\\\\." """, train_pb2.TrainConfig())
    opt, sched, ema = builders.build_optimizer(tc, model, {"1.weight": 0.01})
    assert isinstance(opt, torch.optim.RMSprop)
    fields = (opt.defaults["alpha"], opt.defaults["eps"], opt.defaults["momentum"])
    assert fields == pytest.approx((0.8, 0.5, 0.7))
    assert sched(123) == pytest.approx(0.002)
    decays = {n: g["weight_decay"] for g in opt.param_groups for n in g["param_names"]}
    assert decays == {"1.bias": 0.0, "1.weight": pytest.approx(0.01)}
    assert ema is not None and ema.decay == pytest.approx(0.9999)  # use_moving_average defaults to true
    tc.add_regularization_loss = False
    opt, _, _ = builders.build_optimizer(tc, model, {"1.weight": 0.01})
    assert all(g["weight_decay"] == 0.0 for g in opt.param_groups)
