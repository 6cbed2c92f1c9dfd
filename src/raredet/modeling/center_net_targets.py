"""CenterNet's targets as the TF OD API assigns them (``CenterNetCenterHeatmapTargetAssigner`` and
``CenterNetBoxTargetAssigner``), over every box of a batch at once.

Boxes come in feature-map units (pixels / stride). A box of height ``h`` and width ``w`` centred at
``(cy, cx)`` puts on its class channel the Gaussian ``d · exp(-((y - ⌊cy⌋)² + (x - ⌊cx⌋)²) / (2σ²))``
(``d`` its data weight); the heatmap is the maximum over the boxes. ``σ = (2 max(⌊r⌋, 0) + 1) / 6`` with
``r`` the CornerNet radius (``max_distance_for_overlap``) for ``min_box_overlap_iou``: the least of the
three roots below, each computed, as the TF OD API does, as ``(-b + √(b² - 4ac)) / 2`` whatever ``a``
(a known deviation from CornerNet that TF keeps; raredet keeps it too, so targets match).

The scale target of a box is ``(h, w)`` and its offset target ``(cy - ⌊cy⌋, cx - ⌊cx⌋)``, both at the
pixel ``(⌊cy⌋, ⌊cx⌋)``.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _root(a: float | Tensor, b: Tensor, c: Tensor) -> Tensor:
    """The TF OD API's ``_smallest_positive_root``: ``(-b + √(b² - 4ac)) / 2`` (sic, not ``/ 2a``)."""
    return (-b + torch.sqrt(b**2 - 4 * a * c)) / 2.0


def max_distance_for_overlap(height: Tensor, width: Tensor, min_iou: float) -> Tensor:
    """How far a box's corners may move and keep IoU ``min_iou`` with it: ``height, width [N]`` -> ``[N]``
    (the least of the three CornerNet cases: overlapping, inside, containing)."""
    offset = _root(1.0, -(height + width), width * height * ((1 - min_iou) / (1 + min_iou)))
    inside = _root(4.0, -2 * (height + width), (1 - min_iou) * width * height)
    containing = _root(4 * min_iou, (2 * min_iou) * (width + height), (min_iou - 1) * width * height)
    return torch.minimum(torch.minimum(offset, containing), inside)


def gaussian_sigma(height: Tensor, width: Tensor, min_iou: float) -> Tensor:
    """``σ = (2 max(⌊r⌋, 0) + 1) / 6`` of each box (``r``: ``max_distance_for_overlap``), ``[N]``."""
    radius = max_distance_for_overlap(height, width, min_iou)
    return (2 * torch.floor(radius).clamp(min=0) + 1) / 6.0


def centers_and_sizes(boxes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``boxes [N, 4]`` xyxy -> (cy, cx, height, width), each ``[N]``."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return (y1 + y2) / 2, (x1 + x2) / 2, y2 - y1, x2 - x1


def center_pixels(boxes: Tensor, height: int, width: int) -> tuple[Tensor, Tensor]:
    """The pixel ``(⌊cy⌋, ⌊cx⌋)`` of each box ``[N, 4]`` (feature-map units), clamped to the map: (y, x)
    int64 ``[N]``."""
    cy, cx, _, _ = centers_and_sizes(boxes)
    y = torch.floor(cy).long().clamp(0, height - 1)
    x = torch.floor(cx).long().clamp(0, width - 1)
    return y, x


def center_heatmap(boxes: Tensor, image_index: Tensor, labels: Tensor, weights: Tensor,
                   shape: tuple[int, int, int, int], min_iou: float) -> Tensor:
    """The center heatmap target ``[B, K, h, w]`` (``shape``) of the boxes ``[N, 4]`` xyxy in feature-map
    units, of image ``image_index [N]``, class ``labels [N]`` (0..K-1) and data weight ``weights [N]``."""
    b, k, h, w = shape
    out = boxes.new_zeros((b * k, h * w))
    if boxes.shape[0] == 0:
        return out.view(shape)
    cy, cx, box_h, box_w = centers_and_sizes(boxes)
    sigma = gaussian_sigma(box_h, box_w, min_iou)
    ys = torch.arange(h, dtype=boxes.dtype, device=boxes.device)
    xs = torch.arange(w, dtype=boxes.dtype, device=boxes.device)
    dy2 = (ys[None, :] - torch.floor(cy)[:, None]) ** 2  # [N, h]
    dx2 = (xs[None, :] - torch.floor(cx)[:, None]) ** 2  # [N, w]
    gauss = torch.exp(-(dy2[:, :, None] + dx2[:, None, :]) / (2 * sigma**2)[:, None, None])  # [N, h, w]
    values = (gauss * weights[:, None, None]).reshape(len(boxes), h * w)
    rows = (image_index * k + labels)[:, None].expand(-1, h * w)
    out.scatter_reduce_(0, rows, values, reduce="amax", include_self=True)
    return out.clamp(min=0).view(shape)


def valid_pixels(image_sizes: Tensor, stride: int, height: int, width: int) -> Tensor:
    """``[B, h, w]`` float, 1 where the pixel lies inside the image (``image_sizes [B, 2]`` (h, w) in
    input pixels; ``⌈size / stride⌉`` map pixels, as the TF OD API's valid anchor weights)."""
    limits = torch.ceil(image_sizes.to(torch.float32) / stride)
    ys = torch.arange(height, device=image_sizes.device, dtype=torch.float32)
    xs = torch.arange(width, device=image_sizes.device, dtype=torch.float32)
    inside = (ys[None, :, None] < limits[:, 0, None, None]) & (xs[None, None, :] < limits[:, 1, None, None])
    return inside.to(torch.float32)


def box_targets(boxes: Tensor, height: int, width: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per box ``[N, 4]`` (feature-map units): its pixel (y, x) int64 ``[N]``, scale target ``[N, 2]``
    (height, width) and offset target ``[N, 2]`` (dy, dx), all in feature-map units."""
    cy, cx, box_h, box_w = centers_and_sizes(boxes)
    y, x = center_pixels(boxes, height, width)
    offset = torch.stack([cy - torch.floor(cy), cx - torch.floor(cx)], dim=-1)
    return y, x, torch.stack([box_h, box_w], dim=-1), offset
