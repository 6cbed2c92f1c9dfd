"""bench.threshold_transfer's counting, by hand: image subsets with repeats, the threshold chosen on one
set of images and graded on another, and the summary of trials."""

from __future__ import annotations

import numpy as np
import pytest
from bench.threshold_transfer import Evaluated, chosen_threshold, graded, subset, transfer_summary

from raredet.evaluation import operating_points as ops
from raredet.evaluation.per_class import Matches

# Four images, one class (id 1). Boxes A, B, C on images 1, 2, 3 (annotation indices 0, 1, 2).
# Detections: 0.9 on image 1 finds A; 0.8 on image 2 finds nothing; 0.7 on image 3 finds C; 0.6 on
# image 4 (no box) finds nothing.
EV = Evaluated(
    Matches(det_cat=np.array([1, 1, 1, 1]), det_score=np.array([0.9, 0.8, 0.7, 0.6]),
            det_gt=np.array([0, -1, 2, -1]), det_counted=np.ones(4, dtype=bool),
            gt_cat=np.array([1, 1, 1]), gt_crowd=np.zeros(3, dtype=bool), det_image=np.array([1, 2, 3, 4])),
    gt_image=np.array([1, 2, 3]), num_images=4, categories={1: "crack"})
RULE = ops.Rule("target_precision", 0.9)


def test_subset_counts_a_repeated_image_as_copies():
    # Images 1, 1, 3: detections 0.9 (hit) twice and 0.7 (hit); boxes A, A, C.
    curve = ops.class_curve(subset(EV, np.array([1, 1, 3])), 1)
    assert curve.scores.tolist() == [0.9, 0.7]
    assert curve.tp.tolist() == [2, 3] and curve.fp.tolist() == [0, 0] and curve.num_gt == 3


def test_threshold_chosen_on_some_images_graded_on_others():
    # On images 1-3 the points are (TP, FP) = (1, 0) at 0.9, (1, 1) at 0.8, (2, 1) at 0.7: precision
    # 1, 1/2, 2/3. Only the first reaches 0.9, so the threshold falls halfway to the next score: 0.85.
    threshold = chosen_threshold(subset(EV, np.array([1, 2, 3])), 1, RULE)
    assert threshold == pytest.approx(0.85)
    # Graded on images 3 and 4: nothing scores above 0.85 (no precision), box C is missed.
    assert graded(subset(EV, np.array([3, 4])), 1, threshold) == (None, 0.0)
    # On all four: the 0.9 detection is kept, 1 of the 3 boxes found.
    precision, recall = graded(subset(EV, np.arange(1, 5)), 1, threshold)
    assert precision == 1.0 and recall == pytest.approx(1 / 3)
    # On images 2 and 4 only false positives: precision 0 at best, the target is never reached.
    assert chosen_threshold(subset(EV, np.array([2, 4])), 1, RULE) is None


def test_transfer_summary_by_hand():
    summary = transfer_summary([(0.95, 0.3), None, (0.85, 0.5)])
    assert summary["trials"] == 3 and summary["threshold_chosen"] == 2
    assert summary["share_at_target"] == 0.5  # 0.95 of (0.95, 0.85) reaches 0.9
    assert summary["precision"]["median"] == pytest.approx(0.9)
    # a trial without a threshold finds nothing
    assert summary["mean_recall"] == pytest.approx((0.3 + 0.5 + 0.0) / 3)
