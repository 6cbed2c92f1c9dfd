"""Per-class counts, table order and files against a tiny hand-checked example."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from raredet.evaluation import per_class
from raredet.evaluation.coco import evaluate_coco

GT = {
    "images": [{"id": 1}, {"id": 2}, {"id": 3}],
    "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}, {"id": 3, "name": "c"}],
    "annotations": [
        {"id": 10, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "iscrowd": 0},
        {"id": 11, "image_id": 1, "category_id": 1, "bbox": [50, 50, 40, 40], "iscrowd": 1},
        {"id": 12, "image_id": 2, "category_id": 2, "bbox": [0, 0, 20, 20], "iscrowd": 0},
        {"id": 13, "image_id": 2, "category_id": 1, "bbox": [40, 40, 10, 10], "iscrowd": 0},
    ],
}
DETS = [
    {"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.9},  # TP a
    {"image_id": 1, "category_id": 1, "bbox": [52, 52, 30, 30], "score": 0.8},  # inside the crowd: ignored
    {"image_id": 1, "category_id": 1, "bbox": [0, 0, 9, 10], "score": 0.7},  # duplicate: FP a
    {"image_id": 2, "category_id": 1, "bbox": [0, 0, 20, 20], "score": 0.6},  # on a "b" box: FP a
    {"image_id": 3, "category_id": 3, "bbox": [0, 0, 20, 20], "score": 0.3},  # c has no GT: FP c
]


def rows_at(threshold: float) -> dict[str, dict]:
    matches = per_class.match_detections(GT, DETS)
    counts = per_class.class_counts(matches, [1, 2, 3], threshold)
    rows = per_class.build_table(GT["categories"], counts, evaluate_coco(GT, DETS), None)
    return {r["class"]: r for r in rows}


def test_counts_at_two_thresholds() -> None:
    low = rows_at(0.5)
    assert {k: low["a"][k] for k in ("gt_count", "TP", "FP", "missed")} == {
        "gt_count": 2, "TP": 1, "FP": 2, "missed": 1}
    assert low["a"]["precision"] == pytest.approx(1 / 3)
    assert low["a"]["recall"] == pytest.approx(1 / 2)
    assert low["a"]["F1"] == pytest.approx(2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2))
    assert (low["b"]["TP"], low["b"]["FP"], low["b"]["missed"]) == (0, 0, 1)
    assert low["b"]["precision"] is None  # no detections: undefined, not 0
    assert low["c"]["FP"] == 0  # its only detection scores 0.3 < 0.5
    high = rows_at(0.75)
    assert (high["a"]["TP"], high["a"]["FP"], high["a"]["precision"]) == (1, 0, 1.0)
    assert rows_at(0.0)["c"]["FP"] == 1


def test_rarest_first_and_no_ground_truth_shown_as_such(tmp_path) -> None:
    matches = per_class.match_detections(GT, DETS)
    rows = per_class.build_table(GT["categories"], per_class.class_counts(matches, [1, 2, 3], 0.0),
                                 evaluate_coco(GT, DETS), None)
    assert [r["class"] for r in rows] == ["c", "b", "a"]  # 0, 1, 2 ground-truth boxes
    md = per_class.to_markdown(rows)
    c_line = next(line for line in md.splitlines() if line.startswith("| c |"))
    assert "no ground truth" in c_line
    per_class.write_table(rows, tmp_path, {"min_score_threshold": 0.0})
    data = json.loads((tmp_path / "per_class.json").read_text())
    assert data["classes"][0]["AP"] is None and data["min_score_threshold"] == 0.0
    with open(tmp_path / "per_class.csv") as f:
        table = list(csv.DictReader(f))
    assert table[2]["class"] == "a" and table[2]["TP"] == "1" and table[0]["AP"] == ""


def test_more_than_100_detections_per_image_and_class_are_not_counted() -> None:
    gt = {"images": [{"id": 1}], "categories": [{"id": 1, "name": "a"}], "annotations": []}
    dets = [{"image_id": 1, "category_id": 1, "bbox": [i, 0, 5, 5], "score": 1 - i / 1000}
            for i in range(130)]
    counts = per_class.class_counts(per_class.match_detections(gt, dets), [1], 0.0)
    assert counts[1]["FP"] == 100  # COCO keeps the 100 best per image and class


def test_counts_from_the_metrics_own_matching_by_hand() -> None:
    # The pipeline reuses evaluate_coco's matching; same hand-checked counts as test_counts_at_two_thresholds.
    matches = per_class.match_detections(GT, DETS, coco=evaluate_coco(GT, DETS, keep_matches=True))
    low = per_class.class_counts(matches, [1, 2, 3], 0.5)
    assert low == {1: {"gt_count": 2, "TP": 1, "FP": 2, "missed": 1},
                   2: {"gt_count": 1, "TP": 0, "FP": 0, "missed": 1},
                   3: {"gt_count": 0, "TP": 0, "FP": 0, "missed": 0}}
    high = per_class.class_counts(matches, [1, 2, 3], 0.75)
    assert (high[1]["TP"], high[1]["FP"]) == (1, 0)
    assert per_class.class_counts(matches, [1, 2, 3], 0.0)[3]["FP"] == 1


def test_metrics_matching_equals_a_separate_iou_50_run() -> None:
    # Reference: coco_match, its own COCOeval run restricted to IoU 0.5, area all, 100 detections.
    rng = np.random.default_rng(0)
    images = [{"id": i} for i in range(1, 7)]
    anns = [{"id": j + 1, "image_id": int(rng.integers(1, 7)), "category_id": int(rng.integers(1, 3)),
             "bbox": [float(v) for v in rng.uniform(0, 60, 2)] + [float(v) for v in rng.uniform(5, 40, 2)],
             "iscrowd": int(rng.random() < 0.1)} for j in range(40)]
    gt = {"images": images, "categories": [{"id": 1}, {"id": 2}], "annotations": anns}
    dets = [{"image_id": a["image_id"], "category_id": int(rng.integers(1, 3)),
             "bbox": [v + float(rng.normal(0, 3)) for v in a["bbox"][:2]] + a["bbox"][2:],
             "score": round(float(rng.random()), 1)} for a in anns for _ in range(3)]  # rounded: ties
    dets += [{"image_id": 1, "category_id": 1, "bbox": [i / 2, 0, 20, 20], "score": 0.5} for i in range(120)]
    got = per_class.match_detections(gt, dets, coco=evaluate_coco(gt, dets, keep_matches=True)).det_gt
    want = per_class.match_detections(gt, dets).det_gt
    assert (want >= 0).sum() > 10
    np.testing.assert_array_equal(got, want)
