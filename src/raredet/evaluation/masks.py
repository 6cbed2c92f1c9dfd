"""Instance masks and keypoints into COCO records, for `coco_mask_metrics` and keypoint metrics.

Detections' ``detection_masks`` are box-relative, as the TF OD API's models output them before
reframing: [D, h, w] float in [0, 1], row 0 at the box's top edge, column 0 at its left edge. They are
pasted into the image as the TF OD API's evaluation does (``reframe_box_masks_to_image_masks``: a
bilinear ``crop_and_resize`` of each mask through the image window expressed in its box's frame, zero
outside the box, then ``> 0.5``), and encoded as COCO RLE. Ground-truth masks come as full-image
{0, 1} arrays and are only encoded.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch


def encode_rle(masks: np.ndarray) -> list[dict[str, Any]]:
    """uint8 [N, H, W] {0, 1} -> N COCO RLEs ``{"size": [H, W], "counts": str}`` (JSON-ready)."""
    from faster_coco_eval.core import mask as mask_utils

    n, h, w = masks.shape
    if n == 0:
        return []
    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    return [{"size": [h, w], "counts": r["counts"].decode("ascii")} for r in rles]


def _axis_samples(lo: np.ndarray, hi: np.ndarray, n_out: int,
                  n_in: int) -> tuple[np.ndarray, np.ndarray]:
    """Where ``tf.image.crop_and_resize`` samples along one axis: output pixel i of n_out sits at image
    coordinate t = i / (n_out - 1) (0.5 when n_out is 1); relative to a box spanning [lo, hi]
    (image-normalised, [D]) it reads mask position (n_in - 1) * (t - lo) / (hi - lo). Returns the
    positions [D, n_out] and whether each lies inside the mask, [0, n_in - 1] (outside reads zero)."""
    t = np.arange(n_out, dtype=np.float64) / max(n_out - 1, 1) if n_out > 1 else np.full(1, 0.5)
    size = np.maximum(hi - lo, 1e-4)  # TF's floor on a box side
    pos = (n_in - 1) * (t[None, :] - lo[:, None]) / size[:, None]
    return pos, (pos >= 0) & (pos <= n_in - 1)


def _interpolation(pos: np.ndarray, n_in: int) -> np.ndarray:
    """[P, n_in] linear-interpolation weights of positions [P] in [0, n_in - 1]."""
    floor = np.floor(pos)
    frac = pos - floor
    weights = np.zeros((len(pos), n_in))
    rows = np.arange(len(pos))
    np.add.at(weights, (rows, floor.astype(np.int64)), 1.0 - frac)
    np.add.at(weights, (rows, np.minimum(np.ceil(pos), n_in - 1).astype(np.int64)), frac)
    return weights


def _pasted_crops(masks: np.ndarray | torch.Tensor, boxes: np.ndarray, height: int,
                  width: int) -> Iterator[tuple[int, int, int, np.ndarray]]:
    """(detection k, first row, first column, bool crop) of each box-relative mask pasted into the
    image (`paste_box_masks`), the crop covering the pixels its box samples (all else is zero).

    Bilinear sampling is separable: inside its box a pasted mask is ``Wy @ mask @ Wx.T`` with the
    interpolation weights of the rows and columns the box covers. One product per detection, over the
    pixels of its box only."""
    m = torch.as_tensor(masks).detach().cpu().numpy().astype(np.float64)
    d, mh, mw = m.shape
    b = np.asarray(boxes, dtype=np.float64).reshape(d, 4)
    ys, y_in = _axis_samples(b[:, 1] / height, b[:, 3] / height, height, mh)
    xs, x_in = _axis_samples(b[:, 0] / width, b[:, 2] / width, width, mw)
    for k in range(d):  # per detection: its rows and columns (contiguous ranges: positions grow with i)
        rows, cols = np.flatnonzero(y_in[k]), np.flatnonzero(x_in[k])
        if rows.size and cols.size:
            crop = _interpolation(ys[k, rows], mh) @ m[k] @ _interpolation(xs[k, cols], mw).T
            yield k, int(rows[0]), int(cols[0]), crop > 0.5


def paste_box_masks(masks: np.ndarray | torch.Tensor, boxes: np.ndarray, height: int,
                    width: int) -> np.ndarray:
    """Box-relative masks [D, h, w] in [0, 1] and their boxes [D, 4] xyxy in pixels of a height x width
    image -> uint8 [D, height, width], 1 where the reframed mask is > 0.5 (TF OD API evaluation)."""
    out = np.zeros((len(masks), height, width), dtype=np.uint8)
    for k, top, left, crop in _pasted_crops(masks, boxes, height, width):
        out[k, top:top + crop.shape[0], left:left + crop.shape[1]] = crop
    return out


def box_masks_to_rle(masks: np.ndarray | torch.Tensor, boxes: np.ndarray, height: int,
                     width: int) -> list[dict[str, Any]]:
    """`paste_box_masks` straight to COCO RLEs, without the full-image arrays: each crop's columns are
    run-length encoded (column-major, as COCO) and the all-zero columns around them added to the first
    and last runs."""
    from faster_coco_eval.core import mask as mask_utils

    counts: list[list[int]] = [[height * width] for _ in range(len(masks))]  # empty unless pasted
    for k, top, left, crop in _pasted_crops(masks, boxes, height, width):
        strip = np.zeros((crop.shape[1], height), dtype=np.int8)  # the crop's columns, full height
        strip[:, top:top + crop.shape[0]] = crop.T
        counts[k] = _runs(strip.ravel(), left * height, (width - left - crop.shape[1]) * height)
    rles = [mask_utils.frPyObjects({"size": [height, width], "counts": c}, height, width) for c in counts]
    return [{"size": [height, width], "counts": r["counts"].decode("ascii")} for r in rles]


def _runs(flat: np.ndarray, before: int, after: int) -> list[int]:
    """COCO's uncompressed counts (zeros first) of ``before`` zeros, ``flat`` {0, 1}, ``after`` zeros."""
    change = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], change, [flat.size]])).tolist()
    if flat[0]:
        runs = [0, *runs]
    runs[0] += before
    if not flat[-1]:
        runs[-1] += after
    elif after:
        runs.append(after)
    return [int(r) for r in runs]


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
