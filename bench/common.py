"""Shared measuring rules for the benchmarks: medians of repeated runs, results saved atomically."""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tests.helpers.zoo import zoo_user_copy  # noqa: F401  (one definition; the tests use it too)

from raredet.fileio import atomic_write_json
from raredet.zoo import CONFIG_DIR

RESULTS_DIR = Path(__file__).resolve().parent / "results"
# The 40 configs of the TF2 detection model zoo, verbatim.
ZOO = CONFIG_DIR



def run_times(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> list[float]:
    """Wall times of `fn()` over `repeats` runs after `warmup` untimed runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def median_seconds(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> float:
    """Median wall time of `fn()` over `repeats` runs after `warmup` untimed runs."""
    return statistics.median(run_times(fn, repeats, warmup))


def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads(),
        "processor": platform.processor() or platform.machine(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def save_result(name: str, result: dict[str, Any]) -> Path:
    """Write bench/results/<name>.json (atomic), with the machine it was measured on."""
    return atomic_write_json(RESULTS_DIR / f"{name}.json", {"machine": machine(), **result})
