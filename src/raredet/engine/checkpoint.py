"""Checkpoints: `model_dir/ckpt-<step>.pt`, written atomically, loaded with `weights_only=True`.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts (see docs/internals.md), so
`torch.load(weights_only=True)` can read it without running any pickled code. A write goes to a
temporary file in the same directory, is fsynced, renamed over its final name and the directory is
fsynced: a `kill -9` at any moment leaves either the old set of checkpoints or the new one, never a
half-written `ckpt-<step>.pt`.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from raredet.errors import CheckpointError
from raredet.fileio import atomic_write

CKPT_RE = re.compile(r"^ckpt-(\d+)\.pt$")
DEFAULT_KEEP_CHECKPOINT_MAX = 7


def checkpoint_path(model_dir: str | os.PathLike[str], step: int) -> Path:
    """The TF OD API's `ckpt-<step>` name, with torch's `.pt` suffix."""
    return Path(model_dir) / f"ckpt-{int(step)}.pt"


def list_checkpoints(model_dir: str | os.PathLike[str]) -> list[tuple[int, Path]]:
    """Complete checkpoint files in `model_dir` as (step, path), oldest first.

    Temporary files (`.ckpt-<step>.pt.*.tmp`) never match the pattern, so a write cut short is ignored.
    """
    directory = Path(model_dir)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := CKPT_RE.match(p.name))]
    return sorted(found)


def non_finite_tensors(state: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Names of floating-point tensors holding NaN or inf anywhere in a nested state dict."""
    bad: list[str] = []
    for key, value in state.items():
        name = f"{prefix}{key}"
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            if not bool(torch.isfinite(value).all()):
                bad.append(name)
        elif isinstance(value, Mapping):
            bad.extend(non_finite_tensors(value, prefix=f"{name}."))
    return bad


def _torch_save_atomic(obj: Any, path: Path) -> None:
    # torch.save into fileio's temp file: fsync, rename, fsync the directory.
    atomic_write(path, lambda fh: torch.save(obj, fh))


def save_checkpoint(
    model_dir: str | os.PathLike[str],
    step: int,
    state: Mapping[str, Any],
    keep_checkpoint_max: int = DEFAULT_KEEP_CHECKPOINT_MAX,
) -> Path:
    """Write `state` (must hold "model") as `ckpt-<step>.pt`; keep the newest `keep_checkpoint_max`.

    Refuses (CheckpointError) to write a model or EMA state holding NaN or inf: such a checkpoint would
    become the one training resumes from.
    """
    bad = non_finite_tensors({k: state[k] for k in ("model", "ema") if isinstance(state.get(k), Mapping)})
    if bad:
        raise CheckpointError(
            f"refusing to write checkpoint step {step} to {model_dir}: non-finite values in "
            f"{', '.join(bad[:5])}{' …' if len(bad) > 5 else ''}; the previous checkpoint is kept"
        )
    path = checkpoint_path(model_dir, step)
    _torch_save_atomic(dict(state, step=int(step)), path)
    prune_checkpoints(model_dir, keep_checkpoint_max)
    return path


def prune_checkpoints(model_dir: str | os.PathLike[str], keep_checkpoint_max: int) -> None:
    """Delete all but the newest `keep_checkpoint_max` checkpoints (0 or less keeps all)."""
    if keep_checkpoint_max <= 0:
        return
    for _, old in list_checkpoints(model_dir)[:-keep_checkpoint_max]:
        old.unlink(missing_ok=True)


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict:
    """Load one checkpoint with `weights_only=True`; CheckpointError names the file if it cannot."""
    try:
        state = torch.load(Path(path), map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist") from None
    except Exception as err:  # truncated zip, pickle error, disallowed type: all "unusable file"
        raise CheckpointError(
            f"checkpoint {path} cannot be loaded ({type(err).__name__}: {err}); the file is damaged or "
            "not a raredet checkpoint"
        ) from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"checkpoint {path} is not a raredet checkpoint (no 'model' entry)")
    return state


def latest_checkpoint(
    model_dir: str | os.PathLike[str], map_location: str | torch.device = "cpu"
) -> tuple[Path, dict] | None:
    """The newest checkpoint in `model_dir` that loads, as (path, state); None if there is none.

    A file that fails to load (cut short by a crash of the storage, edited by hand) is skipped with a
    warning naming it, and the next older one is tried.
    """
    for _, path in reversed(list_checkpoints(model_dir)):
        try:
            return path, load_checkpoint(path, map_location)
        except CheckpointError as err:
            warnings.warn(f"skipping unusable checkpoint: {err}; using the next older one", stacklevel=2)
    return None
