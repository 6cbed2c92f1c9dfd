"""A finished training step's logged figures, read by the host one step later.

Reading a CUDA tensor's value waits for the GPU to finish everything queued before it. Reading a
step's losses right after its backward (as raredet did) left the GPU idle while the host checked
them, ran the optimizer step, fetched the next batch and launched its forward. So the training loop
*launches* a record once a step's optimizer update is queued — every figure the step logs, stacked
into one device vector, averaged over ranks, copied to pinned host memory without blocking — and
*reads* it after the next step is queued, when the GPU has long finished it. On the CPU the copy is
the tensor itself and reading costs nothing.

What the lag changes: a non-finite loss at step k is reported (with step k's number and figures)
once step k+1 has been computed; the training loop reads the pending record before every checkpoint
and evaluation, so no checkpoint is ever written after a non-finite step. The weights in memory have
taken step k's update by then; training stops with `TrainingDiverged` all the same.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from raredet.engine import distributed as dist_utils
from raredet.engine.logging import per_class_keys
from raredet.engine.optim import regularization_loss_tensor

LOGGED_TERMS = ("classification_loss", "localization_loss", "total_loss")


@dataclass
class StepRecord:
    """Step `step`'s figures (1-based count of finished steps), possibly still on their way to the host.

    Layout of `values`: LOGGED_TERMS and the gradient norm (averaged over ranks), the stop flag (summed
    over ranks: > 0 when any rank caught a signal), the regularization loss, then each per-class vector
    of `per_class` in order (this rank's, as the logger has always shown them)."""

    step: int
    learning_rate: float
    values: torch.Tensor
    ready: torch.cuda.Event | None
    per_class: tuple[tuple[str, int], ...]

    @classmethod
    def launch(cls, step: int, learning_rate: float, losses: Mapping[str, torch.Tensor],
               grad_norm: torch.Tensor, optimizer: torch.optim.Optimizer, stop_flag: bool) -> StepRecord:
        """Queue the record of a step whose optimizer update is queued; never waits for the device."""
        norm = grad_norm.detach().float().reshape(())
        shared = torch.stack([*(losses[k].detach().float().reshape(()) for k in LOGGED_TERMS), norm,
                              norm.new_full((), 1.0 if stop_flag else 0.0)])  # a fill, not a host copy
        world = dist_utils.get_world_size()
        averaged = dist_utils.all_reduce_sum(shared) / world
        averaged[-1] *= world  # the flag: a sum over ranks
        keys = per_class_keys(losses)
        local = [regularization_loss_tensor(optimizer).to(norm.device).float().reshape(1)]
        local += [losses[k].detach().float().reshape(-1).to(norm.device) for k in keys]
        flat = torch.cat([averaged, *local])
        per_class = tuple((k, int(losses[k].numel())) for k in keys)
        if flat.device.type != "cuda":
            return cls(step, learning_rate, flat, None, per_class)
        host = flat.to("cpu", non_blocking=True)  # into pinned memory, in stream order
        ready = torch.cuda.Event()
        ready.record()
        return cls(step, learning_rate, host, ready, per_class)

    def read(self) -> tuple[dict[str, float], dict[str, list[float]], bool]:
        """(terms: LOGGED_TERMS, grad_norm and regularization_loss; per-class vectors; stop flag), waiting
        for the device only if it has not finished the step yet."""
        if self.ready is not None:
            self.ready.synchronize()
        values = self.values.tolist()
        n = len(LOGGED_TERMS)
        terms = dict(zip(LOGGED_TERMS, values[:n], strict=True))
        terms["grad_norm"] = values[n]
        stop = values[n + 1] > 0
        terms["regularization_loss"] = values[n + 2]
        per_class, at = {}, n + 3
        for key, size in self.per_class:
            per_class[key] = values[at:at + size]
            at += size
        return terms, per_class, stop

    @staticmethod
    def finite(terms: Mapping[str, Any]) -> bool:
        """Whether the step's losses and gradient norm are finite (the regularization loss is not checked:
        it is a function of the weights, which a non-finite gradient reaches first)."""
        return all(math.isfinite(terms[k]) for k in (*LOGGED_TERMS, "grad_norm"))
