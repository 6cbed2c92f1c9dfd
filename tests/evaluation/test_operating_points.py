"""Operating points on small hand-made curves; every expected figure is worked out in the comments."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from tests.helpers.coco import assert_counts_at_threshold, make_data, reference_points

from raredet.evaluation import operating_points as ops
from raredet.evaluation.operating_points import (
    OperatingPoint,
    Rule,
    class_curve,
    grade_operating_points,
    operating_point,
    operating_points,
    threshold_map,
)
from raredet.evaluation.per_class import Matches
from raredet.modeling.calibration import Calibration

F32 = np.float32


def _matches(dets: list[tuple[int, float, bool]], gts: dict[int, int],
             uncounted: list[tuple[int, float]] = ()) -> Matches:
    """dets: (category, score, is a true positive); gts: category -> ground-truth count;
    uncounted: (category, score) detections COCO ignores (matched to a crowd region)."""
    gt_cat = np.array([c for c, n in gts.items() for _ in range(n)], dtype=np.int64)
    det_gt = []
    next_gt = {c: int(np.flatnonzero(gt_cat == c)[0]) if (gt_cat == c).any() else -1 for c in gts}
    for c, _, hit in dets:
        det_gt.append(next_gt[c] if hit else -1)
        if hit:
            next_gt[c] += 1
    det_gt += [-1] * len(uncounted)
    all_dets = [(c, s) for c, s, _ in dets] + list(uncounted)
    return Matches(det_cat=np.array([c for c, _ in all_dets], dtype=np.int64),
                   det_score=np.array([s for _, s in all_dets], dtype=np.float64),
                   det_gt=np.array(det_gt, dtype=np.int64),
                   det_counted=np.array([True] * len(dets) + [False] * len(uncounted), dtype=bool),
                   gt_cat=gt_cat, gt_crowd=np.zeros(len(gt_cat), dtype=bool))


# Class 1, 4 ground-truth boxes. Score, hit, then the cumulative point
# (TP, FP, precision, recall, F1 = 2TP/(TP+FP+4)):
#   0.9 TP  (1, 0, 1.00, 0.25, 0.400)
#   0.8 TP  (2, 0, 1.00, 0.50, 0.667)
#   0.7 FP  (2, 1, 0.67, 0.50, 0.571)
#   0.6 TP  (3, 1, 0.75, 0.75, 0.750)   <- max F1
#   0.5 FP  (3, 2, 0.60, 0.75, 0.667)
#   0.4 FP  (3, 3, 0.50, 0.75, 0.600)
#   0.3 TP  (4, 3, 0.57, 1.00, 0.727)
CLASS1 = [(1, 0.9, True), (1, 0.8, True), (1, 0.7, False), (1, 0.6, True), (1, 0.5, False),
          (1, 0.4, False), (1, 0.3, True)]


def _point(rule: Rule, dets=CLASS1, gts=None, num_images: int = 5, uncounted=()) -> OperatingPoint:
    m = _matches(dets, gts or {1: 4}, uncounted)
    return operating_point(class_curve(m, 1), rule, "crack", 1, num_images, 0.5)


def test_curve_points_one_per_distinct_score_and_crowd_matches_ignored():
    curve = class_curve(_matches(CLASS1, {1: 4}, uncounted=[(1, 0.65)]), 1)
    assert curve.scores.tolist() == [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3]
    assert curve.tp.tolist() == [1, 2, 2, 3, 3, 3, 4]
    assert curve.fp.tolist() == [0, 0, 1, 1, 2, 3, 3]


def test_max_f1_picks_the_best_f1_and_places_the_threshold_halfway_down():
    p = _point(Rule())
    assert p.threshold == float(F32(0.55))  # halfway between 0.6 (kept) and 0.5 (dropped)
    at = p.at_threshold
    assert (at.TP, at.FP, at.FN) == (3, 1, 1)
    assert at.precision == pytest.approx(0.75) and at.recall == pytest.approx(0.75)
    assert at.F1 == pytest.approx(0.75) and at.FP_per_image == pytest.approx(1 / 5)
    # At the global 0.5 (kept at or above it): 0.5 is in, so TP 3, FP 2.
    g = p.at_global
    assert (g.TP, g.FP, g.FN) == (3, 2, 1)
    assert g.precision == pytest.approx(0.6) and g.F1 == pytest.approx(6 / 9)
    assert p.reached is None


@pytest.mark.parametrize(("rule", "threshold", "tp", "fp"), [
    (Rule("target_precision", 0.9), (0.8 + 0.7) / 2, 2, 0),  # precision 1.0 up to 0.8; most recall there
    (Rule("target_precision", 1.0), (0.8 + 0.7) / 2, 2, 0),
    (Rule("target_precision", 0.7), (0.6 + 0.5) / 2, 3, 1),  # 0.75 at 0.6 beats 1.0 at 0.8 on recall
    (Rule("target_recall", 0.7), (0.6 + 0.5) / 2, 3, 1),  # first point with recall >= 0.7
    (Rule("target_recall", 1.0), (0.3 + 0.0) / 2, 4, 3),  # the last point; halfway to the floor 0
])
def test_target_rules(rule, threshold, tp, fp):
    p = _point(rule)
    assert p.threshold == float(F32(threshold))
    assert (p.at_threshold.TP, p.at_threshold.FP) == (tp, fp)
    assert p.reached is True


def test_score_ties_move_together():
    # Class 1, 2 GT: 0.8 TP, then three detections at 0.6 (TP, FP, FP... here TP and FP), 0.4 FP.
    # Points: 0.8 (1, 0, F1 2/3), 0.6 (2, 1, F1 4/5), 0.4 (2, 2, F1 4/6): max F1 at the 0.6 group, and
    # the threshold keeps both 0.6 detections (halfway to 0.4).
    dets = [(1, 0.8, True), (1, 0.6, True), (1, 0.6, False), (1, 0.4, False)]
    p = _point(Rule(), dets, {1: 2})
    assert p.threshold == float(F32(0.5))
    assert (p.at_threshold.TP, p.at_threshold.FP) == (2, 1)


def test_f1_ties_go_to_the_higher_threshold():
    # 4 GT: 0.9 TP (F1 2/5 = 0.4), 0.8..0.5 FP (F1 2/6, 2/7, 2/8, 2/9), 0.4 TP (2, 4: 4/10 = 0.4): a tie.
    dets = [(1, 0.9, True)] + [(1, s, False) for s in (0.8, 0.7, 0.6, 0.5)] + [(1, 0.4, True)]
    p = _point(Rule(), dets)
    assert p.threshold == float(F32(0.85))
    assert (p.at_threshold.TP, p.at_threshold.FP) == (1, 0)


def test_a_target_that_cannot_be_reached_gives_the_best_and_says_so():
    # 2 GT: 0.9 FP (precision 0), 0.8 TP (1, 1: precision 0.5, recall 0.5), 0.7 FP (1, 2: 0.33).
    dets = [(1, 0.9, False), (1, 0.8, True), (1, 0.7, False)]
    p = _point(Rule("target_precision", 0.9), dets, {1: 2})
    assert p.reached is False and p.threshold == float(F32(0.75))
    assert "cannot reach precision 0.9" in p.note and "0.500" in p.note
    q = _point(Rule("target_recall", 0.9), dets, {1: 2})
    assert q.reached is False and q.threshold == float(F32(0.75))  # most recall (0.5), fewest FP
    assert "cannot reach recall 0.9" in q.note


def test_class_without_detections_or_ground_truth_keeps_the_global_threshold():
    no_dets = _point(Rule("target_recall", 0.5), dets=[], gts={1: 3})
    assert no_dets.threshold is None and "no detections" in no_dets.note and no_dets.reached is False
    assert (no_dets.at_global.TP, no_dets.at_global.FN, no_dets.at_global.recall) == (0, 3, 0.0)
    no_gt = _point(Rule(), dets=[(1, 0.9, False)], gts={1: 0})
    assert no_gt.threshold is None and "no ground truth" in no_gt.note
    assert no_gt.at_global.FP == 1 and no_gt.at_global.precision == 0.0 and no_gt.at_global.recall is None
    no_tp = _point(Rule(), dets=[(1, 0.9, False)], gts={1: 1})
    assert no_tp.threshold is None and "no detection is correct" in no_tp.note
    # A target rule says it was not reached, and keeps no false positives for nothing.
    no_tp = _point(Rule("target_recall", 0.5), dets=[(1, 0.9, False)], gts={1: 1})
    assert no_tp.threshold is None and no_tp.reached is False and "no detection is correct" in no_tp.note


def test_review_band_is_the_most_recall_at_the_review_precision_below_the_threshold():
    # Accept at max F1 (0.6 kept). Below it, precision >= 0.55 at 0.5 (3, 2: 0.60) and 0.3 (4, 3:
    # 0.571): the most recall is at 0.3, so the review threshold is halfway to the floor, 0.15; the
    # band holds 1 TP (the 0.3) and 2 FP (0.5 and 0.4).
    p = _point(Rule(review_precision=0.55))
    assert p.threshold == float(F32(0.55)) and p.review_threshold == float(F32(0.15))
    assert p.review_band == {"TP": 1, "FP": 2}
    assert (p.review.TP, p.review.FP) == (4, 3)
    # At review precision 0.8 nothing below the accept threshold qualifies: no band, said plainly.
    q = _point(Rule(review_precision=0.8))
    assert q.review_threshold is None and "no review band" in q.note


def test_per_class_rules_by_name_and_recall_at_precision():
    m = _matches(CLASS1 + [(2, 0.9, True), (2, 0.2, True)], {1: 4, 2: 2})
    cats = [{"id": 1, "name": "crack"}, {"id": 2, "name": "scratch"}]
    points = operating_points(m, cats, {"scratch": Rule("target_recall", 1.0)}, Rule(), 5, 0.5)
    assert points[0].rule == Rule() and points[0].threshold == float(F32(0.55))
    assert points[1].threshold == float(F32(0.1))  # recall 1 needs the 0.2 detection
    # Crack: precision >= 0.9 reaches recall 0.5; >= 0.7 reaches 0.75; >= 0.5 reaches 1.0.
    assert points[0].recall_at_precision["0.9"] == 0.5
    assert points[0].recall_at_precision["0.7"] == 0.75 and points[0].recall_at_precision["0.5"] == 1.0


def test_json_round_trip_and_grading_on_other_images():
    m = _matches(CLASS1, {1: 4})
    [chosen] = operating_points(m, [{"id": 1, "name": "crack"}], {}, Rule("target_precision", 0.7), 5, 0.5)
    again = OperatingPoint.from_json(chosen.to_json())
    assert again == chosen
    # Other images, 2 GT: 0.95 TP, 0.58 FP, 0.52 TP. Threshold 0.55 keeps 0.95 and 0.58: precision 0.5
    # < 0.7, so the target no longer holds there.
    other = _matches([(1, 0.95, True), (1, 0.58, False), (1, 0.52, True)], {1: 2})
    [graded] = grade_operating_points(other, [chosen], 3, 0.5, "val (5 images)")
    assert graded.threshold == chosen.threshold
    assert (graded.at_threshold.TP, graded.at_threshold.FP, graded.at_threshold.FN) == (1, 1, 1)
    assert graded.reached is False and "val (5 images)" in graded.note
    assert graded.at_threshold.FP_per_image == pytest.approx(1 / 3)


def _exact_bootstrap_quantile(per_image: list[tuple[int, int]], q: float) -> float:
    """The q-quantile of the precision over every bootstrap resample of the images, enumerated: each
    resample is a count per image summing to the number of images, with its multinomial probability;
    resamples keeping no detection are left out (the distribution is conditioned on the rest)."""
    n = len(per_image)
    values: dict[float, float] = {}
    for cut in itertools.combinations(range(2 * n - 1), n - 1):  # stars and bars: counts summing to n
        bounds = (-1, *cut, 2 * n - 1)
        counts = [bounds[i + 1] - bounds[i] - 1 for i in range(n)]
        tp = sum(c * t for c, (t, _) in zip(counts, per_image, strict=True))
        fp = sum(c * f for c, (_, f) in zip(counts, per_image, strict=True))
        if tp + fp == 0:
            continue
        prob = math.factorial(n) / math.prod(math.factorial(c) for c in counts) / n ** n
        values[tp / (tp + fp)] = values.get(tp / (tp + fp), 0.0) + prob
    total, running = sum(values.values()), 0.0
    for value in sorted(values):
        running += values[value] / total
        if running >= q:
            return value
    return max(values)


def test_precision_interval_is_the_bootstrap_over_images():
    # Five images: image 1 holds two true positives, image 2 one true and one false, image 3 one false,
    # images 4 and 5 nothing. Not counted: a detection of class 2, one COCO ignores, one at exactly the
    # threshold (a threshold keeps scores above it).
    dets = [(1, 0.9, True), (1, 0.8, True), (1, 0.7, True), (1, 0.6, False), (1, 0.55, False),
            (2, 0.9, True), (1, 0.5, False)]
    m = _matches(dets, {1: 3, 2: 1}, uncounted=[(1, 0.95)])
    m.det_image = np.array([1, 1, 2, 2, 3, 1, 2, 3])
    low, high = ops.precision_interval(m, 1, 0.5, 5)
    per_image = [(2, 0), (1, 1), (0, 1), (0, 0), (0, 0)]
    # 2000 resamples estimate the 5th and 95th percentiles of the exact distribution (a few points of
    # probability either side; the distribution is discrete, so these are often the same value).
    assert _exact_bootstrap_quantile(per_image, 0.03) <= low <= _exact_bootstrap_quantile(per_image, 0.07)
    assert _exact_bootstrap_quantile(per_image, 0.93) <= high <= _exact_bootstrap_quantile(per_image, 0.97)
    assert low < 3 / 5 < high  # the precision of the images themselves lies inside
    assert ops.precision_interval(m, 1, 0.5, 5) == [low, high]  # seeded: the same every time


def test_precision_interval_degenerate_cases():
    # Every image alike (one true, one false positive each): every resample has precision 1/2.
    dets = [(1, 0.9, True), (1, 0.8, False)] * 3
    m = _matches(dets, {1: 3})
    m.det_image = np.array([1, 1, 2, 2, 3, 3])
    assert ops.precision_interval(m, 1, 0.5, 3) == [0.5, 0.5]
    # Nothing above the threshold, or no image ids: no interval.
    assert ops.precision_interval(m, 1, 0.95, 3) is None
    m.det_image = None
    assert ops.precision_interval(m, 1, 0.5, 3) is None


def test_graded_thresholds_carry_a_precision_interval():
    m = _matches(CLASS1, {1: 4})
    [chosen] = operating_points(m, [{"id": 1, "name": "crack"}], {}, Rule("target_precision", 0.7), 5, 0.5)
    assert chosen.at_threshold.precision_interval is None  # where it was chosen: none
    other = _matches([(1, 0.95, True), (1, 0.58, False), (1, 0.52, True)], {1: 2})
    other.det_image = np.array([1, 2, 2])
    [graded] = grade_operating_points(other, [chosen], 3, 0.5, "val (5 images)")
    # Kept above 0.55: image 1's true positive, image 2's false one; 3 images resampled, c1 and c2
    # copies of images 1 and 2. Precision c1 / (c1 + c2) is 0 when c1 = 0 < c2: probability
    # (2/3)^3 - (1/3)^3 = 7/27, or 7/26 of the resamples keeping a detection, above 5 %; 1 alike.
    assert graded.at_threshold.precision_interval == [0.0, 1.0]
    assert OperatingPoint.from_json(graded.to_json()) == graded
    assert "| 0.500 (0.000-1.000) |" in ops.to_markdown([graded], 0.5)


def test_threshold_map_sends_each_threshold_to_the_common_one():
    xs, ys = threshold_map(0.55, 0.5)
    assert (xs, ys) == ([0.0, 0.55, 1.0], [0.0, 0.5, 1.0])
    xs, ys = threshold_map(0.55, 0.5, 0.15, 0.25)
    assert (xs, ys) == ([0.0, 0.15, 0.55, 1.0], [0.0, 0.25, 0.5, 1.0])
    # Applied: 0.6 -> 0.5 + 0.05 / 0.45 * 0.5; 0.3 -> 0.25 + 0.15 / 0.4 * 0.25 = 0.34375 (review band).
    cal = Calibration.piecewise_linear(1, {0: (xs, ys)})
    out = cal(torch.tensor([[0.6], [0.3], [0.1]]))
    torch.testing.assert_close(out[:, 0], torch.tensor([0.5 + 0.05 / 0.45 * 0.5, 0.34375, 0.1 / 0.15 * 0.25]))
    # A class without a band while others have one: nothing of it lands in (0.25, 0.5].
    xs, ys = threshold_map(0.55, 0.5, None, 0.25)
    assert xs[1] == float(np.nextafter(F32(0.55), F32(0))) and ys[1] == 0.25
    out = Calibration.piecewise_linear(1, {0: (xs, ys)})(torch.tensor([[0.5499], [0.55], [0.56]]))
    assert out[0, 0] <= 0.25 and out[1, 0] == 0.5 and out[2, 0] > 0.5


# ---- against pycocotools' own matching --------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
def test_operating_points_match_a_recount_with_pycocotools(seed):

    from raredet.evaluation.coco import evaluate_coco, prepare_coco
    from raredet.evaluation.per_class import match_detections

    gt, dets = make_data(seed)
    prepared = prepare_coco(gt, dets)
    matches = match_detections(gt, dets, prepared, evaluate_coco(gt, dets, prepared, keep_matches=True))
    for rule in (Rule(), Rule("target_precision", 0.8), Rule("target_recall", 0.6)):
        points = operating_points(matches, gt["categories"], {}, rule, len(gt["images"]), 0.5)
        for p in points:
            ref, num_gt = reference_points(gt, dets, p.class_id)
            if p.threshold is None:
                assert num_gt == 0 or not ref or rule.kind == "max_f1"
                continue
            tp, fp = assert_counts_at_threshold(p, ref, num_gt)
            # The rule's choice is the best over every threshold pycocotools' points allow.
            cuts = sorted({s for s, _ in ref}, reverse=True)
            options = [(sum(h for s, h in ref if s >= c), sum(not h for s, h in ref if s >= c)) for c in cuts]
            if rule.kind == "max_f1":
                assert p.at_threshold.F1 == pytest.approx(max(2 * t / (t + f + num_gt) for t, f in options))
            elif rule.kind == "target_precision" and p.reached:
                assert tp == max(t for t, f in options if t / (t + f) >= 0.8)
            elif rule.kind == "target_recall" and p.reached:
                assert fp == min(f for t, f in options if t / num_gt >= 0.6)


def test_deployment_maps_keep_classes_without_a_threshold_out_of_the_review_band():
    m = _matches(CLASS1 + [(2, 0.9, False)], {1: 4, 2: 0})
    cats = [{"id": 1, "name": "crack"}, {"id": 2, "name": "ghost"}]
    points = operating_points(m, cats, {}, Rule(review_precision=0.55), 5, 0.5)
    accept, review = ops.common_thresholds(0.5, points)
    assert (accept, review) == (0.5, 0.25)
    maps = ops.deployment_maps(points, accept, review)
    assert maps[1] == ([0.0, float(F32(0.15)), float(F32(0.55)), 1.0], [0.0, 0.25, 0.5, 1.0])
    # "ghost" has no threshold: identity from 0.5 up, everything below lands at or under 0.25.
    xs, ys = maps[2]
    out = Calibration.piecewise_linear(1, {0: (xs, ys)})(torch.tensor([[0.3], [0.49], [0.5], [0.7]]))
    assert (out[:2, 0] <= 0.25).all() and out[2, 0] == 0.5 and out[3, 0] == pytest.approx(0.7)
    # Without any review band, classes without a threshold get no map at all.
    plain = operating_points(m, cats, {}, Rule(), 5, 0.5)
    assert set(ops.deployment_maps(plain, *ops.common_thresholds(0.5, plain))) == {1}


def test_thresholds_outside_0_1_make_a_file_for_reading_only():
    # Logit-valued scores (score_converter IDENTITY): 2.5 TP, 1.5 FP, -0.5 TP. Max F1 keeps all three
    # (F1 4/5), so the threshold lies halfway to the floor 0 below -0.5... the floor is not below it,
    # so it sits just under -0.5: outside (0, 1), no map can carry it.
    m = _matches([(1, 2.5, True), (1, 1.5, False), (1, -0.5, True)], {1: 2})
    [p] = operating_points(m, [{"id": 1, "name": "crack"}], {}, Rule(), 1, 0.5)
    assert p.threshold < -0.5 and p.at_threshold.TP == 2
    content = ops.operating_points_json([p], min_score_threshold=0.5, chosen_on={"description": "x"})
    assert content["deployable"] is False and content["calibration"] == {}


# ---- one threshold for every class ---------------------------------------------------------------
# Class 2, 3 ground-truth boxes: 0.85 TP, 0.75 TP, 0.65 TP, 0.55 FP, 0.45 FP: precision 1 down to 0.65
# (TP 3), then 0.75 at 0.55. Class 3, 2 boxes: 0.95 FP, 0.5 TP, 0.35 TP: precision 0, 0.5, 0.67, never
# 0.9. Class 1 (CLASS1) has precision >= 0.9 down to 0.8 (TP 2) only.
CLASS2 = [(2, 0.85, True), (2, 0.75, True), (2, 0.65, True), (2, 0.55, False), (2, 0.45, False)]
CLASS3 = [(3, 0.95, False), (3, 0.5, True), (3, 0.35, True)]


def _curves(dets, gts):
    m = _matches(dets, gts)
    return [class_curve(m, c) for c in gts]


def test_single_threshold_is_the_lowest_at_which_every_class_reaches_the_precision():
    # Candidates (all scores, high to low): 0.9 0.85 0.8 0.75 0.7 0.65 0.6 0.55 0.5 0.45 0.4 0.3.
    # Class 1 reaches 0.9 at 0.9 .. 0.75 (keeping 0.9, 0.8; at 0.7 precision 2/3); class 2 at
    # 0.85 .. 0.6 (at 0.9 it keeps nothing). Both: 0.85, 0.8, 0.75; the lowest is 0.75 (index 3),
    # and the threshold lies halfway to the next score down, 0.7: 0.725.
    curves = _curves(CLASS1 + CLASS2, {1: 4, 2: 3})
    assert ops.single_threshold(curves, 0.9) == (3, 2, 2)
    assert ops.single_threshold_value(curves, 3) == pytest.approx(0.725, abs=1e-6)
    single = ops.single_threshold_json(curves, ["dent", "crack"], 0.9, num_images=5)
    assert single["classes_reaching"] == ["dent", "crack"] and "every class" in single["note"]
    # At 0.725 class 2 keeps 0.85, 0.75: 2 of 3, where its own operating point (0.6) finds 3 of 3.
    assert (single["classes"]["crack"]["TP"], single["classes"]["crack"]["FN"]) == (2, 1)
    assert (single["classes"]["dent"]["TP"], single["classes"]["dent"]["FP"]) == (2, 0)


def test_single_threshold_when_no_threshold_suits_every_class_takes_the_most_classes_and_says_so():
    # Class 3 never reaches 0.9, so at most 2 of 3 classes do: again at 0.85, 0.8, 0.75 (class 3's
    # scores add candidates 0.95, 0.5, 0.35 but none where classes 1 and 2 both reach it lower down).
    curves = _curves(CLASS1 + CLASS2 + CLASS3, {1: 4, 2: 3, 3: 2})
    index, reached, judged = ops.single_threshold(curves, 0.9)
    assert (reached, judged) == (2, 3)
    assert ops.single_threshold_value(curves, index) == pytest.approx(0.725, abs=1e-6)
    single = ops.single_threshold_json(curves, ["dent", "crack", "scratch"], 0.9, num_images=5)
    assert single["classes_reaching"] == ["dent", "crack"]
    assert "no single threshold gets every class" in single["note"] and "2 of 3" in single["note"]
    # Precision 0.6 (keeping the scores >= each candidate): class 1 reaches it from 0.9 down to 0.45
    # (3/5 at 0.5 and 0.45; 3/6 at 0.4), class 2 from 0.85 down to the last candidate 0.3 (3/5 = 0.6),
    # class 3 only at 0.35 and 0.3 (2/3). Never all three; two at 0.9 .. 0.45 (classes 1 and 2) and at
    # 0.35, 0.3 (2 and 3). Boxes found in the two: class 1 finds 3 from 0.6 down, class 2 3 from 0.65
    # down, so 6 at 0.6, 0.55, 0.5, 0.45 (5 at 0.65); at 0.35 and 0.3, 3 + 2 = 5. Of the four finding 6
    # (only false positives between them) the highest, 0.6; the threshold lies halfway to 0.55.
    index, reached, _ = ops.single_threshold(curves, 0.6)
    union = sorted({s for _, s, _ in CLASS1 + CLASS2 + CLASS3}, reverse=True)
    assert (union[index], reached) == (0.6, 2)
    assert ops.single_threshold_value(curves, index) == pytest.approx(0.575, abs=1e-6)


def test_single_threshold_none_when_no_class_reaches_it_and_classes_without_ground_truth_not_judged():
    curves = _curves(CLASS3 + [(4, 0.99, False)], {3: 2, 4: 0})
    assert ops.single_threshold(curves, 0.9) == (None, 0, 1)
    single = ops.single_threshold_json(curves, ["scratch", "other"], 0.9, num_images=5)
    assert single["threshold"] is None and single["classes"] == {"scratch": None, "other": None}
    assert single["classes_judged"] == ["scratch"] and "no class reaches" in single["note"]


def test_single_threshold_graded_on_other_images():
    chosen = ops.single_threshold_json(_curves(CLASS1 + CLASS2, {1: 4, 2: 3}), ["dent", "crack"], 0.9, 5)
    # Other images: class 1 (2 GT) 0.95 TP, 0.73 FP, 0.72 TP: 0.725 keeps 0.95, 0.73 -> TP 1, FP 1,
    # precision 0.5; class 2 (1 GT) 0.8 TP -> 1 of 1.
    other = _curves([(1, 0.95, True), (1, 0.73, False), (1, 0.72, True), (2, 0.8, True)], {1: 2, 2: 1})
    graded = ops.single_threshold_json(other, ["dent", "crack"], 0.0, 3, chosen=chosen)
    assert graded["threshold"] == chosen["threshold"] and graded["target_precision"] == 0.9
    assert (graded["classes"]["dent"]["TP"], graded["classes"]["dent"]["FP"]) == (1, 1)
    assert graded["classes_reaching"] == ["crack"] and "on the images that chose it" in graded["note"]


def test_single_threshold_ties_go_to_the_higher_threshold_as_per_class_points_do():
    # 10 boxes found at 0.99 .. 0.90, then a false positive at 0.5: precision 10/11 = 0.91 >= 0.9 there
    # too, but it finds nothing more. Both rules take the point at 0.90: threshold halfway to 0.5, 0.7.
    dets = [(1, 0.99 - 0.01 * i, True) for i in range(10)] + [(1, 0.5, False)]
    curves = _curves(dets, {1: 10})
    index, reached, judged = ops.single_threshold(curves, 0.9)
    assert (index, reached, judged) == (9, 1, 1)
    per_class = operating_point(curves[0], Rule("target_precision", 0.9), "crack", 1, 5, 0.5)
    assert ops.single_threshold_value(curves, index) == per_class.threshold == pytest.approx(0.7, abs=1e-6)


def test_single_threshold_prefers_the_classes_it_finds_more_of_not_merely_a_lower_threshold():
    # Class 1 (CLASS1) reaches 0.9 at 0.9 and 0.8, finding 2 of 4; class 2 has one detection,
    # 0.2 TP, so it reaches 0.9 only at 0.2, where class 1 has fallen to 4/7. One class either way: at
    # 0.8 (2 boxes of class 1) rather than at 0.2 (1 box of class 2), a lower threshold though it is.
    curves = _curves(CLASS1 + [(2, 0.2, True)], {1: 4, 2: 1})
    index, reached, judged = ops.single_threshold(curves, 0.9)
    assert (reached, judged) == (1, 2)
    assert ops.single_threshold_value(curves, index) == pytest.approx(0.75, abs=1e-6)  # 0.8 .. 0.7
