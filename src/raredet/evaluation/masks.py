"""Instance masks and keypoints into COCO records, for `coco_mask_metrics` and keypoint metrics.

Detections' ``detection_masks`` are box-relative, as the TF OD API's models output them before
reframing: [D, h, w] float in [0, 1], row 0 at the box's top edge, column 0 at its left edge. They are
pasted into the image as the TF OD API's evaluation does (``reframe_box_masks_to_image_masks``: a
bilinear ``crop_and_resize`` of each mask through the image window expressed in its box's frame, zero
outside the box, then ``> 0.5``), and encoded as COCO RLE. Ground-truth masks come as full-image
{0, 1} arrays and are only encoded.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

# Detections pasted at once: [chunk, H, W] float32 is the largest array `paste_box_masks` makes.
PASTE_CHUNK = 16


def encode_rle(masks: np.ndarray) -> list[dict[str, Any]]:
    """uint8 [N, H, W] {0, 1} -> N COCO RLEs ``{"size": [H, W], "counts": str}`` (JSON-ready)."""
    from faster_coco_eval.core import mask as mask_utils

    n, h, w = masks.shape
    if n == 0:
        return []
    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    return [{"size": [h, w], "counts": r["counts"].decode("ascii")} for r in rles]


def _axis_weights(lo: torch.Tensor, hi: torch.Tensor, n_out: int,
                  n_in: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bilinear sampling along one axis, as ``tf.image.crop_and_resize`` samples: output pixel i of
    n_out sits at image coordinate t = i / (n_out - 1) (0.5 when n_out is 1); relative to a box spanning
    [lo, hi] (image-normalised, [D]) it reads mask position (n_in - 1) * (t - lo) / (hi - lo), zero
    outside [0, n_in - 1]. Returns (index0, index1, weight0, weight1), each [D, n_out]."""
    t = torch.arange(n_out, dtype=torch.float64) / max(n_out - 1, 1)
    if n_out == 1:
        t = torch.full((1,), 0.5, dtype=torch.float64)
    size = (hi - lo).clamp(min=1e-4)  # TF's floor on a box side
    pos = (n_in - 1) * (t[None, :] - lo[:, None]) / size[:, None]
    valid = (pos >= 0) & (pos <= n_in - 1)
    floor = pos.floor().clamp(0, n_in - 1)
    frac = (pos - floor) * valid
    index0 = floor.long()
    index1 = pos.ceil().clamp(0, n_in - 1).long()
    return index0, index1, ((1 - frac) * valid).float(), frac.float()


def paste_box_masks(masks: np.ndarray | torch.Tensor, boxes: np.ndarray, height: int,
                    width: int) -> np.ndarray:
    """Box-relative masks [D, h, w] in [0, 1] and their boxes [D, 4] xyxy in pixels of a height x width
    image -> uint8 [D, height, width], 1 where the reframed mask is > 0.5 (TF OD API evaluation)."""
    masks_t = torch.as_tensor(masks, dtype=torch.float32).cpu()
    d, mh, mw = masks_t.shape
    out = np.zeros((d, height, width), dtype=np.uint8)
    b = torch.as_tensor(np.asarray(boxes, dtype=np.float64).reshape(d, 4))
    for start in range(0, d, PASTE_CHUNK):  # chunks of detections, to bound the memory
        sl = slice(start, start + PASTE_CHUNK)
        y0, y1, wy0, wy1 = _axis_weights(b[sl, 1] / height, b[sl, 3] / height, height, mh)
        x0, x1, wx0, wx1 = _axis_weights(b[sl, 0] / width, b[sl, 2] / width, width, mw)
        m = masks_t[sl]
        k = m.shape[0]
        # Columns first: [k, mh, width], then rows: [k, height, width].
        cols = (wx0[:, None, :] * m.gather(2, x0[:, None, :].expand(k, mh, width))
                + wx1[:, None, :] * m.gather(2, x1[:, None, :].expand(k, mh, width)))
        full = (wy0[:, :, None] * cols.gather(1, y0[:, :, None].expand(k, height, width))
                + wy1[:, :, None] * cols.gather(1, y1[:, :, None].expand(k, height, width)))
        out[sl] = (full > 0.5).numpy()
    return out


def coco_keypoints(keypoints: np.ndarray,
                   visible: np.ndarray | None = None) -> tuple[list[list[float]], list[int]]:
    """[N, J, 2] (x, y) pixels, NaN where absent, and optional bool [N, J] -> per object the COCO
    ``keypoints`` list [x, y, v] * J (v 2 where labelled, else 0 with x = y = 0) and ``num_keypoints``."""
    kp = np.asarray(keypoints, dtype=np.float64)
    labelled = np.asarray(np.isfinite(kp).all(axis=-1), dtype=bool)
    if visible is not None:
        labelled = labelled & np.asarray(visible, dtype=bool)
    xyv = np.concatenate([np.where(labelled[..., None], kp, 0.0), 2.0 * labelled[..., None]], axis=-1)
    return xyv.reshape(len(kp), -1).tolist(), labelled.sum(axis=1).astype(int).tolist()
