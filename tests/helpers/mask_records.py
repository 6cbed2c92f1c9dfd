"""TFRecords with one ellipse per image (class ``i % 3 + 1``), its box and its PNG instance mask: the
records the Mask R-CNN tests train on."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from raredet.data.tfrecord import encode_example, write_tfrecord


def encode_image(array: np.ndarray, kind: str) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format=kind)
    return out.getvalue()


def write_ellipse_records(path: Path, count: int, height: int, width: int,
                          box: Callable[[int], tuple[float, float, float, float]], image_format: str) -> None:
    """``count`` records; record ``i``: the ellipse inscribed in ``box(i)`` (x1, y1, x2, y2 pixels), pixel
    centres inside it coloured (200, 60 * (i % 3), 30) on grey 40, the image as ``image_format`` ("png" or
    "jpeg"), the mask as PNG."""
    yy, xx = np.mgrid[:height, :width]
    examples = []
    for i in range(count):
        x1, y1, x2, y2 = box(i)
        cx, cy, rx, ry = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / 2, (y2 - y1) / 2
        mask = ((((xx + 0.5 - cx) / rx) ** 2 + ((yy + 0.5 - cy) / ry) ** 2) <= 1).astype(np.uint8)
        pixels = np.full((height, width, 3), 40, np.uint8)
        pixels[mask.astype(bool)] = (200, 60 * (i % 3), 30)
        examples.append(encode_example({
            "image/encoded": encode_image(pixels, image_format.upper()), "image/format": image_format,
            "image/height": height, "image/width": width, "image/source_id": str(i),
            "image/object/bbox/xmin": [x1 / width], "image/object/bbox/ymin": [y1 / height],
            "image/object/bbox/xmax": [x2 / width], "image/object/bbox/ymax": [y2 / height],
            "image/object/class/label": [i % 3 + 1], "image/object/mask": [encode_image(mask, "PNG")]}))
    write_tfrecord(path, examples)
