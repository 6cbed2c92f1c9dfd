"""Instance masks and keypoints: decoding them from records and moving them with the image.

An example read with masks has ``masks`` uint8 [N, H, W] in {0, 1} at the image's size; one read with
keypoints has ``keypoints`` float32 [N, J, 2] (x, y) in pixels of the image, NaN where a keypoint is
absent, and ``keypoint_visibilities`` bool [N, J] (True where the keypoint is labelled, visible or not,
as the TF OD API's decoder sets them). Both stay aligned with the boxes (`augment.keep_boxes`).

Decoding follows the TF OD API's tf_example_decoder: PNG masks are decoded to one channel and a pixel
is in the mask when it is > 0; numerical masks are a float list of N*H*W values, > 0 in the mask;
keypoint x / y are normalised, N*J of each; a keypoint's visibility 0 means unlabelled (the keypoint
becomes NaN), 1 or 2 labelled. COCO JSON: ``segmentation`` polygons or RLE (iscrowd's uncompressed
RLE too), decoded with faster-coco-eval's mask utilities; ``keypoints`` [x, y, v] * J in pixels.

With either, an example also has ``area`` float32 [N]: each object's annotated area in pixels of the
stored image (TF records' ``image/object/area``, COCO's ``area``), 0 where the data gives none. The
evaluation uses it as the TF OD API's does (``groundtruth_area``: COCO's size ranges, and the OKS scale
of keypoints), falling back to the box area where it is 0.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from raredet.errors import DataError

INSTANCE_KEYS = ("masks", "keypoints", "keypoint_visibilities", "area")


# ---- decoding ------------------------------------------------------------------------------------


def decode_png_masks(encoded: Sequence[bytes], height: int, width: int, where: str) -> np.ndarray:
    """PNG (or any single-image format Pillow reads) instance masks -> uint8 [N, height, width]."""
    masks = np.zeros((len(encoded), height, width), dtype=np.uint8)
    for i, data in enumerate(encoded):  # one decode per instance
        try:
            with Image.open(io.BytesIO(data)) as img:
                pixels = np.asarray(img.convert("L"))
        except Exception as err:
            raise DataError(f"{where}: field 'image/object/mask' value {i} cannot be decoded as PNG ({err}); "
                            "write masks as the TF OD API does (one PNG per object)") from err
        if pixels.shape != (height, width):
            raise DataError(
                f"{where}: field 'image/object/mask' value {i} is {pixels.shape[1]}x{pixels.shape[0]} "
                f"pixels, the image is {width}x{height}; each mask must have the image's size")
        masks[i] = pixels > 0
    return masks


def numerical_masks(values: Sequence[float], n: int, height: int, width: int, where: str) -> np.ndarray:
    """A float list of n*height*width values (NUMERICAL_MASKS) -> uint8 [n, height, width]."""
    if len(values) != n * height * width:
        raise DataError(
            f"{where}: field 'image/object/mask' has {len(values)} values; {n} objects of {height}x{width} "
            f"pixels need {n * height * width} (or set mask_type: PNG_MASKS if the masks are PNGs)")
    return (np.asarray(values, dtype=np.float32).reshape(n, height, width) > 0).astype(np.uint8)


def record_keypoints(x: Sequence[float], y: Sequence[float], visibility: Sequence[int], n: int,
                     num_keypoints: int, height: int, width: int,
                     where: str) -> tuple[np.ndarray, np.ndarray]:
    """Keypoints of a TF record (normalised x, y, optional visibility, each N*J long) -> (float32
    [N, J, 2] (x, y) pixels, NaN where absent; bool [N, J]). No keypoints at all: every one absent."""
    j = num_keypoints
    if not len(x) and not len(y):
        return absent_keypoints(n, j)
    for key, values in (("x", x), ("y", y)):
        if len(values) != n * j:
            raise DataError(
                f"{where}: field 'image/object/keypoint/{key}' has {len(values)} values; {n} objects with "
                f"num_keypoints {j} need {n * j}; fix the record or the input reader's num_keypoints")
    xy = np.stack([np.asarray(x, dtype=np.float32) * width, np.asarray(y, dtype=np.float32) * height],
                  axis=-1).reshape(n, j, 2)
    if len(visibility) == n * j:
        vis = np.isin(np.asarray(visibility, dtype=np.int64), (1, 2)).reshape(n, j)
    else:  # the TF OD API's default when the visibilities are missing or mis-sized: labelled unless NaN
        vis = np.ones((n, j), dtype=bool)
    return _absent_as_nan(xy, vis)


def coco_keypoints(values: list[Any], num_keypoints: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    """One COCO annotation's ``keypoints`` [x, y, v] * J -> ([J, 2] pixels, NaN if v == 0; [J] bool)."""
    if len(values) != 3 * num_keypoints or not all(_is_number(v) for v in values):
        raise DataError(f"{name}: field 'keypoints' has {len(values)} values; num_keypoints "
                        f"{num_keypoints} needs {3 * num_keypoints} numbers [x, y, v] * {num_keypoints}")
    triples = np.asarray(values, dtype=np.float32).reshape(num_keypoints, 3)
    xy, vis = _absent_as_nan(triples[None, :, :2], np.isin(triples[None, :, 2], (1, 2)))
    return xy[0], vis[0]


def areas(values: Sequence[float], n: int, where: str, field: str) -> np.ndarray:
    """float32 [n] object areas (none given: zeros, "use the box area")."""
    if not len(values):
        return np.zeros(n, dtype=np.float32)
    area = np.asarray(values, dtype=np.float32)
    if len(area) != n:
        raise DataError(f"{where}: field '{field}' has {len(area)} values for {n} objects; give each "
                        "object's area in pixels (or leave the field out)")
    if not (np.isfinite(area) & (area >= 0)).all():
        bad = int(np.flatnonzero(~(np.isfinite(area) & (area >= 0)))[0])
        raise DataError(f"{where}: field '{field}' of object {bad} is {area[bad]}; an area is a finite "
                        "number >= 0 of pixels")
    return area


def absent_keypoints(n: int, num_keypoints: int) -> tuple[np.ndarray, np.ndarray]:
    return (np.full((n, num_keypoints, 2), np.nan, dtype=np.float32),
            np.zeros((n, num_keypoints), dtype=bool))


def _absent_as_nan(xy: np.ndarray, vis: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    vis = vis & np.isfinite(xy).all(axis=-1)
    return np.where(vis[..., None], xy, np.nan).astype(np.float32), vis


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def coco_segmentation_masks(segmentations: Sequence[Any], height: int, width: int,
                            names: Sequence[str]) -> np.ndarray:
    """COCO ``segmentation`` values (polygon lists, or RLE dicts, compressed or not) -> uint8 [N, H, W]."""
    from faster_coco_eval.core import mask as mask_utils  # imported only when masks are read

    masks = np.zeros((len(segmentations), height, width), dtype=np.uint8)
    for i, seg in enumerate(segmentations):  # one decode per instance
        try:
            seg = _checked_segmentation(seg, names[i])
            if isinstance(seg, dict) and isinstance(seg["counts"], (str, bytes)):  # compressed RLE: as is
                counts = seg["counts"].encode("ascii") if isinstance(seg["counts"], str) else seg["counts"]
                rle = {"size": list(seg["size"]), "counts": counts}
            else:  # polygons, or the uncompressed RLE of crowds
                rles = mask_utils.frPyObjects(seg, height, width)
                rle = mask_utils.merge(rles) if isinstance(rles, list) else rles
            decoded = mask_utils.decode(rle)
        except DataError:
            raise
        except Exception as err:
            raise DataError(f"{names[i]}: field 'segmentation' cannot be decoded ({err}); give polygons "
                            "[[x1, y1, x2, y2, ...], ...] or an RLE {'size': [h, w], 'counts': ...}") from err
        if decoded.shape[:2] != (height, width):
            raise DataError(f"{names[i]}: field 'segmentation' is an RLE of size {list(decoded.shape[:2])}; "
                            f"the image is {height}x{width} (height x width)")
        masks[i] = decoded.reshape(height, width)
    return masks


def _checked_segmentation(seg: Any, name: str) -> Any:
    if isinstance(seg, dict) and "counts" in seg and "size" in seg:
        return seg
    if isinstance(seg, list) and seg and all(isinstance(p, list) and len(p) >= 6 for p in seg):
        return seg
    raise DataError(f"{name}: field 'segmentation' is missing or not polygons / RLE; instance masks were "
                    "asked for (load_instance_masks), so every annotation needs one")


# ---- geometry ------------------------------------------------------------------------------------


def resize_masks(masks: np.ndarray, height: int, width: int, align_corners: bool = False) -> np.ndarray:
    """Nearest-neighbour resize of [N, h, w] to [N, height, width] as the TF OD API resizes masks
    (TF1's ``resize_nearest_neighbor``, no half-pixel centres): output pixel i reads input
    ``floor(i * h / height)``, or with ``align_corners`` (its evaluation's way back to the original
    size) ``round(i * (h - 1) / (height - 1))``, halves away from zero."""
    n, h, w = masks.shape
    if (h, w) == (height, width):
        return masks
    return masks[:, _nearest(h, height, align_corners)[:, None], _nearest(w, width, align_corners)[None, :]]


def _nearest(size_in: int, size_out: int, align_corners: bool) -> np.ndarray:
    i = np.arange(size_out)
    if align_corners and size_out > 1:
        src = np.floor(i * ((size_in - 1) / (size_out - 1)) + 0.5)  # roundf of a value >= 0
    else:
        src = (i * size_in) // size_out
    return np.minimum(src.astype(np.int64), size_in - 1)


def pad_masks(masks: np.ndarray, height: int, width: int, top: int, left: int) -> np.ndarray:
    """[N, h, w] placed at (top, left) on a zero [N, height, width] canvas (parts outside are cut)."""
    n, h, w = masks.shape
    out = np.zeros((n, height, width), dtype=masks.dtype)
    ys, ye, xs, xe = max(top, 0), min(top + h, height), max(left, 0), min(left + w, width)
    if ye > ys and xe > xs:
        out[:, ys:ye, xs:xe] = masks[:, ys - top:ye - top, xs - left:xe - left]
    return out


def permuted(example: dict[str, Any], permutation: Sequence[int],
             field: str) -> tuple[np.ndarray, np.ndarray]:
    """The example's keypoints and visibilities with keypoint j taken from ``permutation[j]`` (TF's
    ``tf.gather(keypoints, flip_permutation)`` over the keypoint axis); unchanged if it is empty."""
    kp, vis = example["keypoints"], example["keypoint_visibilities"]
    if not len(permutation):
        return kp, vis
    j = kp.shape[1]
    perm = np.asarray(permutation, dtype=np.int64)
    if len(perm) != j or sorted(perm.tolist()) != list(range(j)):
        raise ValueError(f"{field} {list(permutation)} is not a permutation of the {j} keypoints; "
                         f"give each of 0..{j - 1} once")
    return kp[:, perm], vis[:, perm]


def prune_keypoints(example: dict[str, Any], height: int, width: int) -> dict[str, Any]:
    """Keypoints outside [0, width] x [0, height] become NaN and not visible (TF's
    ``prune_outside_window`` then ``set_keypoint_visibilities``)."""
    if "keypoints" not in example:
        return example
    kp = example["keypoints"]
    inside = (kp[..., 0] >= 0) & (kp[..., 0] <= width) & (kp[..., 1] >= 0) & (kp[..., 1] <= height)
    out = dict(example)
    out["keypoints"] = np.where(inside[..., None], kp, np.nan).astype(np.float32)
    out["keypoint_visibilities"] = example["keypoint_visibilities"] & inside
    return out


def shift_instances(example: dict[str, Any], dx: float, dy: float) -> dict[str, Any]:
    """Keypoints moved by (dx, dy) pixels (masks are moved by the caller, with the image)."""
    if "keypoints" not in example:
        return example
    return dict(example, keypoints=(example["keypoints"] + np.array([dx, dy], dtype=np.float32)))
