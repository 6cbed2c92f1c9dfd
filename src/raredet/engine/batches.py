"""The training data stream: each rank's share of every global batch, epoch after epoch, from one
DataLoader for the whole run, starting at any data position (a resume's).

Each example's augmentation depends only on (seed, epoch, index) (the dataset's contract) and the
sampler's epoch order only on (seed, epoch), so a data position (epoch, batch in epoch) fixes the rest
of the stream.
"""

from __future__ import annotations

import collections
import signal
from collections.abc import Iterator
from typing import Any

import torch

from raredet.engine import distributed as dist_utils
from raredet.engine.components import TrainComponents
from raredet.errors import ConfigError


def epoch_batches(components: TrainComponents, epoch: int, batch_size: int, rank: int,
                  world_size: int) -> list[list[int]]:
    """This rank's share of each global batch of one epoch.

    The sampler gives the whole epoch's order, the same on every rank. Global batch `s` is
    `order[s*B:(s+1)*B]` and rank `r` takes its `r`-th slice of `B / W` examples, so the union over
    ranks of every step is exactly what one process with the whole batch sees. A last partial global
    batch is dropped.
    """
    for obj in (components.sampler, components.dataset):
        if hasattr(obj, "set_epoch"):
            obj.set_epoch(epoch)
    order = list(iter(components.sampler))
    per_rank = batch_size // world_size
    starts = range(0, len(order) - batch_size + 1, batch_size)
    return [order[s + rank * per_rank : s + (rank + 1) * per_rank] for s in starts]


class _EpochIndexed(torch.utils.data.Dataset[Any]):
    """`dataset[(epoch, index)]` = `dataset[index]` in epoch `epoch` (its `set_epoch` first, in whichever
    process reads it): the epoch travels with each index, so one set of workers serves every epoch."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, index = key
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        return self.dataset[index]

    def __len__(self) -> int:
        return len(self.dataset)


def batch_stream(
    components: TrainComponents, epoch: int, batch_in_epoch: int, info: dist_utils.DistInfo, seed: int
) -> Iterator[tuple[int, int, dict[str, Any]]]:
    """Endless (epoch, batch_in_epoch after this batch, batch) from a data position.

    One DataLoader, and so one set of workers, for the whole run: its batch sampler walks the epochs
    (`epoch_batches`, in this process) and tags each index with its epoch (`_EpochIndexed`). A loader
    per epoch would fork new workers from the ~2 GB training process at every epoch, and the next step's
    writes would then copy-on-write fault every page they shared: ~3 s per epoch on 2 cores
    (docs/benchmarks.md). The loader's generator is seeded by (seed, first epoch): creating its
    iterator draws a seed from it, and drawing from the global one would make a resumed run's RNG
    stream differ from an uninterrupted one. The workers' own seeds reach no example: augmentations
    draw from (seed, epoch, index) only.
    """
    if not epoch_batches(components, epoch, components.batch_size, info.rank, info.world_size):
        # run-time data: the training set as read, against train_config.batch_size
        raise ConfigError(
            f"one epoch of the training set has fewer examples than one batch of "
            f"{components.batch_size}; lower train_config.batch_size or add training data"
        )
    positions: collections.deque[tuple[int, int]] = collections.deque()

    def batches() -> Iterator[list[tuple[int, int]]]:
        e, start = epoch, batch_in_epoch
        while True:
            chunks = epoch_batches(components, e, components.batch_size, info.rank, info.world_size)
            for i in range(start, len(chunks)):
                positions.append((e, i + 1))  # the loader delivers batches in this order
                yield [(e, index) for index in chunks[i]]
            e, start = e + 1, 0

    loader = torch.utils.data.DataLoader(
        _EpochIndexed(components.dataset), batch_sampler=batches(), collate_fn=components.collate_fn,
        num_workers=components.num_workers, worker_init_fn=_init_worker,
        generator=torch.Generator().manual_seed(seed * 100003 + epoch),
        pin_memory=info.device.type == "cuda",  # page-locked batches: the copy to the GPU can overlap
    )
    for batch in loader:
        e, i = positions.popleft()
        yield e, i, batch


def _init_worker(worker_id: int) -> None:
    """Ctrl-C reaches the whole process group: data workers ignore it and keep serving so that the
    main process can finish its step and write the checkpoint. One thread per worker (torch's default
    there too): the training threads keep the cores."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)
