"""`raredet inspect-checkpoint`: list a TensorFlow checkpoint's tensors (or print their values), as
TensorFlow's own inspect_checkpoint tool does, without TensorFlow (`raredet.tfcheckpoint` reads it)."""

from __future__ import annotations

import os

import numpy as np

from raredet.tfcheckpoint import TFCheckpoint, open_checkpoint

MAX_VALUES = 20  # values printed before numpy's summary ("...") cuts in
MAX_STRING = 60  # characters of one string element printed


def describe(ckpt: TFCheckpoint, key: str) -> str:
    """One line: `KEY (DT_FLOAT) [3,3,3,4]`, then the object path and the variable's full name if known."""
    dtype, shape = ckpt.stored_layout(key)
    line = f"{key} ({dtype}) [{','.join(str(d) for d in shape)}]"
    path, name = ckpt.names(key)
    if path is not None:
        line += f"  object={path}"
    if name:
        line += f"  name={name}"
    return line


def _values(ckpt: TFCheckpoint, key: str) -> str:
    with np.printoptions(threshold=MAX_VALUES, edgeitems=3, precision=6):
        return np.array2string(np.asarray(ckpt.tensor(key)), separator=", ",
                               formatter={"object": _short_bytes})


def _short_bytes(value: object) -> str:
    text = repr(value)
    return text if len(text) <= MAX_STRING else f"{text[:MAX_STRING]}...({len(value)} bytes)"  # type: ignore[arg-type]


def _lookup(ckpt: TFCheckpoint, name: str) -> str:
    """`name` as a key, else as an object path or a full name (so `conv/kernel` works too)."""
    if name in ckpt:
        return name
    by_name = {full: key for key, full in ckpt.full_names().items()}
    return ckpt.variables().get(name) or by_name.get(name) or name  # an unknown name: info() says so


def inspect_checkpoint(path: str | os.PathLike[str], tensor_name: str | None = None,
                       all_tensors: bool = False) -> str:
    """The listing of the checkpoint at `path` (prefix, .index file or folder), one line per tensor;
    with `tensor_name` that tensor's line and values, with `all_tensors` every tensor's."""
    ckpt = open_checkpoint(path)
    if tensor_name is not None:
        key = _lookup(ckpt, tensor_name)
        return f"{describe(ckpt, key)}\n{_values(ckpt, key)}\n"
    lines = []
    for key in ckpt.keys():
        lines.append(describe(ckpt, key))
        if all_tensors:
            lines.append(_values(ckpt, key))
    return "".join(f"{line}\n" for line in lines)
