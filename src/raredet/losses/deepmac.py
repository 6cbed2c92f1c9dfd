"""DeepMAC's dice loss (the TF OD API's ``WeightedDiceClassificationLoss``, which its
``deepmac_mask_estimation.classification_loss`` may choose as ``weighted_dice_classification_loss``)."""

from __future__ import annotations

import torch
from torch import Tensor


def weighted_dice(
    logits: Tensor, targets: Tensor, weights: Tensor, squared_normalization: bool = False,
    is_prediction_probability: bool = False,
) -> Tensor:
    """``[N, P, C]`` logits (probabilities with ``is_prediction_probability``), targets and weights
    (``[N, P, 1]`` broadcast) -> ``[N, C]``: ``1 - 2 sum(p t) / max(sum(p) + sum(t), 1)`` over the ``P``
    pixels, ``p`` and ``t`` times the weights (squared first with ``squared_normalization``). Unlike the
    other classification losses it reduces over the pixels, as TF's does."""
    p = logits if is_prediction_probability else torch.sigmoid(logits)
    t = targets.to(p.dtype)
    if squared_normalization:
        p, t = p * p, t * t
    p, t = p * weights, t * weights
    intersection = (p * t).sum(dim=1)
    return 1.0 - 2.0 * intersection / (p.sum(dim=1) + t.sum(dim=1)).clamp(min=1.0)
