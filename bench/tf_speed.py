"""CPU step time of the TF OD API and raredet on the same zoo config and TF-written records (issue #31,
item 1): alternating runs on an idle machine, steps 101-200 as the TF OD API logs them.

    .venv/bin/python -m bench.tf_speed --tf_python PEER/venv/bin/python --tf_research PEER/src/research \\
        [--runs 3] [--out /tmp/tf_speed] [--name tf_speed_avx2]

The config is bench.tf_side_by_side's: the TF2 zoo's `ssd_mobilenet_v2_fpnlite_320x320` with 3
classes, batch 8, 200 steps, the zoo's learning rate with 5 warm-up steps, no fine_tune_checkpoint; the
data is raredet's synthetic set (600 images, 320x320) re-written record by record by TensorFlow's own
`tf.io.TFRecordWriter` (each tf.train.Example parsed and serialised again by TensorFlow), so both
systems read TF-written records. The TF OD API side is its stock `model_main_tf2.py` (it logs "Step 200
per-step time" = the mean over steps 101-200); raredet's is `raredet train` with its defaults
(`--precision auto`; the row names what it resolves to on this CPU), its step 101-200 time read from
the timestamps in train/log.jsonl ((time at 200 - time at 100) / 100). Both run with every core (no
thread variables set), one run at a time, TF first, alternating `--runs` times. Reported per run:
s/step over steps 101-200, wall seconds of the whole run, peak RSS of the process tree (sampled every
0.5 s), the 1-minute load average before it; the medians and raredet / TF ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

from bench.bench_zoo import cpu_kind, resolved_precision
from bench.common import machine, save_result
from bench.tf_side_by_side import make_config, run

TF_STEP = re.compile(r"Step 200 per-step time ([0-9.]+)s")
REWRITE = """
import sys, tensorflow as tf
for path in sys.argv[1:]:
    records = [bytes(r.numpy()) for r in tf.data.TFRecordDataset(path)]
    with tf.io.TFRecordWriter(path + ".tf") as writer:
        for r in records:
            writer.write(tf.train.Example.FromString(r).SerializeToString())
    print(path, len(records))
"""


def tf_written(data: Path, tf_python: str) -> None:
    """Re-write every shard of `data` through TensorFlow (once; a marker file records it)."""
    marker = data / "written_by_tensorflow"
    if marker.exists():
        return
    shards = sorted(str(p) for p in data.glob("*-of-*") if not p.name.endswith(".tf"))
    subprocess.run([tf_python, "-c", REWRITE, *shards], check=True, capture_output=True)
    for shard in shards:
        os.replace(shard + ".tf", shard)
    marker.write_text("each record parsed and serialised by tf.train.Example, written by "
                      "tf.io.TFRecordWriter\n")


def raredet_step(model_dir: Path) -> float | None:
    lines = (model_dir / "train" / "log.jsonl").read_text().splitlines()
    rows = {r["step"]: r for r in map(json.loads, lines)}
    return (rows[200]["time"] - rows[100]["time"]) / 100 if 100 in rows and 200 in rows else None


def one_run(name: str, index: int, config: Path, out: Path, args: argparse.Namespace) -> dict:
    model_dir = out / f"{name}_{index}"
    if name == "tf":
        cmd = [args.tf_python, str(Path(args.tf_research) / "object_detection" / "model_main_tf2.py"),
               f"--pipeline_config_path={config}", f"--model_dir={model_dir}", "--alsologtostderr"]
        env = {**os.environ, "PYTHONPATH": args.tf_research}
    else:
        cmd = [sys.executable, "-m", "raredet.cli", "train", "--pipeline_config_path", str(config),
               "--model_dir", str(model_dir), "--checkpoint_every_n", "200"]
        env = dict(os.environ)
    load = os.getloadavg()[0]
    log = out / f"{name}_{index}.log"
    code, seconds, peak = run(cmd, log, env)
    text = log.read_text(errors="replace")
    if name == "tf":
        found = TF_STEP.search(text)
        step = float(found.group(1)) if found else None
        precision = "fp32"
    else:
        step = raredet_step(model_dir)
        precision = resolved_precision(config, "")  # what --precision auto trains in on this CPU
    row = {"run": name, "index": index, "exit": code, "step_101_200_s": step, "wall_s": seconds,
           "peak_tree_rss_mb": peak, "load_1min_before": load, "precision": precision}
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tf_python", required=True)
    parser.add_argument("--tf_research", required=True)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("/tmp/tf_speed"))
    parser.add_argument("--name", default="tf_speed")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    config = make_config(args.out / "data", 200)
    tf_written(args.out / "data", args.tf_python)
    rows = [one_run(name, i, config, args.out, args) for i in range(args.runs) for name in ("tf", "raredet")]
    summary = {}
    for name in ("tf", "raredet"):
        mine = [r for r in rows if r["run"] == name and r["step_101_200_s"] is not None]
        summary[name] = {k: statistics.median(r[k] for r in mine) if mine else None
                         for k in ("step_101_200_s", "wall_s", "peak_tree_rss_mb")}
    ratios = {k: summary["raredet"][k] / summary["tf"][k] for k in summary["tf"]
              if summary["tf"][k] and summary["raredet"][k]}
    kind = cpu_kind()
    print(json.dumps({"medians": summary, "raredet_over_tf": ratios, "cpu_kind": kind}, indent=1))
    print(save_result(args.name, {"config": str(config), "rows": rows, "medians": summary,
                                  "raredet_over_tf": ratios, "cpu_kind": kind, "machine_extra": machine()}))


if __name__ == "__main__":
    main()
