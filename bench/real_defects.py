"""Real defect images (issue #29 item 1): the TF OD API, raredet on the same config, and raredet's
documented best configuration, with one class made rare; per-class AP50 and recall at precision 0.9 on a
held-out test split, scored by pycocotools.

    .venv/bin/python -m bench.real_defects /work/data/neu-det --tf_python /work/peer/venv/bin/python \\
        --tf_research /work/peer/src/research [--seeds 0 1 2] [--steps 3000] [--out /tmp/real_defects]

DATA is a Pascal VOC folder (NEU-DET: 1800 images of hot-rolled steel, 6 classes; nothing is downloaded).
What is done, in order:

1. **Data** (`raredet init`'s code, raredet.data.convert): every annotation checked (problems listed in
   OUT/data/data_report.json), split 70/15/15 stratified by each image's rarest class with
   `--split_seed`. Then **one class is made rare in training only**: the class `--rare` (default: the one
   with the fewest training boxes) keeps `ceil(B / ratio)` boxes or a few more, B the training boxes of
   the most frequent class, `--ratio` 20: its training images (every image holding one of its boxes) are
   shuffled by `numpy.random.default_rng(split_seed)` and kept in that order until their boxes of the
   class reach the target; the others are dropped with all their boxes. Val and test keep the natural
   proportions. `--max_images N` keeps about N images per split (a seeded subset stratified by rarest
   class, for a trial run).
2. **Configs**: the zoo's `--model` config edited by `raredet init`'s `edit_zoo_config` (classes, paths,
   batch `--batch`, every learning rate scaled by batch/128, `--steps` with the cosine schedule's total
   and warm-up scaled alike, no fine_tune_checkpoint). (a) and (b) train this very file; (c) adds the
   levers `raredet init` recommends for the training split's imbalance (raredet's documented best:
   `repeat_factor_sampling { threshold: 1.0 }` and per-class focal `class_alpha`).
3. **Runs**, per seed: (a) the TF OD API's own training loop (bench/tf_reference_train.py, seeded) and
   its detections by bench/tf_detect.py; (b) `raredet train --seed` on the same file; (c) `raredet train
   --seed` on the best config; raredet's detections by its own model and post-processing
   (commands.predict.detect) on the records' images. All detections as COCO results.
4. **Scoring** by pycocotools alone (COCOeval, bbox, IoU 0.5, 100 detections per image), per class:
   AP50 on test; a score threshold chosen on val as `raredet eval --operating_point target_precision=0.9`
   chooses it (the threshold of the highest recall at precision >= 0.9; none: "not reached"), and the
   recall and precision at that threshold on test. Mean, min and max over seeds.

Writes OUT/real_defects.json and OUT/real_defects.md, and bench/results/<--name>.json. Seconds per
training step: raredet from its log's timestamps, the TF OD API from its per-step events' wall times.
`--reuse` rescores finished runs. OUT/data is written once per set of data arguments (OUT/data/setup.json
records them), so several calls with the same arguments and different `--runs`/`--seeds` may share OUT
and train side by side (one `--threads 1` call per core), then one `--reuse` call scores them all.

Tried end to end (7 Dec 2026, `--seeds 0 --steps 20 --max_images 40`, NEU-DET from
github.com/siddhartamukherjee/NEU-DET-Steel-Surface-Defect-Detection at 351bee2, pitted_surface made rare)
on this project's 2-core VM shared with 8 other jobs (load average ~10): every run finished and was
scored; the TF OD API 8.3 s/step (475 s for its 20-step training with start-up), raredet 14.1 s/step
(320 s), raredet's best 12.8 s/step (354 s); after 20 steps from random weights every score is the focal
prior's 0.01 and every AP50 ~0. For the budget (docs/imbalance.md, "Real defect images"): at 800 and
1500 steps from random weights (seed 0; one thread per run, two at a time, under load: the TF OD API
2.95 s/step, raredet ~2.1) both systems' detections are image-independent and every AP50 ~0, because the
batch norms' moving statistics (decay 0.997) have not forgotten their initial values
(bench/real_defects_bn.py re-estimates them); the study needs >= ~3000 steps, 7 h or more of this CPU.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf import text_format

from bench.common import machine, save_result
from raredet import zoo
from raredet.commands.init import edit_zoo_config, recommend_levers
from raredet.commands.stats import stats_summary
from raredet.config import parse_config
from raredet.config.label_map import LabelMap
from raredet.data import convert
from raredet.data.stats import compute_stats
from raredet.data.tfrecord import TFRecordReader

RUNS = ("tf", "raredet", "best")
RUN_TITLES = {"tf": "(a) TF OD API, zoo recipe", "raredet": "(b) raredet, same config",
              "best": "(c) raredet, documented best"}
TARGET_PRECISION = 0.9
HERE = Path(__file__).resolve().parent


# ---- data --------------------------------------------------------------------------------------------


def make_rare(train: list[convert.CheckedImage], rare: str, ratio: float, seed: int
              ) -> tuple[list[convert.CheckedImage], dict[str, Any]]:
    """Training images with class `rare` thinned to ~1:ratio against the most frequent class (module
    docstring, step 1); returns the kept images (original order) and what was done."""
    counts: dict[str, int] = {}
    for im in train:
        for n in im.names:
            counts[n] = counts.get(n, 0) + 1
    most = max(counts, key=lambda n: counts[n])
    target = math.ceil(counts[most] / ratio)
    holding = [i for i, im in enumerate(train) if rare in im.names]
    order = np.random.default_rng(seed).permutation(len(holding))
    kept, boxes = set(), 0
    for j in order:
        if boxes >= target:
            break
        kept.add(holding[j])
        boxes += train[holding[j]].names.count(rare)
    held = set(holding)
    chosen = [im for i, im in enumerate(train) if i not in held or i in kept]
    return chosen, {"rare": rare, "most_frequent": most, "most_frequent_boxes": counts[most],
                    "ratio": ratio, "target_boxes": target, "rare_boxes_before": counts.get(rare, 0),
                    "rare_boxes_kept": boxes, "rare_images_before": len(holding),
                    "rare_images_kept": len(kept)}


def prepare(args: argparse.Namespace) -> dict[str, Any]:
    """OUT/data: label map, train/val/test TFRecords and the configs (module docstring, steps 1-2)."""
    out = args.out / "data"
    out.mkdir(parents=True, exist_ok=True)
    wanted = {k: getattr(args, k) for k in ("model", "rare", "ratio", "steps", "batch", "split_seed",
                                            "max_images")} | {"data": str(args.data)}
    saved = out / "setup.json"
    if saved.exists() and json.loads(saved.read_text()).get("args") == wanted:
        return json.loads(saved.read_text())["setup"]  # the same data and configs: leave them be
    issues = convert.DataIssues()
    checked = convert.check_images(convert.voc_annotations(args.data, issues), None, issues)
    names = sorted({n for im in checked for n in im.names})
    classes = convert.image_class_indices(checked, names)
    split = convert.stratified_split(classes, len(names), args.split_seed)
    splits = {s: [im for im, k in zip(checked, split, strict=True) if k == i]
              for i, s in enumerate(convert.SPLIT_NAMES)}
    rare = args.rare or min(names, key=lambda n: sum(im.names.count(n) for im in splits["train"]))
    splits["train"], rarity = make_rare(splits["train"], rare, args.ratio, args.split_seed)
    if args.max_images:
        splits = {s: subset(ims, names, args.max_images, args.split_seed) for s, ims in splits.items()}
    labels = LabelMap.from_names(names)
    labels.save(out / "label_map.pbtxt")
    paths = {s: convert.write_images(out / f"{s}.tfrecord", ims, names) for s, ims in splits.items()}
    counts = {s: {n: sum(im.names.count(n) for im in ims) for n in names} for s, ims in splits.items()}
    text = edit_zoo_config(zoo.config_path(args.model).read_text(), num_classes=len(names),
                           batch_size=args.batch, num_steps=args.steps, label_map=out / "label_map.pbtxt",
                           train=paths["train"], evaluate=paths["val"])
    (out / "pipeline.config").write_text(text)
    levers = recommend_levers(stats_summary(compute_stats(TFRecordReader([paths["train"]], labels), labels)))
    (out / "pipeline.best.config").write_text(best_config(text, levers.repeat_factor_threshold,
                                                          levers.class_alpha))
    (out / "data_report.json").write_text(json.dumps(issues.to_json(), indent=1))
    setup = {"names": names, "images": {s: len(ims) for s, ims in splits.items()}, "boxes": counts,
            "rarity": rarity, "levers": levers.reason, "class_alpha": levers.class_alpha,
            "data_issues": issues.counts(), "split_seed": args.split_seed, "model": args.model,
            "batch": args.batch, "steps": args.steps}
    saved.write_text(json.dumps({"args": wanted, "setup": setup}, indent=1))
    return setup


def subset(images: list[convert.CheckedImage], names: list[str], count: int, seed: int
           ) -> list[convert.CheckedImage]:
    """About `count` of `images`, stratified by rarest class as the split is (so a rare class keeps
    its share): the 'train' part of `stratified_split` at train percent round(100 * count / len)."""
    if count >= len(images):
        return images
    keep = max(1, round(100 * count / len(images)))
    part = convert.stratified_split(convert.image_class_indices(images, names), len(names), seed,
                                    (keep, 0, 100 - keep))
    return [im for im, k in zip(images, part, strict=True) if k == 0]


def best_config(text: str, threshold: float | None, class_alpha: dict[str, float]) -> str:
    """`text` plus raredet's documented best levers (raredet fields: only raredet reads this file)."""
    msg = parse_config(text, "pipeline.config")
    if threshold is not None:
        msg.train_input_reader.repeat_factor_sampling.threshold = threshold
    focal = msg.model.ssd.loss.classification_loss.weighted_sigmoid_focal
    for name, alpha in class_alpha.items():
        focal.class_alpha.add(name=name, value=alpha)
    return "# bench/real_defects: pipeline.config plus raredet's documented best levers\n" + \
        text_format.MessageToString(msg)


# ---- runs --------------------------------------------------------------------------------------------


def run_logged(cmd: list[str], log: Path, env: dict[str, str]) -> tuple[int, float]:
    start = time.perf_counter()
    with open(log, "w") as f:
        code = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, check=False).returncode
    return code, time.perf_counter() - start


def train_and_detect(run: str, seed: int, args: argparse.Namespace, env: dict[str, str]) -> dict[str, Any]:
    """Train one run and write its val/test detections as COCO results; returns exit codes and times."""
    data, run_dir = args.out / "data", args.out / f"{run}_{seed}"
    config = data / ("pipeline.best.config" if run == "best" else "pipeline.config")
    if run == "tf":
        tf_env = {**env, "PYTHONPATH": args.tf_research}
        code, seconds = run_logged([args.tf_python, str(HERE / "tf_reference_train.py"), str(config),
                                    str(run_dir), "--steps", str(args.steps), "--seed", str(seed), "--losses",
                                    str(args.out / f"tf_{seed}.losses.json")], args.out / f"{run}_{seed}.log",
                                   tf_env)
        for split in ("val", "test"):
            extra = ["--step_times", str(args.out / f"tf_{seed}.steps.json")] if split == "val" else []
            run_logged([args.tf_python, str(HERE / "tf_detect.py"), str(config), str(run_dir),
                        str(data / f"{split}.tfrecord"), str(args.out / f"{run}_{seed}.{split}.json"),
                        *extra], args.out / f"{run}_{seed}.detect_{split}.log", tf_env)
        steps_file = args.out / f"tf_{seed}.steps.json"
        per_step = (json.loads(steps_file.read_text()).get("median_seconds_per_step")
                    if steps_file.exists() else None)
    else:
        code, seconds = run_logged([sys.executable, "-m", "raredet.cli", "train", "--pipeline_config_path",
                                    str(config), "--model_dir", str(run_dir), "--seed", str(seed),
                                    "--checkpoint_every_n", str(args.steps)],
                                   args.out / f"{run}_{seed}.log", env)
        if code == 0:
            for split in ("val", "test"):
                dets = raredet_detections(run_dir, config, data / f"{split}.tfrecord")
                (args.out / f"{run}_{seed}.{split}.json").write_text(json.dumps(dets))
        per_step = raredet_seconds_per_step(run_dir)
    return {"exit": code, "train_seconds": seconds, "seconds_per_step": per_step}


def raredet_detections(run_dir: Path, config: Path, records: Path) -> list[dict[str, Any]]:
    """COCO results of raredet's newest checkpoint in `run_dir` on every record of `records`
    (image_id = position + 1), through raredet predict's own detect()."""
    from raredet import builders
    from raredet.commands.predict import coco_results, detect
    from raredet.commands.trained import load_trained_model

    trained = load_trained_model(run_dir, config)
    resizer = builders.build_resizer(builders.model_message(trained.pipeline))
    reader = TFRecordReader([records], trained.label_map)
    ids = np.asarray(trained.label_map.ids, dtype=np.int64)
    results: list[dict[str, Any]] = []
    for start in range(0, len(reader), 16):
        batch = [resizer(reader.example(i)) for i in range(start, min(start + 16, len(reader)))]
        for k, det in enumerate(detect(trained.model, batch)):
            results += coco_results(start + k + 1, det, ids)
    return results


def raredet_seconds_per_step(run_dir: Path) -> float | None:
    """Median seconds per step between raredet's logged steps (the first 5 steps left out)."""
    log = run_dir / "train" / "log.jsonl"
    if not log.exists():
        return None
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    timed = [(r["step"], r["time"]) for r in records if "time" in r and "step" in r]
    gaps = [(t1 - t0) / (s1 - s0) for (s0, t0), (s1, t1) in zip(timed, timed[1:], strict=False)
            if s0 >= 5 and s1 > s0]
    return statistics.median(gaps) if gaps else None


# ---- scoring (pycocotools only) ----------------------------------------------------------------------


def groundtruth(records: Path, labels: LabelMap) -> dict[str, Any]:
    """COCO ground truth of `records` (image_id = position + 1, category_id = label-map id)."""
    reader = TFRecordReader([records], labels)
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for i in range(len(reader)):
        ann = reader.annotations(i)
        images.append({"id": i + 1, "height": ann["height"], "width": ann["width"]})
        for box, label in zip(ann["boxes"].tolist(), ann["labels"].tolist(), strict=True):
            w, h = box[2] - box[0], box[3] - box[1]
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1,
                                "category_id": labels.ids[label], "bbox": [box[0], box[1], w, h],
                                "area": w * h, "iscrowd": 0})
    categories = [{"id": i, "name": n} for i, n in zip(labels.ids, labels.names, strict=True)]
    return {"images": images, "annotations": annotations, "categories": categories}


def coco_eval(gt: dict[str, Any], dets: list[dict[str, Any]]) -> Any:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    coco = COCO()
    coco.dataset = gt
    coco.createIndex()
    found = coco.loadRes(dets) if dets else COCO()
    if not dets:
        found.dataset = {"images": gt["images"], "categories": gt["categories"], "annotations": []}
        found.createIndex()
    evaluator = COCOeval(coco, found, "bbox")
    evaluator.params.iouThrs = np.array([0.5])
    evaluator.evaluate()
    evaluator.accumulate()
    return evaluator


def class_curve(evaluator: Any, category: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(scores [D] best first, true positive [D] bool, ground-truth count) of one category at IoU 0.5,
    area 'all', 100 detections per image, from pycocotools' per-image matches (ignored ones left out)."""
    scores, matched, gts = [], [], 0
    for e in evaluator.evalImgs:
        if e is None or e["category_id"] != category or e["aRng"] != evaluator.params.areaRng[0]:
            continue
        keep = ~np.asarray(e["dtIgnore"], dtype=bool).reshape(1, -1)[0]  # [T=1, D] -> [D]
        scores.append(np.asarray(e["dtScores"], dtype=np.float64)[keep])
        matched.append(np.asarray(e["dtMatches"]).reshape(1, -1)[0][keep] > 0)
        gts += int((~np.asarray(e["gtIgnore"], dtype=bool)).sum())
    s = np.concatenate(scores + [np.zeros(0)])
    order = np.argsort(-s, kind="mergesort")
    return s[order], np.concatenate(matched + [np.zeros(0, bool)])[order], gts


def val_threshold(scores: np.ndarray, tp: np.ndarray, gts: int) -> float | None:
    """The threshold of the highest recall with precision >= TARGET_PRECISION (detections scoring at
    least it are kept; only the last of tied scores is a possible cut); None when none reaches it."""
    if gts == 0 or len(scores) == 0:
        return None
    ctp = np.cumsum(tp)
    precision = ctp / np.arange(1, len(scores) + 1)
    last_of_tie = np.append(scores[1:] != scores[:-1], True)
    ok = np.flatnonzero((precision >= TARGET_PRECISION) & last_of_tie)
    if ok.size == 0:
        return None
    best = ok[np.argmax(ctp[ok])]  # highest recall; the first (highest threshold) among equals
    return float(scores[best])


def score_run(gt_val: dict, val: list, gt_test: dict, test: list, labels: LabelMap) -> dict[str, Any]:
    """Per class: AP50 on test, the val threshold, recall and precision at it on test."""
    ev_val, ev_test = coco_eval(gt_val, val), coco_eval(gt_test, test)
    rows = {}
    for k, (cat, name) in enumerate(zip(labels.ids, labels.names, strict=True)):
        precision = ev_test.eval["precision"][0, :, k, 0, -1]
        ap50 = float(precision[precision > -1].mean()) if (precision > -1).any() else float("nan")
        threshold = val_threshold(*class_curve(ev_val, cat))
        scores, tp, gts = class_curve(ev_test, cat)
        kept = scores >= threshold if threshold is not None else np.zeros(len(scores), bool)
        rows[name] = {"ap50": ap50, "val_threshold": threshold, "test_boxes": gts,
                      "recall_at_p90": float(tp[kept].sum() / gts) if gts else float("nan"),
                      "test_precision_at_threshold": float(tp[kept].mean()) if kept.any() else None}
    return rows


def summarise(results: dict[str, dict[int, dict]], names: list[str], rare: str) -> list[str]:
    """A markdown table: per class and run, AP50 and recall at precision 0.9, mean (min-max) over seeds."""
    def cell(run: str, name: str, key: str) -> str:
        values = [r["classes"][name][key] for r in results[run].values() if r.get("classes")]
        if not values:
            return "-"
        return f"{100 * statistics.mean(values):.1f} ({100 * min(values):.1f}-{100 * max(values):.1f})"

    head = "| class | " + " | ".join(f"{RUN_TITLES[r]} AP50 | recall at p0.9" for r in RUNS) + " |"
    lines = [head, "|---" * (1 + 2 * len(RUNS)) + "|"]
    for name in sorted(names, key=lambda n: n != rare):
        label = f"**{name}** (rare)" if name == rare else name
        cells = [f"{cell(r, name, 'ap50')} | {cell(r, name, 'recall_at_p90')}" for r in RUNS]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path, help="a Pascal VOC folder (NEU-DET: Annotations/, JPEGImages/)")
    parser.add_argument("--tf_python", required=True, help="the TF OD API's Python")
    parser.add_argument("--tf_research", required=True, help="the folder holding object_detection/")
    parser.add_argument("--model", default="ssd_mobilenet_v2_fpnlite_320x320")
    parser.add_argument("--rare", help="the class made rare (default: the fewest training boxes)")
    parser.add_argument("--ratio", type=float, default=20.0, help="most frequent : rare boxes (default 20)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--split_seed", type=int, default=0)
    parser.add_argument("--max_images", type=int, help="about this many images per split (a trial run)")
    parser.add_argument("--runs", nargs="+", choices=RUNS, default=list(RUNS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("/tmp/real_defects"))
    parser.add_argument("--name", default="real_defects")
    parser.add_argument("--reuse", action="store_true", help="score the runs an earlier call finished in "
                        "--out (OUT/<run>_<seed>.run.json) instead of training them again")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    setup = prepare(args)
    print(json.dumps(setup, indent=1), flush=True)
    threads = str(args.threads)
    env = {**os.environ, "OMP_NUM_THREADS": threads, "TF_NUM_INTEROP_THREADS": "1",
           "TF_NUM_INTRAOP_THREADS": threads}
    labels = LabelMap.load(args.out / "data" / "label_map.pbtxt")
    gt = {s: groundtruth(args.out / "data" / f"{s}.tfrecord", labels) for s in ("val", "test")}
    results: dict[str, dict[int, dict]] = {r: {} for r in args.runs}
    for seed in args.seeds:
        for run in args.runs:
            saved = args.out / f"{run}_{seed}.run.json"
            if args.reuse and saved.exists():
                ran = json.loads(saved.read_text())
            else:
                ran = train_and_detect(run, seed, args, env)
                saved.write_text(json.dumps(ran))
            files = [args.out / f"{run}_{seed}.{s}.json" for s in ("val", "test")]
            if all(f.exists() for f in files):
                val, test = (json.loads(f.read_text()) for f in files)
                ran["classes"] = score_run(gt["val"], val, gt["test"], test, labels)
            results[run][seed] = ran
            print(seed, run, json.dumps({k: v for k, v in ran.items() if k != "classes"}), flush=True)
    table = summarise({r: results.get(r, {}) for r in RUNS}, setup["names"], setup["rarity"]["rare"])
    report = {"setup": setup, "results": results, "table": table, "machine": machine()}
    (args.out / "real_defects.json").write_text(json.dumps(report, indent=1))
    (args.out / "real_defects.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))
    print(save_result(args.name, report))


if __name__ == "__main__":
    main()
