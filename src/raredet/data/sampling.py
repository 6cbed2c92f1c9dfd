"""Repeat-factor sampling (LVIS, Gupta et al. 2019): images with rare classes are seen more often.

Per class ``r(c) = max(1, sqrt(t / f(c)))`` with ``f(c)`` the fraction of training images that contain
``c``; an image's factor is the largest over its classes (1 for an image without boxes). Each epoch an
image is repeated ``floor(r) + Bernoulli(frac(r))`` times (stochastic rounding), so the expected count is
exactly ``r``. With several processes the epoch's list is shuffled identically on every rank and each
rank takes a disjoint interleaved share.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch.utils.data


def class_repeat_factors(image_counts: np.ndarray, num_images: int, threshold: float) -> np.ndarray:
    """r(c) for each class. image_counts: [K] images containing each class. Absent classes get 1."""
    freq = np.asarray(image_counts, dtype=np.float64) / max(num_images, 1)
    with np.errstate(divide="ignore"):
        r = np.sqrt(threshold / freq)
    return np.where(freq > 0, np.maximum(1.0, r), 1.0)


def image_repeat_factors(
    image_classes: Sequence[np.ndarray], num_classes: int, threshold: float
) -> np.ndarray:
    """Repeat factor per image [num_images]; ``image_classes[i]`` holds the class indices of image i."""
    if threshold < 0:
        raise ValueError(f"threshold is {threshold}; it must be >= 0")
    n = len(image_classes)
    lengths = np.array([len(c) for c in image_classes], dtype=np.int64)
    flat = (
        np.concatenate([np.asarray(c, dtype=np.int64) for c in image_classes]) if n else np.zeros(0, np.int64)
    )
    owner = np.repeat(np.arange(n), lengths)
    # Count each class once per image, however many of its boxes the image has.
    present = np.zeros((n, num_classes), dtype=bool)
    present[owner, flat] = True
    per_class = class_repeat_factors(present.sum(axis=0), n, threshold)
    return np.where(present, per_class[None, :], 1.0).max(axis=1, initial=1.0)


class RepeatFactorSampler(torch.utils.data.Sampler[int]):
    """Indices for one epoch on one rank. ``repeat_factors`` [num_images] (all ones: plain shuffling).

    Call :meth:`set_epoch` before each epoch; the indices depend only on (seed, epoch, rank), and every
    rank gets the same number (the epoch's list is padded by wrapping around, as DistributedSampler).
    """

    def __init__(
        self,
        repeat_factors: np.ndarray,
        *,
        seed: int = 0,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.repeat_factors = np.asarray(repeat_factors, dtype=np.float64)
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} not in [0, {world_size})")
        self.seed, self.shuffle, self.rank, self.world_size = seed, shuffle, rank, world_size
        self.epoch = 0
        self._indices = self._epoch_indices()

    def _epoch_indices(self) -> np.ndarray:
        rng = np.random.default_rng([self.seed, self.epoch])
        whole = np.floor(self.repeat_factors)
        counts = (whole + (rng.random(len(whole)) < self.repeat_factors - whole)).astype(np.int64)
        indices = np.repeat(np.arange(len(counts)), counts)
        if self.shuffle:
            indices = indices[rng.permutation(len(indices))]
        per_rank = math.ceil(len(indices) / self.world_size) if len(indices) else 0
        padded = np.resize(indices, per_rank * self.world_size) if len(indices) else indices
        return padded[self.rank :: self.world_size]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self._indices = self._epoch_indices()

    def __len__(self) -> int:
        return len(self._indices)

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices.tolist())

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "epoch": self.epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seed = int(state["seed"])
        self.set_epoch(int(state["epoch"]))
