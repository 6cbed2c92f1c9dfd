"""The DetectionLoss the pair-aware tests train with (tests/losses/test_pair_aware.py and
tests/engine/test_train_pair_aware.py; each keeps its own table of loss parameters)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor

from raredet.losses import DetectionLoss, HardExampleMiner, statistics_for, weighted_smooth_l1
from raredet.modeling.box_coder import FasterRcnnBoxCoder
from raredet.modeling.matcher import ArgMaxMatcher


def pair_aware_detection_loss(fn: Callable[..., Tensor], params: dict[str, Any], options: Mapping[str, Any],
                              class_weights: Tensor, miner: HardExampleMiner | None = None) -> DetectionLoss:
    """`fn(**params)` as the classification loss with its statistics (`statistics_for(fn, K, **options)`,
    K = len(class_weights)); an anchor matches a box at IoU >= 0.99 (the tests put each box on an anchor)
    and is background below 0.3; smooth L1 boxes; normalised by the number of matches."""
    return DetectionLoss(
        matcher=ArgMaxMatcher(matched_threshold=0.99, unmatched_threshold=0.3),
        box_coder=FasterRcnnBoxCoder(),
        classification_loss=fn, classification_loss_params=params,
        classification_statistics=statistics_for(fn, len(class_weights), **options),
        localization_loss=weighted_smooth_l1,
        class_weights=class_weights,
        hard_example_miner=miner,
        normalize_loss_by_num_matches=True,
    )
