"""A map-style detection dataset over any reader, and the collate function that pads a batch.

A reader (`raredet.data.readers.Reader`: TFRecordReader, CocoReader, VocReader) has ``__len__``,
``annotations(i)`` (no image decode) and ``example(i, draft_size)`` (decoded). The dataset decodes,
augments (training only), resizes. Augmentations draw from
``numpy.random.default_rng([seed, epoch, index])``, so an example's augmentation depends on nothing but
those three numbers: the same in any worker, and after a resume.
Call :meth:`DetectionDataset.set_epoch` before each epoch (a persistent DataLoader worker keeps the
epoch it was started with unless the epoch travels with each index, as `engine.train.batch_stream`
does).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from raredet.data.augment import AugmentOp
from raredet.data.example import Example
from raredet.data.readers import Reader
from raredet.data.resize import IdentityResizer, Resizer


class DetectionDataset(torch.utils.data.Dataset[Example]):
    def __init__(
        self,
        reader: Reader,
        *,
        augmentations: Sequence[AugmentOp] = (),
        resizer: Resizer | None = None,
        training: bool = False,
        seed: int = 0,
    ) -> None:
        self.reader = reader
        self.augmentations = list(augmentations)
        self.resizer = resizer if resizer is not None else IdentityResizer()
        self.training = training
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, index: int) -> Example:
        # Decoding straight to (about) the output size is only safe when no augmentation needs the
        # full resolution first (a crop followed by an upscale would lose detail).
        draft = None if self.training and self.augmentations else self.resizer.output_size
        example = self.reader.example(index, draft_size=draft)
        full_h, full_w = example["original_size"]
        if self.training:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            for op in self.augmentations:
                example = op(example, rng)
            # The losses have no crowd handling: a crowd box is an ignore region (weight 0).
            example["weights"] = np.where(example["is_crowd"], 0.0, example["weights"]).astype(np.float32)
        decoded_h, decoded_w = example["image"].shape[:2]
        example = self.resizer(example)
        sy, sx = example["scale"]
        example["scale"] = (sy * decoded_h / full_h, sx * decoded_w / full_w)
        return example


def _pad_stack(arrays: list[np.ndarray], n: int, fill: float | bool, dtype: npt.DTypeLike) -> torch.Tensor:
    out = np.full((len(arrays), n, *arrays[0].shape[1:]), fill, dtype=dtype)
    for i, a in enumerate(arrays):  # one copy per image, not per box
        out[i, : len(a)] = a
    return torch.from_numpy(out)


def collate(examples: Sequence[Example]) -> dict[str, Any]:
    """Pad images bottom/right and boxes to the batch maximum; see docs/internals.md for the keys.

    ``images`` is ``[B, 3, H, W]`` uint8 stored channels-last (a permuted view of the ``[B, H, W, 3]``
    buffer the decoded images are written into): the model runs channels-last, so no copy into NCHW
    and back is made.
    """
    heights = [e["image"].shape[0] for e in examples]
    widths = [e["image"].shape[1] for e in examples]
    images = np.zeros((len(examples), max(heights), max(widths), 3), dtype=np.uint8)
    for i, e in enumerate(examples):
        images[i, : heights[i], : widths[i]] = e["image"]
    n = max([len(e["labels"]) for e in examples] + [1])
    return {
        "images": torch.from_numpy(images).permute(0, 3, 1, 2),
        "boxes": _pad_stack([e["boxes"].reshape(-1, 4) for e in examples], n, 0.0, np.float32),
        "labels": _pad_stack([e["labels"] for e in examples], n, -1, np.int64),
        "weights": _pad_stack([e["weights"] for e in examples], n, 0.0, np.float32),
        "is_crowd": _pad_stack([e["is_crowd"] for e in examples], n, False, bool),
        "difficult": _pad_stack([e["difficult"] for e in examples], n, False, bool),
        "num_boxes": torch.tensor([len(e["labels"]) for e in examples], dtype=torch.int64),
        "image_sizes": torch.tensor(
            [e.get("image_size", e["image"].shape[:2]) for e in examples], dtype=torch.int64
        ),
        "original_sizes": torch.tensor([e["original_size"] for e in examples], dtype=torch.int64),
        "scales": torch.tensor([e.get("scale", (1.0, 1.0)) for e in examples], dtype=torch.float32),
        "source_ids": [e["source_id"] for e in examples],
        **_instances(examples, n, images.shape[1:3]),
    }


def _instances(examples: Sequence[Example], n: int, size: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """``masks`` [B, N, H, W] uint8 at the batch's (padded) image size, ``keypoints`` [B, N, J, 2]
    (NaN where absent or padding), ``keypoint_visibilities`` [B, N, J], ``areas`` [B, N] (annotated
    areas in original pixels, 0: none given): where the examples have them."""
    out: dict[str, torch.Tensor] = {}
    if all("masks" in e for e in examples):
        masks = np.zeros((len(examples), n, *size), dtype=np.uint8)
        for i, e in enumerate(examples):  # one copy per image
            m = e["masks"]
            masks[i, : m.shape[0], : m.shape[1], : m.shape[2]] = m
        out["masks"] = torch.from_numpy(masks)
    if all("area" in e for e in examples):
        out["areas"] = _pad_stack([e["area"] for e in examples], n, 0.0, np.float32)
    if all("keypoints" in e for e in examples):
        out["keypoints"] = _pad_stack([e["keypoints"] for e in examples], n, np.nan, np.float32)
        out["keypoint_visibilities"] = _pad_stack([e["keypoint_visibilities"] for e in examples], n,
                                                  False, bool)
    return out
