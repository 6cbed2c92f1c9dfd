"""`raredet predict`: run a trained model on image files; COCO results JSON plus drawn images.

The model is the newest checkpoint of a training run (`model_dir/ckpt-<step>.pt`). Its config and label
map are the ones saved inside that checkpoint, so a run can be used without its data; a
`pipeline_config_path` given explicitly replaces them. `model_dir` may also be a model the TF OD API
trained (`commands.trained`): an extracted TF2 zoo model folder as it is, or a TF `model_dir` with
`pipeline_config_path`; without a label map there, classes are named `class_<id>`. Images go through
the config's `image_resizer` (as in evaluation) and detections are mapped back to the pixels of the file
as stored.

Outputs in `out_dir`: `detections.json` (a COCO results list: `image_id`, `category_id` = label-map id,
`bbox` [x, y, w, h] in pixels, `score`), `images.json` (the COCO `images` entries the ids refer to:
`id`, `file_name`, `height`, `width`), and `drawn/<name>.png` per image. An image that cannot be read is
reported by name and skipped, and the skipped ones are counted at the end: in a folder of thousands of
photos one broken file should not cost the other results.

Models whose detections carry instances add to each detections.json entry (the COCO results formats
for segmentation and keypoints):

- `segmentation` (Mask R-CNN; CenterNet with `deepmac_mask_estimation`): the detection's mask as a
  COCO RLE (`{"size": [height, width], "counts": str}`) at the stored image's size: the model's
  box-relative mask pasted into its box as the TF OD API's evaluation does and thresholded at 0.5
  (`evaluation.masks.box_masks_to_rle`; decode with pycocotools' `mask.decode`);
- `keypoints` (CenterNet with `keypoint_estimation_task`): `[x1, y1, v1, x2, y2, v2, ...]` in pixels
  of the stored image, one triple per keypoint of the keypoint label map's order (`v` is 2; a keypoint
  the model did not place is `0, 0, 0`), and `keypoint_scores` `[s1, s2, ...]`, the model's score of
  each. Detections of classes without a keypoint task carry neither.

The drawn images show masks blended in the class colour and keypoints as dots.

With `operating_points` (an operating_points.json of `raredet eval`), each class keeps the detections
above its own threshold instead of `min_score`: the model's scores are mapped so that every class's
threshold lands on the file's common `score_threshold` (the map `pipeline.operating_points.config`
carries). Scores in the output are those mapped scores. Where the file has a review band, detections
between a class's two thresholds are kept too, with `"review": true` in detections.json and drawn
with their class name followed by "?".
"""

from __future__ import annotations

import glob
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from raredet import builders
from raredet.commands.trained import TrainedModel, load_trained_model, set_operating_points_from_file
from raredet.errors import ConfigError, DataError
from raredet.fileio import atomic_write, atomic_write_json

if TYPE_CHECKING:
    from PIL import Image

    from raredet.data.resize import Resizer

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
MIN_DRAWN_WIDTH = 256  # smaller images are enlarged (nearest neighbour) so that labels stay readable


# ---- finding and reading images --------------------------------------------------------------------


def _is_pattern(text: str) -> bool:
    return any(c in text for c in "*?[")


def _expand(text: str) -> tuple[list[Path], str | None]:
    """The files one command-line path names, or the reason it names none."""
    path = Path(text)
    if _is_pattern(text):
        hits = [Path(p) for p in sorted(glob.glob(text, recursive=True)) if Path(p).is_file()]
        return hits, None if hits else "the pattern matches no file"
    if path.is_dir():
        hits = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        return hits, None if hits else f"the folder holds no {'/'.join(sorted(IMAGE_SUFFIXES))} file"
    return ([path], None) if path.is_file() else ([], "no such file or folder")


def find_images(paths: Sequence[str]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Image files named by `paths` (files; folders: their image files; glob patterns), in order and
    without repeats; and (path, reason) for each path that names no file."""
    found: dict[Path, Path] = {}  # resolved -> as given
    missing: list[tuple[str, str]] = []
    for text in paths:
        hits, reason = _expand(text)
        if reason is not None:
            missing.append((text, reason))
        for hit in hits:
            found.setdefault(hit.resolve(), hit)
    return list(found.values()), missing


def _example(path: Path, resizer: Resizer) -> dict[str, Any]:
    """Decode one file (DataError naming it if it cannot be) and resize it as the model expects."""
    from raredet.data.example import decode_image

    image, size = decode_image(path, str(path))
    example = {"image": image, "boxes": np.zeros((0, 4), np.float32), "labels": np.zeros(0, np.int64),
               "weights": np.zeros(0, np.float32), "is_crowd": np.zeros(0, bool),
               "difficult": np.zeros(0, bool), "source_id": str(path), "filename": path.name,
               "original_size": size}
    return resizer(example) | {"original_image": image}


# ---- running ------------------------------------------------------------------------------------


@dataclass
class PredictResult:
    out_dir: Path
    num_images: int = 0
    num_detections: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    notes: tuple[str, ...] = ()  # how the model was loaded (TrainedModel.notes)

    def summary(self) -> str:
        lines = [*self.notes, f"{self.num_images} images, {self.num_detections} detections -> "
                 f"{self.out_dir / 'detections.json'} (drawn images in {self.out_dir / 'drawn'})"]
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} unreadable: " + ", ".join(p for p, _ in self.skipped))
        return "\n".join(lines)


@torch.no_grad()
def detect(model: nn.Module, examples: list[dict[str, Any]]) -> list[dict[str, np.ndarray]]:
    """Detections of resized examples, in the pixels of each original image: per example `boxes`
    [D, 4] xyxy, `scores` [D], `classes` [D] (contiguous index), best first; where the model gives
    them, `masks` [D, h, w] (box-relative probabilities), `keypoints` [D, J, 2] (x, y) and
    `keypoint_scores` [D, J]."""
    from raredet.data.dataset import collate

    batch = collate(examples)
    det = model.postprocess(model(batch["images"]), batch["image_sizes"])  # type: ignore[operator]
    scales = batch["scales"].double().numpy()  # [B, 2] (sy, sx): resized = original * scale
    out = []
    for b, n in enumerate(det["num_detections"].tolist()):
        to_original = np.array([scales[b, 1], scales[b, 0]] * 2)
        found = {"boxes": det["detection_boxes"][b, :n].double().numpy() / to_original,
                 "scores": det["detection_scores"][b, :n].double().numpy(),
                 "classes": det["detection_classes"][b, :n].numpy()}
        if "detection_masks" in det:
            found["masks"] = det["detection_masks"][b, :n].float().numpy()
        if "detection_keypoints" in det:
            found["keypoints"] = det["detection_keypoints"][b, :n].double().numpy() / to_original[:2]
            found["keypoint_scores"] = det["detection_keypoint_scores"][b, :n].double().numpy()
        out.append(found)
    return out


def _instance_fields(det: dict[str, np.ndarray], size: tuple[int, int]) -> list[dict[str, Any]]:
    """Per detection the COCO `segmentation` (RLE at the image's `size` (h, w)) and `keypoints` /
    `keypoint_scores` (module docstring) that `det` has masks / keypoints for."""
    from raredet.evaluation.masks import box_masks_to_rle, coco_keypoints

    fields: list[dict[str, Any]] = [{} for _ in det["scores"]]
    if "masks" in det:
        for entry, rle in zip(fields, box_masks_to_rle(det["masks"], det["boxes"], *size), strict=True):
            entry["segmentation"] = rle
    if "keypoints" in det:
        kp, scores = det["keypoints"], det["keypoint_scores"]
        # the model's padding for classes without keypoints: every coordinate and score exactly 0
        has = ~((np.nan_to_num(kp, nan=1.0) == 0).all(axis=(1, 2)) & (scores == 0).all(axis=1))
        triples = coco_keypoints(kp)[0]
        for entry, keep, triple, score in zip(fields, has.tolist(), triples, scores.tolist(), strict=True):
            if keep:
                entry["keypoints"] = [round(v, 2) for v in triple]
                entry["keypoint_scores"] = [round(float(v), 5) for v in np.nan_to_num(score)]
    return fields


def coco_results(image_id: int, det: dict[str, np.ndarray], class_ids: np.ndarray,
                 size: tuple[int, int] | None = None) -> list[dict[str, Any]]:
    """COCO results entries of one image; `class_ids` [K] maps contiguous index -> label-map id; `size`
    (h, w of the stored image) is needed where `det` has masks (their RLEs are at that size)."""
    xywh = np.concatenate([det["boxes"][:, :2], det["boxes"][:, 2:] - det["boxes"][:, :2]], axis=1)
    records = [{"image_id": image_id, "category_id": int(c), "bbox": [round(v, 2) for v in box],
                "score": round(float(s), 5)}
               for box, c, s in zip(xywh.tolist(), class_ids[det["classes"]], det["scores"], strict=True)]
    if "masks" in det and size is None:
        raise ValueError("coco_results: detections with masks need the image size")
    if "masks" in det or "keypoints" in det:
        for record, extra in zip(records, _instance_fields(det, size or (0, 0)), strict=True):
            record.update(extra)
    return records


def _overlay(image: np.ndarray, det: dict[str, np.ndarray], zoom: int) -> np.ndarray:
    """`image` (already enlarged `zoom` times) with each detection's pasted mask blended half-and-half
    in its class colour and each placed keypoint as a dot."""
    from raredet.evaluation.masks import paste_box_masks
    from raredet.evaluation.report import PALETTE

    out = image.astype(np.float32)
    colours = np.asarray(PALETTE, dtype=np.float32)[det["classes"] % len(PALETTE)]  # [D, 3]
    if "masks" in det and len(det["masks"]):
        pasted = paste_box_masks(det["masks"], det["boxes"] * zoom, image.shape[0], image.shape[1])
        for mask, colour in zip(pasted.astype(bool), colours, strict=True):
            out[mask] = 0.5 * out[mask] + 0.5 * colour
    if "keypoints" in det and len(det["keypoints"]):
        xy = np.nan_to_num(det["keypoints"] * zoom, nan=-1.0)
        placed = (det["keypoint_scores"] > 0) & (xy >= 0).all(axis=-1)  # [D, J]
        d, j = np.nonzero(placed)
        cols = np.clip(xy[d, j, 0].astype(np.int64), 1, image.shape[1] - 2)
        rows = np.clip(xy[d, j, 1].astype(np.int64), 1, image.shape[0] - 2)
        for dy in (-1, 0, 1):  # 3x3 dots
            for dx in (-1, 0, 1):
                out[rows + dy, cols + dx] = colours[d]
    return out.round().astype(np.uint8)


def draw_detections(image: np.ndarray, det: dict[str, np.ndarray], names: Sequence[str]) -> Image.Image:
    """The image (uint8 [H, W, 3]) with its detections drawn (evaluation report's drawing; masks and
    keypoints where `det` has them), as a PIL image; small images are enlarged first so the labels stay
    readable."""
    from raredet.evaluation.report import draw_boxes

    zoom = int(min(4, max(1, MIN_DRAWN_WIDTH // max(1, image.shape[1]))))
    big = np.repeat(np.repeat(image, zoom, axis=0), zoom, axis=1)
    if "masks" in det or "keypoints" in det:
        big = _overlay(big, det, zoom)
    return draw_boxes(big, det["boxes"] * zoom, det["classes"], names, det["scores"])


def _batches(paths: list[Path], resizer: Resizer, size: int, skipped: list[tuple[str, str]]
             ) -> Iterator[tuple[list[dict[str, Any]], int]]:
    """(decoded and resized examples, files read for them) in batches of `size`; unreadable files go
    to `skipped` and are reported on stderr."""
    batch: list[dict[str, Any]] = []
    files = 0
    for path in paths:
        files += 1
        try:
            batch.append(_example(path, resizer))
        except DataError as err:
            print(f"raredet predict: skipping {path}: {err}", file=sys.stderr)
            skipped.append((str(path), str(err)))
        if len(batch) == size:
            yield batch, files
            batch, files = [], 0
    if batch or files:
        yield batch, files


def _drawn_name(path: Path, used: set[str]) -> str:
    name, n = f"{path.stem}.png", 1
    while name in used:  # same file name in two folders
        n += 1
        name = f"{path.stem}_{n}.png"
    used.add(name)
    return name


@dataclass(frozen=True)
class ScoreFilter:
    """Which detections to keep: scores at or above `min_score`; or, with operating points, above
    `accept`, and above `review` (when set) as the review band."""

    min_score: float = 0.5
    accept: float | None = None
    review: float | None = None

    def __call__(self, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(kept [D], in the review band [D]) for `scores [D]`."""
        if self.accept is None:
            return scores >= self.min_score, np.zeros(scores.shape, dtype=bool)
        accepted = scores > self.accept
        band = ~accepted & (scores > self.review) if self.review is not None else np.zeros_like(accepted)
        return accepted | band, band


def predict(model_dir: str | os.PathLike[str], images: Sequence[str], out_dir: str | os.PathLike[str], *,
            min_score: float | None = None, pipeline_config_path: str | os.PathLike[str] | None = None,
            batch_size: int = 8, operating_points: str | os.PathLike[str] | None = None,
            label_map_path: str | os.PathLike[str] | None = None) -> PredictResult:
    """`raredet predict`: detect objects in `images` (files, folders, globs) with the newest checkpoint
    of `model_dir`; write detections scoring at least `min_score` (default 0.5), or above each class's
    threshold in `operating_points` (module docstring). `label_map_path` names the classes instead of
    the checkpoint's or config's label map."""
    if operating_points is not None and min_score is not None:
        raise ConfigError("give --min_score or --operating_points, not both: the operating points set a "
                          "threshold per class")
    min_score = 0.5 if min_score is None else min_score
    if not 0.0 <= min_score <= 1.0:
        raise ConfigError(f"--min_score must be in [0, 1], got {min_score}")
    trained = load_trained_model(model_dir, pipeline_config_path, label_map_path)
    keep = ScoreFilter(min_score)
    if operating_points is not None:
        content = set_operating_points_from_file(trained, operating_points, review=True)
        keep = ScoreFilter(accept=content["score_threshold"], review=content["review_score_threshold"])
    paths, missing = find_images(images)
    for text, reason in missing:
        print(f"raredet predict: skipping {text}: {reason}", file=sys.stderr)
    result = PredictResult(Path(out_dir), skipped=list(missing), notes=trained.notes)
    if not paths:
        raise DataError(f"no image files found in {' '.join(images)}; give files, folders or glob patterns")
    resizer = builders.build_resizer(builders.model_message(trained.pipeline))
    records, entries = _run(trained, paths, resizer, batch_size, keep, result)
    atomic_write_json(result.out_dir / "detections.json", records, indent=None)
    atomic_write_json(result.out_dir / "images.json", entries)
    return result


def _write_png(path: Path, image: Image.Image) -> None:
    atomic_write(path, lambda f: image.save(f, format="PNG"))


def _finish_image(example: dict[str, Any], det: dict[str, np.ndarray], trained: TrainedModel,
                  keep: ScoreFilter, entries: list[dict[str, Any]], used: set[str],
                  out_dir: Path) -> list[dict[str, Any]]:
    """Keep the detections `keep` keeps, add the image to `entries`, write its drawing; returns its
    COCO results entries (review-band ones marked)."""
    kept, band = keep(det["scores"])
    det = {k: v[kept] for k, v in det.items()}
    band = band[kept]
    h, w = example["original_size"]
    entries.append({"id": len(entries) + 1, "file_name": example["source_id"], "height": h, "width": w})
    names = trained.label_map.display_names
    # Review-band detections are drawn as a class of their own, "<name>?" (indices K..2K-1).
    shown = {**det, "classes": np.where(band, det["classes"] + len(names), det["classes"])}
    drawn = draw_detections(example["original_image"], shown, names + [f"{n}?" for n in names])
    _write_png(out_dir / "drawn" / _drawn_name(Path(example["source_id"]), used), drawn)
    records = coco_results(len(entries), det, np.asarray(trained.label_map.ids, dtype=np.int64), (h, w))
    if keep.review is not None:
        for record, in_band in zip(records, band.tolist(), strict=True):
            record["review"] = in_band
    return records


def _run(trained: TrainedModel, paths: list[Path], resizer: Resizer, batch_size: int, keep: ScoreFilter,
         result: PredictResult) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Detect, draw and collect COCO entries batch by batch; returns (results list, images list)."""
    from tqdm import tqdm

    records: list[dict[str, Any]] = []
    entries: list[dict[str, Any]] = []
    used: set[str] = set()
    with tqdm(total=len(paths), unit="image", dynamic_ncols=True) as bar:
        for batch, files in _batches(paths, resizer, batch_size, result.skipped):
            for example, det in zip(batch, detect(trained.model, batch) if batch else [], strict=True):
                records += _finish_image(example, det, trained, keep, entries, used, result.out_dir)
            bar.update(files)
    result.num_images, result.num_detections = len(entries), len(records)
    return records, entries
