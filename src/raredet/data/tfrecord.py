"""TFRecord files and tf.train.Example records, without TensorFlow.

Framing of each record (TensorFlow's record_writer): ``uint64 length`` little-endian,
``uint32 masked_crc32c(length bytes)``, ``data``, ``uint32 masked_crc32c(data)``, where
``masked(c) = ((c >> 15) | (c << 17)) + 0xa282ead8`` (mod 2**32).

:class:`TFRecordReader` reads the keys of the TF OD API's tf_example_decoder and gives random access
through an in-memory index of record offsets, built once per file by hopping from header to header
(the record payloads are not read for it).
"""

from __future__ import annotations

import glob
import io
import os
import re
import struct
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import crc32c
import numpy as np
from PIL import Image

from raredet.data import instances
from raredet.data.example import DraftSize, Example, checked_annotations, decode_image, finish_example
from raredet.errors import DataError
from raredet.fileio import atomic_write
from raredet.protos import example_pb2

if TYPE_CHECKING:
    from raredet.config.label_map import LabelMap

_MASK_DELTA = 0xA282EAD8
_HEADER = struct.Struct("<QI")


def masked_crc(data: bytes) -> int:
    """TFRecord's masked CRC32C of ``data``."""
    crc = crc32c.crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def frame_record(data: bytes) -> bytes:
    """One record's bytes as stored in a TFRecord file."""
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked_crc(length)) + data + struct.pack("<I", masked_crc(data))


def write_tfrecord(path: str | os.PathLike[str], records: Iterable[bytes]) -> Path:
    """Write serialized records to ``path`` atomically."""

    def write(f: IO[bytes]) -> None:
        for data in records:
            f.write(frame_record(data))

    return atomic_write(path, write)


class TFRecordFile:
    """Random access to the records of one TFRecord file (offsets indexed once, in memory)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._offsets, self._lengths = self._index()
        self._file: IO[bytes] | None = None
        self._pid = -1

    def _handle(self) -> IO[bytes]:
        # One open handle per process: DataLoader workers are forked and must not share a file offset.
        if self._file is None or self._pid != os.getpid():
            self._file = open(self.path, "rb")  # kept open for the reader's lifetime
            self._pid = os.getpid()
        return self._file

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_file": None, "_pid": -1}

    def __del__(self) -> None:
        if getattr(self, "_file", None) is not None and self._pid == os.getpid():
            self._file.close()  # type: ignore[union-attr]

    def _index(self) -> tuple[np.ndarray, np.ndarray]:
        offsets: list[int] = []
        lengths: list[int] = []
        size = self.path.stat().st_size
        with open(self.path, "rb") as f:
            pos = 0
            while pos < size:
                length = self._read_header(f, pos, size, len(offsets))
                offsets.append(pos + _HEADER.size)
                lengths.append(length)
                pos += _HEADER.size + length + 4
                f.seek(pos)
        return np.asarray(offsets, dtype=np.int64), np.asarray(lengths, dtype=np.int64)

    def _read_header(self, f: IO[bytes], pos: int, size: int, index: int) -> int:
        header = f.read(_HEADER.size)
        if len(header) < _HEADER.size:
            raise DataError(f"{self.path}: record {index} is truncated (file ends inside its header)")
        length, length_crc = _HEADER.unpack(header)
        if masked_crc(header[:8]) != length_crc:
            raise DataError(
                f"{self.path}: record {index} at byte {pos}: length CRC mismatch; the file is corrupt"
            )
        if pos + _HEADER.size + length + 4 > size:
            raise DataError(
                f"{self.path}: record {index} is truncated (needs {length} bytes, the file ends first); "
                "re-copy or re-create the file"
            )
        return int(length)

    def __len__(self) -> int:
        return len(self._offsets)

    def read(self, index: int) -> bytes:
        """The payload of record ``index``, its data CRC checked."""
        f = self._handle()
        f.seek(int(self._offsets[index]))
        data = f.read(int(self._lengths[index]))
        (stored,) = struct.unpack("<I", f.read(4))
        if masked_crc(data) != stored:
            raise DataError(f"{self.path}: record {index}: data CRC mismatch; the record is corrupt")
        return data

    def __iter__(self) -> Iterator[bytes]:
        return (self.read(i) for i in range(len(self)))


_SHARD = re.compile(r"-(\d{5})-of-(\d{5})")


def expand_input_paths(patterns: Sequence[str]) -> list[Path]:
    """Expand ``input_path`` entries: globs and TF-style shard names (``train-?????-of-00010``).

    Relative paths are taken from the working directory (``config.load`` has already made a config's
    paths absolute). A pattern that matches nothing, or a shard set with missing shards, is an error.
    """
    found: list[Path] = []
    for pattern in patterns:
        full = pattern
        matches = sorted(glob.glob(os.path.expanduser(full)))
        if not matches:
            raise DataError(f"input_path {pattern!r} ({full}) matches no file; check the path")
        _check_shards(pattern, matches)
        found.extend(Path(m) for m in matches)
    return found


def _check_shards(pattern: str, matches: list[str]) -> None:
    totals = {m.group(2) for m in map(_SHARD.search, matches) if m}
    if len(totals) == 1:
        total = int(totals.pop())
        if len(matches) != total:
            raise DataError(
                f"input_path {pattern!r}: found {len(matches)} of {total} shards; some shards are missing"
            )


# ---- tf.train.Example ----------------------------------------------------------------------------


def _feature(value: Any) -> example_pb2.Feature:
    feature = example_pb2.Feature()
    values = list(value) if isinstance(value, (list, tuple, np.ndarray)) else [value]
    if values and isinstance(values[0], (bytes, str)):
        feature.bytes_list.value.extend(v.encode() if isinstance(v, str) else v for v in values)
    elif values and isinstance(values[0], (float, np.floating)):
        feature.float_list.value.extend(float(v) for v in values)
    else:
        feature.int64_list.value.extend(int(v) for v in values)
    return feature


def encode_example(features: dict[str, Any]) -> bytes:
    """Serialize a tf.train.Example from ``{key: value or list}``.

    bytes/str → bytes_list, float → float_list, int/bool → int64_list; an empty list needs a typed
    numpy array (float32 → float_list, int → int64_list).
    """
    example = example_pb2.Example()
    for key, value in features.items():
        if isinstance(value, np.ndarray) and value.size == 0:
            feature = example_pb2.Feature()
            target = feature.float_list if value.dtype.kind == "f" else feature.int64_list
            target.SetInParent()
        else:
            feature = _feature(value)
        example.features.feature[key].CopyFrom(feature)
    return example.SerializeToString(deterministic=True)  # map order fixed: same bytes every run


def detection_example(
    *,
    encoded: bytes,
    image_format: str,
    height: int,
    width: int,
    boxes: np.ndarray,
    class_ids: np.ndarray,
    class_texts: Sequence[str] | None = None,
    weights: np.ndarray | None = None,
    source_id: str = "",
    filename: str = "",
) -> bytes:
    """A TF OD API detection record. boxes: [N, 4] xyxy pixels (stored normalised, as the API does)."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    feats: dict[str, Any] = {
        "image/encoded": encoded,
        "image/format": image_format,
        "image/height": height,
        "image/width": width,
        "image/source_id": source_id,
        "image/filename": filename,
        "image/object/bbox/xmin": boxes[:, 0] / width,
        "image/object/bbox/ymin": boxes[:, 1] / height,
        "image/object/bbox/xmax": boxes[:, 2] / width,
        "image/object/bbox/ymax": boxes[:, 3] / height,
        "image/object/class/label": np.asarray(class_ids, dtype=np.int64),
    }
    if class_texts is not None and len(class_texts):
        feats["image/object/class/text"] = list(class_texts)
    if weights is not None:
        feats["image/object/weight"] = np.asarray(weights, dtype=np.float32)
    return encode_example(feats)


# A record's features by key (``example.features.feature``: a protobuf map).
Features = Mapping[str, example_pb2.Feature]

_KINDS = {
    "image/encoded": "bytes_list",
    "image/format": "bytes_list",
    "image/source_id": "bytes_list",
    "image/filename": "bytes_list",
    "image/object/class/text": "bytes_list",
    "image/height": "int64_list",
    "image/width": "int64_list",
    "image/object/class/label": "int64_list",
    "image/object/is_crowd": "int64_list",
    "image/object/difficult": "int64_list",
    "image/object/bbox/xmin": "float_list",
    "image/object/bbox/ymin": "float_list",
    "image/object/bbox/xmax": "float_list",
    "image/object/bbox/ymax": "float_list",
    "image/object/weight": "float_list",
    "image/object/class/weight": "float_list",
    "image/object/keypoint/x": "float_list",
    "image/object/keypoint/y": "float_list",
    "image/object/keypoint/visibility": "int64_list",
    "image/object/area": "float_list",
}
MASK_TYPES = {"DEFAULT": "float_list", "NUMERICAL_MASKS": "float_list", "PNG_MASKS": "bytes_list"}


def _check_kinds(features: Features, where: str) -> None:
    """Each key the reader uses must hold the list type the TF OD API writes."""
    for key, kind in _KINDS.items():
        if key in features:
            actual = features[key].WhichOneof("kind")
            # An empty list of another type is harmless (some writers type empty lists arbitrarily).
            if actual is not None and actual != kind and len(getattr(features[key], actual).value):
                raise DataError(f"{where}: field '{key}' is a {actual}; the TF OD API stores a {kind}")


def _values(features: Features, key: str) -> list[Any]:
    if key not in features:
        return []
    feature = features[key]
    kind = feature.WhichOneof("kind")
    return list(getattr(feature, kind).value) if kind else []


def _scalar(features: Features, key: str, default: Any) -> Any:
    values = _values(features, key)
    return values[0] if values else default


class TFRecordReader:
    """A detection dataset stored as TFRecord files in the TF OD API's tf.Example layout.

    ``paths``: files (already expanded, see :func:`expand_input_paths`); ``label_map``: the LabelMap
    that maps ``image/object/class/text`` (preferred) or ``image/object/class/label`` to indices.
    ``load_instance_masks`` / ``mask_type`` / ``num_keypoints``: the input reader's fields of those
    names; with them examples carry ``masks`` / ``keypoints`` (see raredet.data.instances).
    """

    def __init__(self, paths: Sequence[str | os.PathLike[str]], label_map: LabelMap, *,
                 load_instance_masks: bool = False, mask_type: str = "NUMERICAL_MASKS",
                 num_keypoints: int = 0) -> None:
        if mask_type not in MASK_TYPES:
            raise ValueError(f"mask_type {mask_type!r}: use one of {', '.join(MASK_TYPES)}")
        self.files = [TFRecordFile(p) for p in paths]
        self.label_map = label_map
        self.load_instance_masks, self.mask_type = load_instance_masks, mask_type
        self.num_keypoints = num_keypoints
        counts = np.array([len(f) for f in self.files], dtype=np.int64)
        self._starts = np.concatenate([[0], np.cumsum(counts)])

    def __len__(self) -> int:
        return int(self._starts[-1])

    def _locate(self, index: int) -> tuple[TFRecordFile, int]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        file_index = int(np.searchsorted(self._starts, index, side="right")) - 1
        return self.files[file_index], index - int(self._starts[file_index])

    def _parse(self, index: int) -> tuple[dict[str, Any], Features]:
        file, local = self._locate(index)
        where = f"{file.path}, record {local}"
        example = example_pb2.Example()
        payload = file.read(local)  # its own DataError (CRC) must not be re-wrapped below
        try:
            example.ParseFromString(payload)
        except Exception as err:  # protobuf's DecodeError
            raise DataError(f"{where}: not a tf.train.Example ({err})") from err
        features = example.features.feature
        return self._annotations(features, where), features

    def annotations(self, index: int) -> dict[str, Any]:
        """Boxes, labels, weights, flags, ids and size of record ``index``; the image is not decoded."""
        return self._parse(index)[0]

    def example(self, index: int, draft_size: DraftSize = None) -> Example:
        """The decoded example of record ``index`` (see raredet.data.example)."""
        annotations, features = self._parse(index)
        if self.load_instance_masks:
            annotations["masks"] = self._masks(features, annotations)
            draft_size = None  # full resolution, so that masks are resized once, from the stored size
        image, full = decode_image(_scalar(features, "image/encoded", b""), annotations["where"], draft_size)
        return finish_example(annotations, image, full)

    def _masks(self, features: Features, annotations: dict[str, Any]) -> np.ndarray:
        """uint8 [N, H, W] from ``image/object/mask`` as ``mask_type`` says it is stored."""
        n, where = len(annotations["labels"]), annotations["where"]
        h, w = annotations["height"], annotations["width"]
        kind = features["image/object/mask"].WhichOneof("kind") if "image/object/mask" in features else None
        values = _values(features, "image/object/mask")
        if kind is not None and values and kind != MASK_TYPES[self.mask_type]:
            other = "PNG_MASKS" if kind == "bytes_list" else "NUMERICAL_MASKS"
            raise DataError(f"{where}: field 'image/object/mask' is a {kind} but the input reader's "
                            f"mask_type is {self.mask_type}; set mask_type: {other}")
        if self.mask_type != "PNG_MASKS":
            return instances.numerical_masks(values, n, h, w, where)
        if len(values) != n:
            raise DataError(f"{where}: field 'image/object/mask' has {len(values)} PNG masks for {n} boxes; "
                            "every box needs its mask")
        return instances.decode_png_masks(values, h, w, where)

    def _annotations(self, features: Features, where: str) -> dict[str, Any]:
        _check_kinds(features, where)
        height, width = self._size(features, where)
        n = len(_values(features, "image/object/bbox/xmin"))
        boxes = self._boxes(features, n, height, width, where)
        labels, desc = self._labels(features, n, where)
        checked = checked_annotations(
            boxes=boxes,
            labels=labels,
            weights=self._weights(features, n, where),
            is_crowd=self._flags(features, "image/object/is_crowd", n, where),
            difficult=self._flags(features, "image/object/difficult", n, where),
            height=height,
            width=width,
            where=where,
            label_desc=desc,
        )
        source_id = _scalar(features, "image/source_id", b"").decode("utf-8", "replace")
        filename = _scalar(features, "image/filename", b"").decode("utf-8", "replace")
        if self.load_instance_masks or self.num_keypoints > 0:
            checked["area"] = instances.areas(_values(features, "image/object/area"), n, where,
                                              "image/object/area")
        if self.num_keypoints > 0:
            x, y, vis = (_values(features, f"image/object/keypoint/{k}") for k in ("x", "y", "visibility"))
            checked["keypoints"], checked["keypoint_visibilities"] = instances.record_keypoints(
                x, y, vis, n, self.num_keypoints, height, width, where)
        return {
            **checked,
            "source_id": source_id,
            "filename": filename,
            "height": height,
            "width": width,
            "where": where,
        }

    def _size(self, features: Features, where: str) -> tuple[int, int]:
        height = int(_scalar(features, "image/height", 0))
        width = int(_scalar(features, "image/width", 0))
        if height > 0 and width > 0:
            return height, width
        # Not stored: read the image header only (no decoding).
        try:
            with Image.open(io.BytesIO(_scalar(features, "image/encoded", b""))) as img:
                return img.height, img.width
        except Exception as err:
            raise DataError(f"{where}: field 'image/encoded' cannot be decoded ({err})") from err

    def _boxes(self, features: Features, n: int, height: int, width: int, where: str) -> np.ndarray:
        coords = []
        for key in ("xmin", "ymin", "xmax", "ymax"):
            values = _values(features, f"image/object/bbox/{key}")
            if len(values) != n:
                raise DataError(
                    f"{where}: field 'image/object/bbox/{key}' has {len(values)} values, "
                    f"'image/object/bbox/xmin' has {n}; every box needs all four coordinates"
                )
            coords.append(values)
        scale = np.array([width, height, width, height], dtype=np.float32)
        return np.asarray(coords, dtype=np.float32).reshape(4, n).T * scale

    def _labels(self, features: Features, n: int, where: str) -> tuple[np.ndarray, np.ndarray]:
        texts = [t.decode("utf-8", "replace") for t in _values(features, "image/object/class/text")]
        if texts:
            if len(texts) != n:
                raise DataError(
                    f"{where}: field 'image/object/class/text' has {len(texts)} values for {n} boxes"
                )
            desc = np.asarray(texts, dtype=object)
            return self.label_map.names_to_indices(texts), desc
        ids = np.asarray(_values(features, "image/object/class/label"), dtype=np.int64)
        if len(ids) != n:
            raise DataError(
                f"{where}: field 'image/object/class/label' has {len(ids)} values for {n} boxes; "
                "every box needs a class"
            )
        return self.label_map.ids_to_indices(ids), ids

    def _weights(self, features: Features, n: int, where: str) -> np.ndarray:
        found = {}
        for key in ("image/object/weight", "image/object/class/weight"):
            values = _values(features, key)
            if values:
                if len(values) != n:
                    raise DataError(f"{where}: field '{key}' has {len(values)} values for {n} boxes")
                found[key] = np.asarray(values, dtype=np.float32)
        if len(found) == 2:
            a, b = found.values()
            if not np.array_equal(a, b):
                raise DataError(
                    f"{where}: fields 'image/object/weight' and 'image/object/class/weight' differ; "
                    "keep one of them"
                )
        return next(iter(found.values()), np.ones(n, dtype=np.float32))

    def _flags(self, features: Features, key: str, n: int, where: str) -> np.ndarray:
        values = _values(features, key)
        if not values:
            return np.zeros(n, dtype=bool)
        if len(values) != n:
            raise DataError(f"{where}: field '{key}' has {len(values)} values for {n} boxes")
        return np.asarray(values).astype(bool)
