"""Each CPU speed change of issue 15's third wave alone and together, on the zoo's
`ssd_mobilenet_v2_fpnlite_320x320` (bench_zoo's config and data), batch 8, 1 thread.

A variant is `channels_last,allocator,relu6` (each 0/1): NHWC memory order; `engine.runtime.
configure_allocator` (glibc keeps freed activations); `modeling.layers.ReLU6` for the in-place ReLU6
(0: torch's `nn.ReLU6(inplace=True)`). Each variant runs in a fresh process (the allocator setting is
process-wide): model + loss + optimizer on fixed batches, no loader; 2 warm-up steps, then user and
kernel CPU-seconds, page faults per step over 3 steps (`getrusage`) and the peak resident set. The
variants run in turn, `--repeats` times, so that load changes hit them alike. Not part of `make bench`.

    python -m bench.zoo_step_ab [--repeats 2] [--variants 0,0,0 1,0,0 ...]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.common import RESULTS_DIR, save_result

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ["0,0,0", "1,0,0", "1,1,0", "1,0,1", "1,1,1"]


def one_variant(variant: str, steps: int = 3) -> dict[str, Any]:
    """Run `variant` in this process (call in a fresh one) and return its figures."""
    import warnings

    import torch
    from torch import nn

    warnings.simplefilter("ignore")  # the zoo config's TPU fields
    torch.set_num_threads(1)
    channels_last, allocator, relu6 = (c == "1" for c in variant.split(","))
    import raredet.modeling.layers as layers
    import raredet.modeling.ssd as ssd

    if not relu6:  # torch's own in-place ReLU6 everywhere, as before the change
        layers.ACTIVATIONS["RELU_6"] = nn.ReLU6
        ssd.use_fast_relu6 = lambda model: model  # type: ignore[assignment]
    from raredet import builders, config
    from raredet.engine.runtime import configure_allocator, to_device
    from raredet.engine.train import forward_backward

    if allocator and not configure_allocator():
        raise RuntimeError("configure_allocator did not apply (not glibc?)")
    from bench.bench_zoo import BATCH, SIZE, make_config

    comps = builders.build_training(config.load(make_config(RESULTS_DIR / "tmp" / f"zoo_{SIZE}")), seed=0,
                                    num_workers=0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    comps.model.to(memory_format=fmt).train()  # type: ignore[call-overload]
    batches = [comps.collate_fn([comps.dataset[i] for i in range(BATCH * j, BATCH * j + BATCH)])
               for j in range(steps + 2)]
    device = torch.device("cpu")

    def step(batch: dict[str, Any]) -> float:
        comps.optimizer.zero_grad(set_to_none=True)
        losses, _ = forward_backward(comps, comps.model, to_device(batch, device, channels_last), device)
        comps.optimizer.step()
        return float(losses["total_loss"])

    first_loss = step(batches[0])
    step(batches[1])
    before = resource.getrusage(resource.RUSAGE_SELF)
    for batch in batches[2:]:
        step(batch)
    after = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "variant": variant,
        "user_cpu_s": (after.ru_utime - before.ru_utime) / steps,
        "kernel_cpu_s": (after.ru_stime - before.ru_stime) / steps,
        "page_faults": (after.ru_minflt - before.ru_minflt) / steps,
        "peak_rss_mb": after.ru_maxrss / 1024,
        "first_loss": first_loss,
        "load": os.getloadavg()[0],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--variants", nargs="*", default=VARIANTS)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one variant, print JSON
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(one_variant(args.one)))
        return 0
    runs: list[dict[str, Any]] = []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    print("| variant (channels_last,allocator,relu6) | user CPU-s | kernel CPU-s | page faults | peak RSS MB "
          "| first loss | load |\n|---|---|---|---|---|---|---|")
    for _ in range(args.repeats):
        for variant in args.variants:
            out = subprocess.run([sys.executable, "-m", "bench.zoo_step_ab", "--one", variant], env=env,
                                 cwd=ROOT, check=True, capture_output=True, text=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            runs.append(r)
            print(f"| {variant} | {r['user_cpu_s']:.3f} | {r['kernel_cpu_s']:.3f} | {r['page_faults']:.0f} | "
                  f"{r['peak_rss_mb']:.0f} | {r['first_loss']:.10f} | {r['load']:.1f} |", flush=True)
    print(f"wrote {save_result('zoo_step_ab', {'runs': runs})}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
