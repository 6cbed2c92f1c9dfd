"""Where one training step of the zoo's `ssd_mobilenet_v2_fpnlite_320x320` spends its time, as it runs
in `raredet train` (bench_zoo's config and data, `train_from_config`: its loader, threads, layout).

torch.profiler records `--active` steps after `--skip` warm-up steps (an optimizer-step hook steps the
profiler). Printed: self CPU time per operator, the same grouped by layer kind (depthwise 3x3 conv, 1x1
conv, other conv, batch norm, ReLU6, optimizer, the criterion, ...), each forward and backward, and
the wall time the main thread spends outside any operator (data wait, Python). Not part of `make bench`.

    python -m bench.profile_zoo_step [--threads 2] [--skip 4] [--active 3] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from bench.common import RESULTS_DIR


def _kind(name: str, shapes: list[Any]) -> str:
    """A layer kind for one operator event from its name and input shapes."""
    conv_weight = None
    if "convolution" in name or "conv2d" in name or "conv_depthwise" in name:
        weights = [s for s in shapes if isinstance(s, list) and len(s) == 4]
        if "backward" in name and len(weights) >= 3:  # (grad_output, input, weight, ...)
            conv_weight = weights[2]
        elif len(weights) >= 2:
            conv_weight = weights[1]
        if conv_weight is None:
            return f"conv (?) {name}"
        back = "bwd" if "backward" in name else "fwd"
        if conv_weight[1] == 1 and conv_weight[2] == 3:
            return f"conv depthwise 3x3 {back}"
        if conv_weight[2] == 1 and conv_weight[3] == 1:
            return f"conv 1x1 {back}"
        return f"conv {conv_weight[2]}x{conv_weight[3]} dense {back}"
    if "batch_norm" in name:
        return "batch norm bwd" if "backward" in name else "batch norm fwd"
    if "hardtanh" in name or "clamp" in name:
        return "relu6 bwd" if "backward" in name else "relu6 fwd"
    if "sgd" in name.lower() or "_foreach" in name or "Optimizer" in name:
        return "optimizer"
    return name


REGIONS = {  # a profiler range -> the bucket of everything under it
    "raredet.criterion": "criterion forward (matching, targets, losses)",
    "Optimizer.step#SGD.step": "optimizer step",
    "Optimizer.zero_grad#SGD.zero_grad": "optimizer zero_grad",
    "enumerate(DataLoader)#_MultiProcessingDataLoaderIter.__next__": "data wait (main process)",
    "enumerate(DataLoader)#_SingleProcessDataLoaderIter.__next__": "data loading (no worker)",
}


def _region(event: Any) -> str | None:
    """The bucket of the nearest enclosing range named in REGIONS, if any; the step's own range
    (`ProfilerStep#N`: Python and dispatch outside any operator) is 'python / outside operators'."""
    node = event
    while node is not None:
        if node.name in REGIONS:
            return REGIONS[node.name]
        node = node.cpu_parent
    return "python / outside operators" if event.name.startswith("ProfilerStep") else None


def _label_criterion() -> None:
    """Wrap the SSD criterion's call in a profiler range (its forward; its backward runs in autograd)."""
    from torch.profiler import record_function

    from raredet.losses.detection_loss import DetectionLoss

    call = DetectionLoss.__call__

    def labelled(self: Any, outputs: Any, batch: Any) -> Any:
        with record_function("raredet.criterion"):
            return call(self, outputs, batch)

    DetectionLoss.__call__ = labelled  # type: ignore[method-assign]


def profile(skip: int, active: int, out: Path | None) -> dict[str, Any]:
    import torch
    from torch.optim.optimizer import register_optimizer_step_post_hook
    from torch.profiler import ProfilerActivity, profile, schedule

    from bench.bench_zoo import SIZE, make_config
    from raredet.commands.train import train_from_config

    warnings.simplefilter("ignore")
    os.environ["TQDM_DISABLE"] = "1"
    config_path = make_config(RESULTS_DIR / "tmp" / f"zoo_{SIZE}")
    _label_criterion()
    prof = profile(activities=[ProfilerActivity.CPU], record_shapes=True,
                   schedule=schedule(wait=skip - 1, warmup=1, active=active, repeat=1))
    stamps: list[float] = []

    def hook(optimizer: Any, args: Any, kwargs: Any) -> None:
        stamps.append(time.perf_counter())
        prof.step()

    handle = register_optimizer_step_post_hook(hook)
    with tempfile.TemporaryDirectory() as model_dir, prof:
        train_from_config(config_path, model_dir, num_train_steps=skip + active + 1,
                          checkpoint_every_n=10**9, device="cpu")
    handle.remove()
    step_wall = (stamps[skip + active - 1] - stamps[skip - 1]) / active
    by_op: collections.Counter[str] = collections.Counter()
    by_kind: collections.Counter[str] = collections.Counter()
    calls: collections.Counter[str] = collections.Counter()
    for event in prof.events():
        if event.device_type.name != "CPU":
            continue
        us = event.self_cpu_time_total
        by_op[event.name] += us
        calls[event.name] += 1
        by_kind[_region(event) or _kind(event.name, event.input_shapes or [])] += us
    total = sum(by_op.values()) / 1e6 / active
    ops = {k: v / 1e6 / active for k, v in by_op.most_common()}
    kinds = {k: v / 1e6 / active for k, v in by_kind.most_common()}
    load = os.getloadavg()[0]
    print(f"threads {torch.get_num_threads()}, {active} steps profiled, wall {step_wall:.3f} s/step "
          f"(profiler on), self time in operators {total:.3f} s/step, load {load:.1f}")
    print("\n| layer kind | ms/step | share |\n|---|---|---|")
    for k, v in list(kinds.items())[:30]:
        print(f"| {k} | {1e3 * v:.1f} | {100 * v / total:.1f} % |")
    print("\n| operator | ms/step | calls/step |\n|---|---|---|")
    for k, v in list(ops.items())[:30]:
        print(f"| {k} | {1e3 * v:.1f} | {calls[k] / active:.0f} |")
    result = {"threads": torch.get_num_threads(), "steps": active, "wall_s_per_step_profiled": step_wall,
              "total_self_s_per_step": total, "kind_self_s_per_step": kinds, "op_self_s_per_step": ops,
              "op_calls_per_step": {k: calls[k] / active for k in ops}, "load": load}
    if out:
        out.write_text(json.dumps(result, indent=1))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS (default: raredet's own choice)")
    parser.add_argument("--skip", type=int, default=4, help="warm-up steps before profiling")
    parser.add_argument("--active", type=int, default=3, help="profiled steps")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if args.threads and os.environ.get("OMP_NUM_THREADS") != str(args.threads):
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        command = [sys.executable, "-m", "bench.profile_zoo_step", *(argv or sys.argv[1:])]
        os.execve(sys.executable, command, env)
    profile(args.skip, args.active, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
