"""The TF OD API's ``multiscale_anchor_generator`` (RetinaNet anchors), in absolute pixels.

Level ``l`` has stride ``s = 2**l``. Its anchors have base size ``anchor_scale * s * 2**(i /
scales_per_octave)`` for ``i = 0 .. scales_per_octave - 1`` and, for aspect ratio ``r`` (width /
height), ``h = base / sqrt(r)``, ``w = base * sqrt(r)``. They are centred at ``(x * s + o, y * s + o)``
for feature cell ``(y, x)`` with offset ``o = s / 2`` — the TF OD API's convention, which uses ``o = 0``
along an image side that ``s`` does not divide; raredet does the same so that the two agree on every
size.

Order of the ``[A, 4]`` output: level, then row, then column, then aspect ratio, then scale (the TF OD
API's order within a cell). The box predictor flattens its outputs in the same order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from raredet.errors import ConfigError


class MultiscaleAnchorGenerator:
    """Anchors for FPN levels ``min_level .. max_level``; cached per (image size, feature sizes)."""

    def __init__(
        self,
        min_level: int = 3,
        max_level: int = 7,
        anchor_scale: float = 4.0,
        aspect_ratios: Sequence[float] = (1.0, 2.0, 0.5),
        scales_per_octave: int = 2,
    ) -> None:
        if max_level < min_level:
            raise ConfigError(
                f"multiscale_anchor_generator: max_level ({max_level}) < min_level ({min_level})"
            )
        if not aspect_ratios or any(r <= 0 for r in aspect_ratios):
            raise ConfigError(
                f"multiscale_anchor_generator: aspect_ratios must be positive and non-empty, got "
                f"{list(aspect_ratios)}"
            )
        if scales_per_octave < 1:
            raise ConfigError("multiscale_anchor_generator: scales_per_octave must be at least 1")
        self.min_level, self.max_level = min_level, max_level
        self.anchor_scale = float(anchor_scale)
        self.aspect_ratios = [float(r) for r in aspect_ratios]
        self.scales_per_octave = scales_per_octave
        self._cache: dict[tuple, Tensor] = {}

    @property
    def num_anchors_per_location(self) -> int:
        return len(self.aspect_ratios) * self.scales_per_octave

    @property
    def num_levels(self) -> int:
        return self.max_level - self.min_level + 1

    def cell_sizes(self, level: int) -> Tensor:
        """``[num_anchors_per_location, 2]`` (height, width) of one cell's anchors at ``level``."""
        base = self.anchor_scale * 2.0**level
        scales = torch.tensor([2.0 ** (i / self.scales_per_octave) for i in range(self.scales_per_octave)])
        ratio_sqrt = torch.tensor([math.sqrt(r) for r in self.aspect_ratios])
        heights = base * scales[None, :] / ratio_sqrt[:, None]  # [ratios, scales]
        widths = base * scales[None, :] * ratio_sqrt[:, None]
        return torch.stack([heights.reshape(-1), widths.reshape(-1)], dim=-1)

    def __call__(
        self,
        image_size: tuple[int, int],
        feature_sizes: Sequence[tuple[int, int]],
        device: torch.device | str = "cpu",
    ) -> Tensor:
        """Anchors ``[A, 4]`` xyxy pixels for an image ``(H, W)`` and one ``(h, w)`` per level."""
        if len(feature_sizes) != self.num_levels:
            raise ValueError(
                f"got {len(feature_sizes)} feature maps for levels {self.min_level}..{self.max_level}"
            )
        key = (tuple(image_size), tuple(tuple(s) for s in feature_sizes), str(device))
        if key not in self._cache:
            levels = range(self.min_level, self.max_level + 1)
            pairs = zip(levels, feature_sizes, strict=True)
            parts = [self._level(level, image_size, size) for level, size in pairs]
            self._cache[key] = torch.cat(parts).to(device)
        return self._cache[key]

    def _level(self, level: int, image_size: tuple[int, int], feature_size: tuple[int, int]) -> Tensor:
        """``[h * w * n, 4]`` anchors of one level, row-major over cells."""
        stride = 2**level
        offset_y = stride / 2.0 if image_size[0] % stride == 0 else 0.0
        offset_x = stride / 2.0 if image_size[1] % stride == 0 else 0.0
        ys = torch.arange(feature_size[0], dtype=torch.float32) * stride + offset_y
        xs = torch.arange(feature_size[1], dtype=torch.float32) * stride + offset_x
        cy, cx = torch.meshgrid(ys, xs, indexing="ij")
        centers = torch.stack([cx, cy], dim=-1).reshape(-1, 1, 2)  # [cells, 1, (x, y)]
        half = self.cell_sizes(level).flip(-1)[None] / 2  # [1, n, (w/2, h/2)]
        return torch.cat([centers - half, centers + half], dim=-1).reshape(-1, 4)
