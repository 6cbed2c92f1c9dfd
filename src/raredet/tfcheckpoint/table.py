"""The LevelDB-format table ("SSTable") that a checkpoint's PREFIX.index is, read into a sorted key list.

Layout (LevelDB's table_format.md, which TensorFlow's lib/io/table follows):
- the file ends with a 48-byte footer: two block handles (metaindex, index; each two varint64s: offset,
  size), zero padding to 40 bytes, then the 8-byte little-endian magic 0xdb4775248b80fb57;
- a block is its contents followed by a 5-byte trailer: 1 byte compression type (0 none, 1 snappy) and
  the masked CRC32C of the contents plus that byte;
- a block's contents are entries (varint32 shared key length, varint32 unshared length, varint32 value
  length, the unshared key bytes, the value), then uint32 restart offsets and their uint32 count. A key
  shares its first `shared` bytes with the previous key (prefix compression);
- the index block maps, per data block, a separator key to the block's handle; the data blocks hold the
  table's keys and values in increasing byte order.
Every length and handle is checked against the real file before it is used, so a forged or truncated
index gives a CheckpointError naming the file and what was being read, and nothing is allocated from
a size the file claims.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import TYPE_CHECKING, Union

import crc32c

from raredet.errors import CheckpointError

if TYPE_CHECKING:
    import numpy as np

Bytes = Union[bytes, memoryview, "np.ndarray"]  # anything with the buffer protocol, read as bytes

MAGIC = 0xDB4775248B80FB57
FOOTER_SIZE = 48
BLOCK_TRAILER_SIZE = 5
_MASK_DELTA = 0xA282EAD8
_U32 = struct.Struct("<I")


def mask_crc(crc: int) -> int:
    """LevelDB / TFRecord CRC masking: rotate right by 15 bits, add a constant (mod 2**32)."""
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def masked_crc32c(data: Bytes) -> int:
    # A memory-mapped ndarray is read through the buffer protocol: no copy (stubs predate ndarray Buffer).
    return mask_crc(crc32c.crc32c(data))  # type: ignore[arg-type]


class Malformed(Exception):
    """A low-level read went past its bounds; callers turn it into a CheckpointError with context."""


def read_varint(data: bytes | memoryview, pos: int, limit: int, max_bytes: int = 10) -> tuple[int, int]:
    """The unsigned LEB128 varint at data[pos:limit] (at most `max_bytes` long) and the position after it."""
    value = shift = 0
    for i in range(pos, min(limit, pos + max_bytes)):
        byte = data[i]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i + 1
        shift += 7
    raise Malformed(f"varint at byte {pos} is cut off or longer than {max_bytes} bytes")


def _handle(data: bytes, pos: int, limit: int) -> tuple[tuple[int, int], int]:
    offset, pos = read_varint(data, pos, limit)
    size, pos = read_varint(data, pos, limit)
    return (offset, size), pos


def read_footer(data: bytes) -> tuple[tuple[int, int], tuple[int, int]]:
    """The metaindex and index block handles of a table file's bytes."""
    if len(data) < FOOTER_SIZE:
        raise Malformed(f"the file is {len(data)} bytes, shorter than a table footer ({FOOTER_SIZE}): "
                        "truncated")
    footer = len(data) - FOOTER_SIZE
    (magic,) = struct.unpack_from("<Q", data, len(data) - 8)
    if magic != MAGIC:
        raise Malformed(f"bad magic number {magic:#018x} at its end (expected {MAGIC:#018x}): truncated or "
                        "not a checkpoint index")
    metaindex, pos = _handle(data, footer, footer + 40)
    index, _ = _handle(data, pos, footer + 40)
    return metaindex, index


def read_block(data: bytes, handle: tuple[int, int], what: str) -> memoryview:
    """The checked contents of the block at `handle` (blocks lie before the footer)."""
    offset, size = handle
    if offset + size + BLOCK_TRAILER_SIZE > len(data) - FOOTER_SIZE:
        raise Malformed(f"the {what} (bytes {offset}..{offset + size}) lies beyond the file's "
                        f"{len(data)} bytes: truncated or corrupted")
    view = memoryview(data)
    kind = data[offset + size]
    (stored,) = _U32.unpack_from(data, offset + size + 1)
    if masked_crc32c(view[offset:offset + size + 1]) != stored:
        raise Malformed(f"the {what} at byte {offset} fails its CRC32C check: the file is corrupted")
    if kind != 0:
        raise Malformed(f"the {what} at byte {offset} is compressed (type {kind}); TensorFlow writes "
                        "checkpoint indexes uncompressed and this reader reads only those")
    return view[offset:offset + size]


def block_entries(block: memoryview, what: str) -> list[tuple[bytes, bytes]]:
    """The (key, value) pairs of one block's contents, keys restored from their shared prefixes."""
    if len(block) < 4:
        raise Malformed(f"the {what} is {len(block)} bytes, too short for its restart count")
    (restarts,) = _U32.unpack_from(block, len(block) - 4)
    end = len(block) - 4 - 4 * restarts
    if restarts < 1 or end < 0:
        raise Malformed(f"the {what} claims {restarts} restart points, which do not fit in its "
                        f"{len(block)} bytes")
    out: list[tuple[bytes, bytes]] = []
    key, pos = b"", 0
    while pos < end:
        shared, pos = read_varint(block, pos, end, 5)
        unshared, pos = read_varint(block, pos, end, 5)
        value_len, pos = read_varint(block, pos, end, 5)
        if shared > len(key) or pos + unshared + value_len > end:
            raise Malformed(f"an entry of the {what} after key {key!r} runs past its end")
        key = key[:shared] + bytes(block[pos:pos + unshared])
        pos += unshared
        out.append((key, bytes(block[pos:pos + value_len])))
        pos += value_len
    return out


def read_table(path: Path) -> dict[bytes, bytes]:
    """Every key and value of the table file at `path`, checked; keys are in increasing order."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read the checkpoint index ({err.strerror})") from None
    try:
        return _entries(data)
    except Malformed as err:
        raise CheckpointError(f"{path}: {err}") from None


def _entries(data: bytes) -> dict[bytes, bytes]:
    _, index_handle = read_footer(data)
    table: dict[bytes, bytes] = {}
    last: bytes | None = None
    for separator, value in block_entries(read_block(data, index_handle, "index block"), "index block"):
        handle, _ = _handle(value, 0, len(value))
        what = f"data block before key {separator!r}"
        for key, entry in block_entries(read_block(data, handle, what), what):
            if last is not None and key <= last:
                raise Malformed(f"key {key!r} is out of order after {last!r}: the index is corrupted")
            table[key] = entry
            last = key
    return table
