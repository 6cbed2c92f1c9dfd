"""Pascal VOC folders as a raredet reader.

Layout: ``root/Annotations/<id>.xml``, ``root/JPEGImages/<filename>``, and optionally
``root/ImageSets/Main/<split>.txt`` listing the ids of a split. Objects are matched to the label map by
``<name>``; ``<difficult>`` is kept (evaluation ignores difficult boxes, as VOC does). Box coordinates
are used as written, like the TF OD API's VOC converter (no 1-pixel shift). An optional ``<weight>`` per
object gives its data weight.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from raredet.data.example import DraftSize, Example, checked_annotations, decode_image, finish_example
from raredet.errors import DataError

if TYPE_CHECKING:
    from raredet.config.label_map import LabelMap


def _text(node: ET.Element, path: str, where: str, default: str | None = None) -> str:
    found = node.findtext(path)
    if found is None or not found.strip():
        if default is not None:
            return default
        raise DataError(f"{where}: field '{path}' is missing")
    return found.strip()


def _number(node: ET.Element, path: str, where: str, default: str | None = None) -> float:
    value = _text(node, path, where, default)
    try:
        return float(value)
    except ValueError as err:
        raise DataError(f"{where}: field '{path}' is {value!r}, not a number") from err


def parse_voc_xml(path: Path) -> dict[str, Any]:
    """One annotation file → filename, size and per-object name, box (xyxy), difficult, weight."""
    try:
        root = ET.parse(path).getroot()
    except FileNotFoundError as err:
        raise DataError(f"{path}: annotation file does not exist") from err
    except ET.ParseError as err:
        raise DataError(f"{path}: not valid XML ({err})") from err
    where = str(path)
    objects = root.findall("object")
    boxes = [
        [_number(o, f"bndbox/{k}", f"{where}, object {i}") for k in ("xmin", "ymin", "xmax", "ymax")]
        for i, o in enumerate(objects)
    ]
    return {
        "filename": _text(root, "filename", where),
        "height": int(_number(root, "size/height", where)),
        "width": int(_number(root, "size/width", where)),
        "names": [_text(o, "name", f"{where}, object {i}") for i, o in enumerate(objects)],
        "boxes": np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        "difficult": np.array([_number(o, "difficult", where, "0") > 0 for o in objects], dtype=bool),
        "weights": np.array([_number(o, "weight", where, "1") for o in objects], dtype=np.float32),
    }


class VocReader:
    """``root``: a VOC folder; ``split``: an ImageSets/Main list (None: every XML in Annotations)."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        label_map: LabelMap,
        split: str | None = None,
        annotations_dir: str = "Annotations",
        images_dir: str = "JPEGImages",
    ) -> None:
        self.root = Path(root)
        self.label_map = label_map
        self.images_dir = self.root / images_dir
        self.xml_paths = self._list(split, self.root / annotations_dir)
        self._parsed = [parse_voc_xml(p) for p in self.xml_paths]

    def _list(self, split: str | None, ann_dir: Path) -> list[Path]:
        if split is None:
            paths = sorted(ann_dir.glob("*.xml"))
            if not paths:
                raise DataError(f"{ann_dir}: no .xml annotation files; is this a Pascal VOC folder?")
            return paths
        listing = self.root / "ImageSets" / "Main" / f"{split}.txt"
        if not listing.exists():
            raise DataError(f"{listing}: split list does not exist; give an existing split or none")
        ids = [line.split()[0] for line in listing.read_text().splitlines() if line.strip()]
        return [ann_dir / f"{i}.xml" for i in ids]

    def __len__(self) -> int:
        return len(self._parsed)

    def annotations(self, index: int) -> dict[str, Any]:
        parsed = self._parsed[index]
        where = str(self.xml_paths[index])
        checked = checked_annotations(
            boxes=parsed["boxes"],
            labels=self.label_map.names_to_indices(parsed["names"]),
            weights=parsed["weights"],
            is_crowd=np.zeros(len(parsed["names"]), dtype=bool),
            difficult=parsed["difficult"],
            height=parsed["height"],
            width=parsed["width"],
            where=where,
            label_desc=np.asarray(parsed["names"], dtype=object),
        )
        return {
            **checked,
            "source_id": self.xml_paths[index].stem,
            "filename": parsed["filename"],
            "height": parsed["height"],
            "width": parsed["width"],
            "where": where,
        }

    def example(self, index: int, draft_size: DraftSize = None) -> Example:
        annotations = self.annotations(index)
        image, full = decode_image(
            self.images_dir / annotations["filename"], annotations["where"], draft_size
        )
        return finish_example(annotations, image, full)
