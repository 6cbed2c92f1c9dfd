"""Fuzzing: random byte flips, cuts and appends in TF-written checkpoints give CheckpointErrors only."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raredet.errors import CheckpointError
from raredet.tfcheckpoint import open_checkpoint


def _read_everything(prefix: Path) -> None:
    ckpt = open_checkpoint(prefix)
    for key in ckpt.keys():
        ckpt.stored_layout(key)
        value = ckpt.tensor(key)
        assert value.shape == ckpt.info(key).shape
    ckpt.variables(), ckpt.slots(), ckpt.full_names()


@pytest.mark.slow
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_corrupted_files_give_checkpoint_errors(tmp_path_factory, tools, data):
    """Any byte flipped, dropped or appended in an index or data file: a CheckpointError naming a file of
    the checkpoint, or (if harmless) a good read; never another exception."""
    name = data.draw(st.sampled_from(["keras", "dtypes", "sharded", "tf1"]))
    prefix = tools.copy(name, tmp_path_factory.mktemp("fuzz"))
    target = data.draw(st.sampled_from(sorted(prefix.parent.glob(prefix.name + ".*"))))
    raw = bytearray(target.read_bytes())
    op = data.draw(st.sampled_from(["flip", "cut", "append"]))
    if op == "flip" and raw:
        raw[data.draw(st.integers(0, len(raw) - 1))] ^= data.draw(st.integers(1, 255))
    elif op == "cut":
        raw = raw[: data.draw(st.integers(0, max(len(raw) - 1, 0)))]
    else:
        raw += data.draw(st.binary(min_size=1, max_size=20))
    target.write_bytes(bytes(raw))
    try:
        _read_everything(prefix)
    except CheckpointError as err:
        assert prefix.name in str(err) and "\n" not in str(err)
