"""Elementwise localization losses with the TF OD API's definitions; none of them reduces.

Shapes: `pred [B, A, 4]`, `target [B, A, 4]`, `weights [B, A]` → loss `[B, A]`.
`weighted_smooth_l1`, `weighted_l2` and `l1_localization_loss` compare box encodings (the coder's
`(ty, tx, th, tw)`); `weighted_iou` and `weighted_giou` compare decoded boxes (`xyxy`), so
`DetectionLoss` decodes the predictions and uses the matched ground-truth boxes as targets for them.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _check_shapes(pred: Tensor, target: Tensor, weights: Tensor, name: str) -> None:
    if pred.shape != target.shape or pred.shape[-1] != 4:
        raise ValueError(
            f"{name}: pred {tuple(pred.shape)} and target {tuple(target.shape)} must be [B, A, 4]"
        )
    if weights.shape != pred.shape[:-1]:
        raise ValueError(f"{name}: weights {tuple(weights.shape)} must be {tuple(pred.shape[:-1])}")


def weighted_smooth_l1(pred: Tensor, target: Tensor, weights: Tensor, delta: float = 1.0) -> Tensor:
    """Huber loss summed over the 4 coordinates, times `weights`.

    Per coordinate: `0.5 d²` where `|d| <= delta`, else `delta (|d| - 0.5 delta)` (the TF Huber form:
    not divided by `delta`, unlike torch's `smooth_l1_loss`).
    """
    _check_shapes(pred, target, weights, "weighted_smooth_l1")
    d = (pred - target).abs()
    quadratic = torch.clamp(d, max=delta)
    huber = 0.5 * quadratic**2 + delta * (d - quadratic)
    return huber.sum(-1) * weights


def weighted_l2(pred: Tensor, target: Tensor, weights: Tensor) -> Tensor:
    """`0.5 * sum((weights * (pred - target))²)` over the coordinates: the weight is inside the square."""
    _check_shapes(pred, target, weights, "weighted_l2")
    return 0.5 * ((pred - target) * weights.unsqueeze(-1)).pow(2).sum(-1)


def l1_localization_loss(pred: Tensor, target: Tensor, weights: Tensor) -> Tensor:
    """Absolute difference summed over the 4 coordinates, times `weights`."""
    _check_shapes(pred, target, weights, "l1_localization_loss")
    return (pred - target).abs().sum(-1) * weights


def _matched_overlap(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Intersection, union and enclosing-box area of each pair `pred[i]`, `target[i]` (xyxy).

    `box_ops` works on all pairs (`[N, M]`); the losses need only the matched pairs, elementwise.
    """
    lo = torch.maximum(pred[..., :2], target[..., :2])
    hi = torch.minimum(pred[..., 2:], target[..., 2:])
    inter = (hi - lo).clamp(min=0).prod(-1)
    area_p = (pred[..., 2:] - pred[..., :2]).prod(-1)
    area_t = (target[..., 2:] - target[..., :2]).prod(-1)
    union = area_p + area_t - inter
    enclose_wh = torch.maximum(pred[..., 2:], target[..., 2:]) - torch.minimum(pred[..., :2], target[..., :2])
    return inter, union, enclose_wh.prod(-1)


def _safe_div(num: Tensor, den: Tensor) -> Tensor:
    # As the TF OD API (divide_no_nan): a zero denominator gives 0, so degenerate boxes give no NaN.
    safe_den = torch.where(den == 0, torch.ones_like(den), den)
    return torch.where(den == 0, torch.zeros_like(num), num / safe_den)


def weighted_iou(pred: Tensor, target: Tensor, weights: Tensor) -> Tensor:
    """`(1 - IoU(pred, target)) * weights` on decoded `xyxy` boxes."""
    _check_shapes(pred, target, weights, "weighted_iou")
    inter, union, _ = _matched_overlap(pred, target)
    return (1 - _safe_div(inter, union)) * weights


def weighted_giou(pred: Tensor, target: Tensor, weights: Tensor) -> Tensor:
    """`(1 - GIoU(pred, target)) * weights` on decoded `xyxy` boxes (Rezatofighi et al. 2019)."""
    _check_shapes(pred, target, weights, "weighted_giou")
    inter, union, enclose = _matched_overlap(pred, target)
    giou = _safe_div(inter, union) - _safe_div(enclose - union, enclose)
    return (1 - giou) * weights
