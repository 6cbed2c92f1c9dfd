"""Schedules, optimizers, parameter groups and EMA against hand-computed values."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from raredet.engine import optim


def test_constant():
    assert optim.ConstantLearningRate(0.3)(12345) == 0.3


@pytest.mark.parametrize(
    ("kwargs", "step", "expected"),
    [
        ({}, 0, 0.1),
        ({}, 9, 0.1),
        ({}, 10, 0.05),
        ({}, 25, 0.025),
        ({"staircase": False}, 5, 0.1 * math.sqrt(0.5)),
        ({"burnin_steps": 5, "burnin_learning_rate": 0.01}, 3, 0.01),
        ({"burnin_steps": 5, "burnin_learning_rate": 0.01}, 5, 0.1),
        ({"burnin_steps": 5, "burnin_learning_rate": 0.01}, 15, 0.05),
        ({"burnin_steps": 5}, 2, 0.1),  # burnin rate 0 means the initial rate
        ({"min_learning_rate": 0.03}, 30, 0.03),
    ],
)
def test_exponential_decay(kwargs, step, expected):
    sched = optim.ExponentialDecayLearningRate(
        initial_learning_rate=0.1, decay_steps=10, decay_factor=0.5, **kwargs
    )
    assert sched(step) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("warmup", "step", "expected"),
    [(False, 0, 0.002), (False, 9, 0.002), (False, 10, 0.01), (False, 19, 0.01), (False, 20, 0.001),
     (True, 0, 0.002), (True, 5, 0.006), (True, 10, 0.01), (True, 25, 0.001)],
)
def test_manual_step(warmup, step, expected):
    sched = optim.ManualStepLearningRate(
        initial_learning_rate=0.002,
        schedule=[{"step": 10, "learning_rate": 0.01}, (20, 0.001)],
        warmup=warmup,
    )
    assert sched(step) == pytest.approx(expected)


def test_manual_step_rejects_unsorted():
    with pytest.raises(ValueError, match="increasing"):
        optim.ManualStepLearningRate(schedule=[(20, 0.1), (10, 0.2)])


@pytest.mark.parametrize(
    ("step", "expected"),
    [(0, 0.1), (5, 0.55), (10, 1.0), (20, 1.0), (60, 0.5), (100, 0.0), (101, 0.0)],
)
def test_cosine_with_warmup_and_hold(step, expected):
    sched = optim.CosineDecayLearningRate(
        learning_rate_base=1.0, total_steps=100, warmup_learning_rate=0.1, warmup_steps=10,
        hold_base_rate_steps=10,
    )
    assert sched(step) == pytest.approx(expected, abs=1e-12)


def test_cosine_plain():
    sched = optim.CosineDecayLearningRate(learning_rate_base=1.0, total_steps=100, warmup_steps=0,
                                          warmup_learning_rate=0.0)
    assert sched(0) == pytest.approx(1.0)
    assert sched(50) == pytest.approx(0.5)
    assert sched(25) == pytest.approx(0.5 * (1 + math.sqrt(0.5)))


def test_cosine_rejects_short_total():
    with pytest.raises(ValueError, match="total_steps"):
        optim.CosineDecayLearningRate(total_steps=10, warmup_steps=20)


def test_momentum_matches_hand_update():
    w = nn.Parameter(torch.tensor([1.0]))
    opt = optim.momentum_optimizer([{"params": [w]}], momentum_optimizer_value=0.9)
    optim.set_learning_rate(opt, 0.1)
    for _ in range(2):  # loss = w -> gradient 1: v1 = -0.1, w = 0.9; v2 = -0.19, w = 0.71
        opt.zero_grad()
        w.sum().backward()
        opt.step()
    assert w.item() == pytest.approx(0.71)


def test_momentum_applies_each_steps_rate_to_its_own_gradient_as_keras_does():
    """Keras: v = m v - lr g, w += v. Rates 0.1 then 0.3, gradients 1 then 2 (loss = w, then 2 w),
    m = 0.9: v1 = -0.1; v2 = 0.9 * -0.1 - 0.3 * 2 = -0.69; w = 1 - 0.1 - 0.69 = 0.21. (torch's SGD, TF1's
    rule, would give b2 = 0.9 + 2 = 2.9 and w = 1 - 0.1 - 0.87 = 0.03.)"""
    w = nn.Parameter(torch.tensor([1.0]))
    opt = optim.momentum_optimizer([{"params": [w]}], momentum_optimizer_value=0.9)
    for lr, scale in ((0.1, 1.0), (0.3, 2.0)):
        optim.set_learning_rate(opt, lr)
        opt.zero_grad()
        (scale * w).sum().backward()
        opt.step()
    assert w.item() == pytest.approx(0.21)
    assert opt.state[w]["velocity"].item() == pytest.approx(-0.69)


def test_momentum_weight_decay_is_the_l2_gradient_and_state_resumes_exactly():
    """weight_decay d adds d w to the gradient (the gradient of 0.5 d w^2): w = 2, d = 0.5, loss = 0:
    g = 1, v1 = -0.1 * 1, w = 1.9; a copy restored from the state dict takes the same second step."""
    w = nn.Parameter(torch.tensor([2.0]))
    opt = optim.momentum_optimizer([{"params": [w], "weight_decay": 0.5}], momentum_optimizer_value=0.9)
    optim.set_learning_rate(opt, 0.1)
    (0 * w).sum().backward()
    opt.step()
    assert w.item() == pytest.approx(1.9)
    w2 = nn.Parameter(w.detach().clone())
    opt2 = optim.momentum_optimizer([{"params": [w2], "weight_decay": 0.5}], momentum_optimizer_value=0.9)
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))  # as from a file: no shared tensors
    for param, optimizer in ((w, opt), (w2, opt2)):
        optimizer.zero_grad()
        (0 * param).sum().backward()
        optimizer.step()
    # v2 = 0.9 * -0.1 - 0.1 * 0.5 * 1.9 = -0.185; w = 1.9 - 0.185 = 1.715
    assert w.item() == pytest.approx(1.715) and w2.item() == pytest.approx(1.715)


def test_weight_decay_groups_and_regularization_loss():
    model = nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[3.0, 4.0]]))
        model.bias.fill_(7.0)
    params = dict(model.named_parameters())
    groups = optim.weight_decay_groups(params, {"weight": 0.01})
    assert [g["weight_decay"] for g in groups] == [0.0, 0.01]
    assert groups[0]["params"][0] is model.bias and groups[1]["params"][0] is model.weight
    opt = optim.adam_optimizer(groups)
    assert optim.regularization_loss(opt) == pytest.approx(0.5 * 0.01 * 25.0)


def test_freeze_and_update_trainable_variables():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    names = optim.trainable_parameters(model, freeze_variables=["bias"])
    assert sorted(names) == ["0.weight", "1.weight"]
    assert not model[0].bias.requires_grad
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    names = optim.trainable_parameters(model, update_trainable_variables=["^1\\."], freeze_variables=["bias"])
    assert sorted(names) == ["1.weight"]
    with pytest.raises(ValueError, match="no parameter"):
        optim.trainable_parameters(nn.Linear(1, 1), freeze_variables=[".*"])


@pytest.mark.parametrize(("field", "pattern"), [
    ("freeze_variables", r"^freeze_variables\[1\]: 'backbone\[\(' is not a valid regular expression"),
    ("update_trainable_variables",
     r"^update_trainable_variables\[1\]: 'backbone\[\(' is not a valid regular expression"),
])
def test_bad_variable_regex_names_the_argument(field, pattern):
    # the user-facing message, with its train_config path: tests/builders/test_optim.py
    with pytest.raises(ValueError, match=pattern):
        optim.trainable_parameters(nn.Linear(1, 1), **{field: ["bias", "backbone[("]})


def test_ema_hand_values():
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.zero_()
    ema = optim.ModelEma(model, moving_average_decay=0.9)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)
    assert ema.shadow["weight"].item() == pytest.approx(0.1)
    ema.update(model)
    assert ema.shadow["weight"].item() == pytest.approx(0.19)
    target = nn.Linear(1, 1, bias=False)
    ema.copy_to(target)
    assert target.weight.item() == pytest.approx(0.19)


def test_an_sgd_checkpoint_resumes_with_its_velocity():
    """torch SGD's buffer b = 1 at rate 0.1 is Keras' velocity -0.1: the next step (gradient 1, rate
    0.1) gives v = 0.9 * -0.1 - 0.1 = -0.19."""
    w = nn.Parameter(torch.tensor([1.0]))
    sgd = torch.optim.SGD([w], lr=0.1, momentum=0.9)
    w.sum().backward()
    sgd.step()  # w = 0.9, b = 1
    keras = optim.KerasMomentum([w], momentum=0.9)
    keras.load_state_dict(copy.deepcopy(sgd.state_dict()))
    keras.zero_grad()
    w.sum().backward()
    keras.step()
    assert w.item() == pytest.approx(0.9 - 0.19)
