"""engine/batches.py: each rank's share of every global batch, and one stream (one set of workers) over
the epochs, each example read in its own epoch."""

from __future__ import annotations

import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from tests.helpers import toy_training as toy

from raredet.data.sampling import RepeatFactorSampler
from raredet.engine.batches import batch_stream, epoch_batches
from raredet.engine.distributed import DistInfo


def test_epoch_batches_shard_each_global_batch():
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
