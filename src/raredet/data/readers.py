"""Choosing a reader by the name of the input reader's oneof, as the TF OD API config spells it.

``make_reader("tf_record_input_reader", {"input_path": [...]}, label_map)`` and likewise for
``coco_input_reader`` (``annotations_path``, ``image_dir``) and ``voc_input_reader`` (``root``,
``image_set``): keyword arguments are the proto fields, so a builder passes a message's fields through.
Paths are used as given: ``config.load`` has already made a config's relative paths absolute.

:class:`Reader` is what the three readers share, and all that `DetectionDataset` and `compute_stats` use
of one.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from raredet.data.coco import CocoReader
from raredet.data.example import DraftSize, Example
from raredet.data.tfrecord import TFRecordReader, expand_input_paths
from raredet.data.voc import VocReader

if TYPE_CHECKING:
    from raredet.config.label_map import LabelMap

PathLike = str | os.PathLike[str]
# The InputReader fields for masks and keypoints: load_instance_masks, mask_type, num_keypoints.
InstanceFields = dict[str, Any]


class Reader(Protocol):
    """A detection dataset on disk, by record index: TFRecordReader, CocoReader and VocReader."""

    def __len__(self) -> int: ...

    def annotations(self, index: int) -> dict[str, Any]:
        """Boxes, labels, weights, flags, ids and size of record ``index`` (see raredet.data.example);
        the image is not decoded."""
        ...

    def example(self, index: int, draft_size: DraftSize = None) -> Example:
        """The decoded example of record ``index``, decoded near ``draft_size`` where the format allows."""
        ...


def tf_record_input_reader(label_map: LabelMap, input_path: Sequence[str] = (), *,
                           instances: InstanceFields | None = None) -> TFRecordReader:
    if not input_path:
        raise ValueError("input_path is empty; give the TFRecord files (globs allowed)")
    return TFRecordReader(expand_input_paths(list(input_path)), label_map, **(instances or {}))


def coco_input_reader(label_map: LabelMap, annotations_path: str = "", image_dir: str = "", *,
                      instances: InstanceFields | None = None) -> CocoReader:
    if not annotations_path:
        raise ValueError("annotations_path is empty; give the COCO JSON file")
    fields = {k: v for k, v in (instances or {}).items() if k != "mask_type"}  # JSON has one mask form
    return CocoReader(Path(annotations_path), label_map, Path(image_dir) if image_dir else None, **fields)


def voc_input_reader(label_map: LabelMap, root: str = "", image_set: str = "train", *,
                     instances: InstanceFields | None = None) -> VocReader:
    if not root:
        raise ValueError("root is empty; give the Pascal VOC folder")
    if instances and (instances.get("load_instance_masks") or instances.get("num_keypoints")):
        raise ValueError("load_instance_masks / num_keypoints: Pascal VOC XML has no instance masks or "
                         "keypoints; use a TFRecord or COCO JSON input reader for them")
    return VocReader(Path(root), label_map, split=image_set or None)


READERS: dict[str, Callable[..., Reader]] = {
    "tf_record_input_reader": tf_record_input_reader,
    "coco_input_reader": coco_input_reader,
    "voc_input_reader": voc_input_reader,
}


def make_reader(name: str | None, params: dict[str, Any], label_map: LabelMap,
                instances: InstanceFields | None = None) -> Reader:
    """The reader for input reader kind ``name`` with proto fields ``params``; ``instances``: the
    InputReader's ``load_instance_masks``, ``mask_type`` and ``num_keypoints`` (only those asked for)."""
    if name not in READERS:
        raise ValueError(f"input reader {name!r} is not supported; use one of: {', '.join(READERS)}")
    try:
        return READERS[name](label_map, **params, **({"instances": instances} if instances else {}))
    except TypeError as err:  # a field the reader does not take; the text names the reader
        raise ValueError(str(err)) from err
