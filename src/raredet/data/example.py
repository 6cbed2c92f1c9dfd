"""The example structure every reader produces, its checks, and image decoding.

An example is a plain dict (see docs/internals.md "Data"):
``image`` uint8 [H, W, 3] RGB, ``boxes`` float32 [N, 4] xyxy pixels, ``labels`` int64 [N] contiguous,
``weights`` float32 [N], ``is_crowd`` bool [N], ``difficult`` bool [N], ``source_id`` str,
``filename`` str; with instance masks asked for, ``masks`` uint8 [N, H, W], with keypoints
``keypoints`` float32 [N, J, 2] and ``keypoint_visibilities`` bool [N, J], with either ``area`` float32
[N] (see raredet.data.instances).
Readers also give ``height``/``width`` (from the annotation, before decoding) so
that statistics never need to decode an image.

All three readers funnel their boxes through :func:`checked_annotations`, so that a bad box, class or
weight gives the same kind of error whichever format it came from.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from raredet.data.instances import resize_masks
from raredet.errors import DataError

Example = dict[str, Any]

# Boxes this far outside the image (as a fraction of its size) are rounding noise and get clipped;
# anything further out is an annotation error.
BOX_TOLERANCE = 0.01


def checked_annotations(
    *,
    boxes: np.ndarray,
    labels: np.ndarray,
    weights: np.ndarray,
    is_crowd: np.ndarray,
    difficult: np.ndarray,
    height: int,
    width: int,
    where: str,
    label_desc: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Validate and normalise one image's annotations.

    boxes: [N, 4] xyxy in pixels; labels: [N] contiguous indices, -1 where the reader could not map the
    class (``label_desc`` [N] then holds what the record said, for the message); weights: [N].
    ``where`` names the file and the record (index or image id) for error messages.
    """
    n = len(labels)
    boxes = np.asarray(boxes, dtype=np.float32).reshape(n, 4)
    _check_classes(labels, where, label_desc)
    _check_weights(np.asarray(weights, dtype=np.float32), where)
    boxes = _check_boxes(boxes, height, width, where)
    return {
        "boxes": boxes,
        "labels": np.asarray(labels, dtype=np.int64),
        "weights": np.asarray(weights, dtype=np.float32).reshape(n),
        "is_crowd": np.asarray(is_crowd, dtype=bool).reshape(n),
        "difficult": np.asarray(difficult, dtype=bool).reshape(n),
    }


def _check_classes(labels: np.ndarray, where: str, label_desc: np.ndarray | None) -> None:
    bad = np.flatnonzero(np.asarray(labels) < 0)
    if bad.size:
        what = label_desc[bad[0]] if label_desc is not None else "?"
        what = f"id {int(what)}" if isinstance(what, (int, np.integer)) else repr(str(what))
        raise DataError(
            f"{where}: object {bad[0]} has class {what}, which is not in the label map; "
            "add it to label_map.pbtxt or fix the annotation"
        )


def _check_weights(weights: np.ndarray, where: str) -> None:
    bad = np.flatnonzero(~np.isfinite(weights) | (weights < 0))
    if bad.size:
        raise DataError(
            f"{where}: field 'weight' of object {bad[0]} is {weights[bad[0]]}; per-box weights must be "
            "finite and >= 0 (0 marks an ignore region)"
        )


def _check_boxes(boxes: np.ndarray, height: int, width: int, where: str) -> np.ndarray:
    if not np.isfinite(boxes).all():
        bad = int(np.flatnonzero(~np.isfinite(boxes).all(axis=1))[0])
        raise DataError(f"{where}: bbox of object {bad} is not finite ({boxes[bad].tolist()})")
    inverted = (boxes[:, 0] > boxes[:, 2]) | (boxes[:, 1] > boxes[:, 3])
    if inverted.any():
        bad = int(np.flatnonzero(inverted)[0])
        raise DataError(
            f"{where}: bbox of object {bad} has xmin > xmax or ymin > ymax ({boxes[bad].tolist()} as "
            "xmin, ymin, xmax, ymax in pixels); fix the annotation"
        )
    size = np.array([width, height, width, height], dtype=np.float32)
    outside = (boxes < -BOX_TOLERANCE * size) | (boxes > (1 + BOX_TOLERANCE) * size)
    if outside.any():
        bad = int(np.flatnonzero(outside.any(axis=1))[0])
        raise DataError(
            f"{where}: bbox of object {bad} ({boxes[bad].tolist()} pixels) lies outside the "
            f"{width}x{height} image; fix the annotation or the image size"
        )
    return np.clip(boxes, 0, size)


DraftSize = tuple[int, int] | Callable[[int, int], tuple[int, int]] | None


def decode_image(
    source: bytes | Path, where: str, draft_size: DraftSize = None
) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode an image file or encoded bytes to uint8 [H, W, 3] RGB.

    ``draft_size``: the (h, w) the image will be resized to, or a function of the stored (h, w) that
    gives it (a resizer's ``output_size``); JPEGs are then decoded at a reduced scale no smaller than
    it (Pillow's draft mode), several times faster for large photos. Returns the array and the stored
    (h, w), so callers can rescale the boxes.
    """
    try:
        img = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
        full_size = (img.height, img.width)
        if draft_size is not None and img.format == "JPEG":
            target = draft_size(*full_size) if callable(draft_size) else draft_size
            img.draft("RGB", (target[1], target[0]))
        array = np.asarray(img.convert("RGB"), dtype=np.uint8)
    except FileNotFoundError as err:
        raise DataError(f"{where}: image file {source!s} does not exist; check the image directory") from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DataError(f"{where}: {_undecodable(source, err)}; the image is corrupt") from err
    return array, full_size


def _undecodable(source: bytes | Path, err: Exception) -> str:
    """What cannot be decoded and why. Encoded bytes are a record's image/encoded, for which Pillow's
    "cannot identify image file <_io.BytesIO object at 0x...>" would only name an anonymous buffer."""
    if not isinstance(source, bytes):
        return f"field 'image' cannot be decoded ({err})"
    reason = "not an image format Pillow reads" if isinstance(err, UnidentifiedImageError) else str(err)
    return f"field 'image/encoded' cannot be decoded ({reason})"


def finish_example(annotations: dict[str, Any], image: np.ndarray, full_size: tuple[int, int]) -> Example:
    """Attach a decoded image, rescaling the boxes (and keypoints, masks) if it was decoded smaller
    than ``full_size``."""
    example = dict(annotations)
    sy, sx = image.shape[0] / full_size[0], image.shape[1] / full_size[1]
    if (sy, sx) != (1.0, 1.0):
        example["boxes"] = annotations["boxes"] * np.array([sx, sy, sx, sy], dtype=np.float32)
        if "keypoints" in annotations:
            example["keypoints"] = annotations["keypoints"] * np.array([sx, sy], dtype=np.float32)
    if "masks" in annotations:
        example["masks"] = resize_masks(annotations["masks"], *image.shape[:2])
    example["image"] = image
    example["original_size"] = full_size
    return example
