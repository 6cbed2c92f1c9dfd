"""Running statistics of the pair-aware classification losses: the state `DetectionLoss` owns.

The loss functions in `raredet.losses.classification` are pure; their statistics live here:

    seesaw_sigmoid_focal    SeesawStatistics         class_counts: positive anchors per class, cumulative
    confusion_gated_focal   ConfusionGateSchedule    step counter for the plain-focal warm-up
    equalized_focal         GradientRatioStatistics  per-class sums of |dL/dz| on positive and negative
                                                     entries, from the loss's own gradient at the logits

Every holder follows one protocol, called by `DetectionLoss` with the one-hot targets `[B, A, K]` and
the anchor weights `[B, A, 1]` or `[B, A, K]`:
- `loss_arguments(logits, targets, weights, params, training)` -> keyword arguments for the loss. On a
  training call (gradients enabled and the logits require them) it first adds this batch's statistics.
- `logged(params)` -> `{name: [K] tensor}`, logged per class as `ClassBalance/<name>/<class name>`.
- `state_dict()` / `load_state_dict()`: what a checkpoint keeps, so a resumed run equals an
  uninterrupted one bit for bit.

Under torch.distributed every update is summed over ranks before it is added (and gradient sums are
divided by the world size, which undoes the per-rank normaliser of DetectionLoss), so every rank holds
the same statistics, equal to those of one process on the global batch. Counts are int64, gradient
sums float64: exact or better than fp32 whatever the model's autocast dtype.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import Tensor

from raredet.losses.classification import (
    confusion_gated_focal,
    equalized_focal,
    seesaw_sigmoid_focal,
)


class LossStatistics(Protocol):
    """What `DetectionLoss` calls on the state of a pair-aware loss (module docstring)."""

    def loss_arguments(
        self, logits: Tensor, targets: Tensor, weights: Tensor, params: Mapping[str, Any], training: bool
    ) -> dict[str, Any]: ...

    def logged(self, params: Mapping[str, Any]) -> dict[str, Tensor]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


def _all_reduce_sum(tensor: Tensor) -> Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _load_tensor(target: Tensor, state: Mapping[str, Any], key: str, owner: str) -> None:
    """Copy `state[key]` into `target` in place, with an error naming what does not fit."""
    if key not in state:
        raise ValueError(f"{owner} state has no {key!r} (saved by another classification loss?)")
    value = torch.as_tensor(state[key])
    if value.shape != target.shape:
        raise ValueError(f"{owner} state {key!r} has shape {tuple(value.shape)}, expected "
                         f"{tuple(target.shape)} (a different number of classes?)")
    target.copy_(value.to(target.device, target.dtype))


class SeesawStatistics:
    """`class_counts [K]` for `seesaw_sigmoid_focal`: anchors matched to each class (with a data
    weight > 0) over all training batches so far, the current batch included (as Seesaw counts)."""

    def __init__(self, num_classes: int) -> None:
        self.class_counts = torch.zeros(num_classes, dtype=torch.int64)

    def loss_arguments(
        self, logits: Tensor, targets: Tensor, weights: Tensor, params: Mapping[str, Any], training: bool
    ) -> dict[str, Any]:
        self.class_counts = self.class_counts.to(logits.device)
        if training:
            counted = (targets > 0) & (weights > 0)  # [B, A, K]
            self.class_counts += _all_reduce_sum(counted.sum((0, 1)).to(torch.int64))
        return {"class_counts": self.class_counts}

    def mitigation(self, mitigation_power: float) -> Tensor:
        """Per column j, the count-weighted mean of `M_ij` over the other classes i, float64 `[K]`:
        the share of its usual push-down that column j receives from other classes' anchors."""
        n = self.class_counts.to(torch.float64)
        ratio = n[None, :] / n[:, None].clamp(min=1)  # N_j / N_i; used only where N_i > N_j >= 0
        m = torch.where(n[:, None] > n[None, :], ratio.pow(mitigation_power), 1.0)
        others = n[:, None] * (1 - torch.eye(len(n), dtype=n.dtype, device=n.device))  # N_i, i != j
        total = others.sum(0)
        return torch.where(total > 0, (others * m).sum(0) / total.clamp(min=1), 1.0)

    def logged(self, params: Mapping[str, Any]) -> dict[str, Tensor]:
        return {"seesaw_count": self.class_counts.clone(),
                "seesaw_mitigation": self.mitigation(float(params.get("mitigation_power", 0.8)))}

    def state_dict(self) -> dict[str, Any]:
        return {"class_counts": self.class_counts.detach().cpu().clone()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        _load_tensor(self.class_counts, state, "class_counts", "seesaw_sigmoid_focal")


class ConfusionGateSchedule:
    """The plain-focal warm-up of `confusion_gated_focal`: for the first `warmup_steps` training calls
    the gate is open (threshold 0, hard gate: plain focal loss); afterwards the configured gate.
    Logs, per column, the fraction of foreground negative terms the gate kept on the last training
    batch (all ranks together)."""

    def __init__(self, num_classes: int, warmup_steps: int = 0) -> None:
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        self.warmup_steps = int(warmup_steps)
        self.step = 0
        self.kept_fraction = torch.ones(num_classes, dtype=torch.float64)

    def loss_arguments(
        self, logits: Tensor, targets: Tensor, weights: Tensor, params: Mapping[str, Any], training: bool
    ) -> dict[str, Any]:
        # `step` counts finished training calls: calls 0 .. warmup_steps - 1 are the warm-up. A
        # validation call sees the loss the next training call will use.
        kwargs: dict[str, Any] = {}
        if self.step < self.warmup_steps:
            kwargs = {"gate_threshold": 0.0, "gate_sharpness": 0.0}
        if training:
            self.step += 1
            self._measure(logits, targets, weights, {**params, **kwargs})
        return kwargs

    def _measure(self, logits: Tensor, targets: Tensor, weights: Tensor, params: Mapping[str, Any]) -> None:
        """Per column: (gate values summed, foreground negatives counted) over the batch, all ranks."""
        threshold = float(params.get("gate_threshold", 0.7))
        sharpness = float(params.get("gate_sharpness", 0.0))
        s = torch.sigmoid(logits.detach()).to(torch.float64)
        gate = torch.sigmoid(sharpness * (s - threshold)) if sharpness > 0 else (s >= threshold).to(s)
        foreground = targets.sum(-1, keepdim=True) > 0
        negatives = (foreground & (targets == 0) & (weights > 0)).to(torch.float64)
        sums = _all_reduce_sum(torch.stack([(gate * negatives).sum((0, 1)), negatives.sum((0, 1))]))
        self.kept_fraction = torch.where(sums[1] > 0, sums[0] / sums[1].clamp(min=1), 1.0)

    def logged(self, params: Mapping[str, Any]) -> dict[str, Tensor]:
        return {"gate_kept_fraction": self.kept_fraction.clone()}

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "kept_fraction": self.kept_fraction.detach().cpu().clone()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if "step" not in state:
            raise ValueError("confusion_gated_focal state has no 'step' (saved by another classification "
                             "loss?)")
        self.step = int(state["step"])
        _load_tensor(self.kept_fraction, state, "kept_fraction", "confusion_gated_focal")


class GradientRatioStatistics:
    """`gradient_ratio [K]` for `equalized_focal`: `g_j = clamp(P_j / N_j, 0, 1)` with `P_j`, `N_j` the
    sums of `|dL/dz|` over the positive and negative entries of column j, taken from the gradient of
    the loss actually optimised (normaliser, weights and miner included) at the logits. 1 before any
    gradient was seen, so the first step is plain focal loss.

    `gradient_decay` 1 (default) accumulates over all of training, as the paper does. d < 1 is raredet's
    opt-in deviation: before each update both sums are multiplied by d, an exponential moving window of
    about 1 / (1 - d) steps, so early statistics do not dominate for ever.
    """

    def __init__(self, num_classes: int, gradient_decay: float = 1.0) -> None:
        if not 0 < gradient_decay <= 1:
            raise ValueError(f"gradient_decay must be in (0, 1], got {gradient_decay}")
        self.decay = float(gradient_decay)
        self.positive = torch.zeros(num_classes, dtype=torch.float64)
        self.negative = torch.zeros(num_classes, dtype=torch.float64)

    def gradient_ratio(self) -> Tensor:
        """`g [K]`, float64: 1 where no negative gradient was seen yet."""
        ratio = self.positive / self.negative.clamp(min=1e-300)
        return torch.where(self.negative > 0, ratio.clamp(0.0, 1.0), 1.0)

    def loss_arguments(
        self, logits: Tensor, targets: Tensor, weights: Tensor, params: Mapping[str, Any], training: bool
    ) -> dict[str, Any]:
        self.positive = self.positive.to(logits.device)
        self.negative = self.negative.to(logits.device)
        ratio = self.gradient_ratio()
        if training:
            positive = targets.detach() > 0

            def collect(grad: Tensor) -> None:
                handle.remove()  # once per loss call, even if the same logits tensor is reused
                self._collect(grad, positive)

            handle = logits.register_hook(collect)
        return {"gradient_ratio": ratio.to(logits.dtype)}

    def _collect(self, grad: Tensor, positive: Tensor) -> None:
        """Backward hook on the logits: add this step's |dL/dz| per column, summed over ranks."""
        magnitude = grad.detach().abs().to(torch.float64)
        sums = torch.stack([(magnitude * positive).sum((0, 1)), (magnitude * ~positive).sum((0, 1))])
        sums = _all_reduce_sum(sums) / _world_size()
        if self.decay < 1:
            self.positive *= self.decay
            self.negative *= self.decay
        self.positive += sums[0]
        self.negative += sums[1]

    def logged(self, params: Mapping[str, Any]) -> dict[str, Tensor]:
        g = self.gradient_ratio()
        gamma = float(params.get("gamma_base", 2.0)) + float(params.get("scale", 4.0)) * (1 - g)
        return {"efl_gradient_ratio": g, "efl_gamma": gamma}

    def state_dict(self) -> dict[str, Any]:
        return {"positive": self.positive.detach().cpu().clone(),
                "negative": self.negative.detach().cpu().clone()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        _load_tensor(self.positive, state, "positive", "equalized_focal")
        _load_tensor(self.negative, state, "negative", "equalized_focal")


STATISTICS_OPTIONS = frozenset({"warmup_steps", "gradient_decay"})


def statistics_for(loss: Any, num_classes: int, **options: Any) -> LossStatistics | None:
    """The state holder a classification loss function needs (None for the stateless ones).

    `options`: `warmup_steps` (confusion_gated_focal), `gradient_decay` (equalized_focal): the config
    fields of those losses that set up their statistics rather than the loss function."""
    if loss is seesaw_sigmoid_focal:
        return SeesawStatistics(num_classes)
    if loss is confusion_gated_focal:
        return ConfusionGateSchedule(num_classes, warmup_steps=options.get("warmup_steps", 0))
    if loss is equalized_focal:
        return GradientRatioStatistics(num_classes, gradient_decay=options.get("gradient_decay", 1.0))
    return None
