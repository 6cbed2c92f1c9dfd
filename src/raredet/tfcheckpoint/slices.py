"""Partitioned variables (TF1 `partitioner=`): a full-shape entry that lists its slices, each slice
stored under a key of its own.

A slice's key is TensorFlow's order-preserving encoding ("ordered code") of: the number 0, the variable's
name (bytes 0x00 and 0xff escaped as 00 ff and ff 00, then terminated by 00 01), the rank, then each
dimension's start and length (-1 for the whole dimension). Because the encoding preserves order, the
variable's slice keys, sorted, are in the order of its slices sorted by (start, length) per dimension:
the two are paired that way, without decoding the numbers, and each slice's stored shape is checked
against the extent it is paired with.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from raredet.errors import CheckpointError
from raredet.protos import tensor_bundle_pb2

Extent = tuple[tuple[int, int], ...]  # per dimension: (start, length); length -1 = the whole dimension


def slice_key_prefix(name: str) -> str:
    """The common start of the slice keys of variable `name` (keys are held as surrogate-escaped str)."""
    raw = name.encode("utf-8", "surrogateescape")
    escaped = b"".join(b"\x00\xff" if c == 0 else b"\xff\x00" if c == 0xFF else bytes([c]) for c in raw)
    return (b"\x00" + escaped + b"\x00\x01").decode("utf-8", "surrogateescape")


def extents(entry: tensor_bundle_pb2.BundleEntryProto) -> list[Extent]:
    rank = len(entry.shape.dim)
    out = []
    for piece in entry.slices:
        found = tuple((e.start, e.length if e.HasField("length") else -1) for e in piece.extent)
        out.append(found or ((0, -1),) * rank)
    return out


def assemble(index: Path, key: str, entry: tensor_bundle_pb2.BundleEntryProto, dtype: np.dtype,
             shape: tuple[int, ...], slice_keys: list[str], read: Callable[[str], np.ndarray]) -> np.ndarray:
    """The full tensor of partitioned variable `key` from its slices (read with `read`, CRC-checked)."""
    pieces = sorted(extents(entry))
    if len(slice_keys) != len(pieces):
        raise CheckpointError(f"{index}: key {key!r}: {len(pieces)} slices listed, {len(slice_keys)} stored")
    full = np.zeros(shape, dtype)  # bounded: the slices' sizes were checked against the data files
    covered = 0
    for extent, slice_key in zip(pieces, sorted(slice_keys), strict=True):
        where = _region(index, key, extent, shape)
        part = read(slice_key)
        if part.shape != full[where].shape:
            raise CheckpointError(f"{index}: key {key!r}: a slice of shape {list(part.shape)} is stored for "
                                  f"the extent {list(extent)}: the index is corrupted")
        full[where] = part
        covered += part.size
    if covered != full.size:
        raise CheckpointError(f"{index}: key {key!r}: its slices hold {covered} of its {full.size} values")
    return full


def _region(index: Path, key: str, extent: Extent, shape: tuple[int, ...]) -> tuple[slice, ...]:
    if len(extent) != len(shape):
        raise CheckpointError(f"{index}: key {key!r}: a slice of rank {len(extent)} in a tensor of rank "
                              f"{len(shape)}")
    region = []
    for (start, length), size in zip(extent, shape, strict=True):
        stop = size if length == -1 else start + length
        if not 0 <= start <= stop <= size:
            raise CheckpointError(f"{index}: key {key!r}: slice extent {list(extent)} lies outside its "
                                  f"shape {list(shape)}")
        region.append(slice(start, stop))
    return tuple(region)
