"""Runtime policy of a training process: precision (autocast), threads, glibc's allocator, data-loader
workers, and each batch's copy to the device.

Speed (docs/benchmarks.md): on CPU the model trains channels-last (the loader's batches already are, so
no layout is converted on the way) and `raredet train` has glibc keep freed activations for reuse
(`configure_allocator`); intra-op threads are the cores of this process's share of the node and
inter-op threads 1, so that torchrun's processes and the data workers do not oversubscribe the
cores; on CUDA the loader pins memory and the copies to the GPU do not block. `precision` chooses
fp32 or bf16 autocast (`PRECISIONS`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch

from raredet.errors import ConfigError

# "auto": bf16 autocast on CUDA (with the channels-last default, faster than fp32 for both zoo models
# measured on an H200: docs/benchmarks.md, "GPU"); on the CPU fp32 (bf16 changes the numbers, and the
# CPU default keeps them), or bf16 where `train_config.use_bfloat16` asks for it and the CPU runs bf16
# natively (`cpu_runs_bf16_natively`); "fp32" / "bf16" force one (`resolve_precision`).
PRECISIONS = ("auto", "fp32", "bf16")


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
    if precision not in PRECISIONS:  # run time: the --precision flag, not a config field
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
    if precision not in PRECISIONS:  # run time: the --precision flag, not a config field
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
