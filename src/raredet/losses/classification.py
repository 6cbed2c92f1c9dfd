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

import math
from collections.abc import Sequence

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


# ---- pair-aware losses (raredet) -------------------------------------------------------------------
#
# All three extend `weighted_sigmoid_focal` (alpha on target=1 entries, 1 - alpha on target=0 entries)
# by a per-entry factor that is a constant for autograd (computed from detached scores and from
# statistics). `targets` rows are one-hot (an anchor matched to class i) or all zero (background); the
# statistics come in as arguments, the caller (`DetectionLoss` with a `raredet.losses.pair_aware` state)
# keeps them. docs/class_weighting.md explains what each does and when to use which.


def _focal_terms(logits: Tensor, targets: Tensor, gamma: float) -> Tensor:
    """`ce * (1 - p_t)^gamma` per entry, computed as weighted_sigmoid_focal computes it (but for the
    guard of `_modulator` at 0 < gamma < 1)."""
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p = torch.sigmoid(logits)
    p_t = targets * p + (1 - targets) * (1 - p)
    return ce * _modulator(1 - p_t, gamma, gamma) if gamma else ce


def _modulator(one_minus_p_t: Tensor, gamma: Tensor | float, smallest_gamma: float) -> Tensor:
    """`(1 - p_t)^gamma`, with a finite gradient where a saturated logit makes `1 - p_t` exactly 0.

    For gamma < 1 the derivative `gamma x^(gamma - 1)` is infinite at x = 0 and times `dx/dz = 0` gives a
    NaN gradient (the TF OD API's focal loss has the same NaN: |z| >= 17 saturates fp32). There `x` is
    raised to the smallest normal number of its dtype first (raredet's guard): values below it change by
    less than `tiny^gamma` (1e-19 at gamma 0.5), and for gamma >= 1 nothing changes, bit for bit.
    """
    if smallest_gamma < 1:
        one_minus_p_t = one_minus_p_t.clamp(min=torch.finfo(one_minus_p_t.dtype).tiny)
    return one_minus_p_t.pow(gamma)


def _foreground_negatives(targets: Tensor) -> Tensor:
    """Bool `[B, A, C]`: target-0 entries of anchors matched to a class (a one-hot row)."""
    foreground = targets.sum(-1, keepdim=True) > 0
    return foreground & (targets == 0)


def seesaw_sigmoid_focal(
    logits: Tensor,
    targets: Tensor,
    weights: Tensor,
    class_counts: Tensor | Sequence[float],
    gamma: float = 2.0,
    alpha: float | None = 0.25,
    mitigation_power: float = 0.8,
    compensation_power: float = 2.0,
    compensation_score_floor: float = 0.01,
) -> Tensor:
    """Seesaw (Wang et al. 2021) adapted to a sigmoid focal loss. Returns `[B, A, C]`.

    For an anchor matched to class i, the negative term of column j != i is multiplied by
    `M_ij * C_ij`: mitigation `M_ij = (N_j / N_i)^p` when `N_i > N_j`, else 1, with `N = class_counts
    [C]` (positives seen so far in training); compensation `C_ij = (max(s_j, f) / max(s_i, f))^q` when
    that ratio exceeds 1, else 1, with `s = sigmoid(logits)` detached and `f =
    compensation_score_floor`. Positive terms and background anchors are plain focal loss. The ratios
    are taken in float64 (counts) and in log space (scores).

    Bounds: `M_ij <= 1`; `C_ij <= f^-q` (1e4 on the defaults f 0.01, q 2), the clamp MMDetection's
    Seesaw puts on the same ratio (`eps` 1e-2). Only s_i is floored in effect: s_j > s_i >= f. `f = 0`
    is the paper's formula, unbounded: an anchor whose own class scores 1e-4 and column j 0.9 gets
    8.1e7, and a tiny SSD at learning rate 0.02 diverged in its first steps.
    """
    targets = _checked_targets(logits, targets, weights, "seesaw_sigmoid_focal")
    num_classes = logits.shape[-1]
    class_counts = torch.as_tensor(class_counts)
    if class_counts.shape != (num_classes,):
        raise ValueError(f"seesaw_sigmoid_focal: class_counts has shape {tuple(class_counts.shape)}, "
                         f"expected [{num_classes}]")
    counts = class_counts.detach().to(logits.device, torch.float64)
    n_i, n_j = counts[:, None], counts[None, :]
    # Where N_i > N_j, N_i > 0: the division is safe; elsewhere the factor is 1.
    mitigation = torch.where(n_i > n_j, (n_j / n_i.clamp(min=1e-300)).pow(mitigation_power), 1.0)
    matched = targets.argmax(-1)  # [B, A]; only read on foreground rows
    factor = mitigation.to(logits.dtype)[matched]  # [B, A, C]: row i of M for an anchor of class i
    log_s = F.logsigmoid(logits.detach())
    log_s_i = log_s.gather(-1, matched[..., None])
    if compensation_score_floor > 0:
        log_s_i = log_s_i.clamp(min=math.log(compensation_score_floor))
    compensation = torch.where(log_s > log_s_i, ((log_s - log_s_i) * compensation_power).exp(), 1.0)
    factor = torch.where(_foreground_negatives(targets), factor * compensation, 1.0)
    return _focal_terms(logits, targets, gamma) * factor * _alpha_factor(targets, alpha, None) * weights


def confusion_gated_focal(
    logits: Tensor,
    targets: Tensor,
    weights: Tensor,
    gate_threshold: float = 0.7,
    gamma: float = 2.0,
    alpha: float | None = 0.25,
    gate_sharpness: float = 0.0,
) -> Tensor:
    """Focal loss with ACSL's confusion gate (Wang et al. 2021). Returns `[B, A, C]`.

    For an anchor matched to class i, the negative term of column j != i is kept where `s_j >=
    gate_threshold` (the model confuses i with j) and dropped elsewhere, `s = sigmoid(logits)`
    detached. `gate_sharpness` k > 0 replaces the step by the soft gate `sigmoid(k (s_j - threshold))`.
    Positive terms and background anchors are plain focal loss. The plain-focal warm-up is the
    caller's (`gate_threshold=0` with the hard gate keeps every term: plain focal loss exactly).
    Bound: the gate is in [0, 1], so no entry exceeds its focal loss.
    """
    targets = _checked_targets(logits, targets, weights, "confusion_gated_focal")
    s = torch.sigmoid(logits.detach())
    if gate_sharpness > 0:
        gate = torch.sigmoid(gate_sharpness * (s - gate_threshold))
    else:
        gate = (s >= gate_threshold).to(logits.dtype)
    factor = torch.where(_foreground_negatives(targets), gate, 1.0)
    return _focal_terms(logits, targets, gamma) * factor * _alpha_factor(targets, alpha, None) * weights


def equalized_focal(
    logits: Tensor,
    targets: Tensor,
    weights: Tensor,
    gradient_ratio: Tensor | Sequence[float],
    gamma_base: float = 2.0,
    scale: float = 4.0,
    alpha: float | None = 0.25,
) -> Tensor:
    """Equalized focal loss (Li et al. 2022), the one-stage form. Returns `[B, A, C]`.

    Column j uses `gamma_j = gamma_base + scale * (1 - g_j)` and the weight `gamma_j / gamma_base` on
    both its positive and negative terms, `g_j = gradient_ratio [C]` (accumulated positive over
    negative gradient magnitude of column j; 1 = balanced, plain focal loss), clamped to [0, 1] as the
    paper's ratio is (GradientRatioStatistics clamps it too).

    Bounds: `gamma_base <= gamma_j <= gamma_base + scale` and the weight `gamma_j / gamma_base <= 1 +
    scale / gamma_base` (3 on the defaults 2 and 4); `scale` must be >= 0.
    """
    targets = _checked_targets(logits, targets, weights, "equalized_focal")
    num_classes = logits.shape[-1]
    gradient_ratio = torch.as_tensor(gradient_ratio)
    if gradient_ratio.shape != (num_classes,):
        raise ValueError(f"equalized_focal: gradient_ratio has shape {tuple(gradient_ratio.shape)}, "
                         f"expected [{num_classes}]")
    if gamma_base <= 0 or scale < 0:
        raise ValueError(f"equalized_focal: gamma_base must be > 0 and scale >= 0, got {gamma_base} and "
                         f"{scale}")
    g = gradient_ratio.detach().to(logits).clamp(0.0, 1.0)
    gamma = gamma_base + scale * (1 - g)  # [C], in [gamma_base, gamma_base + scale]
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p = torch.sigmoid(logits)
    one_minus_p_t = 1 - (targets * p + (1 - targets) * (1 - p))
    # pow by a tensor exponent rounds differently from pow by the number: a column at g = 1 takes the
    # number, so neutral statistics give weighted_sigmoid_focal bit for bit.
    modulator = torch.where(g == 1, _modulator(one_minus_p_t, gamma_base, gamma_base),
                            _modulator(one_minus_p_t, gamma, gamma_base))
    return ce * modulator * (gamma / gamma_base) * _alpha_factor(targets, alpha, None) * weights
