"""A COCO ground truth and detections built to cover the edge cases, and pycocotools as the reference:
its summary (`reference`) and its IoU-0.5 matching of one class (`reference_points`)."""

from __future__ import annotations

import contextlib
import copy
import io
import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO as RefCOCO
from pycocotools.cocoeval import COCOeval as RefEval


def make_data(seed: int = 0) -> tuple[dict, list]:
    """Classes: 1 common, 2 rare, 3 with GT but no detections, 4 with detections but no GT.
    Images 1..12 have GT; 13 has no GT but detections; 14 has neither; crowd boxes in 1 and 5."""
    rng = np.random.default_rng(seed)
    images = [{"id": i, "width": 200, "height": 200, "file_name": f"{i}.png"} for i in range(1, 15)]
    cats = [{"id": c, "name": n} for c, n in ((1, "common"), (2, "rare"), (3, "undetected"), (4, "ghost"))]
    anns, dets = [], []
    for img in range(1, 13):
        for _ in range(int(rng.integers(1, 5))):
            cat = 2 if rng.random() < 0.15 else (3 if rng.random() < 0.1 else 1)
            x, y = rng.uniform(0, 150, 2)
            w, h = rng.uniform(5, 120, 2)  # spans small, medium and large
            box = [float(x), float(y), float(w), float(h)]
            anns.append({"id": len(anns) + 1, "image_id": img, "category_id": cat, "bbox": box,
                         "area": box[2] * box[3], "iscrowd": 0})
            if cat != 3 and rng.random() < 0.8:
                jitter = rng.normal(0, 4, 4)
                dets.append({"image_id": img, "category_id": cat, "score": float(rng.uniform(0.05, 1)),
                             "bbox": [box[0] + jitter[0], box[1] + jitter[1], max(1.0, box[2] + jitter[2]),
                                      max(1.0, box[3] + jitter[3])]})
    for img in (1, 5):
        anns.append({"id": len(anns) + 1, "image_id": img, "category_id": 1,
                     "bbox": [100.0, 100.0, 90.0, 90.0], "area": 8100.0, "iscrowd": 1})
        dets.append({"image_id": img, "category_id": 1, "score": 0.7, "bbox": [110.0, 110.0, 50.0, 50.0]})
    for img in (2, 13):
        for _ in range(3):
            x, y = rng.uniform(0, 150, 2)
            dets.append({"image_id": img, "category_id": int(rng.choice([1, 4])),
                         "score": float(rng.uniform(0, 1)), "bbox": [float(x), float(y), 30.0, 25.0]})
    return {"images": images, "annotations": anns, "categories": cats}, dets


def reference(gt: dict, dets: list) -> RefEval:
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = RefCOCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        ev = RefEval(coco_gt, coco_gt.loadRes(copy.deepcopy(dets)), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def reference_points(gt: dict, dets: list, cat_id: int) -> list[tuple[float, bool]]:
    """(score, is TP) of every detection of `cat_id` that pycocotools counts at IoU 0.5 (area all, 100
    per image), and the number of ground-truth boxes it counts."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = RefCOCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        ev = RefEval(coco_gt, coco_gt.loadRes(copy.deepcopy(dets)), "bbox")
        ev.params.iouThrs = np.array([0.5])
        ev.params.maxDets = [100]
        ev.params.areaRng, ev.params.areaRngLbl = [[0, 1e10]], ["all"]
        ev.evaluate()
    points, num_gt = [], 0
    for e in ev.evalImgs:
        if e is None or e["category_id"] != cat_id:
            continue
        num_gt += int((~np.asarray(e["gtIgnore"], dtype=bool)).sum())
        for score, matched, ignored in zip(e["dtScores"], e["dtMatches"][0], e["dtIgnore"][0], strict=True):
            if not ignored:
                points.append((float(score), bool(matched)))
    return points, num_gt


def assert_counts_at_threshold(point, ref: list[tuple[float, bool]], num_gt: int) -> tuple[int, int]:
    """`point.at_threshold` (TP, FP, FN, precision, recall) equals the recount of `ref` above its
    threshold (strictly, as pycocotools' ranking does); returns (TP, FP)."""
    tp = sum(hit for s, hit in ref if s > point.threshold)
    fp = sum(not hit for s, hit in ref if s > point.threshold)
    assert (point.at_threshold.TP, point.at_threshold.FP, point.at_threshold.FN) == (tp, fp, num_gt - tp)
    assert point.at_threshold.precision == pytest.approx(tp / (tp + fp))
    assert point.at_threshold.recall == pytest.approx(tp / num_gt)
    return tp, fp


def write_json(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data))
    return path
