"""Resizers: map an example to the network's input size, as the TF OD API's `image_resizer` oneof.

Split from `augment.py` (whose scaling helpers they use) so each module keeps to one concern.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from raredet.data.augment import RESIZE_METHODS, scale_example
from raredet.data.example import Example
from raredet.data.instances import pad_masks


class Resizer:
    """A resizer maps an example to its network input size and records ``image_size`` (h, w of the
    content before padding) and ``scale`` (sy, sx: resized = input * scale).

    ``convert_to_grayscale`` keeps three (equal) channels, so the model's input layout does not change.
    """

    resize_method = "BILINEAR"
    convert_to_grayscale = False

    def _set_common(self, resize_method: str, convert_to_grayscale: bool) -> None:
        if resize_method not in RESIZE_METHODS:
            raise ValueError(
                f"resize_method {resize_method!r}: use one of {', '.join(RESIZE_METHODS)}"
            )
        self.resize_method, self.convert_to_grayscale = resize_method, convert_to_grayscale

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        raise NotImplementedError

    @property
    def fixed_size(self) -> tuple[int, int] | None:
        """(H, W) of every network input this resizer makes, or None where it follows the image."""
        return None

    def __call__(self, example: Example) -> Example:
        h, w = example["image"].shape[:2]
        oh, ow = self.output_size(h, w)
        out = scale_example(example, oh, ow, self.resize_method)
        if self.convert_to_grayscale:
            gray = np.asarray(Image.fromarray(out["image"]).convert("L"))
            out["image"] = np.repeat(gray[..., None], 3, axis=2)
        out["image_size"] = (oh, ow)
        out["scale"] = (oh / h, ow / w)
        return out


class FixedShapeResizer(Resizer):
    def __init__(
        self,
        height: int = 300,
        width: int = 300,
        resize_method: str = "BILINEAR",
        convert_to_grayscale: bool = False,
    ) -> None:
        self.height, self.width = height, width
        self._set_common(resize_method, convert_to_grayscale)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        return self.height, self.width

    @property
    def fixed_size(self) -> tuple[int, int] | None:
        return self.height, self.width


class KeepAspectRatioResizer(Resizer):
    """Scale so the short side is ``min_dimension`` unless the long side would pass ``max_dimension``;
    with ``pad_to_max_dimension`` pad bottom/right to a ``max_dimension`` square."""

    def __init__(
        self,
        min_dimension: int = 600,
        max_dimension: int = 1024,
        resize_method: str = "BILINEAR",
        pad_to_max_dimension: bool = False,
        convert_to_grayscale: bool = False,
        per_channel_pad_value: Sequence[float] = (),
    ) -> None:
        self.min_dimension, self.max_dimension = min_dimension, max_dimension
        self._set_common(resize_method, convert_to_grayscale)
        self.pad_to_max_dimension = pad_to_max_dimension
        self.pad_value = np.array(list(per_channel_pad_value) or [0.0, 0.0, 0.0], dtype=np.float32)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        scale = self.min_dimension / min(height, width)
        if round(max(height, width) * scale) > self.max_dimension:
            scale = self.max_dimension / max(height, width)
        return max(1, round(height * scale)), max(1, round(width * scale))

    @property
    def fixed_size(self) -> tuple[int, int] | None:
        return (self.max_dimension, self.max_dimension) if self.pad_to_max_dimension else None

    def __call__(self, example: Example) -> Example:
        out = super().__call__(example)
        if self.pad_to_max_dimension:
            m = self.max_dimension
            canvas = np.empty((m, m, 3), dtype=np.uint8)
            canvas[:] = np.clip(self.pad_value, 0, 255).astype(np.uint8)
            h, w = out["image"].shape[:2]
            canvas[:h, :w] = out["image"]
            out["image"] = canvas
            if "masks" in out:
                out["masks"] = pad_masks(out["masks"], m, m, 0, 0)
        return out


class IdentityResizer(Resizer):
    def output_size(self, height: int, width: int) -> tuple[int, int]:
        return height, width


RESIZERS: dict[str, type[Resizer]] = {
    "fixed_shape_resizer": FixedShapeResizer,
    "keep_aspect_ratio_resizer": KeepAspectRatioResizer,
    "identity_resizer": IdentityResizer,
}


def make_resizer(name: str, params: dict[str, Any] | None = None) -> Resizer:
    """The resizer for ``image_resizer { <name> { params } }``."""
    if name not in RESIZERS:
        raise ValueError(
            f"{name!r} is not supported; supported: {', '.join(sorted(RESIZERS))}"
        )
    try:
        return RESIZERS[name](**(params or {}))
    except TypeError as err:
        raise ValueError(f"{name}: {err}") from err
