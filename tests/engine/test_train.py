"""The training loop on a toy model: logging, NaN stop, signals (and resume after kill -9), two processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from tests.helpers import toy_training as toy

from raredet.engine import checkpoint as ckpt
from raredet.engine.train import TrainingDiverged, train

TOY_SCRIPT = str(Path(toy.__file__).resolve())  # also a script: trains a toy run


def test_trains_logs_and_checkpoints(tmp_path):
    comps = toy.make_components(10)
    result = train(comps, tmp_path, checkpoint_every_n=4, progress=False)
    assert result.step == 10 and not result.interrupted
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [4, 8, 10]
    records = [json.loads(line) for line in (tmp_path / "train" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 11))
    for tag in ("Loss/classification_loss", "Loss/localization_loss", "Loss/regularization_loss",
                "Loss/total_loss", "learning_rate", "ClassBalance/matched_anchors/a",
                "ClassBalance/positive_loss_share/c"):
        assert tag in records[0]
    assert records[0]["learning_rate"] == pytest.approx(0.01)  # warmup start of the schedule
    first = sum(r["Loss/total_loss"] for r in records[:3]) / 3
    last = sum(r["Loss/total_loss"] for r in records[-3:]) / 3
    assert last < first
    assert list((tmp_path / "train").glob("events.out.tfevents.*"))
    state = ckpt.load_checkpoint(tmp_path / "ckpt-10.pt")
    assert state["config_text"] == "toy" and state["class_weights"][0]["name"] == "a"
    assert "label_map_text" not in state  # the toy has none: no key, as before the two were typed fields
    assert state["sampler"] == {"epoch": 1, "batch_in_epoch": 5}  # 10 steps = two epochs of 5


def test_non_finite_loss_stops_without_bad_checkpoint(tmp_path):
    comps = toy.make_components(10, loss=toy.ToyLoss(nan_at_call=4))
    with pytest.raises(TrainingDiverged, match=r"step 4 .*classification_loss=nan.*ckpt-2\.pt"):
        train(comps, tmp_path, checkpoint_every_n=2, progress=False)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [2]
    assert not ckpt.non_finite_tensors(ckpt.load_checkpoint(tmp_path / "ckpt-2.pt")["model"])


def test_non_finite_loss_between_checkpoints_is_reported_with_its_step(tmp_path):
    # A step's figures are read after the next step is queued (no host sync inside a step), but
    # before any checkpoint: a NaN at step 3 (checkpoints every 2) must stop before ckpt-4 exists,
    # with step 3's number, and a NaN at step 3 of a run checkpointing every 5 must name no checkpoint.
    comps = toy.make_components(10, loss=toy.ToyLoss(nan_at_call=3))
    with pytest.raises(TrainingDiverged, match=r"step 3 .*classification_loss=nan.*ckpt-2\.pt"):
        train(comps, tmp_path / "a", checkpoint_every_n=2, progress=False)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path / "a")] == [2]
    steps = [json.loads(x)["step"] for x in (tmp_path / "a" / "train" / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2]  # the bad step is not logged
    comps = toy.make_components(10, loss=toy.ToyLoss(nan_at_call=3))
    with pytest.raises(TrainingDiverged, match=r"step 3 .*no checkpoint was written yet"):
        train(comps, tmp_path / "b", checkpoint_every_n=5, progress=False)
    assert ckpt.list_checkpoints(tmp_path / "b") == []


def test_logged_regularization_loss_is_that_of_the_updated_weights(tmp_path):
    # The toy's only decayed weight is conv.weight (0.01): the last step's logged value must be
    # 0.5 * 0.01 * ||conv.weight||^2 of the final weights, written out here from the saved checkpoint.
    comps = toy.make_components(4)
    result = train(comps, tmp_path, progress=False)
    weight = ckpt.load_checkpoint(tmp_path / "ckpt-4.pt")["model"]["conv.weight"].double()
    expected = 0.5 * 0.01 * float((weight**2).sum())
    last = json.loads((tmp_path / "train" / "log.jsonl").read_text().splitlines()[-1])
    assert last["step"] == 4
    assert last["Loss/regularization_loss"] == pytest.approx(expected, rel=1e-6)
    assert result.last_losses["regularization_loss"] == pytest.approx(expected, rel=1e-6)


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    return env


# slow-ish: starts subprocesses (a few seconds)
@pytest.mark.slow
def test_sigterm_finishes_step_and_checkpoints(tmp_path):
    proc = subprocess.Popen([sys.executable, TOY_SCRIPT, str(tmp_path), "100000",
                             "--sleep", "0.05"], env=_env())
    log = tmp_path / "train" / "log.jsonl"
    deadline = time.monotonic() + 60
    while not (log.exists() and log.read_text().count("\n") >= 2):
        assert proc.poll() is None and time.monotonic() < deadline, "training did not start"
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    final = torch.load(tmp_path / "final_params_rank0.pt", weights_only=True)
    assert final["interrupted"] and 2 <= final["step"] < 100000
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [final["step"]]


# slow-ish: starts a subprocess (a few seconds)
@pytest.mark.slow
def test_kill_9_leaves_a_loadable_checkpoint(tmp_path):
    proc = subprocess.Popen([sys.executable, TOY_SCRIPT, str(tmp_path), "100000",
                             "--sleep", "0.01", "--every", "1"], env=_env())
    deadline = time.monotonic() + 60
    while len(ckpt.list_checkpoints(tmp_path)) < 4:
        assert proc.poll() is None and time.monotonic() < deadline, "training did not checkpoint"
        time.sleep(0.05)
    proc.kill()
    proc.wait(timeout=30)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the newest complete file must load, with no skipping
        path, state = ckpt.latest_checkpoint(tmp_path)
    assert path.name == f"ckpt-{state['step']}.pt"
    result = train(toy.make_components(state["step"] + 2), tmp_path, progress=False)
    assert result.step == state["step"] + 2
    steps = [json.loads(x)["step"] for x in (tmp_path / "train" / "log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, result.step + 1))  # steps redone after the checkpoint appear once


# slow-ish: starts subprocesses (a few seconds)
@pytest.mark.slow
def test_two_process_torchrun_matches_single_process(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           "0", TOY_SCRIPT, str(tmp_path / "ddp"), "6", "--batch_size", "4"]
    # --master_port 0 is not portable across versions: use the standalone rendezvous instead.
    cmd[3:7] = ["--standalone", "--nproc_per_node", "2"]
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [torch.load(tmp_path / "ddp" / f"final_params_rank{r}.pt", weights_only=True) for r in (0, 1)]
    single = toy.make_components(6, batch_size=4)
    train(single, tmp_path / "single", progress=False)
    for key, value in single.model.state_dict().items():
        assert torch.equal(ranks[0]["params"][key], ranks[1]["params"][key]), key
        torch.testing.assert_close(ranks[0]["params"][key], value, rtol=1e-5, atol=1e-6)
