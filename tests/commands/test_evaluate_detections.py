"""`raredet evaluate-detections` end to end through the CLI: every output written, the metrics equal to
pycocotools', a bad detections file one clear error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tests.helpers.coco import make_data, reference
from tests.helpers.coco import write_json as write

from raredet.cli import main
from raredet.evaluation.coco import STAT_NAMES


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
