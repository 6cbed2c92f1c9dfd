"""`raredet compare` through the CLI: a missing run is a clear error; it reads evaluate-detections'
outputs."""

from __future__ import annotations

from pathlib import Path

from tests.helpers.coco import make_data
from tests.helpers.coco import write_json as write

from raredet.cli import main


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
