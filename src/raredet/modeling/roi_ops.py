"""Region-of-interest ops of the two-stage detector: ``tf.image.crop_and_resize``'s semantics.

For a box ``(y1, x1, y2, x2)`` in coordinates normalised to ``[0, 1]`` over a feature map of
``H x W`` cells and a crop of ``S x S``, sample ``i`` (``0 <= i < S``) reads the map at
``y = y1 (H - 1) + i ((y2 - y1) (H - 1) / (S - 1))`` (``S = 1``: ``y = (y1 + y2) (H - 1) / 2``), the
same in x (TF's kernel computes in this order, so a sample on the map's last row lands on it as in
TF), with bilinear interpolation between the four nearest cells. Outside the map:

* ``tf.image.crop_and_resize`` (``matmul=False``): a sample outside ``[0, H - 1] x [0, W - 1]`` is
  ``extrapolation_value`` (0), not blended with the border;
* the TF OD API's ``matmul_crop_and_resize`` (``matmul=True``, what ``use_matmul_crop_and_resize``
  selects: ``multilevel_roi_align`` with ``align_corners``): each of the four neighbours outside the map
  is 0 and the others keep their bilinear weights, so a sample a rounding error past the last row is
  that row, where the native op gives 0. Inside the map both are the same.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _sample_positions(lo: Tensor, hi: Tensor, size: int, crop: int) -> Tensor:
    """``lo, hi [B, N]`` normalised -> ``[B, N, crop]`` positions in cells of a map of ``size``."""
    scale = float(size - 1)
    if crop == 1:
        return ((lo + hi) * 0.5 * scale)[..., None]
    steps = torch.arange(crop, device=lo.device, dtype=lo.dtype)
    return (lo * scale)[..., None] + steps * ((hi - lo) * scale / (crop - 1))[..., None]


def crop_and_resize(
    features: Tensor, boxes: Tensor, crop_size: int, extrapolation_value: float = 0.0,
    matmul: bool = False,
) -> Tensor:
    """``features [B, C, H, W]``, ``boxes [B, N, 4]`` normalised (y1, x1, y2, x2) -> crops
    ``[B * N, C, crop_size, crop_size]`` (box-major within each image, images in order); ``matmul``:
    the TF OD API's ``matmul_crop_and_resize`` at the map's edges (module docstring)."""
    b, c, h, w = features.shape
    n = boxes.shape[1]
    ys = _sample_positions(boxes[..., 0], boxes[..., 2], h, crop_size)  # [B, N, S]
    xs = _sample_positions(boxes[..., 1], boxes[..., 3], w, crop_size)
    # grid_sample with align_corners=True maps -1 / +1 to the first / last cell centre: the same
    # cell coordinates as above, and bilinear weights equal to TF's; its zero padding is the matmul
    # op's (a neighbour outside the map is 0).
    gy = ys * (2.0 / max(h - 1, 1)) - 1.0
    gx = xs * (2.0 / max(w - 1, 1)) - 1.0
    grid = torch.stack(torch.broadcast_tensors(gx[..., None, :], gy[..., :, None]), dim=-1)  # [B,N,S,S,2]
    grid = grid.reshape(b, n * crop_size, crop_size, 2).float()
    # float32 sampling positions whatever the features' dtype (bfloat16 would move them by up to
    # 1/128 of the map); the crops come back in the features' dtype
    sampled = F.grid_sample(features.float(), grid, mode="bilinear", padding_mode="zeros",
                            align_corners=True).to(features.dtype)
    crops = sampled.reshape(b, c, n, crop_size, crop_size).transpose(1, 2)  # [B, N, C, S, S]
    if not matmul:
        inside = ((ys >= 0) & (ys <= h - 1))[..., :, None] & ((xs >= 0) & (xs <= w - 1))[..., None, :]
        crops = torch.where(inside[:, :, None], crops, torch.full_like(crops, extrapolation_value))
    elif extrapolation_value:
        raise ValueError("crop_and_resize(matmul=True) extrapolates with 0 only (zero padding)")
    return crops.reshape(b * n, c, crop_size, crop_size)
