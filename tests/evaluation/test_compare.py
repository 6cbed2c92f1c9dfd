"""compare_runs: per-class AP50 deltas, rarest class first, and its markdown, HTML and chart outputs."""

from __future__ import annotations

from pathlib import Path

from tests.helpers.coco import write_json as write

from raredet.evaluation.compare import compare_runs


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
