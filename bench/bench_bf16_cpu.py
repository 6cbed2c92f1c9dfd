"""bf16 autocast against fp32 on this CPU: what `train_config.use_bfloat16` would cost where the CPU has
no native bf16 (not in `make bench`; docs/benchmarks.md, "Precision").

oneDNN runs bf16 convolutions and matmuls on x86 CPUs with AVX-512 or AMX; elsewhere (AVX2 only) torch
falls back to generic kernels. Measured here, train mode, forward + backward, channels-last as
`raredet train` runs by default, fp32 and bf16 alternating within each repeat, median of `--repeats`
after one warm-up each, with the ratio bf16/fp32 from the same run:

- the zoo's MobileNetV2-FPNLite SSD (issue 15's model) at 320x320, batch 2 (bench_model's build);
- the ResNet-18 FPN at depth multiplier 0.25 (the demo's extractor) at 320x320, batch 2;
- a linear layer 512 -> 512 on 256 rows (a plain matmul).

`cpu_runs_bf16_natively` (what `raredet train` asks before acting on `use_bfloat16`) is printed with it.

    python -m bench.bench_bf16_cpu [--quick] [--repeats N] [--threads T]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from bench.bench_model import _build
from bench.common import save_result
from raredet.engine.runtime import cpu_runs_bf16_natively

SIZE, BATCH = 320, 2


def _model_step(name: str, size: int) -> Callable[[bool], None]:
    model = _build(name).train().to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    images = torch.randint(0, 256, (BATCH, 3, size, size), dtype=torch.uint8)

    def step(bf16: bool) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(images)
        (out["cls_logits"].float().sum() + out["box_deltas"].float().sum()).backward()
        model.zero_grad(set_to_none=True)

    return step


def _linear_step() -> Callable[[bool], None]:
    layer = torch.nn.Linear(512, 512)
    rows = torch.randn(256, 512)

    def step(bf16: bool) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = layer(rows)
        out.float().sum().backward()
        layer.zero_grad(set_to_none=True)

    return step


def _timed(step: Callable[[bool], None], bf16: bool) -> float:
    start = time.perf_counter()
    step(bf16)
    return time.perf_counter() - start


def measure(name: str, step: Callable[[bool], None], repeats: int) -> dict[str, Any]:
    step(False)
    step(True)  # warm-up of both
    fp32, bf16 = [], []
    for _ in range(repeats):  # alternating, so a busy moment hits both
        fp32.append(_timed(step, False))
        bf16.append(_timed(step, True))
    f, b = statistics.median(fp32), statistics.median(bf16)
    return {"name": name, "fp32_ms": 1000 * f, "bf16_ms": 1000 * b, "bf16_over_fp32": b / f,
            "fp32_runs_ms": [1000 * t for t in fp32], "bf16_runs_ms": [1000 * t for t in bf16]}


def run(quick: bool = False, repeats: int | None = None, threads: int | None = None) -> dict[str, Any]:
    if threads:
        torch.set_num_threads(threads)
    repeats = repeats or (1 if quick else 5)
    size = 64 if quick else SIZE
    cases: list[tuple[str, Callable[[bool], None]]] = [
        ("linear 512x512, 256 rows", _linear_step()),
        (f"ssd_resnet18_v1_fpn@0.25, {size}px, batch {BATCH}", _model_step("ssd_resnet18_v1_fpn@0.25", size)),
    ]
    if not quick:
        cases.append((f"ssd_mobilenet_v2_fpn (lite), {size}px, batch {BATCH}",
                      _model_step("ssd_mobilenet_v2_fpn (lite)", size)))
    rows = [measure(name, step, repeats) for name, step in cases]
    native = cpu_runs_bf16_natively()
    summary = [f"CPU capability {torch.backends.cpu.get_cpu_capability()}, native bf16 (oneDNN): {native}, "
               f"{torch.get_num_threads()} threads, median of {repeats}, forward + backward", "",
               "| case | fp32 ms | bf16 ms | bf16 / fp32 |", "|---|---|---|---|"]
    summary += [f"| {r['name']} | {r['fp32_ms']:.1f} | {r['bf16_ms']:.1f} | x{r['bf16_over_fp32']:.2f} |"
                for r in rows]
    return {"cpu_capability": torch.backends.cpu.get_cpu_capability(), "native_bf16": native,
            "threads": torch.get_num_threads(), "repeats": repeats, "rows": rows, "summary": summary}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="64 px, one repeat, no MobileNet (a smoke test)")
    parser.add_argument("--repeats", type=int, help="timed repeats of each precision (default 5)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    args = parser.parse_args(argv)
    result = run(args.quick, args.repeats, args.threads)
    print("\n".join(result["summary"]))
    if not args.quick:
        save_result("bf16_cpu", result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
