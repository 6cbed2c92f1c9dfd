"""How far a per-class threshold chosen on val carries to other images (not in `make bench`; it needs
trained runs: docs/imbalance.md, "How far a threshold chosen on val carries").

`raredet demo` chooses each class's threshold on val (`target_precision 0.9`) and counts on test. Two
things decide whether the precision it prints is the precision a user gets: how well a val split of n
images places the threshold, and how exactly a test split of m images measures it. Both are measured
here on one large **pool** of images drawn as the demo's val and test are (`raredet.data.synth`, each
class at least 30 % as many boxes as images; its own data seed), on which each given run's newest
checkpoint is evaluated once (COCO matching at IoU 0.5, `raredet.evaluation.per_class`):

- choosing: the pool's first half chooses, its second half (1200 images by default) grades. Per
  trial n images drawn with replacement from the first half (a bootstrap val split) choose the
  threshold with raredet's own rule (`operating_points.choose`); its precision and recall are counted
  on the whole second half;
- measuring: at the threshold the whole first half chooses, the precision counted by test splits of
  m images drawn with replacement from the second half (the spread one threshold shows on m images).

    python -m bench.threshold_transfer RUN [RUN ...] [--pool_images 2400] [--trials 40]
        [--val_sizes 200,600] [--test_sizes 200,1000] [--aim P] [--name threshold_transfer] [--note TEXT]

`--aim P` chooses with `target_precision P` (default 0.9) and still counts how often the precision on
the graded images reaches 0.9: what aiming a few points higher buys, and what it costs in recall.

RUN: a `raredet demo` run folder (`demo_out/raredet`, `demo_out/baseline`: pipeline.config and its
checkpoints). Results: bench/results/NAME.json.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from google.protobuf import text_format

from bench.common import save_result
from raredet.commands.evaluate import EvalJob
from raredet.commands.trained import model_weights
from raredet.config import parse_config
from raredet.data.synth import make_synthetic_dataset
from raredet.engine.checkpoint import load_checkpoint
from raredet.engine.evaluate import Collector
from raredet.evaluation import operating_points as ops
from raredet.evaluation.per_class import Matches, match_detections

TARGET = 0.9  # the precision a user needs; the rule may aim higher (--aim)
POOL_SEED = 777  # not a demo seed: the pool shares no image with any demo split


@dataclass
class Evaluated:
    """One run's detections on the pool: the COCO matching (with each detection's image) and the image
    of every ground-truth box."""

    matches: Matches
    gt_image: np.ndarray
    num_images: int
    categories: dict[int, str]


def subset(ev: Evaluated, images: np.ndarray) -> Matches:
    """The matching on the images `images` (ids, repeats counting as copies of the image: a bootstrap
    sample). Matching is per image, so a subset's is a slice, and a repeated image's rows repeat."""
    m = ev.matches
    assert m.det_image is not None  # match_detections records it
    copies = np.bincount(images, minlength=ev.num_images + 1)
    d, g = copies[m.det_image], copies[ev.gt_image]
    det_cat, det_score, det_gt, det_counted, det_image = (
        np.repeat(a, d) for a in (m.det_cat, m.det_score, m.det_gt, m.det_counted, m.det_image))
    return Matches(det_cat, det_score, det_gt, det_counted, np.repeat(m.gt_cat, g), np.repeat(m.gt_crowd, g),
                   det_image)


def chosen_threshold(matches: Matches, cat_id: int, rule: ops.Rule) -> float | None:
    """The threshold `rule` chooses for `cat_id` on `matches`, or None (no point reaches the target)."""
    curve = ops.class_curve(matches, cat_id)
    index, reached, _ = ops.choose(curve, rule)
    return ops._threshold_below(curve, index) if index is not None and reached else None


def graded(matches: Matches, cat_id: int, threshold: float) -> tuple[float | None, float | None]:
    """(precision, recall) of `cat_id`'s detections scoring above `threshold`."""
    c = ops.counts_above(ops.class_curve(matches, cat_id), threshold, 1)
    return c.precision, c.recall


def transfer(ev: Evaluated, cat_id: int, val_size: int, trials: int, rng: np.random.Generator,
             rule: ops.Rule) -> list[tuple[float | None, float | None] | None]:
    """Per trial: a threshold chosen on `val_size` images drawn with replacement from the pool's first
    half, graded on the whole second half (None where no threshold reached the target)."""
    half = ev.num_images // 2
    first, grade = np.arange(1, half + 1), subset(ev, np.arange(half + 1, ev.num_images + 1))
    out: list[tuple[float | None, float | None] | None] = []
    for _ in range(trials):
        threshold = chosen_threshold(subset(ev, rng.choice(first, val_size)), cat_id, rule)
        out.append(None if threshold is None else graded(grade, cat_id, threshold))
    return out


def measuring(ev: Evaluated, cat_id: int, test_size: int, trials: int, rng: np.random.Generator,
              rule: ops.Rule) -> dict[str, Any] | None:
    """The precision at the threshold the whole first half chooses: on the whole second half, and as
    `trials` test splits of `test_size` images (drawn with replacement from the second half) count it."""
    half = ev.num_images // 2
    threshold = chosen_threshold(subset(ev, np.arange(1, half + 1)), cat_id, rule)
    if threshold is None:
        return None
    second = np.arange(half + 1, ev.num_images + 1)
    counted = [graded(subset(ev, rng.choice(second, test_size)), cat_id, threshold)[0] for _ in range(trials)]
    return {"precision_on_second_half": graded(subset(ev, second), cat_id, threshold)[0],
            **spread([p for p in counted if p is not None]), "none_kept": sum(p is None for p in counted)}


def spread(values: Sequence[float]) -> dict[str, Any]:
    """Median, 10th and 90th percentile, min and max (None for no values)."""
    if not values:
        return {"median": None, "p10": None, "p90": None, "min": None, "max": None}
    v = np.asarray(values, dtype=np.float64)
    return {"median": float(np.median(v)), "p10": float(np.percentile(v, 10)),
            "p90": float(np.percentile(v, 90)), "min": float(v.min()), "max": float(v.max())}


def transfer_summary(results: Sequence[tuple[float | None, float | None] | None]) -> dict[str, Any]:
    """Of the trials: how many chose a threshold, the graded precisions' spread, the share of them at
    or above the target, and the mean graded recall (0 for trials without a threshold)."""
    chosen = [r for r in results if r is not None]
    precisions = [p for p, _ in chosen if p is not None]
    return {"trials": len(results), "threshold_chosen": len(chosen), "precision": spread(precisions),
            "share_at_target": (sum(p >= TARGET - 1e-12 for p in precisions) / len(precisions)
                                if precisions else None),
            "mean_recall": statistics.fmean([r or 0.0 for _, r in chosen]
                                            + [0.0] * (len(results) - len(chosen)))}


# ---- the pool and the runs ---------------------------------------------------------------------------


def make_pool(folder: Path, images: int, image_size: int) -> Path:
    """The pool: `images` images drawn as the demo's test split is (written as a `test` split)."""
    if not (folder / "summary.json").exists():
        floor = round(0.3 * images)
        make_synthetic_dataset(folder, images=10, val_fraction=0.5, seed=POOL_SEED, image_size=image_size,
                               num_shards=1, min_val_boxes=1, test_images=images, min_test_boxes=floor)
    return folder


def evaluate_run(run: Path, pool: Path) -> Evaluated:
    """`run`'s newest checkpoint on the pool (the run's own config, its eval input replaced)."""
    checkpoints = sorted(run.glob("ckpt-*.pt"), key=lambda p: int(p.stem.split("-")[1]))
    config_path = run / "pipeline.config"
    cfg = parse_config(config_path.read_text(encoding="utf-8"), config_path)
    reader = cfg.eval_input_reader[0]
    reader.label_map_path = str(pool / "label_map.pbtxt")
    reader.tf_record_input_reader.ClearField("input_path")
    reader.tf_record_input_reader.input_path.append(str(pool / "test-?????-of-*.tfrecord"))
    pool_config = pool / f"{run.parent.name}_{run.name}.config"
    pool_config.write_text(text_format.MessageToString(cfg), encoding="utf-8")
    job = EvalJob(pool_config, pool / "unused", "cpu")
    state = load_checkpoint(checkpoints[-1])
    job.model.load_state_dict(model_weights(state, job.loaded.pipeline.eval_config.use_moving_averages,
                                            checkpoints[-1]))
    job.model.eval()
    collector = Collector(job.label_map, 0)
    with torch.no_grad():
        for batch in job.loader:
            collector.add(batch, job.model.postprocess(job.model(batch["images"]), batch["image_sizes"]))
    gt = {"images": collector.images, "annotations": collector.annotations,
          "categories": [{"id": i, "name": n} for i, n in zip(job.label_map.ids, job.label_map.display_names,
                                                              strict=True)]}
    return Evaluated(match_detections(gt, collector.detections),
                     np.array([a["image_id"] for a in collector.annotations], dtype=np.int64),
                     len(collector.images), {c["id"]: c["name"] for c in gt["categories"]})


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--pool_images", type=int, default=2400)
    parser.add_argument("--pool_dir", type=Path, default=Path("threshold_transfer_pool"))
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--val_sizes", default="200,600")
    parser.add_argument("--test_sizes", default="200,1000")
    parser.add_argument("--name", default="threshold_transfer")
    parser.add_argument("--aim", type=float, default=TARGET,
                        help=f"the rule's target precision (default {TARGET:g}); graded against {TARGET:g}")
    parser.add_argument("--note", default="", help="where the runs come from (saved with the results)")
    args = parser.parse_args(argv)
    val_sizes = [int(v) for v in args.val_sizes.split(",")]
    test_sizes = [int(v) for v in args.test_sizes.split(",")]
    torch.set_num_threads(1)
    rule = ops.Rule("target_precision", args.aim)
    rng = np.random.default_rng(0)
    runs: dict[str, Any] = {}
    for run in args.runs:  # every folder checked before the first (minutes-long) evaluation
        if not (run / "pipeline.config").is_file() or not any(run.glob("ckpt-*.pt")):
            parser.error(f"{run}: not a trained run folder (no pipeline.config or no ckpt-*.pt); give one "
                         "that raredet demo wrote, e.g. demo_out/raredet")
    for run in args.runs:
        image_size = int(parse_config((run / "pipeline.config").read_text(encoding="utf-8"), run)
                         .model.ssd.image_resizer.fixed_shape_resizer.height)
        ev = evaluate_run(run, make_pool(args.pool_dir, args.pool_images, image_size))
        per_class: dict[str, Any] = {}
        for cat_id, name in ev.categories.items():
            per_class[name] = {
                "transfer": {str(n): transfer_summary(transfer(ev, cat_id, n, args.trials, rng, rule))
                             for n in val_sizes},
                "measuring": {str(m): measuring(ev, cat_id, m, args.trials, rng, rule) for m in test_sizes}}
            for n in val_sizes:
                t = per_class[name]["transfer"][str(n)]
                p = t["precision"]
                print(f"{run}  {name:8s} chosen on {n:5d} images: threshold in {t['threshold_chosen']:2d} of "
                      f"{t['trials']}; precision on {ev.num_images - ev.num_images // 2} others median "
                      f"{_f(p['median'])} (p10 {_f(p['p10'])}, min {_f(p['min'])}), >= {TARGET:g} in "
                      f"{_f(t['share_at_target'])}; recall {t['mean_recall']:.3f}", flush=True)
            for m in test_sizes:
                s = per_class[name]["measuring"][str(m)]
                if s is not None:
                    print(f"{run}  {name:8s} one threshold (precision {_f(s['precision_on_second_half'])}) "
                          f"counted on {m:5d} images: p10-p90 {_f(s['p10'])}-{_f(s['p90'])}, "
                          f"min-max {_f(s['min'])}-{_f(s['max'])}", flush=True)
        runs[str(run)] = per_class
    save_result(args.name, {"note": args.note, "target_precision": TARGET, "aim": args.aim,
                            "pool_images": args.pool_images, "pool_seed": POOL_SEED, "trials": args.trials,
                            "runs": runs})


def _f(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


if __name__ == "__main__":
    main()
