"""Choosing a reader by the name of the input reader's oneof, as the TF OD API config spells it.

``build_reader("tf_record_input_reader", {"input_path": [...]}, label_map)`` and likewise for
``coco_input_reader`` (``annotations_path``, ``image_dir``) and ``voc_input_reader`` (``root``,
``image_set``): keyword arguments are the proto fields, so a builder passes a message's fields through.
Paths are used as given: ``config.load`` has already made a config's relative paths absolute.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from raredet.data.coco import CocoReader
from raredet.data.tfrecord import TFRecordReader, expand_input_paths
from raredet.data.voc import VocReader
from raredet.errors import ConfigError

PathLike = str | os.PathLike[str]


def tf_record_input_reader(label_map: Any, input_path: Sequence[str] = ()) -> TFRecordReader:
    if not input_path:
        raise ConfigError(
            "tf_record_input_reader.input_path is empty; give the TFRecord files (globs allowed)"
        )
    return TFRecordReader(expand_input_paths(list(input_path)), label_map)


def coco_input_reader(label_map: Any, annotations_path: str = "", image_dir: str = "") -> CocoReader:
    if not annotations_path:
        raise ConfigError("coco_input_reader.annotations_path is empty; give the COCO JSON file")
    return CocoReader(Path(annotations_path), label_map, Path(image_dir) if image_dir else None)


def voc_input_reader(label_map: Any, root: str = "", image_set: str = "train") -> VocReader:
    if not root:
        raise ConfigError("voc_input_reader.root is empty; give the Pascal VOC folder")
    return VocReader(Path(root), label_map, split=image_set or None)


READERS: dict[str, Any] = {
    "tf_record_input_reader": tf_record_input_reader,
    "coco_input_reader": coco_input_reader,
    "voc_input_reader": voc_input_reader,
}


def build_reader(name: str | None, params: dict[str, Any], label_map: Any) -> Any:
    """The reader for input reader kind ``name`` with proto fields ``params``."""
    if name not in READERS:
        raise ConfigError(f"input reader {name!r} is not supported; use one of: {', '.join(READERS)}")
    try:
        return READERS[name](label_map, **params)
    except TypeError as err:
        raise ConfigError(f"{name}: {err}") from err
