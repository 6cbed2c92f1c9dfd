"""Elementwise classification losses with the TF OD API's definitions; none of them reduces.

Shapes: `logits [B, A, C]`, `targets [B, A, C]` (one-hot or soft), `weights [B, A, C]` or `[B, A, 1]`.
Sigmoid losses return `[B, A, C]`; softmax losses return `[B, A]` and average the class axis of the
weights first, as the TF OD API does.

Background. raredet's model predicts `K` foreground columns (no background column). Sigmoid losses
use them as they are: a background anchor has an all-zero target row. Softmax losses need a
background class, so `DetectionLoss` prepends a constant zero logit as column 0 and a background
target column (1 for unmatched anchors) before calling them — the same `K + 1` layout the TF OD API's
softmax losses see (background first). The functions here accept any `C`; they do not add the column.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _checked_targets(logits: Tensor, targets: Tensor, weights: Tensor, name: str) -> Tensor:
    """`targets` as floats of the logits' dtype, after checking the three shapes agree."""
    if logits.shape != targets.shape:
        raise ValueError(f"{name}: logits {tuple(logits.shape)} and targets {tuple(targets.shape)} differ")
    if weights.dim() != logits.dim() or weights.shape[-1] not in (1, logits.shape[-1]):
        raise ValueError(
            f"{name}: weights {tuple(weights.shape)} must be [B, A, C] or [B, A, 1] for logits "
            f"{tuple(logits.shape)}"
        )
    return targets.to(logits.dtype)


def weighted_sigmoid(logits: Tensor, targets: Tensor, weights: Tensor) -> Tensor:
    """Sigmoid cross-entropy per entry, times `weights`. Returns `[B, A, C]`."""
    targets = _checked_targets(logits, targets, weights, "weighted_sigmoid")
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="none") * weights


def weighted_sigmoid_focal(
    logits: Tensor,
    targets: Tensor,
    weights: Tensor,
    gamma: float = 2.0,
    alpha: float | None = None,
    class_alpha: Tensor | None = None,
) -> Tensor:
    """Sigmoid focal loss (Lin et al. 2017) per entry, times `weights`. Returns `[B, A, C]`.

    `alpha` multiplies target=1 entries and `1 - alpha` target=0 entries; `alpha=None` means no alpha
    term; `gamma=0` gives plain sigmoid cross-entropy. `class_alpha [C]` (raredet) gives each column
    its own alpha; a NaN entry falls back to `alpha` (or to no alpha term when `alpha` is None).
    """
    targets = _checked_targets(logits, targets, weights, "weighted_sigmoid_focal")
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p = torch.sigmoid(logits)
    p_t = targets * p + (1 - targets) * (1 - p)
    loss = ce * (1 - p_t).pow(gamma) if gamma else ce
    return loss * _alpha_factor(targets, alpha, class_alpha) * weights


def _alpha_factor(targets: Tensor, alpha: float | None, class_alpha: Tensor | None) -> Tensor | float:
    """`alpha` on target=1 entries, `1 - alpha` on target=0 entries, per column when `class_alpha`."""
    if class_alpha is None:
        return 1.0 if alpha is None else targets * alpha + (1 - targets) * (1 - alpha)
    if class_alpha.shape != targets.shape[-1:]:
        raise ValueError(f"class_alpha has shape {tuple(class_alpha.shape)}, expected [{targets.shape[-1]}]")
    a = class_alpha.to(targets)
    if alpha is not None:
        a = torch.where(torch.isnan(a), torch.full_like(a, float(alpha)), a)
    factor = targets * a + (1 - targets) * (1 - a)
    # A NaN column (no class_alpha, no alpha) has no alpha term at all: factor 1.
    return torch.where(torch.isnan(a), torch.ones_like(factor), factor)


def weighted_softmax(logits: Tensor, targets: Tensor, weights: Tensor, logit_scale: float = 1.0) -> Tensor:
    """Softmax cross-entropy of `logits / logit_scale` per anchor, times the class-mean of `weights`.

    Returns `[B, A]`.
    """
    targets = _checked_targets(logits, targets, weights, "weighted_softmax")
    ce = -(targets * F.log_softmax(logits / logit_scale, dim=-1)).sum(-1)
    return ce * weights.mean(-1)


def weighted_logits_softmax(
    logits: Tensor, targets: Tensor, weights: Tensor, logit_scale: float = 1.0
) -> Tensor:
    """Softmax cross-entropy against soft targets given as logits (distillation). Returns `[B, A]`.

    Both `logits` and the target logits are divided by `logit_scale`; targets become
    `softmax(targets / logit_scale)`.
    """
    targets = _checked_targets(logits, targets, weights, "weighted_logits_softmax")
    soft_targets = torch.softmax(targets / logit_scale, dim=-1)
    ce = -(soft_targets * F.log_softmax(logits / logit_scale, dim=-1)).sum(-1)
    return ce * weights.mean(-1)


def bootstrapped_sigmoid(
    logits: Tensor, targets: Tensor, weights: Tensor, alpha: float = 0.0, hard_bootstrap: bool = False
) -> Tensor:
    """Bootstrapped sigmoid cross-entropy (Reed et al. 2014). Returns `[B, A, C]`.

    The target becomes `alpha * targets + (1 - alpha) * q`, with `q = sigmoid(logits)` (soft) or
    `q = [sigmoid(logits) > 0.5]` (`hard_bootstrap`).
    """
    targets = _checked_targets(logits, targets, weights, "bootstrapped_sigmoid")
    p = torch.sigmoid(logits)
    q = (p > 0.5).to(logits) if hard_bootstrap else p
    boot = alpha * targets + (1.0 - alpha) * q
    return F.binary_cross_entropy_with_logits(logits, boot, reduction="none") * weights
