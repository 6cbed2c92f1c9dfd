"""Dataset statistics: per-class box and image counts and box sizes (the report of `raredet stats`,
with automatic class weights and repeat factors, is `raredet.commands.stats`).

Counts come from the readers' ``annotations(i)``, which never decode an image (a TFRecord's
``image/encoded`` bytes are skipped over, not decoded). Ignore regions (crowd boxes and boxes of weight
0) add no loss in training, so they are left out of the counts and reported on their own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from raredet.data.readers import Reader

if TYPE_CHECKING:
    from raredet.config.label_map import LabelMap


@dataclass
class DatasetStats:
    """Counts per contiguous class index; arrays are [K] and indexed like the model's classes."""

    names: list[str]
    ids: list[int]
    box_counts: np.ndarray  # int64 [K] boxes that count in training
    image_counts: np.ndarray  # int64 [K] images with at least one such box of the class
    median_box_size: np.ndarray  # float64 [K] median sqrt(w * h) in pixels, nan when no boxes
    num_images: int
    ignored_boxes: int  # crowd or weight-0 boxes, all classes
    image_classes: list[np.ndarray] = field(repr=False)  # per image: int64 class indices of its boxes

    @property
    def num_boxes(self) -> int:
        return int(self.box_counts.sum())

    @property
    def imbalance_ratio(self) -> float:
        """Most / least frequent class by boxes; inf when some class has no boxes."""
        if self.box_counts.size == 0 or self.box_counts.max() == 0:
            return float("nan")
        return float(self.box_counts.max() / self.box_counts.min()) if self.box_counts.min() > 0 else math.inf


def compute_stats(reader: Reader, label_map: LabelMap) -> DatasetStats:
    """Count boxes and images per class over every record of ``reader`` (annotations only)."""
    k = label_map.num_classes
    boxes, images = np.zeros(k, np.int64), np.zeros(k, np.int64)
    sizes: list[np.ndarray] = []
    labels_all: list[np.ndarray] = []
    image_classes, ignored = [], 0
    for i in range(len(reader)):  # one pass over the records; per-image work is vectorised
        ann = reader.annotations(i)
        counts = ~ann["is_crowd"] & (ann["weights"] > 0)
        ignored += int((~counts).sum())
        labels = ann["labels"][counts]
        wh = ann["boxes"][counts, 2:] - ann["boxes"][counts, :2]
        boxes += np.bincount(labels, minlength=k)
        present = np.unique(labels)
        images[present] += 1
        image_classes.append(present)
        sizes.append(np.sqrt(np.clip(wh, 0, None).prod(axis=1)))
        labels_all.append(labels)
    return DatasetStats(
        names=list(label_map.names),
        ids=list(label_map.ids),
        box_counts=boxes,
        image_counts=images,
        median_box_size=_median_by_class(
            np.concatenate(labels_all + [np.zeros(0, np.int64)]), np.concatenate(sizes + [np.zeros(0)]), k
        ),
        num_images=len(reader),
        ignored_boxes=ignored,
        image_classes=image_classes,
    )


def _median_by_class(labels: np.ndarray, sizes: np.ndarray, k: int) -> np.ndarray:
    out = np.full(k, np.nan)
    for c in np.unique(labels):  # one median per class
        out[c] = float(np.median(sizes[labels == c]))
    return out

