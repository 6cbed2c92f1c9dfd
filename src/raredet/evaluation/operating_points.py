"""Per-class operating points: a score threshold per class, chosen on evaluation results by a rule.

Input is the COCO matching at IoU 0.5 that the per-class table already has (`per_class.Matches`:
area "all", the top 100 detections per image and class; a detection matched to a crowd region or
ranked past 100 is neither a true nor a false positive). For each class the detections, best first,
give a **curve**: one point per distinct score ``s`` (all detections scoring ``>= s`` kept), with
cumulative true positives ``TP(s)`` and false positives ``FP(s)``; precision ``TP / (TP + FP)``,
recall ``TP / G`` (``G`` non-crowd ground-truth boxes), ``F1 = 2 TP / (TP + FP + G)``.

Rules (`Rule`):

- ``max_f1``: the point with the highest F1.
- ``target_precision P``: the highest recall among points with precision ``>= P``.
- ``target_recall R``: among points with recall ``>= R``, the highest threshold (fewest false
  positives for that recall).

Ties go to the higher threshold (fewer detections for the same figure). When a target cannot be met
the class gets the best it can (``reached`` false): the most precise point (then the one with more
recall), or the point with the most recall. A class with no ground truth on the evaluated images, or
with no detections, or with no true positive at any threshold, gets no operating point:
its threshold stays the global one, and `note` says why in plain words.

A threshold ``t`` keeps a detection when its score is **above** ``t`` (the strict ``>`` of
``batch_non_max_suppression.score_threshold``, in raredet and the TF OD API). It is placed halfway
between the lowest score kept and the highest score dropped (or the lowest score the evaluation could
see, `score_floor`), so the detections that chose it fall on the same side after float32 rounding.

Graded on other images (`grade_operating_points`: thresholds chosen on val, counted on test), each
class's precision at its threshold comes with a **90 % interval** (`Counts.precision_interval`): the
5th and 95th percentiles of the precision over 2000 bootstrap resamples of the graded images (images
drawn with replacement, all their detections with them, so detections that crowd into a few images
widen it as they should). It says how exactly these images measured the precision the threshold gives
on new images. Where the thresholds were chosen there is none: the images that chose a threshold
flatter it, and no resampling of them says by how much (docs/imbalance.md, "How far a threshold
chosen on val carries").

An optional review band (``review_precision Q``): a second, lower threshold at the highest recall with
precision ``>= Q``; detections between the two go to a person instead of being dropped.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from raredet.errors import DataError
from raredet.evaluation.coco import load_json
from raredet.evaluation.per_class import Matches
from raredet.fileio import atomic_write_json, atomic_write_text

RULES = ("max_f1", "target_precision", "target_recall")
INTERVAL_LEVEL = 0.9  # the precision intervals of graded thresholds: 5th to 95th percentile
BOOTSTRAP_SAMPLES = 2000
# Precisions at which every class's best recall is recorded (for `raredet compare`): 0.01 .. 1.00.
PRECISION_LEVELS = tuple(round(0.01 * i, 2) for i in range(1, 101))
DEFAULT_COMPARE_PRECISION = 0.9


@dataclass(frozen=True)
class Rule:
    """How to choose one class's threshold. `target`: P or R for the target rules, None for max_f1.
    `review_precision`: precision of the lower review threshold, None for no review band."""

    kind: str = "max_f1"
    target: float | None = None
    review_precision: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in RULES:
            raise ValueError(f"unknown operating point rule {self.kind!r}; valid: {', '.join(RULES)}")
        if (self.kind == "max_f1") != (self.target is None):
            raise ValueError(f"{self.kind} {'takes no' if self.kind == 'max_f1' else 'needs a'} target")
        for name, value in (("target", self.target), ("review_precision", self.review_precision)):
            if value is not None and not 0.0 < value <= 1.0:
                raise ValueError(f"{name} must be in (0, 1], got {value}")

    def describe(self) -> str:
        text = "max F1" if self.kind == "max_f1" else f"{self.kind.replace('_', ' ')} {self.target:g}"
        if self.review_precision is not None:
            text += f", review band at precision {self.review_precision:g}"
        return text


@dataclass
class Curve:
    """One class's curve, one point per distinct score, best first: `scores [P]` descending,
    cumulative `tp [P]` and `fp [P]`; `num_gt` non-crowd ground truth boxes; `lowest_dropped`: the
    score a threshold below the last point falls back on (the evaluation's floor)."""

    scores: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    num_gt: int
    lowest_dropped: float = 0.0

    @property
    def precision(self) -> np.ndarray:
        return self.tp / np.maximum(self.tp + self.fp, 1)

    @property
    def recall(self) -> np.ndarray:
        return self.tp / self.num_gt if self.num_gt else np.zeros(len(self.tp))

    @property
    def f1(self) -> np.ndarray:
        return 2 * self.tp / np.maximum(self.tp + self.fp + self.num_gt, 1)


def class_curve(matches: Matches, cat_id: int, score_floor: float = 0.0) -> Curve:
    """The curve of category `cat_id` from the IoU-0.5 matches (counted detections only)."""
    mine = matches.det_counted & (matches.det_cat == cat_id)
    scores = matches.det_score[mine]
    hit = matches.det_gt[mine] >= 0
    num_gt = int(((matches.gt_cat == cat_id) & ~matches.gt_crowd).sum())
    order = np.argsort(-scores, kind="stable")
    scores, hit = scores[order], hit[order]
    tp, fp = np.cumsum(hit), np.cumsum(~hit)
    last_of_score = np.r_[scores[1:] != scores[:-1], True] if scores.size else np.zeros(0, dtype=bool)
    return Curve(scores[last_of_score], tp[last_of_score].astype(np.int64),
                 fp[last_of_score].astype(np.int64), num_gt, float(score_floor))


@dataclass
class Counts:
    """A class's figures with the detections above one threshold kept."""

    threshold: float | None
    precision: float | None
    recall: float | None
    F1: float | None
    TP: int
    FP: int
    FN: int
    FP_per_image: float | None
    # [low, high]: the precision's 90 % bootstrap interval over the images (None: not computed).
    precision_interval: list[float] | None = None


def counts(tp: int, fp: int, num_gt: int, num_images: int, threshold: float | None) -> Counts:
    """Figures from raw counts (None where undefined: no detection kept, or no ground truth)."""
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / num_gt if num_gt else None
    f1 = 2 * tp / (tp + fp + num_gt) if num_gt else None
    return Counts(threshold, precision, recall, f1, int(tp), int(fp), int(num_gt - tp),
                  fp / num_images if num_images else None)


def counts_above(curve: Curve, threshold: float, num_images: int, inclusive: bool = False) -> Counts:
    """Figures with the detections scoring above `threshold` kept (`inclusive`: at or above)."""
    kept = curve.scores >= threshold if inclusive else curve.scores > threshold
    n = int(kept.sum())  # scores descend, so the kept points are the first n
    tp, fp = (int(curve.tp[n - 1]), int(curve.fp[n - 1])) if n else (0, 0)
    return counts(tp, fp, curve.num_gt, num_images, threshold)


@dataclass
class OperatingPoint:
    """One class's operating point and the same figures at the global threshold.

    `threshold`: keep detections scoring above it; None = no operating point (the global threshold
    applies). `reached`: whether the rule's target was met (None for max_f1). `review_threshold`:
    the lower threshold of the review band (None: no band); `review` the figures with the band kept
    too, `review_band` the detections inside the band (TP, FP) only.
    """

    class_name: str
    class_id: int
    rule: Rule
    threshold: float | None
    reached: bool | None
    note: str
    at_threshold: Counts | None
    at_global: Counts
    review_threshold: float | None = None
    review: Counts | None = None
    review_band: dict[str, int] | None = None
    recall_at_precision: dict[str, float | None] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "rule": {**asdict(self.rule), "text": self.rule.describe()}}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> OperatingPoint:
        """Inverse of `to_json` (KeyError/TypeError/ValueError on a malformed record)."""
        rule = {k: v for k, v in data["rule"].items() if k != "text"}
        fields = {k: data[k] for k in ("class_name", "class_id", "threshold", "reached", "note",
                                       "review_threshold", "review_band", "recall_at_precision")}
        return cls(rule=Rule(**rule), at_threshold=_counts(data["at_threshold"]),
                   at_global=Counts(**data["at_global"]), review=_counts(data["review"]), **fields)


def _counts(data: Mapping[str, Any] | None) -> Counts | None:
    return None if data is None else Counts(**data)


def _threshold_below(curve: Curve, index: int) -> float:
    """A threshold that keeps points 0..index: halfway to the next score down (module docstring)."""
    kept = np.float32(curve.scores[index])
    lower = np.float32(curve.scores[index + 1] if index + 1 < len(curve.scores) else curve.lowest_dropped)
    if lower >= kept:  # the floor is not below the lowest score: any threshold under it will do
        lower = np.nextafter(kept, np.float32(-np.inf))
    middle = np.float32((np.float64(kept) + np.float64(lower)) / 2)
    return float(middle if lower <= middle < kept else lower)


def _best(candidates: np.ndarray, key: np.ndarray) -> int:
    """Index of the highest `key` among `candidates` (bool), the lowest index (highest score) on ties."""
    masked = np.where(candidates, key, -np.inf)
    return int(np.argmax(masked))  # argmax returns the first maximum


def _precision_point(curve: Curve, p: float, start: int = 0) -> int | None:
    """Highest recall with precision >= p among points `start`.., or None."""
    ok = curve.precision >= p - 1e-12
    ok[:start] = False
    return _best(ok, curve.tp.astype(np.float64)) if ok.any() else None


def choose(curve: Curve, rule: Rule) -> tuple[int | None, bool | None, str]:
    """(point index or None, reached, note) for one class; see the module docstring."""
    if curve.num_gt == 0:
        return None, None, "no ground truth on the evaluated images: the global threshold stays"
    if curve.scores.size == 0:
        return None, False if rule.target is not None else None, \
            "no detections on the evaluated images: the global threshold stays"
    if curve.tp[-1] == 0:  # every threshold gives recall 0: none is better than the global one
        return None, False if rule.target is not None else None, \
            "no detection is correct at IoU 0.5 at any threshold: the global threshold stays"
    if rule.kind == "max_f1":
        return _best(np.ones(len(curve.scores), dtype=bool), curve.f1), None, "max F1"
    assert rule.target is not None
    if rule.kind == "target_precision":
        index = _precision_point(curve, rule.target)
        if index is not None and curve.tp[index] > 0:
            return index, True, f"highest recall at precision >= {rule.target:g}"
        # Best it can: the most precise point, then the one with the most recall.
        best = _best(curve.precision == curve.precision.max(), curve.tp.astype(np.float64))
        return best, False, (f"cannot reach precision {rule.target:g}: the best is "
                             f"{curve.precision[best]:.3f} (at recall {curve.recall[best]:.3f})")
    reach = curve.recall >= rule.target - 1e-12
    if reach.any():
        return int(np.argmax(reach)), True, f"fewest false positives at recall >= {rule.target:g}"
    best = _best(curve.tp == curve.tp.max(), np.zeros(len(curve.tp)))
    return best, False, (f"cannot reach recall {rule.target:g}: the most is {curve.recall[best]:.3f} "
                         f"(at precision {curve.precision[best]:.3f})")


def recall_at_precision(curve: Curve, levels: Sequence[float] = PRECISION_LEVELS) -> dict[str, float | None]:
    """Per precision level: the highest recall with at least that precision (0.0 when none; None
    without ground truth)."""
    out: dict[str, float | None] = {}
    for p in levels:
        index = _precision_point(curve, p) if curve.num_gt else None
        if not curve.num_gt:
            out[f"{p:g}"] = None
        else:
            out[f"{p:g}"] = float(curve.recall[index]) if index is not None else 0.0
    return out


def operating_point(curve: Curve, rule: Rule, name: str, cat_id: int, num_images: int,
                    min_score_threshold: float) -> OperatingPoint:
    """Choose `curve`'s threshold by `rule`; figures there and at the global `min_score_threshold`
    (kept at or above it, as the per-class table counts)."""
    index, reached, note = choose(curve, rule)
    at_global = counts_above(curve, min_score_threshold, num_images, inclusive=True)
    point = OperatingPoint(name, cat_id, rule, None, reached, note, None, at_global,
                           recall_at_precision=recall_at_precision(curve))
    if index is None:
        return point
    point.threshold = _threshold_below(curve, index)
    point.at_threshold = counts_above(curve, point.threshold, num_images)
    if rule.review_precision is not None:
        _add_review_band(point, curve, rule.review_precision, index, num_images)
    return point


def _add_review_band(point: OperatingPoint, curve: Curve, q: float, index: int, num_images: int) -> None:
    review = _precision_point(curve, q, start=index + 1)
    if review is None or curve.tp[review] <= curve.tp[index]:
        point.note += f"; no review band: no lower threshold adds recall at precision >= {q:g}"
        return
    point.review_threshold = _threshold_below(curve, review)
    point.review = counts_above(curve, point.review_threshold, num_images)
    point.review_band = {"TP": int(curve.tp[review] - curve.tp[index]),
                         "FP": int(curve.fp[review] - curve.fp[index])}


def operating_points(matches: Matches, categories: Sequence[Mapping[str, Any]], rules: Mapping[str, Rule],
                     default: Rule, num_images: int, min_score_threshold: float,
                     score_floor: float = 0.0) -> list[OperatingPoint]:
    """Operating points of every category (``{"id", "name"}``), each by `rules[name]` or `default`."""
    return [operating_point(class_curve(matches, int(c["id"]), score_floor),
                            rules.get(str(c["name"]), default), str(c["name"]), int(c["id"]), num_images,
                            min_score_threshold)
            for c in categories]


def grade_operating_points(matches: Matches, points: Sequence[OperatingPoint], num_images: int,
                           min_score_threshold: float, chosen_on: str) -> list[OperatingPoint]:
    """The thresholds of `points` (chosen on other images) graded on `matches`: same thresholds and
    rules, figures recomputed here; `reached` says whether the target still holds on these images."""
    out = []
    for p in points:
        curve = class_curve(matches, p.class_id)
        at_global = counts_above(curve, min_score_threshold, num_images, inclusive=True)
        graded = OperatingPoint(p.class_name, p.class_id, p.rule, p.threshold, None,
                                f"threshold chosen on {chosen_on}", None, at_global,
                                recall_at_precision=recall_at_precision(curve))
        if p.threshold is not None:
            graded.at_threshold = counts_above(curve, p.threshold, num_images)
            graded.at_threshold.precision_interval = precision_interval(matches, p.class_id, p.threshold,
                                                                        num_images)
            graded.reached = _still_reached(p.rule, graded.at_threshold)
        if p.review_threshold is not None:
            graded.review_threshold = p.review_threshold
            graded.review = counts_above(curve, p.review_threshold, num_images)
            if graded.at_threshold is not None:
                graded.review_band = {"TP": graded.review.TP - graded.at_threshold.TP,
                                      "FP": graded.review.FP - graded.at_threshold.FP}
        out.append(graded)
    return out


def precision_interval(matches: Matches, cat_id: int, threshold: float, num_images: int,
                       level: float = INTERVAL_LEVEL, samples: int = BOOTSTRAP_SAMPLES,
                       seed: int = 0) -> list[float] | None:
    """[low, high]: the central `level` interval of the precision of `cat_id`'s counted detections
    scoring above `threshold`, over `samples` bootstrap resamples of the `num_images` images (each
    resample draws `num_images` images with replacement; a resample keeping no detection has no
    precision and is left out). None without image ids, or when no detection is kept.

    Only the images with a kept detection matter to the counts: a resample is a multinomial draw over
    them plus one lump for all other images, and its TP and FP are the drawn copies times each
    image's TP and FP. Seeded, so the same evaluation gives the same interval."""
    if matches.det_image is None or num_images <= 0:
        return None
    kept = matches.det_counted & (matches.det_cat == cat_id) & (matches.det_score > threshold)
    if not kept.any():
        return None
    images, index = np.unique(matches.det_image[kept], return_inverse=True)
    hit = matches.det_gt[kept] >= 0
    tp = np.bincount(index, weights=hit.astype(np.float64), minlength=len(images))
    fp = np.bincount(index, weights=(~hit).astype(np.float64), minlength=len(images))
    k = len(images)
    pvals = np.r_[np.full(k, 1.0 / num_images), max(0.0, 1.0 - k / num_images)]
    copies = np.random.default_rng(seed).multinomial(num_images, pvals, size=samples)[:, :k]
    tp_b, fp_b = copies @ tp, copies @ fp
    some = tp_b + fp_b > 0
    precision = tp_b[some] / (tp_b[some] + fp_b[some])
    low, high = np.percentile(precision, [50 * (1 - level), 50 * (1 + level)])
    return [float(low), float(high)]


def _still_reached(rule: Rule, at: Counts) -> bool | None:
    """Whether `rule`'s target holds for `at` (None for max_f1, which has no target)."""
    if rule.target is None:
        return None
    got = at.precision if rule.kind == "target_precision" else at.recall
    return got is not None and got >= rule.target - 1e-12


# ---- one threshold for every class --------------------------------------------------------------------


def single_threshold(curves: Sequence[Curve], target: float) -> tuple[int | None, int, int]:
    """The one score threshold, the same for every class, chosen by precision `target`: the lowest at
    which every class with ground truth reaches precision >= `target` with at least one true positive
    (a detector with one global threshold, as the TF OD API's `score_threshold`). When no threshold
    does, the one at which the most classes reach it, and of those the one finding the most boxes of
    those classes. Ties as in `choose`: of thresholds finding the same boxes (only false positives
    between them), the highest.

    Candidates are the distinct scores of all classes (keeping the detections at or above one).
    Returns (index into the descending union of scores or None when no class ever reaches the target,
    classes reaching it there, classes with ground truth); `single_threshold_value` turns the index
    into a threshold.
    """
    judged = [c for c in curves if c.num_gt]
    union = np.unique(np.concatenate([c.scores for c in judged] or [np.zeros(0)]))[::-1]
    if not judged or not union.size:
        return None, 0, len(judged)
    reached = np.zeros((len(judged), union.size), dtype=bool)
    found = np.zeros(union.size, dtype=np.int64)  # true positives of the classes reaching the target
    for k, c in enumerate(judged):  # one row per class, vectorised over the candidates
        kept = np.searchsorted(-c.scores, -union, side="right")  # points with score >= candidate
        tp, fp = np.r_[0, c.tp][kept], np.r_[0, c.fp][kept]
        reached[k] = (tp > 0) & (tp / np.maximum(tp + fp, 1) >= target - 1e-12)
        found += np.where(reached[k], tp, 0)
    count = reached.sum(axis=0)
    if count.max() == 0:
        return None, 0, len(judged)
    # The most classes, then the most boxes found in them (when every class reaches the target, true
    # positives only grow as the threshold falls: the lowest such threshold); of thresholds finding
    # the same boxes (only false positives between them) the highest, as the per-class
    # target_precision rule breaks its ties.
    best = np.where(count == count.max(), found, -1)
    index = int(np.argmax(best))  # the first maximum: the highest threshold
    return index, int(count[index]), len(judged)


def single_threshold_value(curves: Sequence[Curve], index: int, score_floor: float = 0.0) -> float:
    """The threshold keeping the union's points 0..index (halfway to the next score down, as
    `_threshold_below` places per-class thresholds)."""
    union = np.unique(np.concatenate([c.scores for c in curves if c.num_gt]))[::-1]
    empty = np.zeros(union.size, dtype=np.int64)
    return _threshold_below(Curve(union, empty, empty, 0, score_floor), index)


def single_threshold_json(curves: Sequence[Curve], names: Sequence[str], target: float, num_images: int,
                          score_floor: float = 0.0, chosen: Mapping[str, Any] | None = None,
                          ) -> dict[str, Any]:
    """operating_points.json's `single_threshold`: the threshold (chosen here by `single_threshold`,
    or `chosen`'s graded here), how many classes reach `target` at it, and every class's figures."""
    if chosen is None:
        index, reached, judged = single_threshold(curves, target)
        threshold = None if index is None else single_threshold_value(curves, index, score_floor)
        if index is None:
            note = f"no class reaches precision {target:g} at any threshold"
        elif reached == judged:
            note = f"the lowest threshold at which every class reaches precision {target:g}"
        else:
            note = (f"no single threshold gets every class to precision {target:g}: the one at which "
                    f"the most classes ({reached} of {judged}) reach it, finding the most of their boxes")
    else:
        threshold, target = chosen["threshold"], float(chosen["target_precision"])
        note = f"{chosen['note']} (on the images that chose it)"
    per_class = {}
    for name, curve in zip(names, curves, strict=True):
        figures = counts_above(curve, threshold, num_images) if threshold is not None else None
        per_class[name] = None if figures is None else asdict(figures)
    reaching = [n for n, c in per_class.items() if c is not None and c["precision"] is not None
                and c["TP"] > 0 and c["precision"] >= target - 1e-12]
    judged_names = [n for n, c in zip(names, curves, strict=True) if c.num_gt]
    return {"target_precision": target, "threshold": threshold, "note": note,
            "classes_reaching": [n for n in judged_names if n in reaching], "classes_judged": judged_names,
            "classes": per_class}


def single_threshold_target(rule: Rule) -> float:
    """The precision the single threshold is chosen for: the rule's target precision, else 0.9 (the
    precision `raredet compare` compares at)."""
    return rule.target if rule.kind == "target_precision" and rule.target is not None \
        else DEFAULT_COMPARE_PRECISION


# ---- deployment: one common score threshold ----------------------------------------------------------


def threshold_map(threshold: float, common: float, review_threshold: float | None = None,
                  review_common: float | None = None) -> tuple[list[float], list[float]]:
    """x/y pairs of a monotone piecewise-linear map sending `threshold` to `common` (and
    `review_threshold` to `review_common`), 0 to 0 and 1 to 1: a score is above `common` after the
    map exactly when it was above `threshold` before.

    With `review_common` but no `review_threshold` (a class without a band while others have one), the
    float32 number just below `threshold` goes to `review_common`, so no score of this class lands in
    the review band (`review_common`, `common`].
    """
    if not 0.0 < common < 1.0 or (review_common is not None and not 0.0 < review_common < common):
        raise ValueError(f"common thresholds must satisfy 0 < review ({review_common}) < accept "
                         f"({common}) < 1")
    knots = [(threshold, common)]
    if review_common is not None:
        below = review_threshold if review_threshold is not None else \
            float(np.nextafter(np.float32(threshold), np.float32(-np.inf)))
        knots.insert(0, (below, review_common))
    knots = [(0.0, 0.0)] + [k for k in knots if 0.0 < k[0] < 1.0] + [(1.0, 1.0)]
    xs, ys = [k[0] for k in knots], [k[1] for k in knots]
    return xs, ys


def common_thresholds(min_score_threshold: float,
                      points: Sequence[OperatingPoint]) -> tuple[float, float | None]:
    """(accept, review) score thresholds after the per-class maps: the global `min_score_threshold`
    (0.5 when it is not strictly between 0 and 1), and half of it when some class has a review band."""
    accept = min_score_threshold if 0.0 < min_score_threshold < 1.0 else 0.5
    review = accept / 2 if any(p.review_threshold is not None for p in points) else None
    return accept, review


def deployment_maps(points: Sequence[OperatingPoint], accept: float,
                    review: float | None) -> dict[int, tuple[list[float], list[float]]]:
    """Label-map id -> x/y pairs (`threshold_map`) for every class with a threshold. Classes without
    one keep the global threshold `accept`: no map (their scores pass unchanged), or, when some class
    has a review band, a map that is the identity from `accept` up and keeps every lower score out of
    the band."""
    maps = {}
    for p in points:
        if p.threshold is not None:
            maps[p.class_id] = threshold_map(p.threshold, accept, p.review_threshold, review)
        elif review is not None:
            maps[p.class_id] = threshold_map(accept, accept, None, review)
    return maps


# ---- files -------------------------------------------------------------------------------------------

JSON_NAME = "operating_points.json"
# What a user is told to do about an unreadable operating-points file.
OPERATING_POINTS_FIX = "use the operating_points.json that raredet eval wrote (eval/)"
MARKDOWN_NAME = "operating_points.md"


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _figures(c: Counts | None) -> list[str]:
    if c is None:
        return ["-"] * 8
    cells = [_cell(v) for v in (c.threshold, c.precision, c.recall, c.F1, c.TP, c.FP, c.FN, c.FP_per_image)]
    if c.precision_interval is not None:  # graded on other images: the precision's 90 % interval
        cells[1] += " ({:.3f}-{:.3f})".format(*c.precision_interval)
    return cells


def table(points: Sequence[OperatingPoint], min_score_threshold: float) -> tuple[list[str], list[list[str]]]:
    """Header and rows: per class the operating point's figures, its review band, then the same
    figures at the global threshold (kept at or above it), and the note."""
    figures = ("threshold", "precision", "recall", "F1", "TP", "FP", "FN", "FP/image")
    header = ["class", "rule", *figures, "review threshold", "review TP", "review FP",
              *(f"{f} @{min_score_threshold:g}" for f in figures[1:]), "note"]
    rows = []
    for p in points:
        band = p.review_band or {}
        rows.append([p.class_name, p.rule.describe(), *_figures(p.at_threshold), _cell(p.review_threshold),
                     _cell(band.get("TP")), _cell(band.get("FP")), *_figures(p.at_global)[1:], p.note])
    return header, rows


def to_markdown(points: Sequence[OperatingPoint], min_score_threshold: float) -> str:
    header, rows = table(points, min_score_threshold)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def where_sentence(content: Mapping[str, Any]) -> str:
    """Which images chose the thresholds, and which measured the figures when they differ."""
    chosen, graded = content["chosen_on"], content["graded_on"]
    text = f"Thresholds chosen on {chosen.get('description', 'the evaluated images')}"
    if graded != chosen:
        text += (f"; figures measured on {graded.get('description', 'other images')}, each precision at "
                 f"a threshold with its {INTERVAL_LEVEL:.0%} interval over these images (bootstrap)")
    return text + "."


def operating_points_json(points: Sequence[OperatingPoint], *, min_score_threshold: float,
                          chosen_on: Mapping[str, Any], graded_on: Mapping[str, Any] | None = None,
                          ) -> dict[str, Any]:
    """The content of operating_points.json: the points, which images chose the thresholds (and,
    when applied elsewhere, which images graded them), and the per-class maps for deployment."""
    accept, review = common_thresholds(min_score_threshold, points)
    # Maps work on scores in [0, 1]; thresholds outside (raw logits, e.g. score_converter IDENTITY)
    # cannot be carried by one, so such a file is for reading only.
    thresholds = [t for p in points for t in (p.threshold, p.review_threshold) if t is not None]
    deployable = all(0.0 < t < 1.0 for t in thresholds)
    maps = deployment_maps(points, accept, review) if deployable else {}
    return {
        "deployable": deployable,
        "iou_threshold": 0.5,
        "min_score_threshold": min_score_threshold,
        "chosen_on": dict(chosen_on),
        "graded_on": dict(graded_on) if graded_on is not None else dict(chosen_on),
        "score_threshold": accept,
        "review_score_threshold": review,
        "calibration": {str(i): {"x": xs, "y": ys} for i, (xs, ys) in maps.items()},
        "classes": [p.to_json() for p in points],
    }


def load_operating_points(path: str | os.PathLike[str]) -> dict[str, Any]:
    """operating_points.json with `classes` as OperatingPoint objects; DataError naming the file."""
    data = load_json(Path(path), "operating points", OPERATING_POINTS_FIX)
    try:
        data["classes"] = [OperatingPoint.from_json(c) for c in data["classes"]]
        data["calibration"] = {int(k): (list(v["x"]), list(v["y"])) for k, v in data["calibration"].items()}
        float(data["score_threshold"])
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise DataError(f"{path}: not a raredet operating_points.json ({type(err).__name__}: {err}); "
                        "use the file `raredet eval` writes") from None
    return data


def single_threshold_sentence(single: Mapping[str, Any]) -> str:
    """The one threshold for every class in a sentence: value, rule, classes reaching the target."""
    target = single["target_precision"]
    if single["threshold"] is None:
        return f"One threshold for every class: none ({single['note']})."
    reaching, judged = single["classes_reaching"], single["classes_judged"]
    return (f"One threshold for every class: {single['threshold']:.3f} ({single['note']}); here "
            f"{len(reaching)} of {len(judged)} classes reach precision {target:g} at it"
            + (f" ({', '.join(reaching)})." if reaching else "."))


def write_operating_points(out_dir: str | Path, content: Mapping[str, Any]) -> None:
    """operating_points.json and operating_points.md into `out_dir`."""
    out = Path(out_dir)
    atomic_write_json(out / JSON_NAME, dict(content))
    points = [OperatingPoint.from_json(c) for c in content["classes"]]
    text = where_sentence(content) + "\n\n" + to_markdown(points, content["min_score_threshold"])
    if content.get("single_threshold") is not None:
        text += "\n" + single_threshold_sentence(content["single_threshold"]) + "\n"
    atomic_write_text(out / MARKDOWN_NAME, text)


def scalars(points: Sequence[OperatingPoint]) -> dict[str, float]:
    """TensorBoard / metrics.json scalars: per class, precision, recall and threshold at its point."""
    out: dict[str, float] = {}
    for p in points:
        if p.at_threshold is None:
            continue
        for key in ("precision", "recall"):
            value = getattr(p.at_threshold, key)
            if value is not None:
                out[f"OperatingPoint/{key}/{p.class_name}"] = float(value)
        out[f"OperatingPoint/threshold/{p.class_name}"] = float(p.threshold)  # type: ignore[arg-type]
    return out


def parse_rule(text: str) -> Rule:
    """`max_f1`, `target_precision=P` or `target_recall=R` (a `:` works too) -> Rule; ValueError."""
    kind, _, value = text.replace(":", "=").partition("=")
    kind = kind.strip()
    if kind == "max_f1" and not value:
        return Rule()
    if kind in ("target_precision", "target_recall") and value:
        return Rule(kind, float(value))
    raise ValueError(f"{text!r}: write max_f1, target_precision=P or target_recall=R (P, R in (0, 1])")
