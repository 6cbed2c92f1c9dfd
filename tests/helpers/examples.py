"""A small hand-made example (image, boxes and per-box fields) for the augmentation and resizer tests."""

from __future__ import annotations

import numpy as np


def make_example(h: int = 4, w: int = 6, boxes=((1, 0, 3, 2), (0, 1, 6, 4))) -> dict:
    image = np.arange(h * w * 3, dtype=np.uint8).reshape(h, w, 3)
    n = len(boxes)
    return {
        "image": image,
        "boxes": np.asarray(boxes, dtype=np.float32).reshape(n, 4),
        "labels": np.arange(n, dtype=np.int64),
        "weights": np.arange(1, n + 1, dtype=np.float32),
        "is_crowd": np.array([False, True][:n] + [False] * max(0, n - 2)),
        "difficult": np.zeros(n, dtype=bool),
    }
