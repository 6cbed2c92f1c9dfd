"""The training loop on a toy model: logging, exact resume, NaN stop, signals, two processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
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
    assert state["sampler"] == {"epoch": 1, "batch_in_epoch": 5}  # 10 steps = two epochs of 5


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


def test_resume_skips_truncated_newest(tmp_path):
    train(toy.make_components(4), tmp_path, checkpoint_every_n=2, progress=False)
    newest = tmp_path / "ckpt-4.pt"
    newest.write_bytes(newest.read_bytes()[:100])
    comps = toy.make_components(4)
    with pytest.warns(UserWarning, match="ckpt-4.pt"):
        result = train(comps, tmp_path, checkpoint_every_n=2, progress=False)
    assert result.step == 4 and ckpt.load_checkpoint(newest)["step"] == 4


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


def test_to_sync_batch_norm_keeps_state_and_frozen_layers():
    from torch import nn

    from raredet.engine.train import to_sync_batch_norm
    from raredet.modeling.layers import FrozenBatchNorm2d

    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Sequential(FrozenBatchNorm2d(4)))
    with torch.no_grad():
        model[1].running_mean.fill_(0.5)
        model[1].weight.fill_(2.0)
    model[1].weight.requires_grad_(False)  # a `scale: false` batch norm: gamma stays fixed
    to_sync_batch_norm(model)
    assert type(model[1]) is nn.SyncBatchNorm and type(model[2][0]) is FrozenBatchNorm2d
    assert torch.equal(model[1].running_mean, torch.full((4,), 0.5))
    assert torch.equal(model[1].weight, torch.full((4,), 2.0)) and not model[1].weight.requires_grad


def test_epoch_batches_shard_each_global_batch():
    from raredet.engine.train import epoch_batches

    comps = toy.make_components(1, batch_size=4)
    comps.sampler = [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]  # the epoch's order; 10 // 4 = 2 full global batches
    assert epoch_batches(comps, 0, 4, 0, 1) == [[9, 8, 7, 6], [5, 4, 3, 2]]
    assert epoch_batches(comps, 0, 4, 0, 2) == [[9, 8], [5, 4]]
    assert epoch_batches(comps, 0, 4, 1, 2) == [[7, 6], [3, 2]]


class _EpochEcho(torch.utils.data.Dataset):
    """Each example says which epoch the dataset was in when it was read, and its index."""

    def __init__(self) -> None:
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return 5

    def __getitem__(self, index: int) -> tuple[int, int, int]:
        return self.epoch, index, os.getpid()


@pytest.mark.parametrize("workers", [0, 1])
def test_batch_stream_tags_every_example_with_its_epoch_in_one_set_of_workers(workers):
    from types import SimpleNamespace

    from raredet.data.sampling import RepeatFactorSampler
    from raredet.engine.distributed import DistInfo
    from raredet.engine.train import batch_stream, epoch_batches

    comps = SimpleNamespace(dataset=_EpochEcho(), sampler=RepeatFactorSampler(np.ones(5), seed=3),
                            collate_fn=list, batch_size=2, num_workers=workers)
    info = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    # From the middle of epoch 1 (a resume), through epochs 2 and 3: 2 batches of 2 per epoch of 5.
    stream = batch_stream(comps, 1, 1, info, seed=0)
    got = [next(stream) for _ in range(5)]
    expected_positions = [(1, 2), (2, 1), (2, 2), (3, 1), (3, 2)]
    assert [(e, i) for e, i, _ in got] == expected_positions
    for e, i, batch in got:
        assert [index for _, index, _ in batch] == epoch_batches(comps, e, 2, 0, 1)[i - 1]
        assert all(epoch == e for epoch, _, _ in batch)  # the worker read it in the right epoch
    pids = {pid for _, _, batch in got for _, _, pid in batch}
    assert len(pids) == 1 and (pids == {os.getpid()}) == (workers == 0)  # one worker served all epochs
    stream.close()


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
