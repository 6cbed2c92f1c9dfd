"""engine/resume.py, through the loop: a resumed run ends bit-exact with an uninterrupted one (RNG,
EMA and data position restored, with or without a data worker); a truncated newest checkpoint is skipped."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from tests.helpers import toy_training as toy

from raredet.engine import checkpoint as ckpt
from raredet.engine.resume import rng_state, seed_everything, set_rng_state
from raredet.engine.train import train


def test_resume_is_bit_exact(tmp_path):
    # 10 examples, batch 2: 5 steps per epoch, so the runs cross an epoch boundary; dropout and EMA
    # make the RNG state and the EMA state matter.
    straight = toy.make_components(7, dropout=0.3)
    train(straight, tmp_path / "a", progress=False)
    first = toy.make_components(3, dropout=0.3)
    train(first, tmp_path / "b", progress=False)
    second = toy.make_components(7, dropout=0.3)
    result = train(second, tmp_path / "b", progress=False)
    assert result.step == 7
    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, second.model.state_dict()[key]), key
    for key, value in straight.ema.state_dict().items():
        assert torch.equal(value, second.ema.state_dict()[key]), key


def test_resume_skips_truncated_newest(tmp_path):
    train(toy.make_components(4), tmp_path, checkpoint_every_n=2, progress=False)
    newest = tmp_path / "ckpt-4.pt"
    newest.write_bytes(newest.read_bytes()[:100])
    comps = toy.make_components(4)
    with pytest.warns(UserWarning, match="ckpt-4.pt"):
        result = train(comps, tmp_path, checkpoint_every_n=2, progress=False)
    assert result.step == 4 and ckpt.load_checkpoint(newest)["step"] == 4


def test_resume_is_bit_exact_with_a_data_worker(tmp_path):
    # As test_resume_is_bit_exact, with the loader's worker process (one for the whole run).
    runs = []
    for steps, where in [(7, "a"), (3, "b"), (7, "b")]:
        comps = toy.make_components(steps, dropout=0.3)
        comps.num_workers = 1
        train(comps, tmp_path / where, progress=False)
        runs.append(comps)
    for key, value in runs[0].model.state_dict().items():
        assert torch.equal(value, runs[2].model.state_dict()[key]), key


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    # The states are saved in types torch.load(weights_only=True) accepts; after set_rng_state every
    # global generator draws again what it drew right after rng_state() was taken.
    seed_everything(5)
    ckpt.save_checkpoint(tmp_path, 1, {"model": {}, "rng": rng_state()}, 1)
    drawn = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    set_rng_state(ckpt.load_checkpoint(tmp_path / "ckpt-1.pt")["rng"])
    assert torch.equal(torch.rand(3), drawn[0])
    assert np.array_equal(np.random.rand(3), drawn[1])
    assert [random.random() for _ in range(3)] == drawn[2]
