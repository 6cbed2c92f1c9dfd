"""`raredet evaluate-detections` and `raredet compare` end to end through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tests.helpers.coco import make_data, reference

from raredet.cli import main
from raredet.evaluation.coco import STAT_NAMES
from raredet.evaluation.compare import compare_runs


def write(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data))
    return path


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


def fake_run(root: Path, name: str, ap50: dict[str, float | None], gt: dict[str, int]) -> Path:
    rows = [{"class": c, "id": i, "gt_count": gt[c], "AP": None if v is None else v / 2, "AP50": v,
             "AP75": None, "AR@100": None, "VOC_AP50": None, "precision": None, "recall": v,
             "F1": None, "TP": 0, "missed": gt[c], "FP": 0} for i, (c, v) in enumerate(ap50.items())]
    rows.sort(key=lambda r: r["gt_count"])
    (root / name / "eval").mkdir(parents=True)
    write(root / name / "eval" / "per_class.json", {"classes": rows})
    return root / name


def test_compare_deltas_rare_first(tmp_path: Path) -> None:
    counts = {"part": 500, "crack": 7, "dent": 40, "void": 0}
    base = fake_run(tmp_path, "baseline", {"part": 0.9, "crack": 0.1, "dent": 0.5, "void": None}, counts)
    weighted = fake_run(tmp_path, "weighted", {"part": 0.85, "crack": 0.4, "dent": 0.5, "void": None}, counts)
    md = compare_runs([base, weighted], tmp_path / "cmp")
    lines = md.splitlines()
    assert [line.split(" | ")[0].strip("| ") for line in lines[2:]] == ["void", "crack", "dent", "part"]
    header = [h.strip() for h in lines[0].strip("|").split("|")]
    crack = [c.strip() for c in lines[3].strip("|").split("|")]
    assert crack[header.index("AP50 baseline")] == "0.100"
    assert crack[header.index("AP50 weighted")] == "0.400"
    assert crack[header.index("ΔAP50 weighted")] == "+0.300"
    part = [c.strip() for c in lines[5].strip("|").split("|")]
    assert part[header.index("ΔAP50 weighted")] == "-0.050"
    assert {p.name for p in (tmp_path / "cmp").iterdir()} >= {"compare.md", "compare.html", "compare.png"}
    assert 'src="data:image/png;base64,' in (tmp_path / "cmp" / "compare.html").read_text()


def test_compare_cli_missing_run_is_clear(tmp_path: Path, capsys) -> None:
    assert main(["compare", str(tmp_path / "nope"), "--out", str(tmp_path / "c")]) == 2
    assert "run `raredet eval` on it first" in capsys.readouterr().err


def test_compare_reads_evaluate_detections_output(tmp_path: Path, capsys) -> None:
    gt, dets = make_data(1)
    gt_file, dt_file = write(tmp_path / "gt.json", gt), write(tmp_path / "dt.json", dets)
    for run in ("a", "b"):
        assert main(["evaluate-detections", "--groundtruth", str(gt_file), "--detections", str(dt_file),
                     "--out", str(tmp_path / run), "--min_score_threshold", "0.3"]) == 0
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "c")]) == 0
    out = capsys.readouterr().out
    assert "+0.000" in out and "| ghost | 0 |" in out
