"""`raredet evaluate-detections` time next to pycocotools' on the same files, in the same run.

Full: 5,000 images x 100 detections (500,000 detections, 10 classes, a long tail), median of 3 runs.
Quick: 300 images x 100 detections, one run. Both sides read the same JSON files from disk.
raredet's time covers everything `evaluate-detections` does (COCO metrics, the per-class table's
matching, plots, report); "COCO metrics only" is the part that pycocotools also does.

    python -m bench.bench_eval [--quick]     # writes bench/results/eval.json and prints a table
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import median_seconds, save_result

NUM_CLASSES = 10


def synth_files(directory: Path, num_images: int, dets_per_image: int, seed: int = 0) -> tuple[Path, Path]:
    """COCO GT (1-8 boxes per image, class frequencies falling off as 1/k) and detections around them."""
    rng = np.random.default_rng(seed)
    probs = 1.0 / np.arange(1, NUM_CLASSES + 1)
    probs /= probs.sum()
    n_gt = rng.integers(1, 9, num_images)
    img_of_gt = np.repeat(np.arange(1, num_images + 1), n_gt)
    xy = rng.uniform(0, 500, (img_of_gt.size, 2))
    wh = rng.uniform(8, 200, (img_of_gt.size, 2))
    gt_cls = rng.choice(NUM_CLASSES, img_of_gt.size, p=probs) + 1
    anns = [{"id": i + 1, "image_id": int(im), "category_id": int(c), "bbox": [*p, *s], "area": s[0] * s[1],
             "iscrowd": 0} for i, (im, c, p, s) in enumerate(zip(img_of_gt, gt_cls, xy.tolist(), wh.tolist(),
                                                                  strict=True))]
    img_of_dt = np.repeat(np.arange(1, num_images + 1), dets_per_image)
    # Each detection jitters a random GT box of its image (or is pure noise 30% of the time).
    first = np.r_[0, np.cumsum(n_gt)[:-1]]
    pick = first[img_of_dt - 1] + (rng.random(img_of_dt.size) * n_gt[img_of_dt - 1]).astype(int)
    noise = rng.random(img_of_dt.size) < 0.3
    dxy = np.where(noise[:, None], rng.uniform(0, 500, (img_of_dt.size, 2)), xy[pick] + rng.normal(0, 6, (
        img_of_dt.size, 2)))
    dwh = np.clip(wh[pick] * rng.uniform(0.8, 1.2, (img_of_dt.size, 2)), 2, None)
    dcls = np.where(rng.random(img_of_dt.size) < 0.8, gt_cls[pick], rng.integers(1, NUM_CLASSES + 1,
                                                                                  img_of_dt.size))
    scores = rng.random(img_of_dt.size)
    dets = [{"image_id": int(im), "category_id": int(c), "bbox": [*p, *s], "score": float(sc)}
            for im, c, p, s, sc in zip(img_of_dt, dcls, dxy.round(2).tolist(), dwh.round(2).tolist(),
                                       scores.tolist(), strict=True)]
    gt = {"images": [{"id": i, "width": 700, "height": 700, "file_name": f"{i}.jpg"}
                     for i in range(1, num_images + 1)],
          "categories": [{"id": c, "name": f"class{c}"} for c in range(1, NUM_CLASSES + 1)],
          "annotations": anns}
    gt_path, dt_path = directory / "gt.json", directory / "dt.json"
    gt_path.write_text(json.dumps(gt))
    dt_path.write_text(json.dumps(dets))
    return gt_path, dt_path


def pycocotools_eval(gt_path: Path, dt_path: Path) -> np.ndarray:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_path))
        ev = COCOeval(gt, gt.loadRes(str(dt_path)), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats[:12]


def raredet_metrics_only(gt_path: Path, dt_path: Path) -> list[float]:
    from raredet.evaluation.coco import STAT_NAMES, check_coco, evaluate_coco, load_json

    gt, dets = load_json(gt_path, "gt"), load_json(dt_path, "dt")
    check_coco(gt, dets)
    stats = evaluate_coco(gt, dets).stats
    return [stats[n] for n in STAT_NAMES]


def raredet_full(gt_path: Path, dt_path: Path, out: Path) -> None:
    from raredet.evaluation.pipeline import evaluate_detection_files

    evaluate_detection_files(gt_path, dt_path, out_dir=out, echo=None)


def run(quick: bool, num_images: int | None = None, repeats: int | None = None) -> dict[str, Any]:
    """Quick: 300 images, 1 run; full: 5,000 images, median of 3 (either overridable)."""
    default_images, default_repeats = (300, 1) if quick else (5000, 3)
    num_images, repeats = num_images or default_images, repeats or default_repeats
    with tempfile.TemporaryDirectory() as tmp:
        gt_path, dt_path = synth_files(Path(tmp), num_images, 100)
        ref = pycocotools_eval(gt_path, dt_path)
        ours = raredet_metrics_only(gt_path, dt_path)
        t_ref = median_seconds(lambda: pycocotools_eval(gt_path, dt_path), repeats, warmup=0)
        t_metrics = median_seconds(lambda: raredet_metrics_only(gt_path, dt_path), repeats, warmup=0)
        t_full = median_seconds(lambda: raredet_full(gt_path, dt_path, Path(tmp) / "out"), repeats, warmup=0)
    max_diff = float(np.max(np.abs(np.asarray(ours) - ref)))
    summary = [
        f"{num_images} images x 100 detections, median of {repeats}:",
        "",
        "| what | seconds | pycocotools time / this time |",
        "|---|---|---|",
        f"| pycocotools (load, evaluate, accumulate, summarize) | {t_ref:.2f} | 1.00 |",
        f"| raredet COCO metrics only (faster-coco-eval) | {t_metrics:.2f} | {t_ref / t_metrics:.2f} |",
        f"| raredet evaluate-detections (metrics, table, plots, report) | {t_full:.2f} "
        f"| {t_ref / t_full:.2f} |",
        "",
        f"Largest difference between the 12 COCO numbers: {max_diff:.2e}",
    ]
    return {"num_images": num_images, "detections_per_image": 100, "repeats": repeats,
            "pycocotools_s": t_ref, "raredet_metrics_s": t_metrics, "raredet_evaluate_detections_s": t_full,
            "speedup_metrics": t_ref / t_metrics, "speedup_evaluate_detections": t_ref / t_full,
            "max_abs_stat_difference": max_diff, "summary": summary}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="300 images, one run")
    parser.add_argument("--images", type=int, help="number of images (overrides the mode's)")
    parser.add_argument("--repeats", type=int, help="timed runs per side (overrides the mode's)")
    args = parser.parse_args(argv)
    result = run(args.quick, args.images, args.repeats)
    print(f"wrote {save_result('eval', result)}")
    print("\n".join(result["summary"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
