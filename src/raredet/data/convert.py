"""A labelled dataset on disk -> checked images with boxes -> TF OD API TFRecords, as `raredet init` needs.

Sources: a Pascal VOC folder (parsed by :func:`raredet.data.voc.parse_voc_xml`), a COCO JSON file with its
images (fields checked by :mod:`raredet.data.coco`), or TFRecords with a label map (read by
:class:`raredet.data.tfrecord.TFRecordReader`). Records are written by
:func:`raredet.data.tfrecord.detection_example`.

Nothing inconsistent is passed on silently: every problem is recorded in :class:`DataIssues` with the
file it was found in, and handled by the rule in :data:`RULES` (the readers used for training raise on
the same problems instead, so a dataset written here reads without error).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from raredet.data.coco import _annotation_fields, _load_json, _xywh_to_xyxy
from raredet.data.tfrecord import TFRecordFile, TFRecordReader, detection_example, write_tfrecord
from raredet.data.voc import parse_voc_xml
from raredet.errors import DataError

# kind -> what is done about it. The order is the report's.
RULES: dict[str, str] = {
    "unreadable_annotation": "annotation file skipped",
    "image_name_without_extension": "kept: the one file <name>.<extension> beside it is used",
    "missing_image": "image skipped",
    "unreadable_image": "image skipped",
    "duplicate_image": "later copy skipped (same file name or same bytes as an earlier image)",
    "size_mismatch": "kept; the image file's own size is used, boxes as written",
    "unknown_class": "box dropped",
    "box_outside_image": "box clipped to the image",
    "zero_area_box": "box dropped (no area: xmax <= xmin or ymax <= ymin, after clipping)",
    "duplicate_box": "later copy dropped (same class and coordinates in one image)",
    "image_without_annotations": "kept as a negative (an image with no boxes)",
    "unreadable_record": "record skipped",
}

# Split proportions in percent (train, val, test), and the formats a TF OD API decoder reads as they are.
SPLIT_PERCENT = (70, 15, 15)
SPLIT_NAMES = ("train", "val", "test")
_PASSTHROUGH_FORMATS = {"JPEG": "jpeg", "PNG": "png"}


@dataclass
class DataIssues:
    """Problems found, by kind (keys of RULES): per kind, one line per occurrence naming the file."""

    found: dict[str, list[str]] = field(default_factory=dict)

    def add(self, kind: str, where: str, count: int = 1) -> None:
        if kind not in RULES:
            raise ValueError(f"unknown data issue kind {kind!r}")
        self.found.setdefault(kind, []).extend([where] * count)

    def counts(self) -> dict[str, int]:
        return {k: len(self.found[k]) for k in RULES if k in self.found}

    def report(self, examples: int = 5) -> str:
        """One paragraph per kind found: count, rule, and the first `examples` occurrences."""
        if not self.found:
            return "no inconsistent annotations found"
        lines = []
        for kind, count in self.counts().items():
            lines.append(f"{kind}: {count} ({RULES[kind]})")
            shown = self.found[kind][:examples]
            lines += [f"    {w}" for w in shown]
            if count > len(shown):
                lines.append(f"    ... {count - len(shown)} more (all in data_report.json)")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {k: {"count": n, "rule": RULES[k], "where": self.found[k]} for k, n in self.counts().items()}


@dataclass
class Annotated:
    """One image's annotations as a source states them: boxes [N, 4] xyxy in pixels, names [N]."""

    where: str  # the annotation file (and image id) for messages
    source_id: str
    image_path: Path
    height: int
    width: int
    names: list[str]
    boxes: np.ndarray
    difficult: np.ndarray  # bool [N]


@dataclass
class CheckedImage:
    """An image ready to write: encoded bytes and its format, boxes [N, 4] xyxy pixels, class names [N]."""

    source_id: str
    filename: str
    encoded: bytes
    image_format: str
    height: int
    width: int
    boxes: np.ndarray
    names: list[str]


# ---- sources -----------------------------------------------------------------------------------------


def voc_annotations(root: Path, issues: DataIssues, split: str | None = None) -> list[Annotated]:
    """Every XML of ``root/Annotations`` (or those listed in ImageSets/Main/<split>.txt), parsed; an
    annotation file that cannot be parsed is recorded and skipped."""
    ann_dir, image_dir = root / "Annotations", root / "JPEGImages"
    if split is None:
        paths = sorted(ann_dir.glob("*.xml"))
    else:
        listing = root / "ImageSets" / "Main" / f"{split}.txt"
        ids = [line.split()[0] for line in listing.read_text().splitlines() if line.strip()]
        paths = [ann_dir / f"{i}.xml" for i in ids]
    out = []
    for path in paths:
        try:
            parsed = parse_voc_xml(path)
        except DataError as err:
            issues.add("unreadable_annotation", str(err))
            continue
        out.append(Annotated(
            where=str(path), source_id=path.stem, image_path=image_dir / parsed["filename"],
            height=parsed["height"], width=parsed["width"], names=list(parsed["names"]),
            boxes=parsed["boxes"], difficult=parsed["difficult"],
        ))
    return out


def voc_splits(root: Path) -> list[str] | None:
    """The VOC folder's own train/val(/test) lists when it has train.txt and val.txt, else None."""
    main = root / "ImageSets" / "Main"
    if not ((main / "train.txt").is_file() and (main / "val.txt").is_file()):
        return None
    return [s for s in SPLIT_NAMES if (main / f"{s}.txt").is_file()]


def coco_annotations(path: Path, image_dir: Path | None, issues: DataIssues) -> list[Annotated]:
    """The images of a COCO detection JSON with their boxes; a box whose category_id is not among the
    file's categories is recorded (unknown_class) and dropped, as is an annotation that cannot be read."""
    data = _load_json(path)
    images = data["images"]
    folder = image_dir if image_dir is not None else _coco_image_dir(path, images)
    categories = {int(c["id"]): str(c["name"]) for c in data.get("categories", [])}
    by_image: dict[Any, list[dict[str, Any]]] = {}
    for ann in data.get("annotations", []):  # one pass; per-image lists afterwards
        by_image.setdefault(ann.get("image_id"), []).append(ann)
    known_ids = {info.get("id") for info in images}
    for image_id in by_image.keys() - known_ids:
        issues.add("unreadable_annotation", f"{path}: {len(by_image[image_id])} annotation(s) with image_id "
                   f"{image_id!r}, which is not in 'images'")
    return [_coco_image(path, info, by_image.get(info.get("id"), []), categories, folder, issues)
            for info in images]


def _coco_image_dir(path: Path, images: list[dict[str, Any]]) -> Path:
    first = str(images[0].get("file_name", "")) if images else ""
    for candidate in (path.parent, path.parent / "images"):
        if first and (candidate / first).exists():
            return candidate
    return path.parent


def _coco_image(path: Path, info: dict[str, Any], anns: list[dict[str, Any]], categories: dict[int, str],
                folder: Path, issues: DataIssues) -> Annotated:
    where = f"{path}, image id {info.get('id')} ({info.get('file_name', '')})"
    boxes, names = [], []
    for k, ann in enumerate(anns):
        try:
            bbox, category, _, crowd = _annotation_fields(ann, k, where)
        except DataError as err:
            issues.add("unreadable_annotation", str(err))
            continue
        if category not in categories:
            issues.add("unknown_class", f"{where}: annotation {ann.get('id', k)} has category_id {category}, "
                       "not in 'categories'")
            continue
        boxes.append(bbox)
        names.append(categories[category])
    xyxy = _xywh_to_xyxy(np.asarray(boxes, dtype=np.float32).reshape(-1, 4))
    return Annotated(
        where=where, source_id=str(info.get("id")), image_path=folder / str(info.get("file_name", "")),
        height=int(info.get("height") or 0), width=int(info.get("width") or 0), names=names, boxes=xyxy,
        difficult=np.zeros(len(names), dtype=bool),
    )


# ---- checks ------------------------------------------------------------------------------------------


def check_images(annotated: Iterable[Annotated], class_names: Sequence[str] | None,
                 issues: DataIssues) -> list[CheckedImage]:
    """Read each image file, apply RULES to it and its boxes; ``class_names`` None accepts every name."""
    seen_names: dict[str, str] = {}
    seen_bytes: dict[str, str] = {}
    known = None if class_names is None else set(class_names)
    out = []
    for ann in annotated:
        image = _read_image(ann, issues)
        if image is None:
            continue
        encoded, image_format, height, width = image
        digest = hashlib.sha1(encoded).hexdigest()
        key = str(ann.image_path.resolve())
        earlier = seen_names.get(key) or seen_bytes.get(digest)
        if earlier is not None:
            issues.add("duplicate_image", f"{ann.where}: {ann.image_path.name} repeats {earlier}")
            continue
        seen_names[key] = seen_bytes[digest] = ann.where
        if (ann.height, ann.width) != (height, width):
            issues.add("size_mismatch", f"{ann.where}: annotation says {ann.width}x{ann.height}, "
                       f"{ann.image_path.name} is {width}x{height}")
        boxes, names = check_boxes(ann, height, width, known, issues)
        if len(names) == 0:
            issues.add("image_without_annotations", ann.where)
        out.append(CheckedImage(ann.source_id, ann.image_path.name, encoded, image_format, height, width,
                                boxes, names))
    return out


def _read_image(ann: Annotated, issues: DataIssues) -> tuple[bytes, str, int, int] | None:
    """(bytes, TF format name, height, width) of the image file; PNG-re-encoded unless JPEG or PNG."""
    if not ann.image_path.suffix and not ann.image_path.is_file():
        candidates = sorted(ann.image_path.parent.glob(f"{ann.image_path.name}.*"))
        if len(candidates) == 1:
            issues.add("image_name_without_extension", f"{ann.where}: '{ann.image_path.name}' read as "
                       f"{candidates[0].name}")
            ann.image_path = candidates[0]
    try:
        encoded = ann.image_path.read_bytes()
    except (FileNotFoundError, IsADirectoryError):
        issues.add("missing_image", f"{ann.where}: image file {ann.image_path} does not exist")
        return None
    try:
        with Image.open(io.BytesIO(encoded)) as img:
            img.load()
            if img.format not in _PASSTHROUGH_FORMATS:
                buffer = io.BytesIO()
                img.convert("RGB").save(buffer, format="PNG")
                return buffer.getvalue(), "png", img.height, img.width
            return encoded, _PASSTHROUGH_FORMATS[img.format], img.height, img.width
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        issues.add("unreadable_image", f"{ann.where}: {ann.image_path} cannot be decoded ({err})")
        return None


def check_boxes(ann: Annotated, height: int, width: int, known: set[str] | None,
                issues: DataIssues) -> tuple[np.ndarray, list[str]]:
    """Boxes [M, 4] and names [M] that survive RULES (unknown class, outside, zero area, duplicate)."""
    boxes = np.asarray(ann.boxes, dtype=np.float32).reshape(-1, 4)
    names = np.asarray(ann.names, dtype=object)
    finite = np.asarray(np.isfinite(boxes).all(axis=1), dtype=bool)
    keep = finite & (np.ones(len(names), bool) if known is None else np.isin(names, list(known)))
    for i in np.flatnonzero(~keep):
        issues.add("unknown_class" if finite[i] else "zero_area_box",
                   f"{ann.where}: object {i} ('{names[i]}', box {boxes[i].tolist()})")
    size = np.array([width, height, width, height], dtype=np.float32)
    clipped = np.clip(boxes, 0, size)
    outside = keep & (clipped != boxes).any(axis=1)
    for i in np.flatnonzero(outside):
        issues.add("box_outside_image", f"{ann.where}: object {i} ('{names[i]}') {boxes[i].tolist()} in a "
                   f"{width}x{height} image")
    empty = keep & ((clipped[:, 2] <= clipped[:, 0]) | (clipped[:, 3] <= clipped[:, 1]))
    for i in np.flatnonzero(empty):
        issues.add("zero_area_box", f"{ann.where}: object {i} ('{names[i]}') {boxes[i].tolist()}")
    keep &= ~empty
    kept = np.flatnonzero(keep)
    if len(kept):
        codes = np.unique(names.astype(str), return_inverse=True)[1].reshape(-1)
        rows = np.concatenate([codes[kept, None].astype(np.float32), clipped[kept]], axis=1)
        _, first, inverse = np.unique(rows, axis=0, return_index=True, return_inverse=True)
        original = kept[first[inverse.reshape(-1)]]  # per kept box: the first kept box equal to it
        repeat = original != kept
        for i, j in zip(kept[repeat], original[repeat], strict=True):
            issues.add("duplicate_box", f"{ann.where}: object {i} ('{names[i]}') repeats object {j}")
        keep[kept[repeat]] = False
    return clipped[keep], [str(n) for n in names[keep]]


# ---- splitting and writing ---------------------------------------------------------------------------


def stratified_split(image_classes: Sequence[np.ndarray], num_classes: int, seed: int,
                     percent: tuple[int, int, int] = SPLIT_PERCENT) -> np.ndarray:
    """Split index (0 train, 1 val, 2 test) per image, stratified by each image's rarest class.

    image_classes: per image, int class indices of its boxes (repeats allowed). An image's stratum is
    the class present in it with the fewest boxes over the whole set (ties: lower index); images with no
    box form one stratum of their own. Within a stratum of n images, shuffled by a generator seeded with
    ``seed``, the first round(n * test%) go to test, the next round(n * val%) to val, the rest to train
    (round half up).
    """
    every = np.concatenate([np.asarray(c, np.int64) for c in image_classes] + [np.zeros(0, np.int64)])
    counts = np.bincount(every, minlength=num_classes)
    strata = np.array([min(set(c.tolist()), key=lambda k: (counts[k], k)) if len(c) else -1
                       for c in image_classes], dtype=np.int64)
    rng = np.random.default_rng(seed)
    split = np.zeros(len(strata), dtype=np.int64)
    for stratum in np.unique(strata):  # one pass per class
        members = rng.permutation(np.flatnonzero(strata == stratum))
        n_test = (len(members) * percent[2] + 50) // 100
        n_val = (len(members) * percent[1] + 50) // 100
        split[members[:n_test]] = 2
        split[members[n_test:n_test + n_val]] = 1
    return split


def write_images(path: Path, images: Sequence[CheckedImage], class_names: Sequence[str]) -> Path:
    """TFRecord of ``images`` (TF OD API layout; label ids 1..K in ``class_names`` order, texts too)."""
    ids = {name: i + 1 for i, name in enumerate(class_names)}
    return write_tfrecord(path, (
        detection_example(
            encoded=im.encoded, image_format=im.image_format, height=im.height, width=im.width,
            boxes=im.boxes, class_ids=np.array([ids[n] for n in im.names], dtype=np.int64),
            class_texts=im.names, source_id=im.source_id, filename=im.filename,
        )
        for im in images
    ))


def tfrecord_payloads(paths: Sequence[Path], reader: TFRecordReader,
                      issues: DataIssues) -> tuple[list[bytes], list[np.ndarray]]:
    """Each readable record's serialized bytes and its class indices; a record raredet's reader refuses
    (unknown class, box far outside, bad field) is recorded with the reader's message and skipped."""
    payloads, classes = [], []
    index = 0
    for path in paths:
        file = TFRecordFile(path)
        for local in range(len(file)):
            try:
                ann = reader.annotations(index)
                payloads.append(file.read(local))
                classes.append(ann["labels"])
            except DataError as err:
                issues.add("unreadable_record", str(err))
            index += 1
    return payloads, classes


def split_paths(out: Path) -> dict[str, Path]:
    return {name: out / f"{name}.tfrecord" for name in SPLIT_NAMES}


def image_class_indices(images: Sequence[CheckedImage], class_names: Sequence[str]) -> list[np.ndarray]:
    index = {name: i for i, name in enumerate(class_names)}
    return [np.array([index[n] for n in im.names], dtype=np.int64) for im in images]
