"""The demo's one-screen table against counts worked out by hand on a tiny hand-made case.

Two "runs" evaluated like the demo does (`raredet eval` with target precision 0.9 on val, then the
same thresholds graded on test with `--operating_points_from`), through the library calls `raredet
eval` makes (`evaluate_detections`); the table read back from their files must say what a recount by
hand says.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from raredet.commands.demo import found_cell, found_table
from raredet.evaluation import operating_points as ops
from raredet.evaluation.options import EvalOptions
from raredet.evaluation.pipeline import evaluate_detections

CATEGORIES = [{"id": 1, "name": "scratch"}, {"id": 2, "name": "dent"}, {"id": 3, "name": "crack"}]
IDS = {c["name"]: c["id"] for c in CATEGORIES}
BOX = [10.0, 10.0, 20.0, 20.0]  # every ground-truth box; a true positive is the same box


def _coco(spec: dict[str, tuple[int, list[tuple[float, bool]]]]) -> tuple[dict, list]:
    """spec: class -> (ground-truth boxes, detections as (score, true positive)). Each ground-truth box
    has its own image; a true positive is detected on the next unmatched one, exactly on it; false
    positives go to image 1, which has no ground truth, at boxes overlapping nothing."""
    images, annotations, detections = [{"id": 1, "width": 100, "height": 100}], [], []
    for name, (num_gt, dets) in spec.items():
        first = len(images) + 1
        for k in range(num_gt):
            images.append({"id": first + k, "width": 100, "height": 100})
            annotations.append({"id": len(annotations) + 1, "image_id": first + k, "category_id": IDS[name],
                                "bbox": BOX, "area": 400.0, "iscrowd": 0})
        hits = 0
        for score, hit in dets:
            image = first + hits if hit else 1
            hits += hit
            box = BOX if hit else [2.0 * len(detections) % 80, 60.0, 5.0, 5.0]
            detections.append({"image_id": image, "category_id": IDS[name], "bbox": box, "score": score})
    return {"images": images, "annotations": annotations, "categories": CATEGORIES}, detections


# Validation (chooses). dent, 4 boxes: 0.9 T, 0.8 T, 0.7 F, 0.6 T, 0.5 F, 0.4 F, 0.3 T: precision >= 0.9
# down to 0.8 only -> its threshold 0.75 (halfway to 0.7). crack, 3 boxes: 0.85 T, 0.75 T, 0.65 T, 0.55 F,
# 0.45 F: precision 1 down to 0.65 -> threshold 0.6. scratch, 2 boxes: 0.95 F, 0.5 T, 0.35 T: precision
# 0, 0.5, 0.67, never 0.9 -> not reached, per class and with one threshold.
# One threshold: dent reaches 0.9 at candidates 0.9 .. 0.75, crack at 0.85 .. 0.6; both at 0.85, 0.8,
# 0.75; the lowest is 0.75 -> threshold 0.725 (halfway to 0.7), 2 of 3 classes.
VAL = {"dent": (4, [(0.9, True), (0.8, True), (0.7, False), (0.6, True), (0.5, False), (0.4, False),
                    (0.3, True)]),
       "crack": (3, [(0.85, True), (0.75, True), (0.65, True), (0.55, False), (0.45, False)]),
       "scratch": (2, [(0.95, False), (0.5, True), (0.35, True)])}
# The raredet run on val: crack 0.9 T, 0.8 T, 0.7 T, 0.2 F: precision 1 down to 0.7 -> threshold 0.45.
VAL_RAREDET = {**VAL, "crack": (3, [(0.9, True), (0.8, True), (0.7, True), (0.2, False)])}
# Test (counts). crack, 4 boxes: 0.9 T, 0.7 T, 0.62 T, 0.58 F, 0.3 T. dent, 5 boxes: 0.95 T, 0.85 T,
# 0.78 F, 0.74 T, 0.2 T. scratch, 3 boxes: 0.9 T.
TEST = {"dent": (5, [(0.95, True), (0.85, True), (0.78, False), (0.74, True), (0.2, True)]),
        "crack": (4, [(0.9, True), (0.7, True), (0.62, True), (0.58, False), (0.3, True)]),
        "scratch": (3, [(0.9, True)])}
# raredet on test: crack 0.9 T, 0.7 T, 0.62 T, 0.5 T, 0.3 F.
TEST_RAREDET = {**TEST, "crack": (4, [(0.9, True), (0.7, True), (0.62, True), (0.5, True), (0.3, False)])}


def _evaluate(spec: dict, out: Path, chosen_from: Path | None = None) -> Path:
    gt, dets = _coco(spec)
    chosen = ops.load_operating_points(chosen_from / ops.JSON_NAME) if chosen_from else None
    options = EvalOptions(operating_point_rule=ops.Rule("target_precision", 0.9),
                          operating_points_to_grade=chosen)
    evaluate_detections(gt, dets, out_dir=out, options=options)
    return out


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("runs")
    val = {"baseline": _evaluate(VAL, root / "baseline" / "eval"),
           "raredet": _evaluate(VAL_RAREDET, root / "raredet" / "eval")}
    test = {"baseline": _evaluate(TEST, root / "baseline" / "eval_test", val["baseline"]),
            "raredet": _evaluate(TEST_RAREDET, root / "raredet" / "eval_test", val["raredet"])}
    return found_table(val, test, ["crack", "dent", "scratch"])


def _row(table: str, name: str) -> list[str]:
    """The cells of one class's row (cells are separated by two spaces or more)."""
    import re

    [line] = [line for line in table.splitlines() if line.strip().startswith(name + " ")]
    return re.split(r"\s{2,}", line.strip())


def test_found_counts_match_the_hand_recount(table):
    # crack (4 test boxes): (a) 0.725 keeps 0.9 -> 1 of 4 at precision 1; (b) 0.6 keeps 0.9, 0.7, 0.62
    # -> 3 of 4, precision 1; AP50: precision 1 up to recall 0.75, then 4/5 = 0.8 at recall 1; COCO's 101
    # recall points: 76 at 1.0 and 25 at 0.8 -> 96/101 = 0.950. (c) 0.45 keeps 0.9, 0.7, 0.62, 0.5 -> 4
    # of 4, precision 1, AP50 1.
    # Every kept crack detection is a true positive, so every bootstrap resample of the test images
    # has precision 1: the 90 % interval is 1.00-1.00.
    assert _row(table, "crack") == ["crack", "4", "1 of 4 (p 1.00, 1.00-1.00)", "3 of 4 (p 1.00, 1.00-1.00)",
                                    "0.950", "4 of 4 (p 1.00, 1.00-1.00)", "1.000"]
    # dent (5): (a) 0.725 keeps 0.95, 0.85, 0.78 F, 0.74 -> 3 of 5 at precision 3/4; (b) 0.75 keeps
    # 0.95, 0.85, 0.78 F -> 2 of 5 at 2/3 (thresholds chosen on val can miss 0.9 on test); the same
    # model for (c). AP50: the points (recall, precision) are (0.2, 1), (0.4, 1), (0.4, 2/3), (0.6, 3/4),
    # (0.8, 4/5); recall 1 is never reached (4 true positives of 5). Interpolated precision: 1 up to
    # recall 0.4 (41 of COCO's 101 recall points), 0.8 from 0.41 to 0.8 (40 points), 0 above -> (41 +
    # 40 * 0.8) / 101 = 73 / 101 = 0.723.
    row = _row(table, "dent")
    assert row[:2] == ["dent", "5"] and row[4] == row[6] == "0.723"
    for cell, found, p in ((row[2], "3 of 5", 0.75), (row[3], "2 of 5", 2 / 3), (row[5], "2 of 5", 2 / 3)):
        # "N of M (p P, L-H)": the interval is the test evaluation's (its bootstrap is tested with the
        # operating points); here it must hold the precision the test images themselves give.
        assert cell.startswith(f"{found} (p {p:.2f}, ")
        low, high = (float(v) for v in cell.split(", ")[1].rstrip(")").split("-"))
        assert low <= p <= high
    # scratch: precision 0.9 was never reached on val; saying so beats any count.
    assert _row(table, "scratch")[2:4] == ["precision 0.9 not reached", "precision 0.9 not reached"]


def test_the_screen_says_which_split_chose_and_which_counted(table):
    # Val: 1 empty image + 4 + 3 + 2 boxes, one image each = 10; test: 1 + 5 + 4 + 3 = 13.
    assert "chosen on the val split (10 images)" in table and "counted on the test split (13 images)" in table
    assert "ONE threshold for every class: 0.725" in table
    assert "no single threshold gets every class to precision 0.9" in table and "2 of 3" in table
    rows = [line.split()[0] for line in table.splitlines() if line.startswith("  ") and
            line.split()[0] in ("crack", "dent", "scratch")]
    assert rows == ["crack", "dent", "scratch"]  # the order given: rarest first


def test_found_cell():
    counts = {"TP": 3, "FN": 2, "precision": 0.75}
    assert found_cell(True, counts, 0.9) == "3 of 5 (p 0.75)"
    assert found_cell(False, counts, 0.9) == "precision 0.9 not reached"
    assert found_cell(True, {"TP": 0, "FN": 5, "precision": None}, 0.9) == "0 of 5 (none kept)"
    interval = {**counts, "precision_interval": [0.5, 0.875]}
    assert found_cell(True, interval, 0.9) == "3 of 5 (p 0.75, 0.50-0.88)"
