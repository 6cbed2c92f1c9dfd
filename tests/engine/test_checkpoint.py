"""Checkpoints: atomic names, pruning, refusal of non-finite weights, skipping unusable files."""

from __future__ import annotations

import datetime

import pytest
import torch

from raredet.engine import checkpoint as ckpt
from raredet.errors import CheckpointError


def _state(value: float) -> dict:
    return {"model": {"w": torch.full((3,), value)}, "rng": {"python": [1, 2, 3]}, "config_text": "x"}


def test_save_then_load_roundtrip(tmp_path):
    path = ckpt.save_checkpoint(tmp_path, 5, _state(2.0))
    assert path.name == "ckpt-5.pt"
    loaded = ckpt.load_checkpoint(path)
    assert loaded["step"] == 5
    assert torch.equal(loaded["model"]["w"], torch.full((3,), 2.0))
    assert loaded["rng"] == {"python": [1, 2, 3]}


def test_keeps_only_newest(tmp_path):
    for step in (1, 2, 10, 3, 4):
        ckpt.save_checkpoint(tmp_path, step, _state(float(step)), keep_checkpoint_max=3)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [3, 4, 10]


def test_refuses_non_finite_weights(tmp_path):
    ckpt.save_checkpoint(tmp_path, 1, _state(1.0))
    with pytest.raises(CheckpointError, match="non-finite.*model.w"):
        ckpt.save_checkpoint(tmp_path, 2, _state(float("nan")))
    bad_ema = dict(_state(1.0), ema={"w": torch.tensor([float("inf")])})
    with pytest.raises(CheckpointError, match="ema.w"):
        ckpt.save_checkpoint(tmp_path, 3, bad_ema)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [1]


def test_truncated_newest_is_skipped_with_warning(tmp_path):
    ckpt.save_checkpoint(tmp_path, 1, _state(1.0))
    good2 = ckpt.save_checkpoint(tmp_path, 2, _state(2.0))
    data = good2.read_bytes()
    good2.write_bytes(data[: len(data) // 2])
    (tmp_path / ".ckpt-3.pt.abc.tmp").write_bytes(b"partial")
    with pytest.warns(UserWarning, match="ckpt-2.pt") as caught:
        found = ckpt.latest_checkpoint(tmp_path)
    # It already falls back, so it must say so, not tell the user to delete the file to fall back.
    message = str(caught[0].message)
    assert message.endswith("; using the next older one") and "delete it" not in message
    assert found is not None
    path, state = found
    assert path.name == "ckpt-1.pt" and state["step"] == 1


def test_latest_of_empty_or_missing_dir(tmp_path):
    assert ckpt.latest_checkpoint(tmp_path) is None
    assert ckpt.latest_checkpoint(tmp_path / "absent") is None


def test_load_missing_and_foreign_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        ckpt.load_checkpoint(tmp_path / "ckpt-9.pt")
    torch.save({"weights": 1}, tmp_path / "ckpt-9.pt")
    with pytest.raises(CheckpointError, match="not a raredet checkpoint"):
        ckpt.load_checkpoint(tmp_path / "ckpt-9.pt")


def test_pickled_code_is_refused(tmp_path):
    torch.save({"model": {}, "obj": datetime.date(2020, 1, 1)}, tmp_path / "ckpt-1.pt")
    with pytest.raises(CheckpointError, match="ckpt-1.pt cannot be loaded"):
        ckpt.load_checkpoint(tmp_path / "ckpt-1.pt")
