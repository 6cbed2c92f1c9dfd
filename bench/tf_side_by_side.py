"""The TF OD API and raredet side by side on one zoo config and the same TFRecords (issue #32 item 2).

    .venv/bin/python -m bench.tf_side_by_side --tf_python /work/peer/venv/bin/python \\
        --tf_research /work/peer/src/research [--seeds 0 1 2] [--steps 200] [--out /tmp/side]

The config is the TF2 zoo's `ssd_mobilenet_v2_fpnlite_320x320` with only what the issue's runs changed:
3 classes, the data paths (raredet's synthetic set written as TFRecords of tf.Example, which both read),
batch 8, `--steps` steps and 5 warm-up steps (the zoo's learning rate 0.08, its cosine total left at
50,000 steps, so the rate stays near 0.08), no fine_tune_checkpoint (neither side has the ImageNet
checkpoint here). Each seed runs the TF OD API's own training loop (`model_lib_v2.train_loop`, the
function `model_main_tf2.py` calls, through `bench/tf_reference_train.py`, seeded and recording its
losses at every step) and `raredet train --seed`, with the same thread count; `--parallel` runs the two
systems' seeds side by side, one process per core. The TF OD API is a reference here, never a raredet
dependency: the script needs its install (`docs/tf_od_api_reference.md`).

Reported per run: whether it finished, the classification, localization and regularization losses at
steps 100 and 200 and their means over steps 91-100 and 191-200 (one step's loss moves by 0.03-0.05
from batch to batch, so the window is the comparison that can tell the two apart), wall time and peak
RSS of the process tree. The verdict: no raredet seed diverges, and at steps 100 and 200, for the
single step and for the window, how many of its seeds' losses fall within the TF seeds' range (widened
by half that range), how many of TF's own seeds pass the same test against the other TF seeds (the
criterion's own rejection rate), and an exact permutation test of the difference of the means.
`--report_only` recomputes the report from an earlier run's folder.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from google.protobuf import text_format

from bench.common import ZOO, machine, save_result, zoo_user_copy

CONFIG = "ssd_mobilenet_v2_fpnlite_320x320_coco17_tpu-8.config"
TF_LOSS = re.compile(r"Step (\d+) per-step time ([0-9.]+)s.*?(\{.*?\})", re.S)
TERMS = ("Loss/classification_loss", "Loss/localization_loss", "Loss/regularization_loss")


def make_config(data: Path, steps: int) -> Path:
    from raredet.data.synth import make_synthetic_dataset

    if not (data / "label_map.pbtxt").exists():
        make_synthetic_dataset(data, images=600, image_size=320, num_shards=2, seed=0)
    path = zoo_user_copy(CONFIG, data, batch=8, absolute_paths=True)
    from raredet.config import parse_text
    from raredet.protos import pipeline_pb2

    msg = parse_text(path.read_text(), pipeline_pb2.TrainEvalPipelineConfig(), path)
    msg.train_config.num_steps = steps
    msg.train_config.optimizer.momentum_optimizer.learning_rate.cosine_decay_learning_rate.warmup_steps = 5
    path.write_text(text_format.MessageToString(msg))
    return path


def peak_tree_rss_mb(proc: subprocess.Popen) -> float:
    """Peak of the summed RSS of `proc` and its children, sampled every 0.5 s until it ends."""
    peak = 0.0
    while proc.poll() is None:
        total = 0
        for pid in [proc.pid, *_children(proc.pid)]:
            try:
                total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            except (OSError, ValueError, IndexError):
                pass
        peak = max(peak, total / 2**20)
        time.sleep(0.5)
    return peak


def _children(pid: int) -> list[int]:
    try:
        found = [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []
    return found + [g for c in found for g in _children(c)]


def run(cmd: list[str], log: Path, env: dict[str, str]) -> tuple[int, float, float]:
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        peak = peak_tree_rss_mb(proc)
    return proc.returncode, time.perf_counter() - start, peak


def tf_losses(path: Path) -> dict[int, dict[str, float]]:
    """Every step's losses from tf_reference_train.py's JSON, else the every-100-steps lines of a log."""
    if path.suffix == ".json":
        return {int(k): v for k, v in json.loads(path.read_text()).items()} if path.exists() else {}
    found = {}
    for step, _, blob in TF_LOSS.findall(path.read_text(errors="replace")):
        values = dict(re.findall(r"'(Loss/[a-z_]+)': ([-0-9.e+naif]+)", blob))
        found[int(step)] = {k: float(v) for k, v in values.items()}
    return found


def raredet_losses(model_dir: Path) -> dict[int, dict[str, float]]:
    log = model_dir / "train" / "log.jsonl"
    if not log.exists():
        return {}
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return {r["step"]: {k: r[k] for k in TERMS if k in r} for r in records}


def at(losses: dict[int, dict[str, float]], step: int, window: int = 1) -> dict[str, float] | None:
    steps = [s for s in range(step - window + 1, step + 1) if s in losses]
    if len(steps) < window:
        return None
    return {k: sum(losses[s][k] for s in steps) / window for k in TERMS if k in losses[steps[0]]}


def commands(seed: int, config: Path, out: Path, args: argparse.Namespace) -> dict[str, list[str]]:
    tf_dir, rd_dir = out / f"tf_{seed}", out / f"raredet_{seed}"
    here = Path(__file__).resolve().parent
    return {"tf": [args.tf_python, str(here / "tf_reference_train.py"), str(config), str(tf_dir),
                   "--steps", str(args.steps), "--seed", str(seed), "--losses", str(out / f"tf_{seed}.json")],
            "raredet": [sys.executable, "-m", "raredet.cli", "train", "--pipeline_config_path", str(config),
                        "--model_dir", str(rd_dir), "--seed", str(seed),
                        "--checkpoint_every_n", str(args.steps)]}


def run_one(name: str, seed: int, config: Path, out: Path, args: argparse.Namespace,
            env: dict[str, str]) -> None:
    cmd_env = {**env, "PYTHONPATH": args.tf_research} if name == "tf" else env
    code, seconds, peak = run(commands(seed, config, out, args)[name], out / f"{name}_{seed}.log", cmd_env)
    (out / f"{name}_{seed}.run.json").write_text(json.dumps({"exit": code, "seconds": seconds,
                                                             "peak_rss_mb": peak}))
    print(seed, name, "exit", code, f"{seconds:.0f} s", flush=True)


def summarise(seed: int, out: Path) -> dict:
    row: dict[str, Any] = {"seed": seed}
    for name in ("tf", "raredet"):
        ran = out / f"{name}_{seed}.run.json"
        losses = (tf_losses(out / f"tf_{seed}.json") if name == "tf"
                  else raredet_losses(out / f"raredet_{seed}"))
        row[name] = {**(json.loads(ran.read_text()) if ran.exists() else {"exit": None}),
                     "last_step": max(losses, default=0),
                     **{f"step_{s}": at(losses, s) for s in (100, 200)},
                     **{f"mean_{s - 9}_{s}": at(losses, s, 10) for s in (100, 200)}}
    return row


def within(values: list[float], reference: list[float]) -> int:
    """How many of `values` fall within the range of `reference` widened by half that range."""
    low, high = min(reference), max(reference)
    margin = 0.5 * (high - low)
    return sum(low - margin <= v <= high + margin for v in values)


def own_seeds_within(values: list[float]) -> int:
    """How many of a system's own seeds fall within the others' range (±half): the rate at which the
    range criterion rejects a seed drawn from the same system, against which raredet's count is read."""
    return sum(within([v], values[:i] + values[i + 1:]) for i, v in enumerate(values))


def permutation_p(a: list[float], b: list[float]) -> float:
    """Two-sided exact permutation test on the difference of the means: the share of the ways of
    splitting the pooled values into groups of len(a) and len(b) whose means differ at least as much
    as a's and b's do. Small: the side-by-side has a few seeds per system (6 + 6: 924 splits)."""
    pooled, n = [*a, *b], len(a)
    total = sum(pooled)
    observed = abs(sum(a) / n - sum(b) / len(b))
    splits = list(itertools.combinations(pooled, n))
    extreme = sum(abs(sum(c) / n - (total - sum(c)) / len(b)) >= observed - 1e-12 for c in splits)
    return extreme / len(splits)


def verdict(rows: list[dict]) -> list[str]:
    lines = []
    for step in (100, 200):
        for key in (f"step_{step}", f"mean_{step - 9}_{step}"):
            for term in TERMS:
                tf_values = [r["tf"][key][term] for r in rows if r["tf"].get(key)]
                ours = [r["raredet"][key][term] for r in rows if r["raredet"].get(key)]
                if len(tf_values) < 2 or not ours:
                    continue
                what = f"{step}" if key.startswith("step") else f"{step - 9}-{step} (mean)"
                cells = [what, term.split("/")[1], ", ".join(f"{v:.4g}" for v in tf_values),
                         ", ".join(f"{v:.4g}" for v in ours), f"{within(ours, tf_values)} of {len(ours)}",
                         f"{own_seeds_within(tf_values)} of {len(tf_values)}",
                         f"{permutation_p(ours, tf_values):.2f}"]
                lines.append(f"| {' | '.join(cells)} |")
    finished = sum(r["raredet"]["exit"] == 0 for r in rows)
    header = [f"raredet runs that finished: {finished} of {len(rows)}; TF OD API runs: "
              f"{sum(r['tf']['exit'] == 0 for r in rows)} of {len(rows)}.", "",
              "| step | loss | TF OD API (seeds) | raredet (seeds) | raredet seeds within TF's range (±half) "
              "| TF seeds within the other TF seeds' range (±half) | permutation p (means) |",
              "|---|---|---|---|---|---|---|"]
    return header + lines


def curve(out: Path, seeds: list[int], steps: int, width: int = 20) -> list[str]:
    """The loss curves in windows of `width` steps: each system's seeds as min-max of the window means."""
    runs = {"tf": [tf_losses(out / f"tf_{s}.json") for s in seeds],
            "raredet": [raredet_losses(out / f"raredet_{s}") for s in seeds]}
    heads = [f"{name} {term.split('/')[1]}" for term in TERMS[:2] for name in runs]
    lines = [f"| steps | {' | '.join(heads)} |",
             "|---|" + "---|" * 4]
    for end in range(width, steps + 1, width):
        cells = []
        for term in TERMS[:2]:
            for name in runs:
                means = [w[term] for w in (at(losses, end, width) for losses in runs[name]) if w]
                cells.append(f"{min(means):.3f}-{max(means):.3f}" if means else "-")
        lines.append(f"| {end - width + 1}-{end} | {' | '.join(cells)} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tf_python", required=True)
    parser.add_argument("--tf_research", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("/tmp/side_by_side"))
    parser.add_argument("--name", default="tf_side_by_side")
    parser.add_argument("--parallel", action="store_true", help="the two systems' runs two at a time")
    parser.add_argument("--report_only", action="store_true", help="summarise an earlier run's --out")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    config = make_config(args.out / "data", args.steps)
    threads = str(args.threads)
    env = {**os.environ, "OMP_NUM_THREADS": threads, "TF_NUM_INTEROP_THREADS": "1",
           "TF_NUM_INTRAOP_THREADS": threads}
    if not args.report_only:
        jobs = [(name, seed) for seed in args.seeds for name in ("tf", "raredet")]
        with ThreadPoolExecutor(2 if args.parallel else 1) as pool:
            list(pool.map(lambda job: run_one(*job, config, args.out, args, env), jobs))
    rows = [summarise(seed, args.out) for seed in args.seeds]
    lines = verdict(rows) + [""] + curve(args.out, args.seeds, args.steps)
    print("\n".join(lines))
    print(save_result(args.name, {"config": CONFIG, "zoo": str(ZOO), "steps": args.steps, "rows": rows,
                                  "summary": lines, "machine_extra": machine()}))


if __name__ == "__main__":
    main()
