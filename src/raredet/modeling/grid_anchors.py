"""The TF OD API's ``grid_anchor_generator``: Faster R-CNN's anchors on one feature map, in pixels.

For every scale ``s`` and aspect ratio ``a`` an anchor is ``s * height / sqrt(a)`` high and
``s * width * sqrt(a)`` wide; anchor centres are ``(i * height_stride + height_offset,
j * width_stride + width_offset)`` for every feature-map cell ``(i, j)`` (offset 0: centred on the
cell's top-left corner, as in the TF OD API). Order: cell-major (row, then column), then aspect
ratio, then scale — the layout of the RPN head's outputs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

# The TF OD API's GridAnchorGenerator defaults when a config lists no scales / aspect ratios.
DEFAULT_SCALES = (0.5, 1.0, 2.0)
DEFAULT_ASPECT_RATIOS = (0.5, 1.0, 2.0)


class GridAnchorGenerator:
    """Grid anchors (module docstring); ``__call__((fh, fw)) -> [fh * fw * n, 4]`` xyxy pixels."""

    def __init__(
        self,
        height: int = 256,
        width: int = 256,
        height_stride: int = 16,
        width_stride: int = 16,
        height_offset: int = 0,
        width_offset: int = 0,
        scales: Sequence[float] = (),
        aspect_ratios: Sequence[float] = (),
    ) -> None:
        self.scales = tuple(float(s) for s in scales) or DEFAULT_SCALES
        self.aspect_ratios = tuple(float(a) for a in aspect_ratios) or DEFAULT_ASPECT_RATIOS
        if min(self.scales) <= 0 or min(self.aspect_ratios) <= 0:
            raise ValueError("scales and aspect_ratios must be > 0")
        if height_stride <= 0 or width_stride <= 0:
            raise ValueError("height_stride and width_stride must be > 0")
        self.base = (float(height), float(width))
        self.stride = (int(height_stride), int(width_stride))
        self.offset = (float(height_offset), float(width_offset))

    @property
    def num_anchors_per_location(self) -> int:
        return len(self.scales) * len(self.aspect_ratios)

    def sizes(self) -> Tensor:
        """``[n, 2]`` (height, width) of the anchors at one location, aspect ratio major."""
        scales = torch.tensor(self.scales, dtype=torch.float64)
        ratios = torch.tensor(self.aspect_ratios, dtype=torch.float64).sqrt()
        heights = (scales[None, :] / ratios[:, None]) * self.base[0]
        widths = (scales[None, :] * ratios[:, None]) * self.base[1]
        return torch.stack([heights.flatten(), widths.flatten()], dim=-1)

    def __call__(self, feature_size: tuple[int, int], device: torch.device | None = None) -> Tensor:
        fh, fw = feature_size
        ys = torch.arange(fh, dtype=torch.float64) * self.stride[0] + self.offset[0]
        xs = torch.arange(fw, dtype=torch.float64) * self.stride[1] + self.offset[1]
        cy, cx = torch.meshgrid(ys, xs, indexing="ij")
        centers = torch.stack([cx.flatten(), cy.flatten()], dim=-1)[:, None, :]  # [fh*fw, 1, 2] (x, y)
        half = self.sizes().flip(-1)[None] / 2  # [1, n, 2] (w/2, h/2)
        anchors = torch.cat([centers - half, centers + half], dim=-1)  # [fh*fw, n, 4]
        return anchors.reshape(-1, 4).to(device=device, dtype=torch.float32)
