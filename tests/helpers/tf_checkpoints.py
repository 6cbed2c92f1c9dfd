"""The TF checkpoint tests' helpers: the TF-written checkpoints, TF's expected values, and a forger.

The forger rewrites a checkpoint's index with edited entries. Its table writer is written here from
LevelDB's table format (one data block without prefix sharing, one index block, an empty metaindex, the
footer and its magic), independently of the reader under test.
"""

from __future__ import annotations

import json
import shutil
import struct
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import crc32c

from raredet.protos import tensor_bundle_pb2

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "tf_checkpoints"
MAGIC = 0xDB4775248B80FB57


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def masked(data: bytes) -> int:
    crc = crc32c.crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def block(entries: list[tuple[bytes, bytes]], restart_interval: int = 1) -> bytes:
    """One block's contents; keys share their prefix with the previous key except at restart points."""
    body, restarts, previous = bytearray(), [], b""
    for i, (key, value) in enumerate(entries):
        shared = 0
        if i % restart_interval:
            while shared < min(len(key), len(previous)) and key[shared] == previous[shared]:
                shared += 1
        else:
            restarts.append(len(body))
        body += varint(shared) + varint(len(key) - shared) + varint(len(value)) + key[shared:] + value
        previous = key
    restarts = restarts or [0]
    return bytes(body) + struct.pack(f"<{len(restarts)}I", *restarts) + struct.pack("<I", len(restarts))


def write_table(entries: dict[bytes, bytes], per_block: int = 1 << 30, restart_interval: int = 1) -> bytes:
    """A LevelDB-format table holding `entries` (sorted by key here), `per_block` entries a data block."""
    out = bytearray()

    def put(contents: bytes) -> bytes:
        handle = varint(len(out)) + varint(len(contents))
        out.extend(contents + b"\0" + struct.pack("<I", masked(contents + b"\0")))
        return handle

    items = sorted(entries.items())
    chunks = [items[i:i + per_block] for i in range(0, len(items), per_block)]
    handles = [(chunk[-1][0], put(block(chunk, restart_interval))) for chunk in chunks]
    metaindex = put(block([]))
    index = put(block(handles))
    out.extend((metaindex + index).ljust(40, b"\0") + struct.pack("<Q", MAGIC))
    return bytes(out)


def read_entries(index: Path) -> dict[bytes, bytes]:
    """The entries of a TF-written index, read with the writer's own format knowledge (single-level)."""
    data = index.read_bytes()

    def uvarint(buf: bytes, pos: int) -> tuple[int, int]:
        value = shift = 0
        while True:
            byte = buf[pos]
            value |= (byte & 0x7F) << shift
            pos, shift = pos + 1, shift + 7
            if byte < 0x80:
                return value, pos

    def entries(offset: int, size: int) -> list[tuple[bytes, bytes]]:
        contents = data[offset:offset + size]
        (restarts,) = struct.unpack_from("<I", contents, len(contents) - 4)
        end, pos, key, found = len(contents) - 4 - 4 * restarts, 0, b"", []
        while pos < end:
            shared, pos = uvarint(contents, pos)
            unshared, pos = uvarint(contents, pos)
            length, pos = uvarint(contents, pos)
            key = key[:shared] + contents[pos:pos + unshared]
            found.append((key, contents[pos + unshared:pos + unshared + length]))
            pos += unshared + length
        return found

    footer = data[-48:]
    _, pos = uvarint(footer, 0)
    _, pos = uvarint(footer, pos)
    index_offset, pos = uvarint(footer, pos)
    index_size, _ = uvarint(footer, pos)
    table: dict[bytes, bytes] = {}
    for _, handle in entries(index_offset, index_size):
        offset, pos = uvarint(handle, 0)
        size, _ = uvarint(handle, pos)
        table.update(entries(offset, size))
    return table


def string_tensor(values: list[bytes]) -> tuple[bytes, int]:
    """A DT_STRING tensor's stored bytes and its entry's masked CRC32C (the format as TF documents it)."""
    lengths = b"".join(varint(len(v)) for v in values)
    as_u32 = b"".join(struct.pack("<I", len(v)) for v in values)
    length_crc = struct.pack("<I", masked(as_u32))
    return lengths + length_crc + b"".join(values), masked(as_u32 + length_crc + b"".join(values))


def copy_checkpoint(name: str, dest: Path) -> Path:
    """A copy of fixture `name` (keras, dtypes, sharded, tf1) in `dest`; returns its prefix."""
    expected = json.loads((FIXTURES / "expected.json").read_text())[name]
    source = FIXTURES / expected["prefix"]
    dest.mkdir(parents=True, exist_ok=True)
    for path in source.parent.glob(source.name + ".*"):
        shutil.copy(path, dest / path.name)
    return dest / source.name


def forge(prefix: Path, edit: Callable[[dict[bytes, bytes]], None]) -> Path:
    """Rewrite the index of the checkpoint at `prefix` after `edit` changed its entries in place."""
    index = prefix.with_name(prefix.name + ".index")
    entries = read_entries(index)
    edit(entries)
    index.write_bytes(write_table(entries))
    return prefix


def edit_entry(key: str, **fields: object) -> Callable[[dict[bytes, bytes]], None]:
    """An `edit` for `forge` that sets fields of one BundleEntryProto (shape=[..] sets its dims)."""

    def edit(entries: dict[bytes, bytes]) -> None:
        entry = tensor_bundle_pb2.BundleEntryProto.FromString(entries[key.encode()])
        for name, value in fields.items():
            if name == "shape":
                entry.shape.ClearField("dim")
                entry.shape.dim.extend(tensor_bundle_pb2.TensorShapeProto.Dim(size=d) for d in value)
            else:
                setattr(entry, name, value)
        entries[key.encode()] = entry.SerializeToString()

    return edit


def expected_values() -> dict:
    """TF's own reading of every fixture checkpoint (expected.json)."""
    return json.loads((FIXTURES / "expected.json").read_text())


def tools() -> SimpleNamespace:
    """The forger's functions, as the `tools` fixture hands them to a test."""
    return SimpleNamespace(copy=copy_checkpoint, forge=forge, edit_entry=edit_entry, write_table=write_table,
                           read_entries=read_entries, string_tensor=string_tensor, masked=masked)
