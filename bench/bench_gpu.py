"""GPU throughput (issue 15): model-only against `raredet train`, raredet against torchvision's RetinaNet,
fp32 against bf16, NCHW against channels-last.

For two TF2 zoo configs at their native size and the issue's batch (`ssd_resnet50_v1_fpn_640x640`, batch
16; `ssd_mobilenet_v2_fpnlite_320x320`, batch 128), with only the classes (3), the data paths and the
batch changed:

- **model-only**: the model, DetectionLoss, backward, gradient clipping and the optimizer step as
  `raredet train` runs them (`engine.train.forward_backward`), on one batch from the config's own input
  pipeline kept on the GPU; images/s = batch x steps / wall time of the timed steps (after warm-up),
  with one synchronisation at the end, none inside the loop.
- **CLI**: `raredet train` itself, on synthetic TFRecords written at the config's size; images/s =
  batch / median step time over the steps after the warm-up (from its `log.jsonl`, whose
  `images_per_second` is measured step to step, data loading included).
- **torchvision**: `retinanet_resnet50_fpn(weights=None, weights_backbone=None)` at 640x640 (its resize
  pinned to 640), train mode, the same batch size, loss + backward + SGD step, fp32 and bf16 autocast,
  timed the same way (only where torchvision imports against this torch).

Each figure is the median of 3 timed blocks of 10 steps. Run as `python -m bench.bench_gpu [--quick]
[--only NAME_PART] [--variants fp32_nchw bf16_nhwc ...] [--no_torchvision] [--out ROWS.json]`
(`--quick`: tiny sizes, any device, a smoke test). Results: bench/results/gpu.json for the whole
table; rows are also written to `--out` as they come, so a call cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from bench.common import RESULTS_DIR, machine, save_result, zoo_user_copy
from raredet import builders, config
from raredet.data.synth import make_synthetic_dataset
from raredet.engine.optim import set_learning_rate
from raredet.engine.runtime import to_device
from raredet.engine.train import forward_backward
from raredet.fileio import atomic_write_json

CASES = (("ssd_resnet50_v1_fpn_640x640_coco17_tpu-8.config", 640, 16),
         ("ssd_mobilenet_v2_fpnlite_320x320_coco17_tpu-8.config", 320, 128))
QUICK_CASES = (("ssd_resnet50_v1_fpn_640x640_coco17_tpu-8.config", 128, 2),
               ("ssd_mobilenet_v2_fpnlite_320x320_coco17_tpu-8.config", 128, 2))
VARIANTS = (("fp32", False), ("bf16", False), ("fp32", True), ("bf16", True))  # (precision, channels_last)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _blocks(step: Any, device: torch.device, steps: int, repeats: int, warmup: int) -> list[float]:
    """Seconds per step of `repeats` blocks of `steps` steps, after `warmup` untimed steps."""
    for _ in range(warmup):
        step()
    out = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        _sync(device)
        out.append((time.perf_counter() - t0) / steps)
    return out


def model_only(cfg_path: Path, batch: int, device: torch.device, precision: str, channels_last: bool,
               steps: int, repeats: int, warmup: int) -> dict[str, Any]:
    comps = builders.build_training(config.load(cfg_path), seed=0, num_workers=0)
    comps.precision = precision
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    comps.model.to(device).to(memory_format=fmt).train()  # type: ignore[call-overload]
    set_learning_rate(comps.optimizer, comps.schedule(0))
    loader = torch.utils.data.DataLoader(comps.dataset, batch_size=batch, drop_last=True,
                                         collate_fn=comps.collate_fn)
    on_device = to_device(next(iter(loader)), device, channels_last=channels_last)

    def step() -> None:
        comps.optimizer.zero_grad(set_to_none=True)
        forward_backward(comps, comps.model, on_device, device)
        comps.optimizer.step()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = _blocks(step, device, steps, repeats, warmup)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return {"kind": "model-only", "precision": precision, "channels_last": channels_last,
            "step_s": statistics.median(times), "images_per_s": batch / statistics.median(times),
            "blocks_s_per_step": times, "peak_memory_mb": peak}


def torchvision_retinanet(size: int, batch: int, device: torch.device, precision: str, steps: int,
                          repeats: int, warmup: int) -> dict[str, Any] | None:
    try:
        from torchvision.models.detection import retinanet_resnet50_fpn
    except Exception as e:  # torchvision does not load against every torch (this repo's CPU pin)
        print(f"torchvision RetinaNet skipped: {type(e).__name__}: {e}", flush=True)
        return None
    model = retinanet_resnet50_fpn(weights=None, weights_backbone=None, num_classes=4, min_size=size,
                                   max_size=size).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, size, size, generator=g).to(device) for _ in range(batch)]
    targets = []
    for _ in range(batch):
        xy = torch.rand(4, 2, generator=g) * size * 0.6
        wh = 0.1 * size + torch.rand(4, 2, generator=g) * size * 0.3
        targets.append({"boxes": torch.cat([xy, xy + wh], 1).to(device),
                        "labels": torch.randint(1, 4, (4,), generator=g).to(device)})

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            losses = model(images, targets)
        sum(v.float() for v in losses.values()).backward()
        opt.step()

    times = _blocks(step, device, steps, repeats, warmup)
    return {"kind": "torchvision retinanet_resnet50_fpn", "precision": precision, "channels_last": False,
            "step_s": statistics.median(times), "images_per_s": batch / statistics.median(times),
            "blocks_s_per_step": times}


def cli(cfg_path: Path, batch: int, device: str, precision: str, channels_last: bool, steps: int,
        skip: int, work: Path) -> dict[str, Any]:
    """`raredet train` from the command line, as a user runs it; images/s from its log."""
    model_dir = work / f"{cfg_path.stem}_{precision}{'_cl' if channels_last else ''}"
    cmd = [sys.executable, "-m", "raredet", "train", "--pipeline_config_path", str(cfg_path),
           "--model_dir", str(model_dir), "--num_train_steps", str(steps), "--device", device,
           "--precision", precision, "--channels_last" if channels_last else "--no-channels_last"]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    lines = [json.loads(x) for x in (model_dir / "train" / "log.jsonl").read_text().splitlines()]
    rates = [x["images_per_second"] for x in lines if "images_per_second" in x and x["step"] > skip]
    return {"kind": "CLI raredet train", "precision": precision, "channels_last": channels_last,
            "images_per_s": statistics.median(rates), "steps_timed": len(rates),
            "wall_s": time.perf_counter() - start}


def run(quick: bool, out: Path, only: str | None = None, variants: tuple[tuple[str, bool], ...] = VARIANTS,
        torchvision: bool = True) -> dict[str, Any]:
    """The whole table; `only`: the configs whose name contains it; `variants`: these model-only rows."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cudnn.benchmark = True
    steps, repeats, warmup = (2, 2, 1) if quick else (10, 3, 5)
    rows: list[dict[str, Any]] = []
    for name, size, batch in (QUICK_CASES if quick else CASES):
        if only and only not in name:
            continue
        data = RESULTS_DIR / "tmp" / f"bench_gpu_{size}"
        if not (data / "label_map.pbtxt").exists():
            make_synthetic_dataset(data, images=(3 * batch if quick else max(256, 4 * batch)),
                                   image_size=size, num_shards=4, min_val_boxes=1)
        cfg_path = zoo_user_copy(name, data, batch=batch, size=size, absolute_paths=True)
        base = {"config": name, "size": size, "batch": batch}
        for precision, channels_last in variants:
            rows.append(base | model_only(cfg_path, batch, device, precision, channels_last, steps, repeats,
                                          warmup))
            print(json.dumps(rows[-1]), flush=True)
            atomic_write_json(out, {"machine": machine(), "rows": rows})
        best = max((r for r in rows if r["config"] == name), key=lambda r: r["images_per_s"])
        fastest = (best["precision"], best["channels_last"])
        for precision, channels_last in dict.fromkeys([("auto", False), fastest]):
            rows.append(base | cli(cfg_path, batch, device.type, precision, channels_last,
                                   steps=6 if quick else 60, skip=2 if quick else 20, work=data / "runs"))
            print(json.dumps(rows[-1]), flush=True)
            atomic_write_json(out, {"machine": machine(), "rows": rows})
        if torchvision and name.startswith("ssd_resnet50"):
            for precision in ("fp32", "bf16"):
                r = torchvision_retinanet(size, batch, device, precision, steps, repeats, warmup)
                if r is not None:
                    rows.append(base | r)
                    print(json.dumps(rows[-1]), flush=True)
                    atomic_write_json(out, {"machine": machine(), "rows": rows})
    return {"rows": rows}


def _variant_name(variant: tuple[str, bool]) -> str:
    return f"{variant[0]}_{'nhwc' if variant[1] else 'nchw'}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, a smoke test")
    parser.add_argument("--out", type=Path, help="also write the rows here as they come")
    parser.add_argument("--only", help="only the configs whose file name contains this")
    parser.add_argument("--variants", nargs="+", choices=[_variant_name(v) for v in VARIANTS],
                        help="only these model-only rows (default: all four)")
    parser.add_argument("--no_torchvision", action="store_true", help="leave torchvision's RetinaNet out")
    args = parser.parse_args(argv)
    out = args.out or RESULTS_DIR / "tmp" / "gpu_partial.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    variants = tuple(v for v in VARIANTS if args.variants is None or _variant_name(v) in args.variants)
    result = run(args.quick, out, args.only, variants, not args.no_torchvision)
    if not args.quick and not args.only and args.variants is None and not args.no_torchvision:
        save_result("gpu", result)
    for r in result["rows"]:
        print(f"{r['config'][:30]:30} b{r['batch']:<4} {r['kind']:36} {r['precision']:5} "
              f"{'NHWC' if r['channels_last'] else 'NCHW'} {r['images_per_s']:8.1f} images/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
