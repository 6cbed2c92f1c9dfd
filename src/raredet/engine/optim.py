"""Optimizers, learning-rate schedules, EMA weights and parameter groups, as the TF OD API defines them.

Constructors take keyword arguments named as the fields of the TF OD API's `optimizer.proto`, with its
defaults. A schedule is a pure function of the global step (`schedule(step) -> lr`): the training loop
sets the learning rate before every step, so resuming at step N needs no scheduler state beyond N.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import torch
from torch import nn

ParamGroups = list[dict[str, Any]]


class LearningRateSchedule(Protocol):
    def __call__(self, step: int) -> float: ...


# ---- learning-rate schedules -------------------------------------------------------------------


class ConstantLearningRate:
    def __init__(self, learning_rate: float = 0.002) -> None:
        self.learning_rate = float(learning_rate)

    def __call__(self, step: int) -> float:
        return self.learning_rate


class ExponentialDecayLearningRate:
    """`initial * decay_factor ** ((step - burnin_steps) / decay_steps)`, floored at `min_learning_rate`.

    The exponent is floored when `staircase`. Before `burnin_steps` the rate is `burnin_learning_rate`
    (0 means "use the initial rate"), as the TF OD API's `exponential_decay_with_burnin`.
    """

    def __init__(
        self,
        initial_learning_rate: float = 0.002,
        decay_steps: int = 4000000,
        decay_factor: float = 0.95,
        staircase: bool = True,
        burnin_learning_rate: float = 0.0,
        burnin_steps: int = 0,
        min_learning_rate: float = 0.0,
    ) -> None:
        if decay_steps <= 0:
            raise ValueError(f"decay_steps must be > 0, got {decay_steps}")
        self.initial_learning_rate = float(initial_learning_rate)
        self.decay_steps = int(decay_steps)
        self.decay_factor = float(decay_factor)
        self.staircase = bool(staircase)
        self.burnin_learning_rate = float(burnin_learning_rate) or self.initial_learning_rate
        self.burnin_steps = int(burnin_steps)
        self.min_learning_rate = float(min_learning_rate)

    def __call__(self, step: int) -> float:
        if step < self.burnin_steps:
            return self.burnin_learning_rate
        exponent = (step - self.burnin_steps) / self.decay_steps
        if self.staircase:
            exponent = math.floor(exponent)
        return max(self.initial_learning_rate * self.decay_factor**exponent, self.min_learning_rate)


class ManualStepLearningRate:
    """`initial_learning_rate` until the first `schedule` step, then each entry's rate from its step on.

    `schedule` is a sequence of `(step, learning_rate)` pairs (or objects with those attributes, such as
    the proto's `LearningRateSchedule` messages). With `warmup`, the rate rises linearly from the initial
    rate to the first entry's rate over the first entry's steps, as the TF OD API's `manual_stepping`.
    """

    def __init__(
        self,
        initial_learning_rate: float = 0.002,
        schedule: Sequence[Any] = (),
        warmup: bool = False,
    ) -> None:
        pairs = [_step_rate_pair(entry) for entry in schedule]
        steps = [s for s, _ in pairs]
        if any(s <= 0 for s in steps) or steps != sorted(set(steps)):
            raise ValueError(f"schedule steps must be positive and increasing, got {steps}")
        if warmup and not pairs:
            raise ValueError("warmup needs at least one schedule entry")
        self.initial_learning_rate = float(initial_learning_rate)
        self.boundaries = steps
        self.rates = [self.initial_learning_rate] + [r for _, r in pairs]
        self.warmup = bool(warmup)

    def __call__(self, step: int) -> float:
        if self.warmup and step < self.boundaries[0]:
            slope = (self.rates[1] - self.rates[0]) / self.boundaries[0]
            return self.rates[0] + slope * step
        passed = sum(1 for b in self.boundaries if step >= b)
        return self.rates[passed]


def _step_rate_pair(entry: Any) -> tuple[int, float]:
    if isinstance(entry, Mapping):
        return int(entry["step"]), float(entry["learning_rate"])
    if hasattr(entry, "step"):
        return int(entry.step), float(entry.learning_rate)
    step, rate = entry
    return int(step), float(rate)


class CosineDecayLearningRate:
    """Cosine decay from `learning_rate_base` to 0 at `total_steps`, after a linear warmup and a hold.

    As the TF OD API's `cosine_decay_with_warmup`: warmup from `warmup_learning_rate` over
    `warmup_steps`, hold the base rate for `hold_base_rate_steps`, then
    `0.5 * base * (1 + cos(pi * (step - warmup - hold) / (total - warmup - hold)))`; 0 after `total_steps`.
    """

    def __init__(
        self,
        learning_rate_base: float = 0.002,
        total_steps: int = 4000000,
        warmup_learning_rate: float = 0.0002,
        warmup_steps: int = 10000,
        hold_base_rate_steps: int = 0,
    ) -> None:
        if total_steps < warmup_steps + hold_base_rate_steps or total_steps <= 0:
            raise ValueError(
                "total_steps must be positive and at least warmup_steps + "
                f"hold_base_rate_steps, got {total_steps} < {warmup_steps} + {hold_base_rate_steps}"
            )
        if learning_rate_base < warmup_learning_rate:
            raise ValueError(
                "learning_rate_base must be >= warmup_learning_rate, got "
                f"{learning_rate_base} < {warmup_learning_rate}"
            )
        self.learning_rate_base = float(learning_rate_base)
        self.total_steps = int(total_steps)
        self.warmup_learning_rate = float(warmup_learning_rate)
        self.warmup_steps = int(warmup_steps)
        self.hold_base_rate_steps = int(hold_base_rate_steps)

    def __call__(self, step: int) -> float:
        if step > self.total_steps:
            return 0.0
        if step < self.warmup_steps:
            slope = (self.learning_rate_base - self.warmup_learning_rate) / self.warmup_steps
            return self.warmup_learning_rate + slope * step
        flat_until = self.warmup_steps + self.hold_base_rate_steps
        if self.hold_base_rate_steps > 0 and step <= flat_until:
            return self.learning_rate_base
        span = max(self.total_steps - flat_until, 1)
        return 0.5 * self.learning_rate_base * (1.0 + math.cos(math.pi * (step - flat_until) / span))


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


# ---- optimizers ---------------------------------------------------------------------------------


def momentum_optimizer(params: ParamGroups, momentum_optimizer_value: float = 0.9) -> torch.optim.Optimizer:
    """The TF OD API's TF2 momentum optimizer, `tf.keras.optimizers.SGD(momentum=m)` (`KerasMomentum`)."""
    return KerasMomentum(params, momentum=momentum_optimizer_value)


class KerasMomentum(torch.optim.Optimizer):
    """SGD with momentum as Keras computes it (the TF OD API's TF2 `momentum_optimizer`):
    `v = m v - lr g; w += v`, with `g` the gradient plus `weight_decay * w` (the L2 loss's gradient).

    torch's `SGD` keeps `b = m b + g; w -= lr b` instead (TF1's `MomentumOptimizer`). The two agree
    while the learning rate is constant, but not while it changes: torch applies the current rate to
    the whole accumulated velocity, Keras the rate of each step to that step's gradient. Under the zoo's
    warm-up (the rate tripling in a few steps) torch's early steps are up to that much longer.
    State per parameter: `velocity` (same shape), saved in `state_dict` for an exact resume."""

    def __init__(self, params: ParamGroups | Any, lr: float = 0.0, momentum: float = 0.9,
                 weight_decay: float = 0.0) -> None:
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum_optimizer_value must be in [0, 1), got {momentum}")
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # noqa: D102 (torch's signature)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params if p.grad is not None]
            if group["weight_decay"]:
                grads = list(torch._foreach_add(grads, params, alpha=group["weight_decay"]))
            velocities = [self._velocity(p) for p in params]
            torch._foreach_mul_(velocities, group["momentum"])
            torch._foreach_add_(velocities, grads, alpha=-group["lr"])
            torch._foreach_add_(params, velocities)
        return loss

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """As torch's, and a checkpoint written before this optimizer (torch ``SGD``'s
        ``momentum_buffer`` b) resumes with ``velocity = -lr b``, lr the rate of its last step: exact
        where the rate was constant over the last steps, as it nearly is late in a cosine schedule."""
        super().load_state_dict(state_dict)
        for group in self.param_groups:
            for param in group["params"]:
                state = self.state.get(param, {})
                if "momentum_buffer" in state and "velocity" not in state:
                    buffer = state.pop("momentum_buffer")
                    if buffer is not None:
                        state["velocity"] = -group["lr"] * buffer

    def _velocity(self, param: torch.Tensor) -> torch.Tensor:
        state = self.state[param]
        if "velocity" not in state:
            state["velocity"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        return state["velocity"]


def adam_optimizer(params: ParamGroups, epsilon: float = 1e-8) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=0.0, eps=epsilon)


def rms_prop_optimizer(
    params: ParamGroups,
    momentum_optimizer_value: float = 0.9,
    decay: float = 0.9,
    epsilon: float = 1.0,
) -> torch.optim.Optimizer:
    """TF's RMSProp (`decay` is the squared-gradient average's decay). TF adds epsilon inside the square
    root and torch outside it; with the TF OD API default epsilon=1 the two differ slightly."""
    return torch.optim.RMSprop(params, lr=0.0, alpha=decay, eps=epsilon, momentum=momentum_optimizer_value)


# ---- parameter groups ---------------------------------------------------------------------------


def trainable_parameters(
    model: nn.Module,
    freeze_variables: Sequence[str] = (),
    update_trainable_variables: Sequence[str] = (),
) -> dict[str, nn.Parameter]:
    """Parameters to train, by name: `update_trainable_variables` (regexes; empty = all) minus those
    matching `freeze_variables`. Frozen parameters get `requires_grad=False`."""
    keep = _compile_all(update_trainable_variables, "update_trainable_variables")
    freeze = _compile_all(freeze_variables, "freeze_variables")
    chosen: dict[str, nn.Parameter] = {}
    for name, param in model.named_parameters():
        wanted = not keep or any(p.search(name) for p in keep)
        if wanted and not any(p.search(name) for p in freeze):
            chosen[name] = param
        else:
            param.requires_grad_(False)
    if not chosen:
        raise ValueError(
            "freeze_variables / update_trainable_variables leave no parameter to train; "
            f"freeze={list(freeze_variables)}, update={list(update_trainable_variables)}"
        )
    return chosen


def _compile_all(patterns: Sequence[str], field: str) -> list[re.Pattern[str]]:
    compiled = []
    for i, pattern in enumerate(patterns):
        try:
            compiled.append(re.compile(pattern))
        except re.error as err:
            raise ValueError(
                f"{field}[{i}]: {pattern!r} is not a valid regular expression ({err}); escape special "
                "characters such as [ ( . with a backslash"
            ) from None
    return compiled


def weight_decay_groups(params: Mapping[str, nn.Parameter], l2_weights: Mapping[str, float]) -> ParamGroups:
    """One optimizer param group per distinct L2 weight.

    `l2_weights` maps parameter names to the `l2_regularizer.weight` of the conv_hyperparams that made
    them (absent = no decay). The TF OD API adds `0.5 * weight * ||w||^2` to the loss, whose gradient
    `weight * w` is exactly torch's coupled `weight_decay=weight`.
    """
    by_weight: dict[float, list[nn.Parameter]] = {}
    names: dict[float, list[str]] = {}
    for name, param in params.items():
        decay = float(l2_weights.get(name, 0.0))
        by_weight.setdefault(decay, []).append(param)
        names.setdefault(decay, []).append(name)
    return [
        {"params": by_weight[w], "weight_decay": w, "param_names": names[w]} for w in sorted(by_weight)
    ]


def regularization_loss_tensor(optimizer: torch.optim.Optimizer) -> torch.Tensor:
    """`sum 0.5 * weight * ||w||^2` over decayed groups, as a 0-d float32 tensor on the parameters'
    device (no host synchronisation): the TF OD API's `Loss/regularization_loss`."""
    terms = []
    with torch.no_grad():
        for group in optimizer.param_groups:
            if group.get("weight_decay", 0.0) and group["params"]:
                # One multi-tensor norm kernel per group, not two small kernels per parameter (run every
                # step: hundreds of launches on a GPU).
                norms = torch._foreach_norm([p.detach().float() for p in group["params"]], 2)
                squares = torch.stack(norms).double().square().sum().float()
                terms.append(0.5 * group["weight_decay"] * squares)
    if terms:
        return torch.stack(terms).sum()
    first = next((p for g in optimizer.param_groups for p in g["params"]), None)
    return torch.zeros((), device=first.device if first is not None else None)


def regularization_loss(optimizer: torch.optim.Optimizer) -> float:
    """`regularization_loss_tensor` as a Python float."""
    return float(regularization_loss_tensor(optimizer))


# ---- exponential moving average -----------------------------------------------------------------


class ModelEma:
    """Shadow copy of the model's floating-point state: `shadow = decay * shadow + (1 - decay) * value`.

    Buffers (BatchNorm statistics) are averaged too. Used for evaluation when
    `eval_config.use_moving_averages`.
    """

    def __init__(self, model: nn.Module, moving_average_decay: float = 0.9999) -> None:
        if not 0.0 <= moving_average_decay <= 1.0:
            raise ValueError(f"moving_average_decay must be in [0, 1], got {moving_average_decay}")
        self.decay = float(moving_average_decay)
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def restart_from(self, model: nn.Module) -> None:
        """Start the average again at `model`'s state (after fine-tune weights load into it)."""
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for key, value in model.state_dict().items():
            shadow = self.shadow[key]
            if shadow.is_floating_point():
                shadow.lerp_(value.detach().to(shadow.dtype), 1.0 - self.decay)
            else:
                shadow.copy_(value)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.shadow

    def to(self, device: torch.device | str) -> ModelEma:
        """Keep the shadow on the model's device (updates are elementwise with its tensors)."""
        self.shadow = {k: v.to(device) for k, v in self.shadow.items()}
        return self

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        for key, value in state.items():
            self.shadow[key].copy_(value)

    def copy_to(self, model: nn.Module) -> None:
        model.load_state_dict(self.shadow)
