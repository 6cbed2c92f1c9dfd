"""The TF2 zoo's `ssd_mobilenet_v2_fpnlite_320x320` trained on the CPU through `raredet train`'s own path
(`train_from_config`: loader with its workers, threads, channels-last, logging), next to the TF OD
API's step time on the same CPU kind (`TF_REFERENCE`, by the CPU's flags: AVX2, AVX-512, AVX-512 with
AMX), with the ratio and the precision the run trained in (`--precision`, default auto).

The config is the zoo file (tests/fixtures/configs/ssd_mobilenet_v2_fpnlite_320x320_coco17_tpu-8.config)
with only what a local run must change: `num_classes` 3 and the synthetic rare-defects TFRecords
(320x320, written under bench/results/tmp/), `batch_size` 8, no `fine_tune_checkpoint`. Each run is a
fresh process; a global optimizer-step hook stamps every step. Reported per run: the median step time
over the steps after the warm-up, the CPU-seconds per step over the same steps (the process and its
data workers, read from /proc), the FLOPs of one training step (3x the forward's, counted by
`FlopCounterMode`: convolutions and matmuls, a multiply-add = 2 FLOPs) and so the achieved GFLOP/s,
which shows the ratio on a machine of another speed.

`--compare-src OLD/src`: alternate runs of this tree and of another checkout's `src` (e.g. the commit
before a speed change, unpacked with `git archive`), same config, same data, and print both medians and
their ratio. Speed needs a quiet machine; the 1-minute load average before and after each run is
recorded with it.

`--env KEY=VALUE`: an environment variable for this tree's runs only (e.g. OMP_WAIT_POLICY=PASSIVE, which
OpenMP reads when torch loads); `--compare-src src` then measures it against the same tree without.

    python -m bench.bench_zoo [--quick] [--steps N] [--runs R] [--compare-src DIR] [--env KEY=VALUE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import RESULTS_DIR, save_result

ROOT = Path(__file__).resolve().parents[1]
ZOO_CONFIG = ROOT / "tests" / "fixtures" / "configs" / "ssd_mobilenet_v2_fpnlite_320x320_coco17_tpu-8.config"
# The TF OD API 2.15.1 on this zoo config (batch 8, fp32, its own "per-step time" over steps 101-200,
# the machine idle), per CPU kind of this project's 2-core VMs: the ratio `make bench` prints is against
# the figure for the CPU it runs on (`cpu_kind`). docs/benchmarks.md, "CPU training step", has each.
TF_REFERENCE: dict[str, dict[str, Any]] = {
    "avx512_amx": {"tf_od_api_s_per_step": 0.717, "cpu": "Intel Xeon, AVX-512 + AVX512-BF16 + AMX",
                   "source": "issue #31: 3 runs, 0.710 / 0.725 / 0.717 s/step"},
    "avx512": {"tf_od_api_s_per_step": 0.541, "cpu": "AMD EPYC with AVX-512",
               "source": "issue 15 (250 CPU-s per 200-step run)"},
    "avx2": {"tf_od_api_s_per_step": 2.124, "cpu": "AMD EPYC, AVX2 only",
             "source": "bench/tf_speed.py, 7 Dec 2026: 3 runs, 2.094 / 2.662 / 2.124 s/step"},
}


def cpu_kind(flags: set[str] | None = None) -> str:
    """This CPU's kind for TF_REFERENCE, from /proc/cpuinfo's flags: "avx512_amx", "avx512", "avx2" or
    "other"."""
    if flags is None:
        text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
        line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
        flags = set(line.partition(":")[2].split())
    if "amx_bf16" in flags:
        return "avx512_amx"
    if "avx512f" in flags:
        return "avx512"
    return "avx2" if "avx2" in flags else "other"


SIZE, BATCH = 320, 8


def make_config(data_dir: Path) -> Path:
    """The zoo config pointed at the synthetic data in `data_dir` (written there as zoo.config)."""
    from google.protobuf import text_format

    from raredet.config import parse_config
    from raredet.data.synth import make_synthetic_dataset

    if not (data_dir / "label_map.pbtxt").exists():
        make_synthetic_dataset(data_dir, images=120, image_size=SIZE, num_shards=2, min_val_boxes=1)
    cfg = parse_config(ZOO_CONFIG.read_text(), ZOO_CONFIG)
    cfg.model.ssd.num_classes = 3
    cfg.train_config.batch_size = BATCH
    for name in ("fine_tune_checkpoint", "fine_tune_checkpoint_type", "fine_tune_checkpoint_version"):
        cfg.train_config.ClearField(name)  # type: ignore[arg-type]
    for reader, split in [(cfg.train_input_reader, "train"), (cfg.eval_input_reader[0], "val")]:
        reader.label_map_path = str(data_dir / "label_map.pbtxt")
        del reader.tf_record_input_reader.input_path[:]
        reader.tf_record_input_reader.input_path.append(str(data_dir / f"{split}-*"))
    path = data_dir / "zoo.config"
    path.write_text(text_format.MessageToString(cfg))
    return path


# ---- one run (in its own process) ---------------------------------------------------------------


def _cpu_seconds_of_tree(pid: int) -> float:
    """user + system CPU of `pid`, its reaped children and its live descendants (/proc, Linux)."""
    tick = os.sysconf("SC_CLK_TCK")
    stats: dict[int, list[str]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                text = (entry / "stat").read_text()
            except OSError:  # exited meanwhile
                continue
            stats[int(entry.name)] = text[text.rindex(")") + 2 :].split()  # fields from 3 (state) on
    children: dict[int, list[int]] = {}
    for p, fields in stats.items():
        children.setdefault(int(fields[1]), []).append(p)
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        if p in stats:  # utime, stime, cutime, cstime are fields 14-17 (index 11-14 here)
            total += sum(int(v) for v in stats[p][11:15]) / tick
        todo += children.get(p, [])
    return total


def _step_flops(config_path: Path) -> int:
    """FLOPs of one training step: 3x the model's forward on a batch (the backward computes a gradient
    for the input and one for the weights, each as costly as the forward). Counted forward only:
    FlopCounterMode counts a depthwise conv's weight gradient as a dense conv's, 100x too high here."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from raredet import builders, config

    comps = builders.build_training(config.load(config_path), seed=0, num_workers=0)
    batch = comps.collate_fn([comps.dataset[i] for i in range(BATCH)])
    comps.model.train()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        comps.model(batch["images"])
    return 3 * int(counter.get_total_flops())


def one_run(config_path: Path, steps: int, warmup: int, out: Path, precision: str = "") -> None:
    """`raredet train` for `steps` steps in this process (`--precision` if given); writes the timings to
    `out` (JSON)."""
    import warnings

    import torch

    from raredet.commands.train import train_from_config

    warnings.simplefilter("ignore")  # the zoo config's TPU fields: one known warning
    os.environ["TQDM_DISABLE"] = "1"
    stamps: list[float] = []
    cpu: dict[int, float] = {}

    def hook(optimizer: Any, args: Any, kwargs: Any) -> None:
        stamps.append(time.perf_counter())
        if len(stamps) in (warmup, steps):
            cpu[len(stamps)] = _cpu_seconds_of_tree(os.getpid())

    from torch.optim.optimizer import register_optimizer_step_post_hook

    handle = register_optimizer_step_post_hook(hook)
    with tempfile.TemporaryDirectory() as model_dir:
        options = {"precision": precision} if precision else {}  # older checkouts lack the argument
        train_from_config(config_path, model_dir, num_train_steps=steps, checkpoint_every_n=10**9,
                          device="cpu", **options)
        lines = (Path(model_dir) / "train" / "log.jsonl").read_text().splitlines()
        log = [json.loads(line) for line in lines]
    handle.remove()
    times = [b - a for a, b in zip(stamps[warmup - 1 : -1], stamps[warmup:], strict=True)]
    result = {
        "step_times_s": times,
        "step_s": statistics.median(times),
        "cpu_s_per_step": (cpu[steps] - cpu[warmup]) / (steps - warmup),
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "first_loss": log[0]["Loss/total_loss"],
        "peak_rss_mb": _peak_rss_mb(),
        "precision": resolved_precision(config_path, precision),
    }
    out.write_text(json.dumps(result))


def resolved_precision(config_path: Path, precision: str) -> str:
    """What `raredet train --precision` (default auto) trains in on this CPU, as the trainer resolves it."""
    import torch

    from raredet import config

    try:
        from raredet.engine.runtime import resolve_precision
    except ImportError:  # a checkout from before --precision: fp32
        return "fp32"
    use_bf16 = config.load(config_path).pipeline.train_config.use_bfloat16
    return resolve_precision(precision or "auto", torch.device("cpu"), use_bf16)[0]


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def _load() -> float:
    return os.getloadavg()[0]


def _spawn(src: Path, config_path: Path, steps: int, warmup: int, threads: int | None,
           precision: str = "", extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    """One run in a fresh process whose `raredet` comes from `src` (OMP_NUM_THREADS=`threads` if set,
    and `extra_env` on top)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run.json"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), str(ROOT)]), **(extra_env or {})}
        env.pop("OMP_NUM_THREADS", None)  # the code under test picks its threads ...
        if threads:  # ... unless asked: one thread has no barrier spinning, so CPU-s are load-proof
            env["OMP_NUM_THREADS"] = str(threads)
        code = ("import sys; from pathlib import Path; from bench.bench_zoo import one_run; a = sys.argv; "
                "one_run(Path(a[1]), int(a[2]), int(a[3]), Path(a[4]), a[5])")
        load_before = _load()
        args = [str(config_path), str(steps), str(warmup), str(out), precision]
        subprocess.run([sys.executable, "-c", code, *args], env=env, check=True, cwd=tmp)
        result: dict[str, Any] = json.loads(out.read_text())
    result["load_before"], result["load_after"] = load_before, _load()
    return result


# ---- the benchmark ------------------------------------------------------------------------------


def _summary(variants: dict[str, list[dict[str, Any]]], gflop: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, runs in variants.items():
        step = statistics.median(r["step_s"] for r in runs)
        out[name] = {
            "step_s_median": step,
            "step_s_runs": [r["step_s"] for r in runs],
            "cpu_s_per_step_median": statistics.median(r["cpu_s_per_step"] for r in runs),
            "gflop_per_s": gflop / step,
            "first_loss": [r["first_loss"] for r in runs],
            "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
            "load": [(r["load_before"], r["load_after"]) for r in runs],
            "threads": runs[0]["threads"],
            "precision": "/".join(sorted({r.get("precision", "not recorded") for r in runs})),
        }
    return out


def _table(summary: dict[str, Any], gflop: float, steps: int, warmup: int,
           kind: str | None = None) -> list[str]:
    kind = kind or cpu_kind()
    tf = TF_REFERENCE.get(kind)
    lines = [
        f"ssd_mobilenet_v2_fpnlite_320x320 (zoo config, 3 classes), batch {BATCH}, CPU ({kind}), "
        f"{gflop:.1f} GFLOP per step (3x the forward's convs and matmuls); median step over steps "
        f"{warmup + 1}-{steps} of each run",
        "",
        "| what | precision | s/step | CPU-s/step | GFLOP/s | vs the TF OD API on this CPU kind |",
        "|---|---|---|---|---|---|",
    ]
    if tf:
        t = tf["tf_od_api_s_per_step"]
        lines.append(f"| TF OD API 2.15.1 ({tf['cpu']}; {tf['source']}) | fp32 | {t:.3f} | - | "
                     f"{gflop / t:.1f} (at raredet's FLOP count) | 1.00x |")
    for name, s in summary.items():
        loads = ", ".join(f"{a:.1f}/{b:.1f}" for a, b in s["load"])
        ratio = f"{s['step_s_median'] / tf['tf_od_api_s_per_step']:.2f}x" if tf else "-"
        lines.append(
            f"| raredet {name}, measured now (runs: {', '.join(f'{t:.3f}' for t in s['step_s_runs'])}; "
            f"1-min load before/after: {loads}) | {s['precision']} | {s['step_s_median']:.3f} | "
            f"{s['cpu_s_per_step_median']:.2f} | {s['gflop_per_s']:.1f} | {ratio} |"
        )
    if not tf:
        lines += ["", f"No TF OD API figure for this CPU kind ({kind}) in bench.bench_zoo.TF_REFERENCE: "
                      "measure one with bench/tf_speed.py (docs/benchmarks.md)."]
    if len(summary) == 2:
        (a, sa), (b, sb) = summary.items()
        step_ratio = sa["step_s_median"] / sb["step_s_median"]
        cpu_ratio = sa["cpu_s_per_step_median"] / sb["cpu_s_per_step_median"]
        lines += ["", f"{a} / {b}, same-run medians: step time {step_ratio:.3f}; "
                      f"CPU-s per step {cpu_ratio:.3f}"]
    return lines


def run(quick: bool, steps: int | None = None, runs: int | None = None,
        compare_src: Path | None = None, threads: int | None = None, precision: str = "",
        extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    """`runs` runs of `steps` steps (3 warm-up) each; `quick`: 1 run of 5 steps (2 warm-up).
    `precision` and `extra_env` (environment variables, e.g. OMP_WAIT_POLICY) apply to this tree's runs
    only, so `--compare-src src` measures them against the same tree without."""
    warmup = 2 if quick else 3
    steps = steps or (5 if quick else 13)
    runs = runs or (1 if quick else 3)
    data_dir = RESULTS_DIR / "tmp" / f"zoo_{SIZE}"
    config_path = make_config(data_dir)
    gflop = _step_flops(config_path) / 1e9
    sources = {"this tree": ROOT / "src"}
    if compare_src is not None:
        sources["compared"] = compare_src.resolve()
    variants: dict[str, list[dict[str, Any]]] = {name: [] for name in sources}
    for _ in range(runs):  # alternate, so load changes hit every variant alike
        for name, src in sources.items():
            mine = name == "this tree"
            variants[name].append(_spawn(src, config_path, steps, warmup, threads, precision if mine else "",
                                         extra_env if mine else None))
    summary = _summary(variants, gflop)
    return {"steps": steps, "warmup": warmup, "omp_num_threads": threads,
            "precision": precision or "default", "env": extra_env or {}, "gflop_per_step": gflop,
            "cpu_kind": cpu_kind(), "tf_reference": TF_REFERENCE.get(cpu_kind()),
            "variants": summary, "runs": variants,
            "summary": _table(summary, gflop, steps, warmup)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one run of 5 steps")
    parser.add_argument("--steps", type=int, help="steps per run (default 13; the first 3 are warm-up)")
    parser.add_argument("--runs", type=int, help="runs per variant (default 3)")
    parser.add_argument("--compare-src", type=Path, help="another checkout's src/ to alternate with")
    parser.add_argument("--threads", type=int,
                        help="OMP_NUM_THREADS for the runs (default: the code's own choice)")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="",
                        help="raredet train --precision for this tree's runs (default: the config's)")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="an environment variable for this tree's runs only (repeatable), e.g. "
                             "OMP_WAIT_POLICY=PASSIVE; with --compare-src src it is measured against itself")
    args = parser.parse_args(argv)
    bad = [item for item in args.env if "=" not in item]
    if bad:
        parser.error(f"--env takes KEY=VALUE, got {bad[0]!r}")
    extra_env = dict(item.split("=", 1) for item in args.env)
    result = run(args.quick, args.steps, args.runs, args.compare_src, args.threads, args.precision, extra_env)
    print("\n".join(result["summary"]))
    name = "zoo_compare" if args.compare_src else ("quick/zoo" if args.quick else "zoo")
    name += f"_threads{args.threads}" if args.threads else ""
    name += f"_{args.precision}" if args.precision else ""
    name += "".join(f"_{k}_{v}".lower() for k, v in extra_env.items())
    print(f"wrote {save_result(name, result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
