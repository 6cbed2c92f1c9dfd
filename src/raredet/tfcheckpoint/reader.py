"""`open_checkpoint`: a TensorFlow checkpoint (PREFIX.index + PREFIX.data-*) read without TensorFlow."""

from __future__ import annotations

import codecs
import os
import re
from pathlib import Path

import numpy as np

from raredet.errors import CheckpointError
from raredet.protos.trackable_object_graph_pb2 import TrackableObjectGraph
from raredet.tfcheckpoint import bundle, object_graph, slices
from raredet.tfcheckpoint.bundle import TensorInfo
from raredet.tfcheckpoint.table import Malformed, read_table

_STATE_LINE = re.compile(r'^\s*model_checkpoint_path\s*:\s*"((?:[^"\\]|\\.)*)"\s*$', re.MULTILINE)


class TFCheckpoint:
    """A checkpoint's keys, tensor metadata and (lazily read, CRC-checked) tensors.

    Open with `open_checkpoint`. The index is read and checked at once; a data file is memory-mapped
    read-only the first time one of its tensors is read, so tensors are never held twice in memory.
    """

    def __init__(self, prefix: Path) -> None:
        self.prefix = prefix
        self.index_path = prefix.with_name(prefix.name + ".index")
        table = read_table(self.index_path)
        header = bundle.parse_header(self.index_path, table.pop(b"", None))
        self._files = bundle.data_files(prefix, self.index_path, header.num_shards)
        self._sizes = [p.stat().st_size for p in self._files]
        self._entries = {key.decode("utf-8", "surrogateescape"): bundle.parse_entry(
            self.index_path, key.decode("utf-8", "surrogateescape"), value, self._sizes, self._files)
            for key, value in table.items()}
        self._maps: dict[int, np.ndarray] = {}
        self._checked: set[str] = set()
        self.object_graph: TrackableObjectGraph | None = None
        self._names: dict[str, object_graph.KeyNames] = {}
        if object_graph.OBJECT_GRAPH_KEY in self._entries:
            raw = self.tensor(object_graph.OBJECT_GRAPH_KEY)
            if raw.shape != ():
                raise CheckpointError(f"{self.index_path}: key {object_graph.OBJECT_GRAPH_KEY!r}: shape "
                                      f"{list(raw.shape)}, expected a scalar string")
            self.object_graph = object_graph.parse_object_graph(self.index_path, bytes(raw[()]))
            self._names = object_graph.key_names(self.object_graph)

    def __enter__(self) -> TFCheckpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Drop this reader's mappings of the data files (arrays already returned keep theirs alive)."""
        self._maps.clear()

    def __repr__(self) -> str:
        return f"TFCheckpoint({str(self.prefix)!r}, {len(self._entries)} keys)"

    def keys(self) -> list[str]:
        """Every tensor key, sorted, except the header, the object graph and partitioned slices' own keys
        (which start with a zero byte)."""
        return sorted(k for k in self._entries if k != object_graph.OBJECT_GRAPH_KEY and k[:1] != "\0")

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def _entry(self, key: str):  # type: ignore[no-untyped-def]
        entry = self._entries.get(key)
        if entry is None:
            raise CheckpointError(f"{self.index_path}: no key {key!r} in this checkpoint "
                                  "(`raredet inspect-checkpoint` lists its keys)")
        return entry

    def info(self, key: str) -> TensorInfo:
        """Dtype, shape and location of `key`; CheckpointError for an unknown key, dtype or bad layout."""
        entry = self._entry(key)
        dtype, shape = bundle.tensor_layout(self.index_path, key, entry)
        object_path, full_name = self.names(key)
        return TensorInfo(key=key, dtype=dtype, shape=shape, shard=entry.shard_id, offset=entry.offset,
                          size=entry.size, object_path=object_path, full_name=full_name,
                          tf_dtype=bundle.dtype_name(entry.dtype))

    def stored_layout(self, key: str) -> tuple[str, tuple[int, ...]]:
        """TensorFlow's dtype name and the shape recorded for `key`, even where `info` refuses the key
        (a dtype this reader does not know, a forged shape): for listings."""
        entry = self._entry(key)
        return bundle.dtype_name(entry.dtype), tuple(int(d.size) for d in entry.shape.dim)

    def names(self, key: str) -> tuple[str | None, str | None]:
        """(object path, full_name) of `key` from the object graph; (None, None) where it has none."""
        found = self._names.get(key)
        return (found.object_path, found.full_name) if found else (None, None)

    def tensor(self, key: str) -> np.ndarray:
        """The value of `key`: a read-only view of the memory-mapped data file, CRC32C-checked on its first
        read. bfloat16 tensors come back as float32 (a converted copy: numpy has no bfloat16); DT_STRING
        tensors as numpy object arrays of bytes; a partitioned variable as a new array assembled from its
        slices."""
        info = self.info(key)
        entry = self._entries[key]
        if entry.slices:
            return self._assemble(info, entry)
        path = self._files[info.shard]
        raw = self._map(info.shard)[info.offset:info.offset + info.size]
        try:
            if len(raw) != info.size:
                raise Malformed(f"the file ends before byte {info.offset + info.size}: truncated")
            if key not in self._checked:
                if bundle.entry_crc(raw, entry.dtype, _count(info.shape)) != entry.crc32c:
                    raise Malformed(f"bytes {info.offset}..{info.offset + info.size} fail their CRC32C "
                                    "check: the data file is corrupted")
                self._checked.add(key)
            return bundle.decode(raw, entry.dtype, info.shape)
        except Malformed as err:
            raise CheckpointError(f"{path}: key {key!r}: {err}") from None

    def _assemble(self, info: TensorInfo, entry) -> np.ndarray:  # type: ignore[no-untyped-def]
        prefix = slices.slice_key_prefix(info.key)
        keys = [k for k in self._entries if k.startswith(prefix)]
        stored = sum(self._entries[k].size for k in keys)  # each checked against its data file's size
        needed = _count(info.shape) * bundle.stored_itemsize(entry.dtype)
        if stored != needed:  # so the assembled array is never sized by a forged shape
            raise CheckpointError(f"{self.index_path}: key {info.key!r}: shape {list(info.shape)} needs "
                                  f"{needed} bytes, its {len(keys)} slices hold {stored}")
        return slices.assemble(self.index_path, info.key, entry, np.dtype(info.dtype), info.shape, keys,
                               self.tensor)

    def _map(self, shard: int) -> np.ndarray:
        if shard not in self._maps:
            path = self._files[shard]
            try:
                empty = path.stat().st_size == 0
                self._maps[shard] = np.zeros(0, np.uint8) if empty else np.memmap(path, np.uint8, mode="r")
            except (OSError, ValueError) as err:
                raise CheckpointError(f"{path}: cannot map the data file ({err})") from None
        return self._maps[shard]

    def variables(self) -> dict[str, str]:
        """object path -> key for every variable value (optimizer slots excluded; save_counter, optimizer
        hyperparameters and step counters included: filter them as needed). In a name-based (TF1)
        checkpoint every key is a variable's name and maps to itself."""
        if self.object_graph is None:
            return {key: key for key in self.keys()}
        paths = {object_graph.variable_path(key): key for key in self.keys()
                 if object_graph.slot_of(key) is None}
        return {path: key for path, key in paths.items() if path is not None}

    def slots(self) -> dict[tuple[str, str], str]:
        """(variable object path, slot name) -> key for every optimizer slot (keys with /.OPTIMIZER_SLOT/)."""
        return {slot: key for key in self.keys() if (slot := object_graph.slot_of(key)) is not None}

    def full_names(self) -> dict[str, str]:
        """key -> full_name (the variable's own name, e.g. conv/kernel) as the object graph records it;
        empty for a name-based checkpoint, whose keys are those names."""
        return {key: self._names[key].full_name for key in self.keys() if key in self._names}


def _count(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape, dtype=object)) if shape else 1


def resolve_prefix(path: str | os.PathLike[str]) -> Path | None:
    """The checkpoint prefix that `path` names, or None: PREFIX, PREFIX.index, a PREFIX.data-* file, or a
    folder (its `checkpoint` state file's model_checkpoint_path, as tf.train.latest_checkpoint reads it;
    without one, the folder's newest *.index)."""
    p = Path(path)
    if p.is_dir():
        return _latest_in(p)
    if p.name.endswith(".index"):
        p = p.with_name(p.name[: -len(".index")])
    elif bundle.DATA_NAME.search(p.name):
        p = p.with_name(bundle.DATA_NAME.sub("", p.name))
    return p if _index(p).is_file() else None


def _index(prefix: Path) -> Path:
    return prefix.with_name(prefix.name + ".index")


def _latest_in(folder: Path) -> Path | None:
    state = folder / "checkpoint"
    if state.is_file():
        try:
            match = _STATE_LINE.search(state.read_text(encoding="utf-8", errors="replace"))
        except OSError:
            match = None
        if match:
            named = Path(codecs.escape_decode(match.group(1).encode())[0].decode("utf-8", "replace"))
            # A relative path is relative to the folder; an absolute one from another machine (the zoo's
            # tarballs) is looked up here by its file name.
            for candidate in ((folder / named,) if not named.is_absolute() else (named, folder / named.name)):
                if _index(candidate).is_file():
                    return candidate
    indexes = sorted(folder.glob("*.index"), key=lambda p: (p.stat().st_mtime, p.name))
    return indexes[-1].with_name(indexes[-1].name[: -len(".index")]) if indexes else None


def is_tf_checkpoint(path: str | os.PathLike[str]) -> bool:
    """True if `path` names a TensorFlow checkpoint (see `resolve_prefix` for the forms accepted)."""
    return resolve_prefix(path) is not None


def open_checkpoint(path: str | os.PathLike[str]) -> TFCheckpoint:
    """Open the TensorFlow checkpoint that `path` names; CheckpointError (one line, naming the file and the
    key) for a missing, truncated, corrupted or forged one."""
    prefix = resolve_prefix(path)
    if prefix is None:
        raise CheckpointError(f"{path}: no TensorFlow checkpoint there (expected PREFIX.index beside "
                              "PREFIX.data-00000-of-0000N, or a folder holding them)")
    return TFCheckpoint(prefix)
