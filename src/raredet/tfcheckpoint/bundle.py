"""TensorFlow's tensor bundle: the header and entries of PREFIX.index, and tensors read from the data files.

Facts of the format (tensorflow/core/util/tensor_bundle): the index's empty key "" holds a
BundleHeaderProto (number of data shards, endianness, version); every other key a BundleEntryProto (dtype,
shape, shard, byte offset and size in PREFIX.data-<shard>-of-<num_shards>, masked CRC32C of those bytes,
and, for a partitioned variable, its slices). Numeric tensors are their raw little-endian bytes.
A DT_STRING tensor is the varint64 length of each element, a 4-byte masked CRC32C of those lengths (each
taken as a little-endian uint32, uint64 above 4 GiB), then the elements' bytes; its entry's CRC covers
the lengths (taken the same way), the length checksum and the bytes.

Data files are memory-mapped read-only: `tensor()` returns a view of the mapping (no copy) except where
the dtype needs converting (bfloat16 to float32; strings).
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from google.protobuf.message import DecodeError

from raredet.errors import CheckpointError
from raredet.protos import tensor_bundle_pb2
from raredet.tfcheckpoint.table import Malformed, masked_crc32c, read_varint

DT = tensor_bundle_pb2.DataType
STRING = "string"
# TF dtype number -> the numpy dtype of the stored bytes (bfloat16: its raw 16 bits).
_STORED: dict[int, np.dtype] = {
    DT.DT_FLOAT: np.dtype("<f4"), DT.DT_DOUBLE: np.dtype("<f8"), DT.DT_HALF: np.dtype("<f2"),
    DT.DT_BFLOAT16: np.dtype("<u2"), DT.DT_INT8: np.dtype("i1"), DT.DT_INT16: np.dtype("<i2"),
    DT.DT_INT32: np.dtype("<i4"), DT.DT_INT64: np.dtype("<i8"), DT.DT_UINT8: np.dtype("u1"),
    DT.DT_UINT16: np.dtype("<u2"), DT.DT_UINT32: np.dtype("<u4"), DT.DT_UINT64: np.dtype("<u8"),
    DT.DT_BOOL: np.dtype("?"), DT.DT_COMPLEX64: np.dtype("<c8"), DT.DT_COMPLEX128: np.dtype("<c16"),
}
_SUPPORTED_VERSION = 1  # TensorFlow's kTensorBundleVersion
DATA_NAME = re.compile(r"\.data-(\d{5,})-of-(\d{5,})$")


def data_path(prefix: Path, shard: int, num_shards: int) -> Path:
    return prefix.with_name(f"{prefix.name}.data-{shard:05d}-of-{num_shards:05d}")


def dtype_name(dtype: int) -> str:
    """TensorFlow's name of a dtype number (DT_FLOAT, ...), or 'DataType <n>' for one it has not."""
    try:
        return DT.Name(dtype)
    except ValueError:
        return f"DataType {dtype}"


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor of a checkpoint is and what it holds.

    `dtype` is the numpy dtype of what `TFCheckpoint.tensor` returns (float32 for a stored bfloat16) or
    "string"; `tf_dtype` is TensorFlow's name of the stored dtype (DT_FLOAT, DT_BFLOAT16, DT_STRING...).
    `shard`, `offset`, `size`: the data file and byte range. `object_path` and `full_name` come from the
    object graph (None in a name-based TF1 checkpoint, or for a key the graph does not name).
    """

    key: str
    dtype: np.dtype | str
    shape: tuple[int, ...]
    shard: int
    offset: int
    size: int
    object_path: str | None
    full_name: str | None
    tf_dtype: str = ""


def parse_header(index: Path, value: bytes | None) -> tensor_bundle_pb2.BundleHeaderProto:
    """The checked header entry (key "") of the index at `index`."""
    if value is None:
        raise CheckpointError(f"{index}: no header entry (key ''): not a TF2 checkpoint index, or corrupted")
    header = _parse(index, "''", tensor_bundle_pb2.BundleHeaderProto, value)
    if header.endianness != header.LITTLE:
        raise CheckpointError(f"{index}: key '': the checkpoint was written big-endian; only little-endian "
                              "checkpoints (every x86/ARM machine's) are read")
    version = header.version
    if version.min_consumer > _SUPPORTED_VERSION or _SUPPORTED_VERSION in version.bad_consumers:
        raise CheckpointError(f"{index}: key '': the bundle format version (producer {version.producer}, "
                              f"min consumer {version.min_consumer}) is newer than this reader's")
    if header.num_shards < 1:
        raise CheckpointError(f"{index}: key '': the header says {header.num_shards} data shards")
    return header


def _parse(index: Path, key: str, message_type, value: bytes):  # type: ignore[no-untyped-def]
    try:
        return message_type.FromString(value)
    except DecodeError as err:
        raise CheckpointError(f"{index}: key {key}: its {message_type.__name__} does not parse ({err}): "
                              "the index is corrupted") from None


def data_files(prefix: Path, index: Path, num_shards: int) -> list[Path]:
    """The data files the header names, all checked to exist (their number against the files present)."""
    pattern = f"{glob_escape(prefix.name)}.data-*-of-*"
    present = [p for p in prefix.parent.glob(pattern) if DATA_NAME.search(p.name)]
    if num_shards > len(present):
        raise CheckpointError(f"{index}: key '': the header says {num_shards} data shards, but only "
                              f"{len(present)} {prefix.name}.data-* files are there: copy all of them")
    paths = [data_path(prefix, shard, num_shards) for shard in range(num_shards)]
    for path in paths:
        if not path.is_file():
            raise CheckpointError(f"{index}: key '': data file {path.name} is missing: copy it next to "
                                  "the index")
    return paths


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


def parse_entry(index: Path, key: str, value: bytes, sizes: list[int], files: list[Path]) \
        -> tensor_bundle_pb2.BundleEntryProto:
    """The entry of `key`, its shard and byte range checked against the data files' real sizes."""
    entry = _parse(index, repr(key), tensor_bundle_pb2.BundleEntryProto, value)
    if not 0 <= entry.shard_id < len(files):
        raise CheckpointError(f"{index}: key {key!r}: shard {entry.shard_id} does not exist "
                              f"(the checkpoint has {len(files)})")
    end = entry.offset + entry.size
    limit = sizes[entry.shard_id]
    if entry.offset < 0 or entry.size < 0 or end > limit:
        raise CheckpointError(f"{files[entry.shard_id]}: key {key!r}: bytes {entry.offset}..{end} lie beyond "
                              f"the file's {limit} bytes: the data file is truncated or the index corrupted")
    return entry


def tensor_layout(index: Path, key: str, entry: tensor_bundle_pb2.BundleEntryProto) \
        -> tuple[np.dtype | str, tuple[int, ...]]:
    """The result dtype and shape of `entry`, checked against its byte size (a partitioned variable's entry
    holds no bytes: its slices, under keys of their own, are checked when it is assembled)."""
    shape = tuple(int(d.size) for d in entry.shape.dim)
    if entry.shape.unknown_rank or any(d < 0 for d in shape):
        raise CheckpointError(f"{index}: key {key!r}: shape {list(shape)} is not a concrete shape")
    count = int(np.prod(shape, dtype=object)) if shape else 1
    if entry.slices and entry.dtype == DT.DT_STRING:
        raise CheckpointError(f"{index}: key {key!r} is a partitioned string tensor; this reader assembles "
                              "only numeric partitioned variables")
    if entry.dtype == DT.DT_STRING:
        if count > entry.size or (count and entry.size < count + 4):
            raise CheckpointError(f"{index}: key {key!r}: {count} strings cannot fit in {entry.size} bytes")
        return STRING, shape
    stored = _STORED.get(entry.dtype)
    if stored is None:
        raise CheckpointError(f"{index}: key {key!r}: dtype {dtype_name(entry.dtype)} is not one this reader "
                              "knows (numbers, bool and strings are)")
    if not entry.slices and count * stored.itemsize != entry.size:
        raise CheckpointError(f"{index}: key {key!r}: shape {list(shape)} of {dtype_name(entry.dtype)} needs "
                              f"{count * stored.itemsize} bytes, the entry says {entry.size}")
    return (np.dtype(np.float32) if entry.dtype == DT.DT_BFLOAT16 else stored), shape


def stored_itemsize(dtype: int) -> int:
    """Bytes per element on disk of a numeric dtype this reader knows."""
    return _STORED[dtype].itemsize


def decode(raw: np.ndarray, dtype: int, shape: tuple[int, ...]) -> np.ndarray:
    """The tensor whose stored bytes are `raw` (uint8, already CRC-checked, size checked against shape)."""
    if dtype == DT.DT_STRING:
        return decode_strings(raw, shape)
    values = raw.view(_STORED[dtype]).reshape(shape)
    if dtype == DT.DT_BFLOAT16:  # bfloat16 is the top half of a float32
        return (values.astype(np.uint32) << 16).view(np.float32)
    return values


def decode_strings(raw: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A DT_STRING tensor's elements as a numpy object array of bytes (raises Malformed)."""
    count = int(np.prod(shape, dtype=object)) if shape else 1
    out = np.empty(count, dtype=object)
    if count == 0:
        return out.reshape(shape)
    data = raw.tobytes()  # strings are small (names, configs); decoding them needs bytes objects anyway
    lengths, pos = _string_lengths(data, count)
    (stored,) = struct.unpack_from("<I", data, pos)
    if masked_crc32c(string_lengths_bytes(lengths)) != stored:
        raise Malformed("its string lengths fail their CRC32C check: the data file is corrupted")
    pos += 4
    for i, length in enumerate(lengths):
        out[i] = data[pos:pos + length]
        pos += length
    return out.reshape(shape)


def _string_lengths(data: bytes, count: int) -> tuple[list[int], int]:
    """The `count` varint lengths at the start of a string tensor's bytes, checked to add up to the rest."""
    lengths, pos = [], 0
    for _ in range(count):
        length, pos = read_varint(data, pos, len(data))
        lengths.append(length)
    if pos + 4 + sum(lengths) != len(data):
        raise Malformed(f"its {count} string lengths do not add up to the {len(data)} bytes the entry holds")
    return lengths, pos


def string_lengths_bytes(lengths: list[int]) -> bytes:
    """The bytes TensorFlow's string-tensor checksums cover for these lengths (uint32 each; uint64 if big)."""
    return b"".join(struct.pack("<I" if n <= 0xFFFFFFFF else "<Q", n) for n in lengths)


def entry_crc(raw: np.ndarray, dtype: int, count: int) -> int:
    """The masked CRC32C that TensorFlow stores for a tensor of `count` elements with these bytes."""
    if dtype != DT.DT_STRING:
        return masked_crc32c(raw)
    data = raw.tobytes()
    if count == 0:
        return masked_crc32c(data)
    lengths, pos = _string_lengths(data, count)
    return masked_crc32c(string_lengths_bytes(lengths) + data[pos:])
