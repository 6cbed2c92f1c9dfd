"""The imbalance study: per-class operating points (the library's rule) by hand, and `--quick` end to end
(skip, resume), its test-split figures recounted from the matches."""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import pytest
from bench.imbalance import OperatingPoint, class_operating_points

from bench import imbalance


def test_class_operating_points_use_coco_matches_at_iou_half():
    gt = {"images": [{"id": 1, "height": 100, "width": 100}, {"id": 2, "height": 100, "width": 100}],
          "categories": [{"id": 1, "name": "scratch"}, {"id": 3, "name": "crack"}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [10, 10, 20, 20], "area": 400,
                           "iscrowd": 0}]}
    dets = [  # IoU 0.6 with the crack (overlap 20x15 = 300 over 400 + 400 - 300): a match
        {"image_id": 1, "category_id": 3, "bbox": [10, 15, 20, 20], "score": 0.8},
        # IoU 1/3 (overlap 10x20 = 200 over 600): a false positive, scored higher
        {"image_id": 1, "category_id": 3, "bbox": [20, 10, 20, 20], "score": 0.9},
        {"image_id": 2, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.95},  # scratch: no box at all
    ]
    # The library's rule (evaluation.operating_points): crack's curve is 0.9 FP, 0.8 TP (precision 0,
    # 1/2); target 1/2 keeps both, its threshold halfway from 0.8 to the floor 0: 0.4 (in float32, as
    # the model's scores are).
    half_way = float(np.float32(0.4))
    at_half = class_operating_points(gt, dets, target_precision=0.5)
    assert at_half["crack"] == OperatingPoint(half_way, 0.5, 1.0, 1, 1, 0.5, reached=True)
    # scratch has no box: no operating point, every detection stays (1 FP over 2 images)
    assert at_half["scratch"] == OperatingPoint(None, 0.0, 0.0, 0, 1, 0.5, reached=None)
    # An unreachable target: the most precise point (1/2), not reached, as raredet eval chooses it
    assert class_operating_points(gt, dets, target_precision=0.9)["crack"] == OperatingPoint(
        half_way, 0.5, 1.0, 1, 1, 0.5, reached=False)
    # Thresholds chosen elsewhere (on val), counted here: above 0.85 only the false positive at 0.9
    # (precision 0, recall 0, 1 FP over 2 images); no threshold (None) keeps every detection.
    graded = class_operating_points(gt, dets, thresholds={"crack": 0.85, "scratch": None})
    assert graded["crack"] == OperatingPoint(0.85, 0.0, 0.0, 0, 1, 0.5)
    assert graded["scratch"] == OperatingPoint(None, 0.0, 0.0, 0, 1, 0.5)


def test_quick_study_runs_skips_what_does_not_parse_and_resumes(tmp_path, capsys):
    report = imbalance.study(imbalance.QUICK, tmp_path, parallel=1, doc=None, chart_path=None)
    ran = {r["strategy"] for r in report["runs"]}
    assert {"baseline", "explicit_weights"} <= ran
    # The pair-aware losses come with another branch: until it is merged they are skipped, saying why.
    if "seesaw_sigmoid_focal" not in ran:
        assert "seesaw_sigmoid_focal" in report["skipped"]
        assert "does not parse" in report["skipped"]["seesaw_sigmoid_focal"]
    for run in report["runs"]:
        for cls in ("scratch", "dent", "crack"):
            op = run["op"][cls]
            assert 0.0 <= op["recall"] <= 1.0 and op["fp_per_image"] >= 0.0
            assert not op["reached"] or op["precision"] >= imbalance.TARGET_PRECISION
    fig = report["figures"]["baseline"]["AP50/crack"]
    assert fig["low"] <= fig["mean"] <= fig["high"]
    assert any("| baseline |" in line for line in report["goal_table"])
    for table in (report["goal_table"], *report["class_tables"].values()):
        assert table[0].count("|") == table[1].count("|") == table[2].count("|")  # header, rule, row
    capsys.readouterr()
    again = imbalance.study(imbalance.QUICK, tmp_path, parallel=1, resume=True, doc=None, chart_path=None)
    assert "kept from" in capsys.readouterr().out
    assert json.dumps(again["figures"], sort_keys=True) == json.dumps(report["figures"], sort_keys=True)


def test_quick_study_with_a_test_split_grades_val_thresholds_on_test(tmp_path):
    from dataclasses import replace

    budget = replace(imbalance.QUICK, test_images=6, strategies=("baseline",))
    report = imbalance.study(budget, tmp_path, parallel=1, doc=None, chart_path=None)
    data = imbalance.make_data(tmp_path, budget)
    summary = json.loads((data / "summary.json").read_text())
    assert report["gt_count"] == summary["test"]["boxes"]  # the figures count the test split's boxes
    run_dir = tmp_path / "runs" / "baseline_seed0"
    assert imbalance._done(run_dir, test_images=6)
    assert not imbalance._done(run_dir, test_images=9)  # graded on another split: not kept by --resume
    val = class_operating_points(*imbalance._eval_inputs(run_dir / "eval"))
    test_gt, test_dets = imbalance._eval_inputs(run_dir / imbalance.TEST_EVAL)
    assert len(test_gt["images"]) == 6
    run = report["runs"][0]
    for cls, op in run["op"].items():
        assert op["threshold"] == val[cls].threshold  # chosen on val ...
        # ... counted on test, recounted here from the IoU-0.5 matches: kept = scoring above it
        scores, hit = _class_dets(test_gt, test_dets, cls)
        kept = scores > val[cls].threshold if val[cls].threshold is not None else np.ones(len(scores), bool)
        tp, fp = int((kept & hit).sum()), int((kept & ~hit).sum())
        assert (op["tp"], op["fp"], op["fp_per_image"]) == (tp, fp, fp / 6)
        assert op["recall"] == tp / summary["test"]["boxes"][cls]
        assert op["precision"] == (tp / (tp + fp) if tp + fp else None)
        assert op["reached"] == val[cls].reached
    assert report["class_tables"]["crack"][0].count("|") == report["class_tables"]["crack"][2].count("|")

    # Regraded on a larger test split: the same checkpoint (not retrained), the same val thresholds,
    # counted on the new split's images.
    larger = replace(budget, test_images=9)
    again = imbalance.regrade(tmp_path, larger, tmp_path / "regraded")
    regraded = tmp_path / "regraded" / "runs" / "baseline_seed0"
    ckpts = sorted(p.name for p in run_dir.glob("ckpt-*.pt"))
    assert ckpts and sorted(p.name for p in regraded.glob("ckpt-*.pt")) == ckpts
    assert (regraded / "seconds.json").read_text() == (run_dir / "seconds.json").read_text()
    assert len(imbalance._eval_inputs(regraded / imbalance.TEST_EVAL)[0]["images"]) == 9
    larger_data = imbalance.make_data(tmp_path / "regraded", larger)
    assert again["gt_count"] == json.loads((larger_data / "summary.json").read_text())["test"]["boxes"]
    for cls, op in again["runs"][0]["op"].items():
        assert op["threshold"] == val[cls].threshold
    with pytest.raises(SystemExit, match="no finished run to regrade"):
        imbalance.regrade(tmp_path / "nothing", larger, tmp_path / "regraded2")


def _class_dets(gt: dict, dets: list, cls: str) -> tuple[np.ndarray, np.ndarray]:
    """One class's detection scores and whether each matches at IoU 0.5 (COCO's matching)."""
    from raredet.evaluation.per_class import match_detections

    cat = next(c["id"] for c in gt["categories"] if c["name"] == cls)
    m = match_detections(gt, dets)
    mine = m.det_counted & (m.det_cat == cat)
    return m.det_score[mine], (m.det_gt >= 0)[mine]


def test_resume_keeps_only_runs_the_study_saw_finish(tmp_path):
    run = tmp_path / "baseline_seed0"
    (run / "eval").mkdir(parents=True)
    for name in ("per_class.json", "detections.json"):
        (run / "eval" / name).write_text("{}")
    assert not imbalance._done(run)  # evaluated, but no seconds.json: stopped part-way, or by an older study
    (run / "seconds.json").write_text("12.5")
    assert imbalance._done(run)


def _figs(rows: dict[str, tuple[float, float, float, float]]) -> dict[str, dict[str, imbalance.Spread]]:
    """Hand-made study figures: strategy -> (scratch AP50, dent AP50, crack AP50, crack R@P0.9)."""
    out = {}
    for name, (scratch, dent, crack, recall) in rows.items():
        row = {f"{f}/{c}": imbalance.Spread(0.0, 0.0, 0.0) for f in imbalance.FIGURES
               for c in imbalance.CLASS_NAMES}
        for key, value in (("AP50/scratch", scratch), ("AP50/dent", dent), ("AP50/crack", crack),
                           ("R@P0.9/crack", recall)):
            row[key] = imbalance.Spread(value, value, value)
        row["mAP"] = row["mAP50"] = imbalance.Spread(0.0, 0.0, 0.0)
        out[name] = row
    return out


def test_best_strategy_prefers_the_widest_common_margin_among_those_meeting_the_goal():
    figs = _figs({
        "baseline": (70.0, 30.0, 10.0, 0.0),
        # meets the goal (+55 / +44), scratch -1.8: at the tolerance's edge
        "edge": (68.2, 43.6, 65.0, 44.0),
        # meets the goal (+40 / +25), every common class up: the widest margin (+1.0)
        "safe": (71.0, 40.0, 50.0, 25.0),
        # the largest rare gain of all, but scratch -10: outside the tolerance
        "costly": (60.0, 30.0, 80.0, 60.0),
    })
    assert imbalance.best_strategy(figs) == ("safe", True)
    # With none meeting the goal (recall +15 at most), the best rare class within the tolerance wins.
    short = _figs({"baseline": (70.0, 30.0, 10.0, 0.0), "a": (69.0, 31.0, 30.0, 15.0),
                   "b": (70.5, 30.5, 25.0, 10.0), "costly": (60.0, 30.0, 80.0, 60.0)})
    assert imbalance.best_strategy(short) == ("a", False)
    # With nothing helping within the tolerance, the baseline.
    assert imbalance.best_strategy(_figs({"baseline": (70.0, 30.0, 10.0, 0.0),
                                          "costly": (60.0, 30.0, 80.0, 60.0)})) == ("baseline", False)


def test_seeds_agree_only_when_every_goal_figure_spans_no_more_than_its_tolerance():
    def figs(dent_high: float) -> dict[str, dict[str, imbalance.Spread]]:
        out = _figs({"baseline": (70.0, 30.0, 10.0, 0.0), "best": (71.0, 40.0, 50.0, 25.0)})
        spans = {"AP50/crack": (5.0, 14.9), "R@P0.9/crack": (0.0, 19.5), "AP50/scratch": (70.0, 72.0),
                 "AP50/dent": (30.0, dent_high)}
        for row in out.values():
            for key, (low, high) in spans.items():
                row[key] = imbalance.Spread(row[key].mean, low, high)
        return out

    lines, ok = imbalance.seed_agreement(figs(32.0), ["baseline", "best"])  # every spread at or under
    assert ok and not any("✗" in line for line in lines)
    lines, ok = imbalance.seed_agreement(figs(32.5), ["baseline", "best"])  # dent spans 2.5 > 2
    assert not ok
    assert lines[2].split(" | ")[-1] == "2.5 ✗ |" and lines[0].count("|") == lines[2].count("|")


def _run(strategy: str, seed: int, ap50: dict[str, float], crack_recall: float) -> imbalance.RunResult:
    """A run with the given AP50 per class and crack recall at precision 0.9 (fractions)."""
    op = {c: {"threshold": 0.5, "reached": True, "recall": crack_recall if c == "crack" else 0.0,
              "precision": None, "fp_per_image": 0.0} for c in ap50}
    return imbalance.RunResult(strategy, seed, ap50, dict.fromkeys(ap50), dict.fromkeys(ap50), op,
                               dict.fromkeys(ap50, 1), 0.0, 0.0, 1.0)


def test_paired_lifts_are_taken_seed_by_seed_against_the_same_seeds_baseline():
    # Absolute dent AP50 spans 10 points over the seeds on both sides, but the best lifts it by 9-10 at
    # every seed: the lifts agree where the absolute figures do not. Hand-computed lifts below.
    base = [_run("baseline", s, {"scratch": sc, "dent": d, "crack": c}, r) for s, sc, d, c, r in
            ((0, .86, .60, .40, .20), (1, .87, .65, .50, .15), (2, .86, .70, .35, .30))]
    best = [_run("best", s, {"scratch": sc, "dent": d, "crack": c}, r) for s, sc, d, c, r in
            ((2, .855, .80, .40, .48), (0, .87, .70, .45, .40), (1, .865, .74, .58, .33))]
    lines, ok = imbalance.paired_lifts({"baseline": base, "best": best}, "best")
    # columns follow AGREEMENT: crack AP50, crack R@P0.9, scratch AP50, dent AP50
    assert list(imbalance.AGREEMENT) == ["AP50/crack", "R@P0.9/crack", "AP50/scratch", "AP50/dent"]
    assert lines[2] == "| seed 0 | +5.0 | +20.0 | +1.0 | +10.0 |"
    assert lines[3] == "| seed 1 | +8.0 | +18.0 | -0.5 | +9.0 |"
    assert lines[4] == "| seed 2 | +5.0 | +18.0 | -0.5 | +10.0 |"
    assert lines[5] == "| spread | 3.0 (≤ 10) | 2.0 (≤ 20) | 1.5 (≤ 2) | 1.0 (≤ 2) |"
    assert ok
    # A seed whose scratch lift is 2.5 away from another's: not agreed; two seeds are never enough.
    best[0] = _run("best", 2, {"scratch": .88, "dent": .80, "crack": .40}, .48)
    lines, ok = imbalance.paired_lifts({"baseline": base, "best": best}, "best")
    assert not ok and lines[5].split(" | ")[3] == "2.5 (≤ 2) ✗"
    assert not imbalance.paired_lifts({"baseline": base[:2], "best": best}, "best")[1]


def test_agreement_of_a_saved_report_and_a_clear_error_for_anything_else(tmp_path, capsys):
    base = [_run("baseline", s, {"scratch": .86, "dent": .6, "crack": .4}, .2) for s in (0, 1, 2)]
    name = "repeat_factor_sampling_strong+class_alpha"
    pair = [_run(name, s, {"scratch": .86, "dent": .7, "crack": .6}, .5) for s in (0, 1, 2)]
    saved = tmp_path / "imbalance.json"
    saved.write_text(json.dumps({"best": pair[0].strategy, "runs": [asdict(r) for r in base + pair]}))
    assert imbalance.main(["--agreement_of", str(saved)]) == 0
    out = capsys.readouterr().out
    assert "| seed 1 | +20.0 | +30.0 | +0.0 | +10.0 |" in out and "lifts agree: yes" in out
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(SystemExit, match="other.json: not a saved imbalance study report"):
        imbalance.main(["--agreement_of", str(tmp_path / "other.json")])


def test_the_study_trains_on_the_demos_training_split():
    # make_synthetic_dataset keeps round(0.2 * images) for val (the default val_fraction): the rest
    # is the training split, drawn from the same stream as the demo's.
    from raredet.commands import demo

    assert imbalance.FULL.images - round(0.2 * imbalance.FULL.images) == demo.FULL.train_images
    study, shown = imbalance.FULL, demo.FULL
    assert (study.num_steps, study.batch_size) == (shown.num_steps, shown.batch_size)


def test_a_moving_average_budget_trains_and_evaluates_the_average_and_the_default_does_neither(tmp_path):
    from raredet.data.synth import pipeline_config_text

    (tmp_path / "pipeline.config").write_text(pipeline_config_text(image_size=64, num_steps=10))
    plain = imbalance.base_config(tmp_path, imbalance.QUICK)
    assert not plain.train_config.optimizer.use_moving_average
    assert not plain.eval_config.use_moving_averages
    budget = imbalance.Budget(**(asdict(imbalance.QUICK) | {"moving_average_decay": 0.998}))
    averaged = imbalance.base_config(tmp_path, budget)
    assert averaged.train_config.optimizer.use_moving_average
    assert averaged.train_config.optimizer.moving_average_decay == pytest.approx(0.998)
    assert averaged.eval_config.use_moving_averages


def test_a_moving_average_decay_outside_zero_one_is_refused_before_anything_trains(tmp_path, capsys):
    with pytest.raises(SystemExit):
        imbalance.main(["--quick", "--moving_average", "1.5", "--work", str(tmp_path / "w")])
    assert "--moving_average 1.5: the decay must lie between 0 and 1" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()
