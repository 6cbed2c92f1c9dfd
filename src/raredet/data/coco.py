"""COCO JSON detection annotations as a raredet reader.

Categories are matched to the label map by ``name`` (so a label map with different ids still works);
a category whose name is not in the label map is an error when one of its boxes is read. ``bbox`` is
``[x, y, width, height]`` in pixels; ``iscrowd`` is honoured; an optional per-annotation ``"weight"``
gives the box's data weight (default 1.0). Images without annotations are kept as negatives.
With ``load_instance_masks`` each annotation's ``segmentation`` (polygons or RLE) becomes its mask; with
``num_keypoints`` > 0 its ``keypoints`` [x, y, v] * J (absent: every keypoint unlabelled).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from raredet.data import instances
from raredet.data.example import DraftSize, Example, checked_annotations, decode_image, finish_example
from raredet.errors import DataError

if TYPE_CHECKING:
    from raredet.config.label_map import LabelMap


def _load_json(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError as err:
        raise DataError(f"{path}: COCO annotation file does not exist") from err
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DataError(f"{path}: not a COCO detection file (no 'images' list)")
    return data


class CocoReader:
    """``annotation_file``: COCO JSON; ``image_dir``: where ``file_name`` is relative to (default: the
    JSON file's directory, then its ``images/`` subfolder); ``label_map``: raredet LabelMap;
    ``load_instance_masks`` / ``num_keypoints``: the input reader's fields of those names."""

    def __init__(
        self,
        annotation_file: str | os.PathLike[str],
        label_map: LabelMap,
        image_dir: str | os.PathLike[str] | None = None,
        *,
        load_instance_masks: bool = False,
        num_keypoints: int = 0,
    ) -> None:
        self.path = Path(annotation_file)
        self.load_instance_masks, self.num_keypoints = load_instance_masks, num_keypoints
        data = _load_json(self.path)
        self.label_map = label_map
        self.image_dir = Path(image_dir) if image_dir is not None else self._default_image_dir(data)
        self.images = data["images"]
        self._category_index, self._category_names = self._categories(data)
        self._by_image = self._group(data.get("annotations", []))

    def _default_image_dir(self, data: dict[str, Any]) -> Path:
        first = data["images"][0].get("file_name", "") if data["images"] else ""
        for candidate in (self.path.parent, self.path.parent / "images"):
            if (candidate / first).exists():
                return candidate
        return self.path.parent

    def _categories(self, data: dict[str, Any]) -> tuple[dict[int, int], dict[int, str]]:
        cats = data.get("categories", [])
        names = {int(c["id"]): str(c["name"]) for c in cats}
        indices = self.label_map.names_to_indices([names[i] for i in names])
        return dict(zip(names, indices.tolist(), strict=True)), names

    def _group(self, annotations: list[dict[str, Any]]) -> dict[Any, list[dict[str, Any]]]:
        grouped: dict[Any, list[dict[str, Any]]] = {}
        for ann in annotations:  # one pass at load; per-image lists afterwards
            grouped.setdefault(ann.get("image_id"), []).append(ann)
        orphans = grouped.keys() - {info.get("id") for info in self.images}
        if orphans:  # otherwise their boxes would silently never be trained on
            ann = grouped[next(iter(orphans))][0]
            raise DataError(
                f"{self.path}: annotation {ann.get('id')} has image_id {ann.get('image_id')!r}, which is not "
                f"in 'images' ({sum(len(grouped[i]) for i in orphans)} such annotations); add the image or "
                "remove the annotation"
            )
        return grouped

    def __len__(self) -> int:
        return len(self.images)

    def annotations(self, index: int) -> dict[str, Any]:
        info = self.images[index]
        where = f"{self.path}, image id {info.get('id')}"
        height, width = _positive_int(info.get("height")), _positive_int(info.get("width"))
        if height is None or width is None:
            raise DataError(f"{where}: fields 'height'/'width' are missing or not positive")
        anns = self._by_image.get(info.get("id"), [])
        fields = [_annotation_fields(a, k, where) for k, a in enumerate(anns)]
        category_ids = [f[1] for f in fields]
        names = [self._category_names.get(c, f"category_id {c}") for c in category_ids]
        checked = checked_annotations(
            boxes=_xywh_to_xyxy(np.array([f[0] for f in fields], dtype=np.float32).reshape(-1, 4)),
            labels=np.array([self._category_index.get(c, -1) for c in category_ids], dtype=np.int64),
            weights=np.array([f[2] for f in fields], dtype=np.float32),
            is_crowd=np.array([f[3] for f in fields], dtype=bool),
            difficult=np.zeros(len(fields), dtype=bool),
            height=height,
            width=width,
            where=where,
            label_desc=np.array(names, dtype=np.str_),
        )
        if self.num_keypoints > 0:
            checked["keypoints"], checked["keypoint_visibilities"] = self._keypoints(anns, where)
        if self.num_keypoints > 0 or self.load_instance_masks:
            given = [a["area"] if _is_number(a.get("area")) else 0.0 for a in anns]
            checked["area"] = instances.areas(given, len(anns), where, "area")
        return {
            **checked,
            "source_id": str(info.get("id")),
            "filename": str(info.get("file_name", "")),
            "height": height,
            "width": width,
            "where": where,
        }

    def _keypoints(self, anns: list[dict[str, Any]], where: str) -> tuple[np.ndarray, np.ndarray]:
        kp, vis = instances.absent_keypoints(len(anns), self.num_keypoints)
        for k, ann in enumerate(anns):  # per object, J values each
            if ann.get("keypoints") is not None:
                values = ann["keypoints"] if isinstance(ann["keypoints"], list) else [ann["keypoints"]]
                kp[k], vis[k] = instances.coco_keypoints(values, self.num_keypoints,
                                                         f"{where}: annotation {ann.get('id', k)}")
        return kp, vis

    def example(self, index: int, draft_size: DraftSize = None) -> Example:
        annotations = self.annotations(index)
        if self.load_instance_masks:
            anns = self._by_image.get(self.images[index].get("id"), [])
            annotations["masks"] = instances.coco_segmentation_masks(
                [a.get("segmentation") for a in anns], annotations["height"], annotations["width"],
                [f"{annotations['where']}: annotation {a.get('id', k)}" for k, a in enumerate(anns)])
            draft_size = None  # full resolution, so that masks are resized once, from the stored size
        path = self.image_dir / annotations["filename"]
        image, full = decode_image(path, annotations["where"], draft_size)
        return finish_example(annotations, image, full)


def _positive_int(value: Any) -> int | None:
    """``value`` as an int > 0 (a JSON number), else None."""
    if not _is_number(value) or not value > 0:
        return None
    return int(value)


def _annotation_fields(ann: dict[str, Any], k: int, where: str) -> tuple[list[float], int, float, bool]:
    """(bbox [x, y, w, h], category_id, weight, iscrowd) of one annotation, each checked for its JSON type
    so that a string where a number belongs is named instead of failing inside numpy."""
    name = f"{where}: annotation {ann.get('id', k)}"
    bbox = ann.get("bbox")
    if not isinstance(bbox, list) or len(bbox) != 4:
        raise DataError(f"{name} has no valid 'bbox' [x, y, w, h]")
    if not all(_is_number(v) for v in bbox):
        raise DataError(f"{name}: field 'bbox' is {bbox!r}, not 4 numbers [x, y, w, h]")
    category = ann.get("category_id", -1)
    if isinstance(category, bool) or not isinstance(category, int):
        raise DataError(f"{name}: field 'category_id' is {category!r}, not an integer")
    weight = ann.get("weight", 1.0)
    if not _is_number(weight):
        raise DataError(f"{name}: field 'weight' is {weight!r}, not a number")
    crowd = ann.get("iscrowd", 0)
    if crowd not in (0, 1):  # True/False compare equal to 1/0 and are fine
        raise DataError(f"{name}: field 'iscrowd' is {crowd!r}, not 0 or 1")
    return bbox, category, float(weight), bool(crowd)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _xywh_to_xyxy(xywh: np.ndarray) -> np.ndarray:
    """[N, 4] COCO boxes (x, y, w, h) -> [N, 4] xyxy."""
    return np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
