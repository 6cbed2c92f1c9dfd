"""Distributed training helpers: init from torchrun's environment, rank queries, all-reduce, DDP wrapping.

`torchrun` sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; without them raredet runs as
one process and every helper below degrades to the single-process answer. gloo serves CPU tensors,
NCCL CUDA tensors. Only rank 0 writes checkpoints and logs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from raredet.errors import ConfigError
from raredet.modeling.layers import FrozenBatchNorm2d


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str | None = None) -> DistInfo:
    """Join the process group torchrun describes (if any) and pick this process's device.

    `device`: "cpu", "cuda" or None (cuda when available). Under torchrun on CUDA each process takes
    GPU `LOCAL_RANK`.
    """
    kind = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if kind == "cuda" and not torch.cuda.is_available():  # run time: the --device flag on this machine
        raise ConfigError("--device cuda was asked for but torch sees no CUDA device; use --device cpu")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = torch.device(kind, local_rank) if kind == "cuda" else torch.device(kind)
    if kind == "cuda":
        torch.cuda.set_device(dev)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if kind == "cuda" else "gloo")
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum of `tensor` over all ranks (a copy; the input is untouched)."""
    out = tensor.detach().clone()
    if is_distributed():
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def shutdown() -> None:
    if is_distributed():
        dist.destroy_process_group()


# ---- DDP wrapping -------------------------------------------------------------------------------


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def to_sync_batch_norm(module: nn.Module) -> nn.Module:
    """Trainable batch norms -> SyncBatchNorm (statistics over all ranks), in place; frozen ones stay."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d) and not isinstance(child, FrozenBatchNorm2d):
            sync = nn.SyncBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                    child.track_running_stats)
            sync.load_state_dict(child.state_dict())
            if child.affine:  # keep which of gamma/beta train (`scale`/`center` in the config)
                sync.weight.requires_grad_(child.weight.requires_grad)
                sync.bias.requires_grad_(child.bias.requires_grad)
            setattr(module, name, sync.to(child.running_mean.device if child.running_mean is not None
                                          else "cpu"))
        else:
            to_sync_batch_norm(child)
    return module


def wrap_model(model: nn.Module, info: DistInfo, sync_batch_norm: bool = False) -> nn.Module:
    model.to(info.device)
    if info.world_size == 1:
        return model
    if sync_batch_norm and info.device.type == "cuda":  # torch's SyncBatchNorm needs GPUs
        to_sync_batch_norm(model)
    device_ids = [info.device.index] if info.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def per_rank_batch(batch_size: int, world_size: int) -> int:
    if batch_size % world_size:  # run time: train_config.batch_size over the processes torchrun started
        raise ConfigError(
            f"train_config.batch_size {batch_size} is the global batch and must divide evenly over "
            f"{world_size} processes; change batch_size or --nproc_per_node"
        )
    return batch_size // world_size
