"""Shared fixtures for the data tests: a label map and tiny encoded images."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image


@pytest.fixture
def label_map():
    from raredet.config import LabelMap

    return LabelMap.parse('item { id: 1 name: "cat" }\nitem { id: 3 name: "dog" }\n', "test_label_map.pbtxt")


def _encode(height: int, width: int, fmt: str = "PNG", seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture
def encode_image():
    """encode_image(height, width, fmt="PNG", seed=0) -> bytes of a random RGB image."""
    return _encode
