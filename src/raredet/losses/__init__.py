"""raredet.losses: elementwise losses, class weights, hard example mining and `DetectionLoss`.

`CLASSIFICATION_LOSSES` and `LOCALIZATION_LOSSES` map each TF OD API config name to its function.
"""

from collections.abc import Callable

from torch import Tensor

from raredet.losses.class_weights import (
    ClassWeight,
    class_weight_tensor,
    format_class_weight_table,
    resolve_class_alpha,
    resolve_class_weights,
)
from raredet.losses.classification import (
    bootstrapped_sigmoid,
    confusion_gated_focal,
    equalized_focal,
    seesaw_sigmoid_focal,
    weighted_logits_softmax,
    weighted_sigmoid,
    weighted_sigmoid_focal,
    weighted_softmax,
)
from raredet.losses.custom import get_custom_loss, register_classification_loss, register_localization_loss
from raredet.losses.detection_loss import DetectionLoss
from raredet.losses.hard_example_miner import HardExampleMiner, MinedLosses
from raredet.losses.localization import (
    l1_localization_loss,
    weighted_giou,
    weighted_iou,
    weighted_l2,
    weighted_smooth_l1,
)
from raredet.losses.pair_aware import (
    ConfusionGateSchedule,
    GradientRatioStatistics,
    LossStatistics,
    SeesawStatistics,
    statistics_for,
)

CLASSIFICATION_LOSSES: dict[str, Callable[..., Tensor]] = {
    "weighted_sigmoid": weighted_sigmoid,
    "weighted_sigmoid_focal": weighted_sigmoid_focal,
    "weighted_softmax": weighted_softmax,
    "weighted_logits_softmax": weighted_logits_softmax,
    "bootstrapped_sigmoid": bootstrapped_sigmoid,
    # raredet: pair-aware losses (their statistics: raredet.losses.pair_aware)
    "seesaw_sigmoid_focal": seesaw_sigmoid_focal,
    "confusion_gated_focal": confusion_gated_focal,
    "equalized_focal": equalized_focal,
}
LOCALIZATION_LOSSES: dict[str, Callable[..., Tensor]] = {
    "weighted_smooth_l1": weighted_smooth_l1,
    "weighted_l2": weighted_l2,
    "l1_localization_loss": l1_localization_loss,
    "weighted_iou": weighted_iou,
    "weighted_giou": weighted_giou,
}

__all__ = [
    "CLASSIFICATION_LOSSES",
    "LOCALIZATION_LOSSES",
    "ClassWeight",
    "ConfusionGateSchedule",
    "DetectionLoss",
    "GradientRatioStatistics",
    "HardExampleMiner",
    "LossStatistics",
    "MinedLosses",
    "SeesawStatistics",
    "bootstrapped_sigmoid",
    "class_weight_tensor",
    "confusion_gated_focal",
    "equalized_focal",
    "format_class_weight_table",
    "get_custom_loss",
    "l1_localization_loss",
    "register_classification_loss",
    "register_localization_loss",
    "resolve_class_alpha",
    "resolve_class_weights",
    "seesaw_sigmoid_focal",
    "statistics_for",
    "weighted_giou",
    "weighted_iou",
    "weighted_l2",
    "weighted_logits_softmax",
    "weighted_sigmoid",
    "weighted_sigmoid_focal",
    "weighted_smooth_l1",
    "weighted_softmax",
]
