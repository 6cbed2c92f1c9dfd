"""The localization loss of CenterNet's keypoint task, as the TF OD API applies it; it does not reduce.

The keypoint task (`modeling.center_net_keypoints`) takes its losses as plain callables, as the TF OD
API's `KeypointEstimationParams` takes `classification_loss` and `localization_loss`: the heatmap loss
is `losses.center_net.penalty_reduced_logistic_focal`; the offsets and regressions at the assigned
pixels take this one. The TF OD API applies its localization loss there to `[P, 2]` tensors, which only
its `l1_localization_loss` accepts (its L2 and smooth L1 losses reduce over an axis 2 that is not there).
"""

from __future__ import annotations

from torch import Tensor


def l1_elementwise(pred: Tensor, target: Tensor) -> Tensor:
    """`|pred - target|`, elementwise (the TF OD API's `l1_localization_loss` with unit weights)."""
    return (pred - target).abs()
