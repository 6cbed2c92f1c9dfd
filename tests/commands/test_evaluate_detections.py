"""`raredet evaluate-detections` end to end through the CLI: every output written, the metrics equal to
pycocotools', a bad detections file one clear error; operating points written, recounted, graded on another
split and shown by `raredet compare`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tests.helpers.coco import make_data, reference, reference_points
from tests.helpers.coco import write_json as write

from raredet.cli import main
from raredet.evaluation.coco import STAT_NAMES
from raredet.evaluation.compare import compare_runs


def test_evaluate_detections_writes_everything_and_matches_pycocotools(tmp_path: Path, capsys) -> None:
    gt, dets = make_data(3)
    gt_file, dt_file = write(tmp_path / "gt.json", gt), write(tmp_path / "dt.json", dets)
    code = main(["evaluate-detections", "--groundtruth", str(gt_file), "--detections", str(dt_file),
                 "--out", str(tmp_path / "run"), "--metrics_set", "coco_detection_metrics",
                 "--metrics_set", "pascal_voc_detection_metrics"])
    assert code == 0
    names = {"metrics.json", "per_class.json", "per_class.csv", "per_class.md", "pr_curves.png",
             "confusion_matrix.png", "score_histograms.png", "report.html"}
    assert names <= {p.name for p in (tmp_path / "run").iterdir()}
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    np.testing.assert_allclose([metrics[n] for n in STAT_NAMES], reference(gt, dets).stats[:12], atol=1e-9)
    assert metrics["DetectionBoxes_PerformanceByCategory/mAP/ghost"] is None
    assert "no ground truth" in capsys.readouterr().out


def test_bad_detections_file_is_one_clear_error(tmp_path: Path, capsys) -> None:
    gt, _ = make_data(0)
    gt_file = write(tmp_path / "gt.json", gt)
    dt_file = tmp_path / "dt.json"
    dt_file.write_text("[{")
    assert main(["evaluate-detections", "--groundtruth", str(gt_file), "--detections", str(dt_file),
                 "--out", str(tmp_path / "o")]) == 2
    assert "dt.json: detections is not valid JSON" in capsys.readouterr().err


# ---- operating points, and compare -------------------------------------------------------------------------


def _evaluate(tmp_path: Path, name: str, gt: dict, dets: list) -> Path:
    (tmp_path / f"{name}.gt.json").write_text(json.dumps(gt))
    (tmp_path / f"{name}.dt.json").write_text(json.dumps(dets))
    out = tmp_path / name
    assert main(["evaluate-detections", "--groundtruth", str(tmp_path / f"{name}.gt.json"),
                 "--detections", str(tmp_path / f"{name}.dt.json"), "--out", str(out)]) == 0
    return out


def _recall_at_precision(ref: list[tuple[float, bool]], num_gt: int, p: float) -> float:
    """Highest recall over all score cuts with precision >= p, from pycocotools' matches."""
    best = 0.0
    for cut in {s for s, _ in ref}:
        tp = sum(h for s, h in ref if s >= cut)
        fp = sum(not h for s, h in ref if s >= cut)
        if tp / (tp + fp) >= p:
            best = max(best, tp / num_gt)
    return best


def test_evaluate_detections_writes_operating_points_and_compare_shows_recall_at_precision(tmp_path, capsys):
    gt, dets = make_data(0)
    worse = [{**d, "score": d["score"] * (0.5 if d["category_id"] == 2 else 1.0)} for d in dets]
    # Lower the rare class's true detections below some false ones of the same class: a different ranking.
    worse += [{"image_id": 13, "category_id": 2, "score": 0.99, "bbox": [5.0, 5.0, 20.0, 20.0]}]
    base, other = _evaluate(tmp_path, "base", gt, dets), _evaluate(tmp_path, "other", gt, worse)
    content = json.loads((base / "operating_points.json").read_text())
    assert content["chosen_on"]["images"] == len(gt["images"])
    assert {c["class_name"] for c in content["classes"]} == {"common", "rare", "undetected", "ghost"}
    assert "operating point" in (base / "report.html").read_text()
    assert "| class | rule | threshold |" in (base / "operating_points.md").read_text()
    metrics = json.loads((base / "metrics.json").read_text())
    rare = next(c for c in content["classes"] if c["class_name"] == "rare")
    assert metrics["OperatingPoint/recall/rare"] == rare["at_threshold"]["recall"]
    md = compare_runs([base, other], tmp_path / "cmp", precision=0.9)
    header = [h.strip() for h in md.splitlines()[0].strip("|").split("|")]
    assert header[2:5] == ["recall@P0.9 base", "recall@P0.9 other", "Δrecall@P0.9 other"]
    line = next(row for row in md.splitlines() if row.startswith("| rare "))
    cells = [c.strip() for c in line.strip("|").split("|")]
    want = [_recall_at_precision(*reference_points(g, d, 2), 0.9) for g, d in ((gt, dets), (gt, worse))]
    assert cells[2:4] == [f"{want[0]:.3f}", f"{want[1]:.3f}"]
    assert cells[4] == f"{want[1] - want[0]:+.3f}"
    assert want[0] != want[1]


def test_compare_precision_follows_the_runs_target_precision(tmp_path):
    def run(name: str, recall: float) -> Path:
        row = {"class": "crack", "id": 1, "gt_count": 5, "AP50": 0.5, "recall": 0.4, "missed": 3}
        op = {"class_name": "crack", "rule": {"kind": "target_precision", "target": 0.8,
                                             "review_precision": None},
              "recall_at_precision": {"0.8": recall, "0.9": 0.0}}
        (tmp_path / name / "eval").mkdir(parents=True)
        (tmp_path / name / "eval" / "per_class.json").write_text(json.dumps({"classes": [row]}))
        (tmp_path / name / "eval" / "operating_points.json").write_text(json.dumps({"classes": [op]}))
        return tmp_path / name

    md = compare_runs([run("a", 0.2), run("b", 0.6)])
    assert "recall@P0.8 a" in md and "| crack | 5 | 0.200 | 0.600 | +0.400 |" in md
    with pytest.raises(Exception, match="precision"):
        compare_runs([tmp_path / "a"], precision=1.5)


def test_thresholds_chosen_on_one_split_are_graded_on_another(tmp_path, capsys):
    val_gt, val_dets = make_data(0)
    test_gt, test_dets = make_data(1)
    files = {"val_gt": val_gt, "val_dt": val_dets, "test_gt": test_gt, "test_dt": test_dets}
    for name, data in files.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(data))

    def evaluate(split: str, *extra: str) -> dict:
        assert main(["evaluate-detections", "--groundtruth", str(tmp_path / f"{split}_gt.json"),
                     "--detections", str(tmp_path / f"{split}_dt.json"), "--out", str(tmp_path / split),
                     *extra]) == 0
        return json.loads((tmp_path / split / "operating_points.json").read_text())

    val = evaluate("val", "--operating_point", "target_precision=0.8")
    test = evaluate("test", "--operating_points_from", str(tmp_path / "val" / "operating_points.json"))
    assert "val_gt.json" in test["chosen_on"]["description"]
    assert "test_gt.json" in test["graded_on"]["description"]
    assert test["calibration"] == val["calibration"] and test["score_threshold"] == val["score_threshold"]
    first_line = (tmp_path / "test" / "operating_points.md").read_text().splitlines()[0]
    assert "val_gt.json" in first_line and "measured on" in first_line and "test_gt.json" in first_line
    graded = 0
    for v, t in zip(val["classes"], test["classes"], strict=True):
        assert t["threshold"] == v["threshold"] and t["rule"] == v["rule"]
        if t["threshold"] is None:
            continue
        ref, num_gt = reference_points(test_gt, test_dets, t["class_id"])
        tp = sum(h for s, h in ref if s > t["threshold"])
        fp = sum(not h for s, h in ref if s > t["threshold"])
        assert (t["at_threshold"]["TP"], t["at_threshold"]["FP"]) == (tp, fp)
        assert t["reached"] == (tp + fp > 0 and tp / (tp + fp) >= 0.8)
        graded += 1
    assert graded >= 2
    with pytest.raises(SystemExit):
        main(["evaluate-detections", "--operating_point"])  # argparse: a value is needed
    argv = ["evaluate-detections", "--groundtruth", str(tmp_path / "val_gt.json"), "--detections",
            str(tmp_path / "val_dt.json"), "--out", str(tmp_path / "x"), "--operating_point", "best"]
    assert main(argv) == 2
    assert "--operating_point 'best'" in capsys.readouterr().err
