"""The training loop: one function, no trainer class, no hooks.

`train(components, model_dir, ...)` runs `components.num_steps` optimizer steps (or until a signal), and
resumes from the newest checkpoint in `model_dir`. What makes resume exact on CPU: the learning rate is
a function of the step; each example's augmentation depends only on (seed, epoch, index) (the
dataset's contract); the sampler's epoch order depends only on (seed, epoch); the position inside the
epoch, the optimizer and EMA state and the global RNG states are in the checkpoint; models that draw
per image (Faster R-CNN's samplers) draw from generators seeded by (seed, step, image index in the
global batch), the batch's `sampling_seeds`, which also makes their draws independent of the split
over processes.

Speed (docs/benchmarks.md): on CPU the model trains channels-last (the loader's batches already are, so
no layout is converted on the way) and `raredet train` has glibc keep freed activations for reuse
(`configure_allocator`); intra-op threads are the cores of this process's share of the node and
inter-op threads 1, so that torchrun's processes and the data workers do not oversubscribe the
cores; on CUDA the loader pins memory and the copies to the GPU do not block. `precision` chooses
fp32 or bf16 autocast (`PRECISIONS`).

Under torchrun every rank takes its share (`batch_size / world_size`) of the global batch. The
criterion normalises by the number of matches summed over ranks and divided by the world size
(DetectionLoss does, DETR-style), so DDP's gradient average equals one process on the global batch.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import os
import random
import signal
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from raredet.engine import checkpoint as ckpt
from raredet.engine import distributed as dist_utils
from raredet.engine.logging import TrainLogger
from raredet.engine.optim import LearningRateSchedule, ModelEma, set_learning_rate
from raredet.engine.step_record import LOGGED_TERMS, StepRecord
from raredet.errors import CheckpointError, ConfigError, RaredetError
from raredet.losses.class_weights import ClassWeight, format_class_weight_table
from raredet.modeling.layers import FrozenBatchNorm2d
from raredet.modeling.tf_compat import apply_weights_convention

Criterion = Callable[[Mapping[str, torch.Tensor], Mapping[str, Any]], dict[str, torch.Tensor]]
EvalFn = Callable[[nn.Module, int], Mapping[str, float]]
# "auto": bf16 autocast on CUDA (with the channels-last default, faster than fp32 for both zoo models
# measured on an H200: docs/benchmarks.md, "GPU"); on the CPU fp32 (bf16 changes the numbers, and the
# CPU default keeps them), or bf16 where `train_config.use_bfloat16` asks for it and the CPU runs bf16
# natively (`cpu_runs_bf16_natively`); "fp32" / "bf16" force one (`resolve_precision`).
PRECISIONS = ("auto", "fp32", "bf16")
EVAL_SHOWN = ("DetectionBoxes_Precision/mAP", "DetectionBoxes_Precision/mAP@.50IOU", "Loss/total_loss",
              "PascalBoxes_Precision/mAP@0.5IOU")


class TrainingDiverged(RaredetError):
    """The loss or the gradients became NaN or inf; training stopped without saving the bad weights."""


@dataclass
class TrainComponents:
    """Everything `train` needs, built from a config by `raredet.builders` (or by hand in tests).

    `sampler` yields the dataset indices of one whole epoch (the same order on every rank; the loop
    shards each global batch) and has `set_epoch(epoch)`; `dataset` may have `set_epoch` too.
    `batch_size` is the global batch (all ranks together).
    `class_weights` is the resolved table the criterion applies (logged when training starts, and saved
    in every checkpoint as a list of dicts, the one place it is serialised). `metadata` goes into every
    checkpoint as is (`config_text`, `label_map_text`).
    """

    model: nn.Module
    criterion: Criterion
    optimizer: torch.optim.Optimizer
    schedule: LearningRateSchedule
    dataset: torch.utils.data.Dataset
    sampler: Any
    collate_fn: Callable[[list[Any]], dict[str, Any]]
    batch_size: int
    num_steps: int
    class_names: Sequence[str]
    ema: ModelEma | None = None
    evaluate_with_ema: bool = True  # eval_config.use_moving_averages
    gradient_clipping_by_norm: float = 0.0
    keep_checkpoint_max: int = ckpt.DEFAULT_KEEP_CHECKPOINT_MAX
    num_workers: int = 0
    sync_batch_norm: bool = False
    class_weights: list[ClassWeight] = field(default_factory=list)
    precision: str = "auto"  # one of PRECISIONS (raredet train --precision); train() resolves it
    use_bfloat16: bool = False  # train_config.use_bfloat16: bf16 on the CPU where it is native
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainResult:
    step: int
    interrupted: bool
    last_checkpoint: Path | None
    last_losses: dict[str, float]


# ---- RNG and data position ----------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def sampling_seeds(seed: int, step: int, rank: int, count: int) -> torch.Tensor:
    """``[count]`` int64: a seed for each image of this rank's share of the global batch of ``step``,
    from (seed, step, the image's index in the global batch). Models that draw per image (Faster
    R-CNN's balanced samplers, ``losses.faster_rcnn.random_keys``) so draw the same however the batch
    is split over processes, and a resumed run as an uninterrupted one (the step is in the checkpoint)."""
    first = rank * count  # every rank holds the same number of images (per_rank_batch)
    base = (seed * 1_000_003 + step) * 1_000_003
    return torch.tensor([(base + first + i) % 2**61 for i in range(count)], dtype=torch.int64)


def rng_state() -> dict[str, Any]:
    """Global RNG states in types `torch.load(weights_only=True)` accepts (no numpy objects)."""
    np_state = np.random.get_state()
    assert isinstance(np_state, tuple)  # the legacy MT19937 tuple, not a dict
    _, keys, pos, has_gauss, gauss = np_state
    py_version, py_state, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": py_version, "state": list(py_state), "gauss": py_gauss},
    }


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore `rng_state()`'s states. A checkpoint loaded with `map_location=cuda` holds them on the
    GPU, and torch takes RNG states only as CPU byte tensors: hence the `.cpu()` (found resuming on an
    H200)."""
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    npy = state["numpy"]
    keys = npy["keys"].cpu().numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, npy["pos"], npy["has_gauss"], npy["gauss"]))
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))


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


# ---- signals ------------------------------------------------------------------------------------


def _init_worker(worker_id: int) -> None:
    """Ctrl-C reaches the whole process group: data workers ignore it and keep serving so that the
    main process can finish its step and write the checkpoint. One thread per worker (torch's default
    there too): the training threads keep the cores."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)


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


def to_device(batch: Mapping[str, Any], device: torch.device, channels_last: bool = False) -> dict[str, Any]:
    """The batch's tensors on `device`; `images` channels-last with `channels_last` (no copy: `collate`
    makes them so), else NCHW. Asynchronous to CUDA (the loader pins memory)."""
    non_blocking = device.type == "cuda"
    out = {k: v.to(device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v
           for k, v in batch.items()}
    images = out.get("images")
    if isinstance(images, torch.Tensor) and images.dim() == 4:
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        out["images"] = images.contiguous(memory_format=memory_format)
    return out


def cpu_runs_bf16_natively() -> bool:
    """Whether oneDNN runs bf16 convolutions and matmuls on this CPU (x86 with AVX-512 or AMX, Arm with
    bf16 instructions). Without that torch falls back to generic kernels: on an AVX2-only AMD EPYC a
    training forward + backward took x9.0 its fp32 time for the demo's ResNet-18 FPN, x15.9 for the zoo's
    MobileNetV2-FPNLite and x5.7 for a linear layer (bench/bench_bf16_cpu.py; docs/benchmarks.md,
    "Precision")."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch without the query: AVX-512 is what oneDNN needs
        return torch.backends.cpu.get_cpu_capability().startswith("AVX512")


def resolve_precision(precision: str, device: torch.device, use_bfloat16: bool = False) -> tuple[str, str]:
    """The precision a run trains in, "fp32" or "bf16", and a note for the log ("" when none).

    "fp32" and "bf16" are kept (a note when bf16 will be slow on this CPU); "auto" is bf16 on CUDA and
    fp32 on the CPU, unless `use_bfloat16` (the config's `train_config.use_bfloat16`) asks for bf16
    and the CPU runs it natively. The TF OD API acts on `use_bfloat16` on TPUs only; 21 of the TF2
    zoo's 40 configs set it, and on a CPU without native bf16 it would make every step many times
    slower, so there it falls back to fp32 and says so."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if precision == "fp32":
        return "fp32", ""
    on_cpu = device.type == "cpu"
    native = not on_cpu or cpu_runs_bf16_natively()
    no_native = "this CPU has no native bf16 (oneDNN needs AVX-512 or AMX)"
    if precision == "bf16":
        slow = f"precision bf16: {no_native}, generic kernels run it, several times slower than fp32"
        return "bf16", "" if native else slow
    if not on_cpu:
        return "bf16", ""
    if use_bfloat16 and native:
        return "bf16", "train_config.use_bfloat16: training in bf16 autocast (--precision fp32 keeps fp32)"
    if use_bfloat16:
        return "fp32", (f"train_config.use_bfloat16 is not acted on: {no_native} and bf16 would be several "
                        "times slower than fp32; training in fp32 (--precision bf16 forces bf16)")
    return "fp32", ""


def autocast_for(device: torch.device, precision: str) -> AbstractContextManager[Any]:
    """The autocast context of `precision` (see PRECISIONS) on `device`."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def configure_threads(local_world_size: int = 1) -> int:
    """Intra-op threads = this process's share of the usable cores, inter-op threads 1; returns the
    intra-op count. An explicit OMP_NUM_THREADS wins (torchrun sets 1 for several processes per node).

    On 2 cores, 2 processes of 2 threads each (or threads plus a busy data worker) spin at each
    parallel region's barrier whenever a partner thread is not scheduled: more CPU-seconds, no speed.
    """
    try:
        torch.set_num_interop_threads(1)  # no inter-op parallelism in this loop; one idle pool fewer
    except RuntimeError:  # already started (set once per process): keep what it is
        pass
    if "OMP_NUM_THREADS" in os.environ:
        return torch.get_num_threads()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = max(1, cores // max(1, local_world_size))
    torch.set_num_threads(threads)
    return threads


def configure_allocator() -> bool:
    """Make glibc's malloc keep freed memory for the next step; returns whether it applied (Linux with
    glibc only; elsewhere nothing changes).

    By default glibc serves every block over 32 MB (and, its threshold permitting, many smaller ones)
    with a fresh mmap and unmaps it on free, so each training step faults every page of its large
    activations in again: 190,000 page faults and 0.34 CPU-s of kernel time per step of the zoo's
    FPN-lite at batch 8 (a quarter of the step's CPU time; docs/benchmarks.md). With mmap off
    (`M_MMAP_MAX` 0) and the heap not trimmed below 1 GiB (`M_TRIM_THRESHOLD`), the freed activations
    are reused: the peak resident set stays the step's peak, which it is anyway. Forked data workers
    inherit the setting.
    """
    import ctypes
    import ctypes.util
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # malloc.h
    return bool(libc.mallopt(m_trim_threshold, 1 << 30)) and bool(libc.mallopt(m_mmap_max, 0))


def default_num_workers(device: torch.device, local_world_size: int = 1) -> int:
    """DataLoader workers per process: on CPU `min(4, cores // 2)` (the model needs the cores, and a
    320x320 batch of 8 decodes in ~30 ms of one core against a step of ~1 s); on CUDA every core of
    this process's share but one (decoding must keep up with the GPU), at most 8."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if device.type == "cuda":
        return max(1, min(8, cores // max(1, local_world_size) - 1))
    return min(4, cores // 2)


def eval_workers(device: torch.device) -> int:
    """Evaluation's loader workers: on CUDA as for training (the GPU must not wait for decoding); on
    CPU none (the model needs the cores, and a worker's start costs more than it saves there)."""
    return default_num_workers(device) if device.type == "cuda" else 0


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


# ---- checkpoints --------------------------------------------------------------------------------


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def checkpoint_state(
    components: TrainComponents, model: nn.Module, step: int, epoch: int, batch_in_epoch: int
) -> dict[str, Any]:
    return {
        "model": unwrap(model).state_dict(),
        # how the model computes ("tf" after loading TF OD API weights); rebuilt so by eval/predict/export
        "weights_convention": getattr(unwrap(model), "weights_convention", "torchvision"),
        "optimizer": components.optimizer.state_dict(),
        "scheduler": {"step": step},
        "ema": components.ema.state_dict() if components.ema is not None else None,
        "step": step,
        "rng": rng_state(),
        "sampler": {"epoch": epoch, "batch_in_epoch": batch_in_epoch},
        # The criterion's running statistics (pair-aware losses); {} for a stateless one.
        "loss": criterion_state(components.criterion),
        **components.metadata,
        **({"class_weights": [dataclasses.asdict(w) for w in components.class_weights]}
           if components.class_weights else {}),
    }


def criterion_state(criterion: Criterion) -> dict[str, Any]:
    state_dict = getattr(criterion, "state_dict", None)
    return state_dict() if callable(state_dict) else {}


def restore(components: TrainComponents, model: nn.Module, state: Mapping[str, Any]) -> tuple[int, int, int]:
    """Load a checkpoint's training state; returns (step, epoch, batch_in_epoch)."""
    recorded = state.get("weights_convention", "torchvision")
    current = getattr(unwrap(model), "weights_convention", "torchvision")
    if recorded == "tf":  # trained from TF weights or a TF zoo config: compute as TF does
        apply_weights_convention(unwrap(model), "tf")
    elif current == "tf":
        raise CheckpointError(
            "this run's checkpoints compute with torchvision's conventions (written before raredet built "
            "the TF zoo's *_keras feature extractors as the TF OD API does), but the config now builds the "
            "model with TF's; train into a new model_dir")
    unwrap(model).load_state_dict(state["model"])
    components.optimizer.load_state_dict(state["optimizer"])
    if components.ema is not None and state.get("ema") is not None:
        components.ema.load_state_dict(state["ema"])
    load_state = getattr(components.criterion, "load_state_dict", None)
    if callable(load_state):
        try:
            load_state(state.get("loss", {}))
        except ValueError as err:
            raise ConfigError(f"cannot resume the loss from this checkpoint: {err}; train into a new "
                              "--model_dir or restore the checkpoint's classification loss") from None
    set_rng_state(state["rng"])
    return int(state["step"]), int(state["sampler"]["epoch"]), int(state["sampler"]["batch_in_epoch"])


def save(components: TrainComponents, model: nn.Module, model_dir: Path, step: int, epoch: int,
         batch_in_epoch: int, info: dist_utils.DistInfo) -> Path | None:
    path = None
    if info.is_main:
        state = checkpoint_state(components, model, step, epoch, batch_in_epoch)
        path = ckpt.save_checkpoint(model_dir, step, state, components.keep_checkpoint_max)
    dist_utils.barrier()
    return path


# ---- the loop -----------------------------------------------------------------------------------


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


def wrap_model(model: nn.Module, info: dist_utils.DistInfo, sync_batch_norm: bool = False) -> nn.Module:
    model.to(info.device)
    if info.world_size == 1:
        return model
    if sync_batch_norm and info.device.type == "cuda":  # torch's SyncBatchNorm needs GPUs
        to_sync_batch_norm(model)
    device_ids = [info.device.index] if info.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def per_rank_batch(batch_size: int, world_size: int) -> int:
    if batch_size % world_size:
        raise ConfigError(
            f"train_config.batch_size {batch_size} is the global batch and must divide evenly over "
            f"{world_size} processes; change batch_size or --nproc_per_node"
        )
    return batch_size // world_size


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
