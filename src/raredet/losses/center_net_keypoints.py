"""The elementwise losses of CenterNet's keypoint task, as the TF OD API defines them; none reduces.

The keypoint task (`modeling.center_net_keypoints`) takes them as plain callables, as the TF OD API's
`KeypointEstimationParams` takes `classification_loss` and `localization_loss`: the heatmap loss on
logits and Gaussian targets, the localization loss on the offset and regression predictions at the
assigned pixels. The TF OD API applies its localization loss there to `[P, 2]` tensors, which only its
`l1_localization_loss` accepts (the L2 and smooth L1 losses reduce over an axis 2 that is not there).
"""

from __future__ import annotations

import torch
from torch import Tensor

SIGMOID_CLIP = 1e-4  # the TF OD API's PenaltyReducedLogisticFocalLoss(sigmoid_clip_value=1e-4)


def penalty_reduced_logistic_focal(logits: Tensor, target: Tensor, alpha: float = 2.0,
                                   beta: float = 4.0) -> Tensor:
    """Equation (1) of Objects as Points, elementwise, any shape.

    `p = clip(sigmoid(logits), 1e-4, 1 - 1e-4)`; where `target == 1`: `-(1 - p)^alpha log p`;
    elsewhere `-(1 - target)^beta p^alpha log(1 - p)`.
    """
    p = torch.sigmoid(logits).clamp(SIGMOID_CLIP, 1 - SIGMOID_CLIP)
    positive = (1 - p).pow(alpha) * torch.log(p)
    negative = (1 - target).pow(beta) * p.pow(alpha) * torch.log(1 - p)
    return -torch.where(target == 1.0, positive, negative)


def l1_elementwise(pred: Tensor, target: Tensor) -> Tensor:
    """`|pred - target|`, elementwise (the TF OD API's `l1_localization_loss` with unit weights)."""
    return (pred - target).abs()
