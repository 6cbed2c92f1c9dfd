"""Box geometry on ``xyxy`` boxes (absolute pixels): areas, IoU and generalised IoU.

Every function broadcasts over leading dimensions, so a batch of images is one call.
"""

from __future__ import annotations

import torch
from torch import Tensor


def box_area(boxes: Tensor) -> Tensor:
    """Area of ``boxes [..., 4]`` (xyxy) -> ``[...]``; degenerate boxes (x2 < x1) count as 0."""
    widths = (boxes[..., 2] - boxes[..., 0]).clamp(min=0)
    heights = (boxes[..., 3] - boxes[..., 1]).clamp(min=0)
    return widths * heights


def _intersection_and_union(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Pairwise intersection and union areas of ``a [..., N, 4]`` and ``b [..., M, 4]`` -> ``[..., N, M]``."""
    top_left = torch.maximum(a[..., :, None, :2], b[..., None, :, :2])
    bottom_right = torch.minimum(a[..., :, None, 2:], b[..., None, :, 2:])
    wh = (bottom_right - top_left).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = box_area(a)[..., :, None] + box_area(b)[..., None, :] - inter
    return inter, union


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Intersection over union of every pair: ``a [..., N, 4]``, ``b [..., M, 4]`` -> ``[..., N, M]``.

    Pairs whose union is empty (two zero-area boxes, e.g. padding) get IoU 0, never NaN, as the
    TF OD API's ``iou_similarity`` does.
    """
    inter, union = _intersection_and_union(a, b)
    return torch.where(union > 0, inter / union.clamp(min=torch.finfo(union.dtype).tiny), 0.0)
