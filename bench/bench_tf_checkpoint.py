"""Load time and peak memory of reading a TF2 checkpoint with raredet.tfcheckpoint (no TensorFlow),
against the checkpoint's size on disk (issue #27 item 6).

    .venv/bin/python -m bench.bench_tf_checkpoint PREFIX_OR_FOLDER [...] [--repeats 5] [--model]

Each run is a fresh child process (so its peak RSS is its own): it opens the checkpoint and reads
every tensor (a float32 copy, as a model load needs), then reports its wall time and peak RSS
(`VmHWM`). With `--model` (a zoo-layout folder: `pipeline.config` + `checkpoint/`) the child
instead builds raredet's model from the folder's config and loads the checkpoint into it with
`load_checkpoint_weights(..., "full")`; the time of building the model alone is measured the same way
and reported beside it. The checkpoints are written by the TF OD API (`tests/fixtures/tf_models/
write_fixture.py --checkpoint_only` on the zoo's EfficientDet-D7 and Faster R-CNN ResNet-152 configs)
and kept out of the repository. Median and range over `--repeats` runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from bench.common import machine, save_result

CHILD = r"""
import json, sys, time, warnings
import numpy as np
warnings.simplefilter("ignore")
mode, path = sys.argv[1], sys.argv[2]
start = time.perf_counter()
if mode == "import":
    from raredet.tfcheckpoint import open_checkpoint
    extra = {}
elif mode == "read":
    from raredet.tfcheckpoint import open_checkpoint
    ckpt = open_checkpoint(path)
    total, checksum = 0, 0.0
    for key in ckpt.keys():
        array = ckpt.tensor(key)
        if array.dtype != object:
            copy = np.array(array, dtype=np.float32)  # what a model load does: its own copy, then dropped
            total, checksum = total + copy.size, checksum + float(copy.sum(dtype=np.float64))
    extra = {"tensors": len(ckpt.keys()), "elements": int(total), "checksum": checksum}
else:
    from pathlib import Path
    from raredet import builders, config
    from raredet.modeling import load_checkpoint_weights
    folder = Path(path)
    message = builders.model_message(config.load(folder / "pipeline.config").pipeline)
    model, _ = builders.build_model(message, list(range(1, message.num_classes + 1)))
    built = time.perf_counter() - start
    extra = {"build_seconds": built}
    if mode == "model":
        report = load_checkpoint_weights(model, folder / "checkpoint" / "ckpt-0", "full")
        extra["loaded"] = len(report.loaded)
seconds = time.perf_counter() - start
# VmHWM, not ru_maxrss: ru_maxrss keeps the forking parent's peak (this bench imports torch) across exec.
peak = [int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM")][0] / 1024
print(json.dumps({"seconds": seconds, "peak_rss_mb": peak, **extra}))
"""


def disk_mb(path: Path) -> float:
    from raredet.tfcheckpoint import open_checkpoint

    prefix = open_checkpoint(path).prefix
    files = [prefix.with_name(prefix.name + ".index"), *prefix.parent.glob(prefix.name + ".data-*")]
    return sum(f.stat().st_size for f in files) / 2**20


def child(mode: str, path: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, mode, str(path)], capture_output=True, text=True,
                         check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{mode} {path}: {out.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def summarize(runs: list[dict], key: str) -> dict:
    values = [r[key] for r in runs]
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def measure(path: Path, mode: str, repeats: int) -> dict:
    runs = [child(mode, path) for _ in range(repeats)]
    return {"seconds": summarize(runs, "seconds"), "peak_rss_mb": summarize(runs, "peak_rss_mb"),
            "runs": runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", type=Path)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--model", action="store_true")
    parser.add_argument("--name", default="tf_checkpoint")
    args = parser.parse_args()
    base = measure(Path("."), "import", args.repeats)
    rows, lines = [], [f"Peak RSS of the import alone: {base['peak_rss_mb']['median']:.0f} MB.", "",
                       "| checkpoint | on disk | read every tensor: time, peak RSS |" +
                       (" build model | build + load | peak RSS |" if args.model else ""),
                       "|---|---|---|" + ("---|---|---|" if args.model else "")]
    for path in args.paths:
        source = path / "checkpoint" if args.model else path
        row = {"path": str(path), "disk_mb": disk_mb(source), "read": measure(source, "read", args.repeats)}
        label = path.parent.name if path.name == "checkpoint" else path.name
        line = (f"| {label} | {row['disk_mb']:.0f} MB | {row['read']['seconds']['median']:.2f} s, "
                f"{row['read']['peak_rss_mb']['median']:.0f} MB |")
        if args.model:
            row["build"] = measure(path, "build", args.repeats)
            row["model"] = measure(path, "model", args.repeats)
            line += (f" {row['build']['seconds']['median']:.2f} s | {row['model']['seconds']['median']:.2f} s"
                     f" | {row['model']['peak_rss_mb']['median']:.0f} MB (build alone "
                     f"{row['build']['peak_rss_mb']['median']:.0f} MB) |")
        rows.append(row)
        lines.append(line)
        print(line, flush=True)
    result = {"machine": machine(), "repeats": args.repeats, "import": base, "rows": rows, "summary": lines}
    print(save_result(args.name, result))


if __name__ == "__main__":
    main()
