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
from collections.abc import Callable, Sequence

import torch
from torch import Tensor


def _cached(
    cache: dict[tuple, Tensor],
    image_size: tuple[int, int],
    feature_sizes: Sequence[tuple[int, int]],
    device: torch.device | str,
    compute: Callable[[], list[Tensor]],
) -> Tensor:
    """``cat(compute())`` on ``device``, remembered per (image size, feature sizes, device)."""
    if torch.jit.is_tracing():
        # A tensor made before the trace began cannot be a traced output: build the anchors inside it.
        return torch.cat(compute()).to(device)
    key = (tuple(image_size), tuple(tuple(s) for s in feature_sizes), str(device))
    if key not in cache:
        cache[key] = torch.cat(compute()).to(device)
    return cache[key]


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
            raise ValueError(f"max_level ({max_level}) < min_level ({min_level})")
        if not aspect_ratios or any(r <= 0 for r in aspect_ratios):
            raise ValueError(f"aspect_ratios must be positive and non-empty, got {list(aspect_ratios)}")
        if scales_per_octave < 1:
            raise ValueError("scales_per_octave must be at least 1")
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
        levels = range(self.min_level, self.max_level + 1)
        pairs = zip(levels, feature_sizes, strict=True)
        return _cached(
            self._cache,
            image_size,
            feature_sizes,
            device,
            lambda: [self._level(level, image_size, size) for level, size in pairs],
        )

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


class SsdAnchorGenerator:
    """The TF OD API's ``ssd_anchor_generator`` (the original SSD's anchors), in absolute pixels.

    Layer ``i`` of ``num_layers`` has scale ``s_i = min_scale + (max_scale - min_scale) i /
    (num_layers - 1)`` (or ``scales[i]``), and one anchor per aspect ratio ``r`` of height
    ``s_i / sqrt(r) * base_anchor_height * min(H, W)`` and width ``s_i sqrt(r) * base_anchor_width *
    min(H, W)``, plus one of scale ``sqrt(s_i s_{i+1})`` (``s_num_layers = 1``) and ratio
    ``interpolated_scale_aspect_ratio`` when that is positive. With ``reduce_boxes_in_lowest_layer`` the
    first layer has just (0.1, 1), (s_0, 2), (s_0, 0.5). Cell ``(y, x)`` of an ``h x w`` map is centred
    at ``((y + 0.5) H / h, (x + 0.5) W / w)`` unless strides / offsets (pixels) are given. Order: layer,
    row, column, then the anchors of a cell in the order above.
    """

    def __init__(
        self,
        num_layers: int = 6,
        min_scale: float = 0.2,
        max_scale: float = 0.95,
        scales: Sequence[float] = (),
        aspect_ratios: Sequence[float] = (1.0, 2.0, 0.5, 3.0, 0.3333),
        interpolated_scale_aspect_ratio: float = 1.0,
        reduce_boxes_in_lowest_layer: bool = True,
        base_anchor_height: float = 1.0,
        base_anchor_width: float = 1.0,
        height_stride: Sequence[int] = (),
        width_stride: Sequence[int] = (),
        height_offset: Sequence[int] = (),
        width_offset: Sequence[int] = (),
    ) -> None:
        if scales and len(scales) != num_layers:
            raise ValueError(f"ssd_anchor_generator: {len(scales)} scales given for num_layers {num_layers}")
        for name, values in (
            ("height_stride", height_stride),
            ("width_stride", width_stride),
            ("height_offset", height_offset),
            ("width_offset", width_offset),
        ):
            if values and len(values) != num_layers:
                raise ValueError(f"ssd_anchor_generator.{name}: give one value per layer ({num_layers})")
        if num_layers < 2 and not scales:
            raise ValueError("ssd_anchor_generator: num_layers must be at least 2 (or give scales)")
        layer_scales = list(scales) or [
            min_scale + (max_scale - min_scale) * i / (num_layers - 1) for i in range(num_layers)
        ]
        self.num_layers = num_layers
        self.box_specs = [
            self._layer_specs(
                i,
                layer_scales + [1.0],
                aspect_ratios,
                interpolated_scale_aspect_ratio,
                reduce_boxes_in_lowest_layer,
            )
            for i in range(num_layers)
        ]
        self.base = (float(base_anchor_height), float(base_anchor_width))
        self.strides = (list(height_stride), list(width_stride))
        self.offsets = (list(height_offset), list(width_offset))
        self._cache: dict[tuple, Tensor] = {}

    @staticmethod
    def _layer_specs(
        i: int, scales: list[float], ratios: Sequence[float], interpolated_ratio: float, reduce_lowest: bool
    ) -> list[tuple[float, float]]:
        if i == 0 and reduce_lowest:
            return [(0.1, 1.0), (scales[0], 2.0), (scales[0], 0.5)]
        specs = [(scales[i], float(r)) for r in ratios]
        if interpolated_ratio > 0:
            specs.append((math.sqrt(scales[i] * scales[i + 1]), float(interpolated_ratio)))
        return specs

    @property
    def num_anchors_per_location(self) -> list[int]:
        return [len(specs) for specs in self.box_specs]

    def __call__(
        self,
        image_size: tuple[int, int],
        feature_sizes: Sequence[tuple[int, int]],
        device: torch.device | str = "cpu",
    ) -> Tensor:
        """Anchors ``[A, 4]`` xyxy pixels for an image ``(H, W)`` and one ``(h, w)`` per layer."""
        if len(feature_sizes) != self.num_layers:
            raise ValueError(f"got {len(feature_sizes)} feature maps for num_layers {self.num_layers}")
        return _cached(
            self._cache,
            image_size,
            feature_sizes,
            device,
            lambda: [self._layer(i, image_size, size) for i, size in enumerate(feature_sizes)],
        )

    def _layer(self, i: int, image_size: tuple[int, int], grid: tuple[int, int]) -> Tensor:
        """``[h * w * n, 4]`` anchors of layer ``i``, row-major over cells."""
        (img_h, img_w), side = image_size, float(min(image_size))
        stride_y = self.strides[0][i] if self.strides[0] else img_h / grid[0]
        stride_x = self.strides[1][i] if self.strides[1] else img_w / grid[1]
        offset_y = self.offsets[0][i] if self.offsets[0] else 0.5 * stride_y
        offset_x = self.offsets[1][i] if self.offsets[1] else 0.5 * stride_x
        cy, cx = torch.meshgrid(
            torch.arange(grid[0], dtype=torch.float32) * stride_y + offset_y,
            torch.arange(grid[1], dtype=torch.float32) * stride_x + offset_x,
            indexing="ij",
        )
        centers = torch.stack([cx, cy], dim=-1).reshape(-1, 1, 2)
        scales, ratios = (torch.tensor(v, dtype=torch.float32) for v in zip(*self.box_specs[i], strict=True))
        half_w = scales * ratios.sqrt() * self.base[1] * side / 2
        half_h = scales / ratios.sqrt() * self.base[0] * side / 2
        half = torch.stack([half_w, half_h], dim=-1)[None]  # [1, n, 2]
        return torch.cat([centers - half, centers + half], dim=-1).reshape(-1, 4)
