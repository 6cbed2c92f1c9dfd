"""A reader of annotations only (no images), for the dataset statistics tests."""

from __future__ import annotations

import numpy as np


class BoxesOnly:
    """`images`: per image (boxes [n][4] xyxy, labels [n] indices, is_crowd [n]); `annotations(i)` as
    the readers return them (weights 1, nothing difficult)."""

    def __init__(self, images):
        self.images = images  # list of (boxes, labels, is_crowd)

    def __len__(self):
        return len(self.images)

    def annotations(self, i):
        boxes, labels, crowd = self.images[i]
        n = len(labels)
        return {
            "boxes": np.asarray(boxes, np.float32).reshape(n, 4),
            "labels": np.asarray(labels, np.int64),
            "weights": np.ones(n, np.float32),
            "is_crowd": np.asarray(crowd, bool),
            "difficult": np.zeros(n, bool),
        }


# 3 images: class a has boxes of size 2, 4 and 6 in 2 images; b one box (6) and a crowd region.
BY_HAND_IMAGES = [
    ([[0, 0, 2, 2], [0, 0, 4, 4]], [0, 0], [False, False]),  # sizes 2 and 4
    ([[0, 0, 6, 6], [0, 0, 3, 12], [0, 0, 9, 9]], [0, 1, 1], [False, False, True]),  # 6; 6 (3x12); crowd
    ([], [], []),
]
