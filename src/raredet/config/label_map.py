"""`LabelMap`: the single owner of label-map id <-> name <-> contiguous index conversions."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from google.protobuf import text_format

from raredet.config.text import did_you_mean, parse_text, read_text
from raredet.errors import ConfigError
from raredet.fileio import atomic_write_text
from raredet.protos import string_int_label_map_pb2


class LabelMap:
    """The single owner of label-map id <-> name <-> contiguous index conversions.

    Label-map ids start at 1 (0 is background, never listed); contiguous indices 0..K-1 follow
    ascending id. `name` falls back to `display_name` and vice versa when only one is given.
    """

    def __init__(
        self,
        ids: Sequence[int],
        names: Sequence[str],
        display_names: Sequence[str],
        path: str = "<label map>",
    ) -> None:
        order = sorted(range(len(ids)), key=lambda i: ids[i])
        self.path = path
        self._ids = tuple(int(ids[i]) for i in order)
        self._names = tuple(names[i] for i in order)
        self._display = tuple(display_names[i] for i in order)
        self._validate()
        self._index_by_id = {id_: i for i, id_ in enumerate(self._ids)}
        self._index_by_name = {n: i for i, n in enumerate(self._display)}
        self._index_by_name.update({n: i for i, n in enumerate(self._names)})  # name wins

    def _validate(self) -> None:
        if not self._ids:
            raise ConfigError(f"{self.path}: the label map has no items; add `item {{ id: 1 name: ... }}`")
        for id_, name in zip(self._ids, self._names, strict=True):
            if id_ <= 0:
                raise ConfigError(
                    f"{self.path}: item '{name}' has id {id_}; ids must be >= 1 "
                    "(0 is background, which raredet adds itself — remove that item)"
                )
            if not name:
                raise ConfigError(f"{self.path}: item with id {id_} has neither name nor display_name")
        _reject_duplicates(self._ids, "id", self.path)
        _reject_duplicates(self._names, "name", self.path)

    # -- construction --
    @classmethod
    def parse(cls, text: str, path: str | os.PathLike[str] = "<label map>") -> LabelMap:
        """Parse label-map text (`item { id name display_name }`); errors name `path`."""
        msg = parse_text(text, string_int_label_map_pb2.StringIntLabelMap(), path)
        for n, item in enumerate(msg.item):
            if not item.HasField("id"):
                raise ConfigError(f"{path}: item #{n + 1} ('{item.name or item.display_name}') has no id")
        names = [item.name or item.display_name for item in msg.item]
        display = [item.display_name or item.name for item in msg.item]
        return cls([item.id for item in msg.item], names, display, str(path))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> LabelMap:
        """Read and parse a label_map.pbtxt file."""
        return cls.parse(read_text(Path(path), "label map"), path)

    @classmethod
    def from_names(cls, names: Sequence[str]) -> LabelMap:
        """Ids 1..K in the given order, display_name = name."""
        return cls(list(range(1, len(names) + 1)), list(names), list(names), "<label map from names>")

    # -- properties, in index order --
    @property
    def num_classes(self) -> int:
        return len(self._ids)

    @property
    def ids(self) -> list[int]:
        return list(self._ids)

    @property
    def names(self) -> list[str]:
        return list(self._names)

    @property
    def display_names(self) -> list[str]:
        return list(self._display)

    # -- single conversions --
    def index_of_id(self, id_: int) -> int:
        """Contiguous index of label-map id `id_`; ConfigError when the id is not in the map."""
        try:
            return self._index_by_id[int(id_)]
        except KeyError:
            raise ConfigError(f"{self.path}: no class with id {id_}; the ids are {self.ids}") from None

    def index_of_name(self, name: str) -> int:
        """Contiguous index of the class whose `name` (else `display_name`) is `name`."""
        try:
            return self._index_by_name[name]
        except KeyError:
            raise ConfigError(
                f"{self.path}: no class named '{name}'{did_you_mean(name, self._index_by_name)}; "
                f"the names are {self.names}"
            ) from None

    def id_of_index(self, index: int) -> int:
        return self._ids[self._check_index(index)]

    def name_of_index(self, index: int) -> str:
        return self._names[self._check_index(index)]

    def _check_index(self, index: int) -> int:
        if not 0 <= index < len(self._ids):
            raise ConfigError(f"{self.path}: class index {index} is outside 0..{len(self._ids) - 1}")
        return index

    # -- vectorised conversions (-1 for unknown, so the caller can name the record) --
    def ids_to_indices(self, ids: np.ndarray) -> np.ndarray:
        """Label-map ids (any integer shape) -> int64 contiguous indices of the same shape, -1 unknown."""
        ids = np.asarray(ids, dtype=np.int64)
        table = np.asarray(self._ids, dtype=np.int64)
        pos = np.clip(np.searchsorted(table, ids), 0, len(table) - 1)  # table is sorted ascending
        return np.where(table[pos] == ids, pos, -1).astype(np.int64)

    def names_to_indices(self, names: Sequence[str]) -> np.ndarray:
        """Class names (or display names) -> int64 [N] contiguous indices, -1 unknown."""
        lookup = self._index_by_name
        return np.fromiter((lookup.get(n, -1) for n in names), dtype=np.int64, count=len(names))

    # -- writing --
    def to_pbtxt(self) -> str:
        msg = string_int_label_map_pb2.StringIntLabelMap()
        for id_, name, display in zip(self._ids, self._names, self._display, strict=True):
            msg.item.add(id=id_, name=name, display_name=display)
        return text_format.MessageToString(msg)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the label map atomically as pbtxt."""
        return atomic_write_text(path, self.to_pbtxt())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LabelMap):
            return NotImplemented
        return (self._ids, self._names, self._display) == (other._ids, other._names, other._display)

    def __repr__(self) -> str:
        return f"LabelMap({dict(zip(self._ids, self._names, strict=True))})"


def _reject_duplicates(values: Sequence[object], what: str, path: str) -> None:
    seen: set[object] = set()
    for value in values:
        if value in seen:
            raise ConfigError(f"{path}: {what} {value!r} appears more than once; each {what} must be unique")
        seen.add(value)
