"""COCO JSON detection annotations as a raredet reader.

Categories are matched to the label map by ``name`` (so a label map with different ids still works);
a category whose name is not in the label map is an error when one of its boxes is read. ``bbox`` is
``[x, y, width, height]`` in pixels; ``iscrowd`` is honoured; an optional per-annotation ``"weight"``
gives the box's data weight (default 1.0). Images without annotations are kept as negatives.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from raredet.data.example import DraftSize, Example, checked_annotations, decode_image, finish_example
from raredet.errors import DataError


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
    JSON file's directory, then its ``images/`` subfolder); ``label_map``: raredet LabelMap."""

    def __init__(
        self,
        annotation_file: str | os.PathLike[str],
        label_map: Any,
        image_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.path = Path(annotation_file)
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
        return grouped

    def __len__(self) -> int:
        return len(self.images)

    def annotations(self, index: int) -> dict[str, Any]:
        info = self.images[index]
        where = f"{self.path}, image id {info.get('id')}"
        anns = self._by_image.get(info.get("id"), [])
        height, width = int(info.get("height", 0)), int(info.get("width", 0))
        if height <= 0 or width <= 0:
            raise DataError(f"{where}: fields 'height'/'width' are missing or not positive")
        boxes = self._boxes(anns, where)
        category_ids = [int(a.get("category_id", -1)) for a in anns]
        labels = np.array([self._category_index.get(c, -1) for c in category_ids], dtype=np.int64)
        names = [self._category_names.get(c, f"category_id {c}") for c in category_ids]
        desc = np.array(names, dtype=np.str_)
        checked = checked_annotations(
            boxes=boxes,
            labels=labels,
            weights=np.array([a.get("weight", 1.0) for a in anns], dtype=np.float32),
            is_crowd=np.array([bool(a.get("iscrowd", 0)) for a in anns], dtype=bool),
            difficult=np.zeros(len(anns), dtype=bool),
            height=height,
            width=width,
            where=where,
            label_desc=desc,
        )
        return {
            **checked,
            "source_id": str(info.get("id")),
            "filename": str(info.get("file_name", "")),
            "height": height,
            "width": width,
            "where": where,
        }

    def _boxes(self, anns: list[dict[str, Any]], where: str) -> np.ndarray:
        for k, ann in enumerate(anns):
            bbox = ann.get("bbox")
            if not isinstance(bbox, list) or len(bbox) != 4:
                raise DataError(f"{where}: annotation {ann.get('id', k)} has no valid 'bbox' [x, y, w, h]")
        xywh = np.array([a["bbox"] for a in anns], dtype=np.float32).reshape(-1, 4)
        return np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)

    def example(self, index: int, draft_size: DraftSize = None) -> Example:
        annotations = self.annotations(index)
        path = self.image_dir / annotations["filename"]
        image, full = decode_image(path, annotations["where"], draft_size)
        return finish_example(annotations, image, full)
