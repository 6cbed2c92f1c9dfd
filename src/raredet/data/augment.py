"""Data augmentation and image resizers, named and parametrised as the TF OD API's preprocessor.

Every op is a callable ``op(example, rng) -> example`` on the example dict of raredet.data.example
(``image`` uint8 [H, W, 3], ``boxes`` float32 [N, 4] xyxy pixels, and per-box ``labels``, ``weights``,
``is_crowd``, ``difficult`` that stay aligned with the boxes). ``rng`` is a ``numpy.random.Generator``
the dataset seeds per (seed, epoch, index), so a run is reproducible. Constructor keyword arguments are
the proto fields of the TF OD API's ``PreprocessingStep`` messages, with their defaults.

Photometric ops follow the TF OD API: they work on the image scaled to [0, 1] and clip to that range.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from PIL import Image

from raredet.data import instances
from raredet.data.example import Example

PER_BOX_KEYS = ("boxes", "labels", "weights", "is_crowd", "difficult")

# An augmentation: (example, the example's generator) -> the augmented example.
AugmentOp = Callable[[Example, np.random.Generator], Example]


def keep_boxes(example: Example, keep: np.ndarray) -> Example:
    """Keep the boxes selected by ``keep`` (bool [N] or indices) with their labels, weights, flags,
    and masks and keypoints where the example has them."""
    out = dict(example)
    for key in PER_BOX_KEYS + instances.INSTANCE_KEYS:
        if key in example:
            out[key] = example[key][keep]
    return out


def _float(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float32) / 255.0


def _uint8(image: np.ndarray) -> np.ndarray:
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


# ---- geometric ----------------------------------------------------------------------------------


class RandomHorizontalFlip:
    """Mirror left-right; keypoint j of the result is keypoint ``keypoint_flip_permutation[j]`` of the
    input, mirrored (the TF OD API's order: gather, then flip)."""

    def __init__(self, keypoint_flip_permutation: Sequence[int] = (), probability: float = 0.5) -> None:
        self.probability = probability
        self.permutation = tuple(keypoint_flip_permutation)

    def __call__(self, example: Example, rng: np.random.Generator) -> Example:
        if rng.random() >= self.probability:
            return example
        w = example["image"].shape[1]
        out = dict(example, image=example["image"][:, ::-1].copy())
        b = example["boxes"]
        out["boxes"] = np.stack([w - b[:, 2], b[:, 1], w - b[:, 0], b[:, 3]], axis=1)
        if "masks" in example:
            out["masks"] = example["masks"][:, :, ::-1].copy()
        if "keypoints" in example:
            kp, out["keypoint_visibilities"] = instances.permuted(example, self.permutation,
                                                                  "keypoint_flip_permutation")
            out["keypoints"] = np.stack([w - kp[..., 0], kp[..., 1]], axis=-1).astype(np.float32)
        return out


class RandomVerticalFlip:
    def __init__(self, keypoint_flip_permutation: Sequence[int] = (), probability: float = 0.5) -> None:
        self.probability = probability
        self.permutation = tuple(keypoint_flip_permutation)

    def __call__(self, example: Example, rng: np.random.Generator) -> Example:
        if rng.random() >= self.probability:
            return example
        h = example["image"].shape[0]
        out = dict(example, image=example["image"][::-1].copy())
        b = example["boxes"]
        out["boxes"] = np.stack([b[:, 0], h - b[:, 3], b[:, 2], h - b[:, 1]], axis=1)
        if "masks" in example:
            out["masks"] = example["masks"][:, ::-1].copy()
        if "keypoints" in example:
            kp, out["keypoint_visibilities"] = instances.permuted(example, self.permutation,
                                                                  "keypoint_flip_permutation")
            out["keypoints"] = np.stack([kp[..., 0], h - kp[..., 1]], axis=-1).astype(np.float32)
        return out


class RandomRotation90:
    """Rotate 90 degrees counter-clockwise with ``probability``, as the TF OD API does."""

    def __init__(self, keypoint_rot_permutation: Sequence[int] = (), probability: float = 0.5) -> None:
        self.probability = probability
        self.permutation = tuple(keypoint_rot_permutation)

    def __call__(self, example: Example, rng: np.random.Generator) -> Example:
        if rng.random() >= self.probability:
            return example
        w = example["image"].shape[1]
        out = dict(example, image=np.rot90(example["image"]).copy())
        b = example["boxes"]
        # A point (x, y) moves to (y, w - x) under a counter-clockwise quarter turn.
        out["boxes"] = np.stack([b[:, 1], w - b[:, 2], b[:, 3], w - b[:, 0]], axis=1)
        if "masks" in example:
            out["masks"] = np.rot90(example["masks"], axes=(1, 2)).copy()
        if "keypoints" in example:
            kp, out["keypoint_visibilities"] = instances.permuted(example, self.permutation,
                                                                  "keypoint_rot_permutation")
            out["keypoints"] = np.stack([kp[..., 1], w - kp[..., 0]], axis=-1).astype(np.float32)
        return out


def crop_example(example: Example, window: np.ndarray, overlap_thresh: float, clip_boxes: bool) -> Example:
    """Crop to ``window`` (x0, y0, x1, y1 integer pixels); drop boxes that keep less than
    ``overlap_thresh`` of their area inside the window (with their labels and weights)."""
    x0, y0, x1, y1 = (int(v) for v in window)
    b = example["boxes"]
    inter = np.clip(np.minimum(b[:, 2:], [x1, y1]) - np.maximum(b[:, :2], [x0, y0]), 0, None).prod(axis=1)
    area = (b[:, 2:] - b[:, :2]).prod(axis=1)
    coverage = np.where(area > 0, inter / np.maximum(area, 1e-12), 0.0)
    keep = (inter > 0) & (coverage >= overlap_thresh)
    out = keep_boxes(example, keep)
    boxes = out["boxes"] - np.array([x0, y0, x0, y0], dtype=np.float32)
    if clip_boxes:
        boxes = np.clip(boxes, 0, np.array([x1 - x0, y1 - y0] * 2, dtype=np.float32))
    out["boxes"] = boxes.astype(np.float32)
    out["image"] = example["image"][y0:y1, x0:x1].copy()
    if "masks" in out:
        out["masks"] = out["masks"][:, y0:y1, x0:x1].copy()
    out = instances.shift_instances(out, -x0, -y0)
    # As the TF OD API: keypoints outside the window are dropped (NaN) only when boxes are clipped.
    return instances.prune_keypoints(out, y1 - y0, x1 - x0) if clip_boxes else out


def sample_crop_window(
    rng: np.random.Generator,
    height: int,
    width: int,
    boxes: np.ndarray,
    *,
    min_object_covered: float,
    aspect_ratio_range: tuple[float, float],
    area_range: tuple[float, float],
    max_attempts: int = 100,
) -> np.ndarray | None:
    """Sample a crop window as TF's sample_distorted_bounding_box: area and aspect ratio in range,
    covering at least ``min_object_covered`` of some box (any window if there are no boxes).
    All attempts are drawn at once; the first valid one is returned, None if none is."""
    area = rng.uniform(*area_range, size=max_attempts) * height * width
    aspect = rng.uniform(*aspect_ratio_range, size=max_attempts)
    cw = np.round(np.sqrt(area * aspect))
    ch = np.round(np.sqrt(area / aspect))
    fits = (cw >= 1) & (ch >= 1) & (cw <= width) & (ch <= height)
    x0 = np.floor(rng.random(max_attempts) * (width - cw + 1))
    y0 = np.floor(rng.random(max_attempts) * (height - ch + 1))
    windows = np.stack([x0, y0, x0 + cw, y0 + ch], axis=1)  # [T, 4]
    if len(boxes):
        lo = np.maximum(windows[:, None, :2], boxes[None, :, :2])
        hi = np.minimum(windows[:, None, 2:], boxes[None, :, 2:])
        inter = np.clip(hi - lo, 0, None).prod(axis=2)  # [T, N]
        box_area = np.maximum((boxes[:, 2:] - boxes[:, :2]).prod(axis=1), 1e-12)
        fits &= (inter / box_area >= min_object_covered).any(axis=1)
    valid = np.flatnonzero(fits)
    return windows[valid[0]] if valid.size else None


class RandomCropImage:
    def __init__(
        self,
        min_object_covered: float = 1.0,
        min_aspect_ratio: float = 0.75,
        max_aspect_ratio: float = 1.33,
        min_area: float = 0.1,
        max_area: float = 1.0,
        overlap_thresh: float = 0.3,
        clip_boxes: bool = True,
        random_coef: float = 0.0,
    ) -> None:
        self.min_object_covered = min_object_covered
        self.aspect_ratio_range = (min_aspect_ratio, max_aspect_ratio)
        self.area_range = (min_area, max_area)
        self.overlap_thresh = overlap_thresh
        self.clip_boxes = clip_boxes
        self.random_coef = random_coef

    def __call__(self, example: Example, rng: np.random.Generator) -> Example:
        if self.random_coef > 0 and rng.random() < self.random_coef:
            return example
        h, w = example["image"].shape[:2]
        window = sample_crop_window(
            rng,
            h,
            w,
            example["boxes"],
            min_object_covered=self.min_object_covered,
            aspect_ratio_range=self.aspect_ratio_range,
            area_range=self.area_range,
        )
        if window is None:
            return example
        return crop_example(example, window, self.overlap_thresh, self.clip_boxes)


# The SSD paper's crop choices, which the TF OD API uses when `operations` is empty.
_SSD_DEFAULT_COVERED = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0)


# SSDRandomCropOperation's proto defaults: a field left out of an operation is 0 (clip_boxes true).
_SSD_OPERATION_DEFAULTS = dict(
    min_object_covered=0.0,
    min_aspect_ratio=0.0,
    max_aspect_ratio=0.0,
    min_area=0.0,
    max_area=0.0,
    overlap_thresh=0.0,
    clip_boxes=True,
    random_coef=0.0,
)


class SsdRandomCrop:
    """Pick one of ``operations`` (dicts of SSDRandomCropOperation fields) uniformly, crop with it."""

    def __init__(self, operations: Sequence[dict[str, Any]] = ()) -> None:
        operations = [{**_SSD_OPERATION_DEFAULTS, **op} for op in operations]
        if not operations:
            operations = [
                dict(
                    min_object_covered=c,
                    min_aspect_ratio=0.5,
                    max_aspect_ratio=2.0,
                    min_area=0.1,
                    max_area=1.0,
                    overlap_thresh=c,
                    random_coef=0.15,
                )
                for c in _SSD_DEFAULT_COVERED
            ]
        self.crops = [RandomCropImage(**dict(op)) for op in operations]

    def __call__(self, example: Example, rng: np.random.Generator) -> Example:
        return self.crops[int(rng.integers(len(self.crops)))](example, rng)


class RandomPadImage:
    """Place the image at a random offset on a larger canvas (default up to twice its size)."""

    def __init__(
        self,
        min_image_height: int = 0,
        min_image_width: int = 0,
        max_image_height: int = 0,
        max_image_width: int = 0,
        pad_color: Sequence[float] = (),
    ) -> None:
        self.min_size = (min_image_height, min_image_width)
        self.max_size = (max_image_height, max_image_width)
        self.pad_color = tuple(pad_color)

    def size_range(self, h: int, w: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """The least and the greatest (height, width) of the padded image (both included)."""
        lo = (max(self.min_size[0], h), max(self.min_size[1], w))
        return lo, (max(self.max_size[0] or 2 * h, lo[0]), max(self.max_size[1] or 2 * w, lo[1]))

    def __call__(self, example: Example, rng: np.random.Generator) -> Example:
        image = example["image"]
        h, w = image.shape[:2]
        lo, hi = self.size_range(h, w)
        th, tw = int(rng.integers(lo[0], hi[0] + 1)), int(rng.integers(lo[1], hi[1] + 1))
        oy, ox = int(rng.integers(0, th - h + 1)), int(rng.integers(0, tw - w + 1))
        color = np.array(self.pad_color, dtype=np.float32) if self.pad_color else image.mean(axis=(0, 1))
        canvas = np.empty((th, tw, 3), dtype=np.uint8)
        canvas[:] = np.clip(color + 0.5, 0, 255).astype(np.uint8)
        canvas[oy : oy + h, ox : ox + w] = image
        out = dict(example, image=canvas)
        out["boxes"] = example["boxes"] + np.array([ox, oy, ox, oy], dtype=np.float32)
        if "masks" in example:
            out["masks"] = instances.pad_masks(example["masks"], th, tw, oy, ox)
        return instances.shift_instances(out, ox, oy)


class RandomAbsolutePadImage(RandomPadImage):
    """Pad by a random amount below ``max_height_padding`` / ``max_width_padding`` pixels, at a random
    offset (the TF OD API's random_absolute_pad_image: padding uniform in [0, max))."""

    def __init__(self, max_height_padding: int = 0, max_width_padding: int = 0,
                 pad_color: Sequence[float] = ()) -> None:
        if max_height_padding < 0 or max_width_padding < 0:
            raise ValueError(f"max_height_padding and max_width_padding are {max_height_padding} and "
                             f"{max_width_padding}; give both >= 0 (the padding is drawn from [0, max))")
        super().__init__(pad_color=pad_color)
        self.padding = (max_height_padding, max_width_padding)

    def size_range(self, h: int, w: int) -> tuple[tuple[int, int], tuple[int, int]]:
        # Padding below max_*_padding; 0 (TF would fail on an empty range) pads nothing.
        return (h, w), (h + max(self.padding[0] - 1, 0), w + max(self.padding[1] - 1, 0))


RESIZE_METHODS = {
    "BILINEAR": Image.Resampling.BILINEAR,
    "NEAREST_NEIGHBOR": Image.Resampling.NEAREST,
    "BICUBIC": Image.Resampling.BICUBIC,
    "AREA": Image.Resampling.BOX,
}


def resize_image(image: np.ndarray, height: int, width: int, method: str = "BILINEAR") -> np.ndarray:
    """Resize uint8 [H, W, 3] to [height, width, 3] with a TF OD API ``ResizeType`` name."""
    if image.shape[:2] == (height, width):
        return image
    return np.asarray(Image.fromarray(image).resize((width, height), RESIZE_METHODS[method]))


def scale_example(example: Example, height: int, width: int, method: str = "BILINEAR") -> Example:
    """The image resized by ``method``, boxes and keypoints scaled, masks resized nearest-neighbour."""
    h, w = example["image"].shape[:2]
    out = dict(example, image=resize_image(example["image"], height, width, method))
    out["boxes"] = (example["boxes"] * np.array([width / w, height / h] * 2, dtype=np.float32)).astype(
        np.float32
    )
    if "masks" in example:
        out["masks"] = instances.resize_masks(example["masks"], height, width)
    if "keypoints" in example:
        out["keypoints"] = (example["keypoints"] * np.array([width / w, height / h], dtype=np.float32)
                            ).astype(np.float32)
    return out


class RandomImageScale:
    def __init__(self, min_scale_ratio: float = 0.5, max_scale_ratio: float = 2.0) -> None:
        self.range = (min_scale_ratio, max_scale_ratio)

    def __call__(self, example: Example, rng: np.random.Generator) -> Example:
        ratio = rng.uniform(*self.range)
        h, w = example["image"].shape[:2]
        return scale_example(example, max(1, round(h * ratio)), max(1, round(w * ratio)))


class RandomScaleCropAndPadToSquare:
    """Scale the longer side to ``output_size * U(scale_min, scale_max)``, take a random
    ``output_size`` square window of it, pad with zeros to the square (as the TF OD API)."""

    def __init__(self, output_size: int = 512, scale_min: float = 0.1, scale_max: float = 2.0) -> None:
        self.output_size = output_size
        self.range = (scale_min, scale_max)

    def __call__(self, example: Example, rng: np.random.Generator) -> Example:
        s = self.output_size
        h, w = example["image"].shape[:2]
        ratio = s * rng.uniform(*self.range) / max(h, w)
        scaled = scale_example(example, max(1, round(h * ratio)), max(1, round(w * ratio)))
        sh, sw = scaled["image"].shape[:2]
        y0 = int(rng.integers(0, max(sh - s, 0) + 1))
        x0 = int(rng.integers(0, max(sw - s, 0) + 1))
        window = np.array([x0, y0, min(x0 + s, sw), min(y0 + s, sh)])
        out = crop_example(scaled, window, overlap_thresh=0.0, clip_boxes=True)
        canvas = np.zeros((s, s, 3), dtype=np.uint8)
        ch, cw = out["image"].shape[:2]
        canvas[:ch, :cw] = out["image"]
        out["image"] = canvas
        if "masks" in out:
            out["masks"] = instances.pad_masks(out["masks"], s, s, 0, 0)
        return out


def _crop_border(border: int, size: int) -> int:
    """The TF OD API's border for square-crop centres: ``border / 2^k`` with the least ``k`` that
    keeps it below half of ``size``."""
    if border <= 0:
        return 0
    divisor = 2.0 ** math.ceil(math.log2(2.0 * border / size))
    return border // int(min(max(divisor, 1.0), border))


class RandomSquareCropByScale:
    """A square crop of side ``scale * max(h, w)`` (scale one of ``num_scales`` values evenly spaced
    in ``[scale_min, scale_max]``) centred on a random pixel at least the ``max_border``-derived
    border from the image edges; the part outside the image is zeros. Boxes are moved into the
    crop, dropped when completely outside it and clipped (as the TF OD API)."""

    def __init__(self, max_border: int = 128, scale_min: float = 0.6, scale_max: float = 1.3,
                 num_scales: int = 8) -> None:
        if num_scales < 1 or not 0 < scale_min <= scale_max:
            raise ValueError("needs num_scales >= 1 and 0 < scale_min <= scale_max")
        self.max_border, self.scales = int(max_border), np.linspace(scale_min, scale_max, num_scales)

    def __call__(self, example: Example, rng: np.random.Generator) -> Example:
        image = example["image"]
        h, w = image.shape[:2]
        size = max(1, int(self.scales[rng.integers(len(self.scales))] * max(h, w)))
        hb, wb = _crop_border(self.max_border, h), _crop_border(self.max_border, w)
        yc = int(rng.integers(min(hb, h), max(h - hb, hb) + 1))
        xc = int(rng.integers(min(wb, w), max(w - wb, wb) + 1))
        y0, x0 = yc - size // 2, xc - size // 2
        ys, ye, xs, xe = max(y0, 0), min(y0 + size, h), max(x0, 0), min(x0 + size, w)
        canvas = np.zeros((size, size) + image.shape[2:], dtype=image.dtype)
        if ye > ys and xe > xs:
            canvas[ys - y0:ye - y0, xs - x0:xe - x0] = image[ys:ye, xs:xe]
        b = example["boxes"] - np.array([x0, y0, x0, y0], dtype=np.float32)
        outside = (b[:, 2] <= 0) | (b[:, 3] <= 0) | (b[:, 0] >= size) | (b[:, 1] >= size)
        out = keep_boxes({**example, "boxes": b}, ~outside)
        out["boxes"] = np.clip(out["boxes"], 0, size).astype(np.float32)
        out["image"] = canvas
        if "masks" in out:
            out["masks"] = instances.pad_masks(out["masks"], size, size, -y0, -x0)
        return instances.prune_keypoints(instances.shift_instances(out, -x0, -y0), size, size)


class RandomJitterBoxes:
    """Move each box corner by up to ``ratio`` of the box size (boxes only, not the image)."""

    def __init__(self, ratio: float = 0.05, jitter_mode: str = "DEFAULT") -> None:
        modes = {"DEFAULT": (-1.0, 1.0), "EXPAND": (0.0, 1.0), "SHRINK": (-1.0, 0.0)}
        if jitter_mode not in modes:
            raise ValueError(f"jitter_mode {jitter_mode!r}: use one of {sorted(modes)}")
        self.ratio = ratio
        self.range = modes[jitter_mode]

    def __call__(self, example: Example, rng: np.random.Generator) -> Example:
        b = example["boxes"]
        size = np.concatenate([b[:, 2:] - b[:, :2]] * 2, axis=1)
        u = rng.uniform(*self.range, size=b.shape) * self.ratio
        # Expansion moves the min corner down and the max corner up.
        u[:, :2] *= -1
        h, w = example["image"].shape[:2]
        jittered = np.clip(b + u * size, 0, np.array([w, h, w, h], dtype=np.float32))
        lo = np.minimum(jittered[:, :2], jittered[:, 2:])
        hi = np.maximum(jittered[:, :2], jittered[:, 2:])
        return dict(example, boxes=np.concatenate([lo, hi], axis=1).astype(np.float32))


class RandomBlackPatches:
    def __init__(
        self, max_black_patches: int = 10, probability: float = 0.5, size_to_image_ratio: float = 0.1
    ) -> None:
        self.max_black_patches = max_black_patches
        self.probability = probability
        self.ratio = size_to_image_ratio

    def __call__(self, example: Example, rng: np.random.Generator) -> Example:
        image = example["image"].copy()
        h, w = image.shape[:2]
        size = max(1, int(self.ratio * min(h, w)))
        apply = rng.random(self.max_black_patches) < self.probability
        ys = rng.integers(0, max(h - size, 0) + 1, size=self.max_black_patches)
        xs = rng.integers(0, max(w - size, 0) + 1, size=self.max_black_patches)
        rows, cols = np.arange(h)[:, None], np.arange(w)[None, :]
        mask = np.zeros((h, w), dtype=bool)
        for y, x in zip(ys[apply], xs[apply], strict=True):  # at most max_black_patches patches
            mask |= (rows >= y) & (rows < y + size) & (cols >= x) & (cols < x + size)
        image[mask] = 0
        return dict(example, image=image)


# ---- photometric --------------------------------------------------------------------------------


def rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
    """[..., 3] RGB in [0, 1] to HSV with hue in [0, 1)."""
    maxc, minc = rgb.max(axis=-1), rgb.min(axis=-1)
    delta = maxc - minc
    safe = np.where(delta > 0, delta, 1.0)
    r, g, b = (rgb[..., i] for i in range(3))
    hue = np.where(maxc == r, (g - b) / safe, np.where(maxc == g, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe))
    hue = np.where(delta > 0, (hue / 6.0) % 1.0, 0.0)
    sat = np.where(maxc > 0, delta / np.where(maxc > 0, maxc, 1.0), 0.0)
    return np.stack([hue, sat, maxc], axis=-1)


def hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rgb_to_hsv`."""
    h, s, v = hsv[..., 0] % 1.0, hsv[..., 1], hsv[..., 2]
    k = (np.array([5.0, 3.0, 1.0]) + h[..., None] * 6.0) % 6.0
    return v[..., None] - (v * s)[..., None] * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


def adjust_brightness(image: np.ndarray, delta: float) -> np.ndarray:
    return image + delta


def adjust_contrast(image: np.ndarray, factor: float) -> np.ndarray:
    mean = image.mean(axis=(0, 1), keepdims=True)
    return (image - mean) * factor + mean


def adjust_saturation(image: np.ndarray, factor: float) -> np.ndarray:
    hsv = rgb_to_hsv(np.clip(image, 0, 1))
    hsv[..., 1] = np.clip(hsv[..., 1] * factor, 0, 1)
    return hsv_to_rgb(hsv)


def adjust_hue(image: np.ndarray, delta: float) -> np.ndarray:
    hsv = rgb_to_hsv(np.clip(image, 0, 1))
    hsv[..., 0] = (hsv[..., 0] + delta) % 1.0
    return hsv_to_rgb(hsv)


class _Photometric:
    def apply(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError

    def __call__(self, example: Example, rng: np.random.Generator) -> Example:
        return dict(example, image=_uint8(self.apply(_float(example["image"]), rng)))


class RandomAdjustBrightness(_Photometric):
    def __init__(self, max_delta: float = 0.2) -> None:
        self.max_delta = max_delta

    def apply(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return adjust_brightness(image, rng.uniform(-self.max_delta, self.max_delta))


class RandomAdjustContrast(_Photometric):
    def __init__(self, min_delta: float = 0.8, max_delta: float = 1.25) -> None:
        self.range = (min_delta, max_delta)

    def apply(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return adjust_contrast(image, rng.uniform(*self.range))


class RandomAdjustSaturation(_Photometric):
    def __init__(self, min_delta: float = 0.8, max_delta: float = 1.25) -> None:
        self.range = (min_delta, max_delta)

    def apply(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return adjust_saturation(image, rng.uniform(*self.range))


class RandomAdjustHue(_Photometric):
    def __init__(self, max_delta: float = 0.02) -> None:
        self.max_delta = max_delta

    def apply(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return adjust_hue(image, rng.uniform(-self.max_delta, self.max_delta))


class RandomDistortColor(_Photometric):
    """The TF OD API's colour distortion: two fixed orders of brightness, saturation, hue, contrast."""

    def __init__(self, color_ordering: int = 0) -> None:
        if color_ordering not in (0, 1):
            raise ValueError(f"color_ordering is {color_ordering}; use 0 or 1")
        self.color_ordering = color_ordering

    def apply(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        steps = [
            lambda x: adjust_brightness(x, rng.uniform(-32 / 255, 32 / 255)),
            lambda x: adjust_saturation(x, rng.uniform(0.5, 1.5)),
            lambda x: adjust_hue(x, rng.uniform(-0.2, 0.2)),
            lambda x: adjust_contrast(x, rng.uniform(0.5, 1.5)),
        ]
        order = (0, 1, 2, 3) if self.color_ordering == 0 else (0, 3, 1, 2)
        for i in order:
            image = np.clip(steps[i](image), 0.0, 1.0)
        return image


AUGMENTATIONS: dict[str, type] = {
    "random_horizontal_flip": RandomHorizontalFlip,
    "random_vertical_flip": RandomVerticalFlip,
    "random_rotation90": RandomRotation90,
    "random_crop_image": RandomCropImage,
    "ssd_random_crop": SsdRandomCrop,
    "random_pad_image": RandomPadImage,
    "random_absolute_pad_image": RandomAbsolutePadImage,
    "random_scale_crop_and_pad_to_square": RandomScaleCropAndPadToSquare,
    "random_square_crop_by_scale": RandomSquareCropByScale,
    "random_adjust_brightness": RandomAdjustBrightness,
    "random_adjust_contrast": RandomAdjustContrast,
    "random_adjust_saturation": RandomAdjustSaturation,
    "random_adjust_hue": RandomAdjustHue,
    "random_distort_color": RandomDistortColor,
    "random_jitter_boxes": RandomJitterBoxes,
    "random_black_patches": RandomBlackPatches,
    "random_image_scale": RandomImageScale,
}


def build_augmentation(name: str, params: dict[str, Any] | None = None) -> AugmentOp:
    """The op for TF OD API preprocessing step ``name`` with proto fields ``params``."""
    if name not in AUGMENTATIONS:
        raise ValueError(f"{name!r} is not supported; supported: {', '.join(sorted(AUGMENTATIONS))}")
    try:
        return AUGMENTATIONS[name](**(params or {}))
    except TypeError as err:
        raise ValueError(f"{name}: {err}") from err
