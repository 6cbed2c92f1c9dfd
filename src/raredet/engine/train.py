"""The training loop: one function, no trainer class, no hooks.

`train(components, model_dir, ...)` runs `components.num_steps` optimizer steps (or until a signal), and
resumes from the newest checkpoint in `model_dir`; resume is exact on CPU (engine/resume.py says why).
Around the loop: `components.py` (what it takes), `runtime.py` (precision, threads, allocator, workers,
the copy to the device), `batches.py` (the data stream), `resume.py` (RNG and checkpoint state),
`distributed.py` (DDP wrapping).

Under torchrun every rank takes its share (`batch_size / world_size`) of the global batch. The
criterion normalises by the number of matches summed over ranks and divided by the world size
(DetectionLoss does, DETR-style), so DDP's gradient average equals one process on the global batch.
"""

from __future__ import annotations

import math
import os
import signal
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from raredet.engine import checkpoint as ckpt
from raredet.engine import distributed as dist_utils
from raredet.engine.batches import batch_stream
from raredet.engine.components import TrainComponents
from raredet.engine.distributed import per_rank_batch, unwrap, wrap_model
from raredet.engine.logging import TrainLogger
from raredet.engine.optim import set_learning_rate
from raredet.engine.resume import restore, sampling_seeds, save, seed_everything
from raredet.engine.runtime import autocast_for, resolve_precision, to_device
from raredet.engine.step_record import LOGGED_TERMS, StepRecord
from raredet.errors import RaredetError
from raredet.losses.class_weights import format_class_weight_table

EvalFn = Callable[[nn.Module, int], Mapping[str, float]]
EVAL_SHOWN = ("DetectionBoxes_Precision/mAP", "DetectionBoxes_Precision/mAP@.50IOU", "Loss/total_loss",
              "PascalBoxes_Precision/mAP@0.5IOU")


class TrainingDiverged(RaredetError):
    """The loss or the gradients became NaN or inf; training stopped without saving the bad weights."""


@dataclass
class TrainResult:
    step: int
    interrupted: bool
    last_checkpoint: Path | None
    last_losses: dict[str, float]


# ---- signals ------------------------------------------------------------------------------------


class StopFlag:
    """Set by SIGINT/SIGTERM: the loop finishes the current step, writes a checkpoint and returns."""

    def __init__(self) -> None:
        self.signal: int | None = None

    def __call__(self, signum: int, frame: Any) -> None:
        self.signal = signum


@contextmanager
def catch_stop_signals() -> Iterator[StopFlag]:
    flag = StopFlag()
    previous = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, flag)
    except ValueError:  # not the main thread: leave signals to the caller
        pass
    try:
        yield flag
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# ---- one step -----------------------------------------------------------------------------------


def model_inputs(model: nn.Module, batch: Mapping[str, Any]) -> tuple[Any, ...]:
    """The training forward's arguments: the images, and the ground truth (and per-image
    ``sampling_seeds`` when the batch has them) for models that sample with it inside forward
    (``takes_targets``: Faster R-CNN's second-stage minibatch)."""
    if getattr(unwrap(model), "takes_targets", False):
        keys = ("boxes", "labels", "weights", "sampling_seeds")
        return batch["images"], {k: batch[k] for k in keys if k in batch}
    return (batch["images"],)


def forward_backward(
    components: TrainComponents, model: nn.Module, batch: Mapping[str, Any], device: torch.device
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Forward, loss and backward of one batch; returns the loss dict (detached) and the grad norm."""
    with autocast_for(device, components.precision):
        outputs = model(*model_inputs(model, batch))
    outputs = {k: v.float() if v.is_floating_point() else v for k, v in outputs.items()}
    losses = components.criterion(outputs, batch)
    losses["total_loss"].backward()
    for key in LOGGED_TERMS:
        losses[key] = losses[key].detach()
    params = [p for g in components.optimizer.param_groups for p in g["params"] if p.grad is not None]
    max_norm = components.gradient_clipping_by_norm
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else math.inf)
    return losses, grad_norm


# ---- the loop -----------------------------------------------------------------------------------


def diverged_error(step: int, terms: Mapping[str, float], last: Path | None) -> TrainingDiverged:
    shown = ", ".join(f"{k}={v:.4g}" for k, v in terms.items())
    where = f"the last good checkpoint is {last}" if last else "no checkpoint was written yet"
    return TrainingDiverged(
        f"non-finite loss or gradient at step {step + 1} ({shown}); stopped without saving; {where}. "
        "Lower the learning rate, add gradient_clipping_by_norm, or check the data for bad boxes"
    )


def train(
    components: TrainComponents,
    model_dir: str | os.PathLike[str],
    *,
    seed: int = 0,
    device: str | None = None,
    checkpoint_every_n: int = 1000,
    eval_every_n_steps: int = 0,
    eval_fn: EvalFn | None = None,
    progress: bool = True,
    channels_last: bool | None = None,
) -> TrainResult:
    """Train to `components.num_steps`, resuming from the newest checkpoint in `model_dir`.

    Returns when done or after SIGINT/SIGTERM (a checkpoint is written either way). Raises
    TrainingDiverged on a non-finite loss or gradient. `channels_last`: the model's 4-d weights (and
    so its activations) in NHWC memory order; default (None): on, on every device. It takes ~25 % fewer
    CPU-seconds per step on the CPU, and on an H200 it trained ResNet50-FPN-640 x1.19-1.39 and
    MobileNetV2-FPNLite-320 x1.9-2.4 faster than NCHW (docs/benchmarks.md, "GPU"). Its float32
    gradients equal NCHW's to rounding (tests/modeling/test_memory_format.py; docs/benchmarks.md,
    "channels-last and float32").
    """
    info = dist_utils.init_distributed(device)
    model_dir = Path(model_dir)
    seed_everything(seed)
    per_rank_batch(components.batch_size, info.world_size)  # fail before any work
    if channels_last is None:
        channels_last = True
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    components.model.to(info.device)
    components.model.to(memory_format=memory_format)  # type: ignore[call-overload]  # torch's stubs lack it
    if components.ema is not None:
        components.ema.to(info.device)
    step, epoch, batch_in_epoch, last = 0, 0, 0, None
    found = ckpt.latest_checkpoint(model_dir, map_location=info.device)
    if found is not None:
        last, state = found
        step, epoch, batch_in_epoch = restore(components, components.model, state)
    if components.sync_batch_norm and info.world_size > 1 and info.device.type != "cuda" and info.is_main:
        print("sync_batch_norm: batch statistics stay per process on CPU (torch syncs them on GPUs only)")
    model = wrap_model(components.model, info, components.sync_batch_norm)
    logger = TrainLogger(model_dir, components.class_names, components.num_steps, step,
                         write=info.is_main, progress=progress)
    if found is not None:
        logger.message(f"resuming from {last} at step {step}")
    components.precision, note = resolve_precision(components.precision, info.device, components.use_bfloat16)
    if note:
        logger.message(note)
    if components.class_weights:
        logger.text("class_weights", format_class_weight_table(components.class_weights))
    options = LoopOptions(model_dir, seed, checkpoint_every_n, eval_every_n_steps, eval_fn, channels_last)
    try:
        return _loop(components, model, info, logger, Position(step, epoch, batch_in_epoch, last), options)
    finally:
        logger.close()


@dataclass
class Position:
    """Where training stands: finished steps, data position after them, newest checkpoint."""

    step: int
    epoch: int
    batch_in_epoch: int
    last: Path | None


@dataclass(frozen=True)
class LoopOptions:
    model_dir: Path
    seed: int
    checkpoint_every_n: int
    eval_every_n_steps: int
    eval_fn: EvalFn | None
    channels_last: bool = False


def _loop(components: TrainComponents, model: nn.Module, info: dist_utils.DistInfo, logger: TrainLogger,
          pos: Position, opts: LoopOptions) -> TrainResult:
    """The steps. No host synchronisation inside a step: each step's figures are read (checked for
    non-finite values, logged) after the next step is queued, and before any checkpoint or evaluation
    (engine/step_record.py)."""
    terms: dict[str, float] = {}
    pending: StepRecord | None = None
    distributed = dist_utils.is_distributed()
    model.train()
    with catch_stop_signals() as stop:
        stream = batch_stream(components, pos.epoch, pos.batch_in_epoch, info, opts.seed)
        while pos.step < components.num_steps:
            pos.epoch, pos.batch_in_epoch, batch = next(stream)
            lr = components.schedule(pos.step)
            set_learning_rate(components.optimizer, lr)
            components.optimizer.zero_grad(set_to_none=True)
            on_device = to_device(batch, info.device, opts.channels_last)
            on_device["sampling_seeds"] = sampling_seeds(opts.seed, pos.step, info.rank,
                                                         int(on_device["images"].shape[0]))
            losses, grad_norm = forward_backward(components, model, on_device, info.device)
            components.optimizer.step()
            if components.ema is not None:
                components.ema.update(unwrap(model))
            pos.step += 1
            record = StepRecord.launch(pos.step, lr, losses, grad_norm, components.optimizer,
                                       stop.signal is not None)
            # One process stops at once; ranks stop together on the flags a record carries (summed over
            # ranks, so every rank reads the same answer from the same record).
            stopping = stop.signal is not None and not distributed
            if pending is not None:
                terms, any_rank_stops = _finish(pending, components, logger, pos)
                stopping = stopping or any_rank_stops
            pending = record
            if stopping or _saves(components, pos, opts) or _evaluates(pos, opts):
                terms, any_rank_stops = _finish(pending, components, logger, pos)
                stopping = stopping or any_rank_stops
                pending = None
            _after_step(components, model, info, logger, pos, opts, stopping)
            if stopping:
                logger.message(f"stopped by signal at step {pos.step}; checkpoint {pos.last}")
                return TrainResult(pos.step, True, pos.last, terms)
    if pending is not None:
        terms, _ = _finish(pending, components, logger, pos)
    return TrainResult(pos.step, False, pos.last, terms)


def _finish(record: StepRecord, components: TrainComponents, logger: TrainLogger,
            pos: Position) -> tuple[dict[str, float], bool]:
    """Read a step's record: raise TrainingDiverged if it is not finite, else log it; returns its terms
    and whether any rank caught a stop signal by then."""
    terms, per_class, stop = record.read()
    if not StepRecord.finite(terms):
        raise diverged_error(record.step - 1, {k: v for k, v in terms.items() if k != "regularization_loss"},
                             pos.last)
    logger.log_step(record.step, {**per_class, **terms}, record.learning_rate, components.batch_size)
    return terms, stop


def _saves(components: TrainComponents, pos: Position, opts: LoopOptions) -> bool:
    """Whether this step writes a checkpoint (every n steps and at the end; also on a stop)."""
    every = opts.checkpoint_every_n
    return (every > 0 and pos.step % every == 0) or pos.step == components.num_steps


def _evaluates(pos: Position, opts: LoopOptions) -> bool:
    """Whether this step evaluates (every `eval_every_n_steps` steps, given an evaluation)."""
    every = opts.eval_every_n_steps
    return opts.eval_fn is not None and every > 0 and pos.step % every == 0


def _after_step(components: TrainComponents, model: nn.Module, info: dist_utils.DistInfo,
                logger: TrainLogger, pos: Position, opts: LoopOptions, stopping: bool) -> None:
    """Checkpoint (every n steps, at the end, on a signal) and evaluate (every n steps)."""
    if stopping or _saves(components, pos, opts):
        path = save(components, model, opts.model_dir, pos.step, pos.epoch, pos.batch_in_epoch, info)
        pos.last = path or pos.last
    if opts.eval_fn is not None and _evaluates(pos, opts):
        run_eval(components, model, opts.eval_fn, pos.step, logger, info)


def run_eval(components: TrainComponents, model: nn.Module, eval_fn: EvalFn, step: int,
             logger: TrainLogger, info: dist_utils.DistInfo) -> None:
    """Evaluate on rank 0 (EMA weights when kept and asked for), then return to training mode."""
    if info.is_main:
        target = unwrap(model)
        use_ema = components.ema is not None and components.evaluate_with_ema
        if use_ema:
            backup = {k: v.detach().clone() for k, v in target.state_dict().items()}
            components.ema.copy_to(target)  # type: ignore[union-attr]
        target.eval()
        start = time.perf_counter()
        metrics = eval_fn(target, step)
        shown = {k: v for k, v in metrics.items() if k in EVAL_SHOWN}
        logger.message(f"eval at step {step} ({time.perf_counter() - start:.1f}s): "
                       + ", ".join(f"{k}={v:.4f}" for k, v in shown.items())
                       + " (all metrics under model_dir/eval)")
        if use_ema:
            target.load_state_dict(backup)
        target.train()
    dist_utils.barrier()
