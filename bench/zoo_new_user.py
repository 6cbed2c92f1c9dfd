"""All 40 TF2 zoo configs as a new user runs them: `raredet config check`, then `raredet train` two
steps, on TF-written records, each config at its own native image size, from the command line.

The records come from bench/tf_write_user_records.py, run with the TF OD API's venv (every byte written
by TensorFlow and the TF OD API's dataset_util: JPEG images, PNG instance masks, COCO's 17 person
keypoints). Each zoo config (src/raredet/zoo/configs, the zoo's text) is edited as its own comments tell
a user to, by text substitution: `num_classes` 3, the `PATH_TO_BE_CONFIGURED` paths (label map, train
and val records, and the keypoint configs' `keypoint_label_map_path`) pointed at DATA (the eval reader
at the val records even where the zoo's points at train2017, as in centernet_hourglass104_512x512_kpts,
or misspells the placeholder, as in ssd_efficientdet_d7), the training
`batch_size` set to BATCH (default 1: what a 2-core CPU holds at 1024-1536 pixels), and the
`fine_tune_checkpoint` lines removed (no zoo checkpoint can be downloaded here). Nothing else changes:
image sizes, augmentation, losses, the keypoint and mask tasks are the zoo's.

Each command runs as its own process (`raredet` from this venv) under GNU time, so a line per config
gives: config check's verdict, train's exit code, the two logged total losses (train/log.jsonl), the
wall seconds of `raredet train` (model build, data, two steps, checkpoint) and its peak RSS. A config
whose native-size training the machine's memory cannot hold (train killed by the kernel's OOM killer)
is then built and run forward at its native size on a val image, and trained two steps at 1024 pixels
(`too_large_to_train`). Then `--follow_up` (a CenterNet by default): `raredet eval` with a per-class
operating point and `raredet export --format onnx`.

    PYTHONPATH=<models>/research <tf-venv>/bin/python bench/tf_write_user_records.py WORK/data
    python -m bench.zoo_new_user WORK [--only SUBSTRING] [--batch 1]

Writes WORK/configs/*.config, WORK/runs/<config>/, and WORK/zoo_new_user.json (one entry per config,
rewritten after each, so a long run can be read while it goes). Exit code 0 when all 40 checked and
trained with finite losses.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from raredet.zoo import CONFIG_DIR

RAREDET = [sys.executable, "-m", "raredet"]


def user_copy(name: str, data: Path, out: Path, batch: int) -> Path:
    """The zoo config `name` edited as its comments ask, by text substitution (see the module doc)."""
    text = (CONFIG_DIR / name).read_text(encoding="utf-8")
    text, classes = re.subn(r"num_classes: \d+", "num_classes: 3", text, count=1)
    train = text.index("train_config")
    head, tail = text[:train], text[train:]
    tail, batches = re.subn(r"batch_size: \d+", f"batch_size: {batch}", tail, count=1)
    text = head + tail
    text = re.sub(r'\n[ \t]*fine_tune_checkpoint(_type|_version)?: [^\n]*', "", text)
    text = text.replace('keypoint_label_map_path: "PATH_TO_BE_CONFIGURED"',
                        f'keypoint_label_map_path: "{data / "label_map.pbtxt"}"')
    # the zoo's placeholder, and its one misspelling (ssd_efficientdet_d7's eval reader: PATH_TO_BEE_...)
    placeholder = r'"PATH_TO_BEE?_CONFIGURED/'
    text = re.sub(placeholder + r'[^"]*label_map[^"]*"', f'"{data / "label_map.pbtxt"}"', text)
    evaluation = text.index("eval_input_reader")  # its records are the val split, whatever the zoo named
    text = (re.sub(placeholder + r'[^"]*"', f'"{data / "train-00000-of-00001.tfrecord"}"', text[:evaluation])
            + re.sub(placeholder + r'[^"]*"', f'"{data / "val-00000-of-00001.tfrecord"}"', text[evaluation:]))
    if classes != 1 or batches != 1 or "_CONFIGURED" in text:
        raise SystemExit(f"{name}: the user edits did not apply (num_classes {classes}, batch_size "
                         f"{batches}, a PATH_TO_BE_CONFIGURED left: {'_CONFIGURED' in text})")
    path = out / name
    path.write_text(text, encoding="utf-8")
    return path


def timed(command: list[str], log: Path) -> tuple[int, float, int]:
    """Run `command` under GNU time; (exit code, wall seconds, peak RSS in MB); output to `log`."""
    stats = log.with_suffix(".time")
    with log.open("w") as handle:
        rc = subprocess.call(["/usr/bin/time", "-f", "%e %M", "-o", str(stats), *command],
                             stdout=handle, stderr=subprocess.STDOUT)
    wall, rss_kb = stats.read_text().split()[-2:]
    return rc, float(wall), int(rss_kb) // 1024


def logged_steps(model_dir: Path) -> list[dict]:
    """The rows of `raredet train`'s train/log.jsonl in `model_dir` (none when it wrote none)."""
    log = model_dir / "train" / "log.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


FORWARD = """
import json, sys, time, torch
from raredet import config
from raredet.builders import build_model, model_message
from raredet.builders.data import build_eval_loader
loaded = config.load(sys.argv[1])
torch.manual_seed(0)
model, _ = build_model(model_message(loaded.pipeline), loaded.label_map.ids)
model.eval()
batch = next(iter(build_eval_loader(loaded)))
start = time.perf_counter()
with torch.no_grad():
    det = model.postprocess(model(batch["images"]), batch["image_sizes"])
print(json.dumps({"input": list(batch["images"].shape), "forward_seconds": time.perf_counter() - start,
                  "num_detections": det["num_detections"].tolist()}))
"""


def too_large_to_train(name: str, work: Path, entry: dict, size: int) -> dict:
    """For a config whose two native-size steps the machine's memory cannot hold (train killed): the
    model built at its native size and run forward on a val image (eval batch, no gradients), then two
    training steps with the image size set to `size` (the resizer and EfficientDet's square crop; every
    other field as before). This is the issue's "the largest built and run forward on the CPU"."""
    cfg = work / "configs" / name
    run_dir = work / "runs" / name.removesuffix(".config")
    rc, wall, rss = timed([sys.executable, "-c", FORWARD, str(cfg)], run_dir / "forward.log")
    last = (run_dir / "forward.log").read_text().splitlines()[-1:] or [""]
    entry["native_forward"] = {"rc": rc, "seconds": wall, "peak_rss_mb": rss,
                               **(json.loads(last[0]) if rc == 0 else {"log_tail": last})}
    small = cfg.with_name(f"small{size}_{name}")
    text = re.sub(r"(min_dimension|max_dimension|height|width|output_size): \d+", rf"\1: {size}",
                  cfg.read_text())
    small.write_text(text)
    model_dir = run_dir / f"model_{size}"
    rc, wall, rss = timed([*RAREDET, "train", "--pipeline_config_path", str(small), "--model_dir",
                           str(model_dir), "--num_train_steps", "2", "--device", "cpu"],
                          run_dir / f"train_{size}.log")
    losses = [row["Loss/total_loss"] for row in logged_steps(model_dir)]
    entry[f"train_at_{size}"] = {"rc": rc, "seconds": wall, "peak_rss_mb": rss, "total_losses": losses}
    entry["ok_forward_native_train_small"] = (entry["native_forward"]["rc"] == 0 and rc == 0
                                              and len(losses) == 2 and all(math.isfinite(v) for v in losses))
    return entry


def run_one(name: str, data: Path, work: Path, batch: int) -> dict:
    cfg = user_copy(name, data, work / "configs", batch)
    run_dir = work / "runs" / name.removesuffix(".config")
    run_dir.mkdir(parents=True, exist_ok=True)
    check = subprocess.run([*RAREDET, "config", "check", str(cfg)], capture_output=True, text=True)
    (run_dir / "check.log").write_text(check.stdout + check.stderr)
    first = (check.stdout.splitlines() or [""])[0]
    entry: dict = {"config": name, "check_rc": check.returncode, "check": first}
    if check.returncode != 0:
        return entry
    rc, wall, rss = timed([*RAREDET, "train", "--pipeline_config_path", str(cfg), "--model_dir",
                           str(run_dir / "model"), "--num_train_steps", "2", "--device", "cpu"],
                          run_dir / "train.log")
    rows = logged_steps(run_dir / "model")
    losses = [row["Loss/total_loss"] for row in rows]
    entry.update(train_rc=rc, train_seconds=wall, peak_rss_mb=rss, total_losses=losses,
                 loss_terms=sorted(k for k in (rows[-1] if rows else {}) if k.startswith("Loss/")),
                 ok=rc == 0 and len(losses) == 2 and all(math.isfinite(v) for v in losses))
    if rc in (137, -9):  # killed: out of memory (the kernel's OOM killer) at the native size
        too_large_to_train(name, work, entry, 1024)
    return entry


def follow_up(name: str, work: Path) -> dict:
    """What a user does next with a trained run of `name`: `raredet eval` with a per-class operating
    point (precision 0.9), then `raredet export --format onnx` with those operating points (export runs
    the written file in onnxruntime and compares its detections with PyTorch's; a difference is an
    error, so exit code 0 means the ONNX model ran and agreed)."""
    cfg = work / "configs" / name
    model = work / "runs" / name.removesuffix(".config") / "model"
    out: dict = {"config": name}
    rc, wall, _ = timed([*RAREDET, "eval", "--pipeline_config_path", str(cfg), "--checkpoint_dir", str(model),
                         "--operating_point", "target_precision=0.9"], model.parent / "eval.log")
    out["eval"] = {"rc": rc, "seconds": wall, "outputs": sorted(p.name for p in (model / "eval").glob("*"))}
    onnx = model.parent / "export" / "model.onnx"
    rc, wall, _ = timed([*RAREDET, "export", "--model_dir", str(model), "--format", "onnx", "--out",
                         str(onnx), "--operating_points", str(model / "eval" / "operating_points.json")],
                        model.parent / "export.log")
    size = round(onnx.stat().st_size / 2**20, 1) if onnx.exists() else None
    out["export"] = {"rc": rc, "seconds": wall, "mb": size,
                     "log_tail": (model.parent / "export.log").read_text().splitlines()[-3:]}
    return out


def report(results: dict) -> list[str]:
    """The markdown table of a run's results (docs/migrating.md quotes it)."""
    lines = ["| config | config check | 2 steps at native size: s, peak RSS, total loss step 1 -> 2 |",
             "|---|---|---|"]
    for name, r in sorted(results.items()):
        if name == "follow_up":
            continue
        check = "OK" if r["check_rc"] == 0 else f"exit {r['check_rc']}"
        if r.get("ok"):
            a, b = r["total_losses"]
            cell = f"{r['train_seconds']:.0f} s, {r['peak_rss_mb'] / 1024:.1f} GB, {a:.4g} -> {b:.4g}"
        elif r.get("ok_forward_native_train_small"):
            f, t = r["native_forward"], r["train_at_1024"]
            cell = (f"out of memory at {r['peak_rss_mb'] / 1024:.1f} GB (exit {r['train_rc']}); forward at "
                    f"{f['input'][-1]} px: {f['forward_seconds']:.0f} s, {f['peak_rss_mb'] / 1024:.1f} GB; "
                    f"trained at 1024 px: {t['seconds']:.0f} s, {t['peak_rss_mb'] / 1024:.1f} GB, "
                    f"{t['total_losses'][0]:.4g} -> {t['total_losses'][1]:.4g}")
        else:
            cell = f"failed (train exit {r.get('train_rc')})"
        lines.append(f"| `{name.removesuffix('.config')}` | {check} | {cell} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("work", type=Path, help="folder holding data/ (the TF-written records)")
    parser.add_argument("--only", default="", help="only configs whose name contains this")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--report", action="store_true", help="print the table of WORK's results and stop")
    parser.add_argument("--follow_up", default="centernet_resnet101_v1_fpn_512x512_coco17_tpu-8.config",
                        help="the config whose run is then evaluated (operating points) and exported to ONNX")
    args = parser.parse_args(argv)
    data, work = (args.work / "data").resolve(), args.work.resolve()
    (work / "configs").mkdir(parents=True, exist_ok=True)
    names = sorted(p.name for p in CONFIG_DIR.glob("*.config") if args.only in p.name)
    results_path = work / "zoo_new_user.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    if args.report:
        print("\n".join(report(results)))
        return 0
    for name in names:
        start = time.time()
        results[name] = run_one(name, data, work, args.batch)
        results[name]["load_1min_after"] = os.getloadavg()[0]
        tmp = results_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(results, indent=1))
        tmp.replace(results_path)
        r = results[name]
        print(f"{name}: check rc {r['check_rc']}, train rc {r.get('train_rc')}, losses "
              f"{r.get('total_losses')}, {r.get('train_seconds')} s, {r.get('peak_rss_mb')} MB "
              f"({time.time() - start:.0f} s)", flush=True)
    if args.follow_up in names and results[args.follow_up].get("ok"):
        results["follow_up"] = follow_up(args.follow_up, work)
        print(json.dumps(results["follow_up"], indent=1))
        results_path.write_text(json.dumps(results, indent=1))
    ok = [n for n in names if results[n].get("ok")]
    fallback = [n for n in names if results[n].get("ok_forward_native_train_small")]
    print(f"{len(ok)} of {len(names)} configs checked and trained 2 steps at their native size with finite "
          f"losses; {len(fallback)} more, out of memory there, ran forward at it and trained 2 steps at 1024")
    return 0 if len(ok) + len(fallback) == len(names) else 1


if __name__ == "__main__":
    raise SystemExit(main())
