"""`EvalOptions`: what an evaluation measures and how it picks operating points, in one typed value.

`builders.eval_options` makes it from `eval_config`; `raredet eval` adjusts it with `dataclasses.replace`
(`--operating_point`, `--review_precision`, `--operating_points_from`, the checkpoint evaluated), and it
travels unchanged through `engine.evaluate.evaluate` into `evaluation.pipeline.evaluate_detections`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from raredet.evaluation.operating_points import Rule

COCO_SET = "coco_detection_metrics"
VOC_SET = "pascal_voc_detection_metrics"
MASK_SET = "coco_mask_metrics"
KEYPOINT_SET = "coco_keypoint_metrics"
METRICS_SETS = (COCO_SET, VOC_SET, MASK_SET, KEYPOINT_SET)


@dataclass(frozen=True)
class KeypointMetric:
    """COCO keypoint metrics of one class (`parameterized_metric { coco_keypoint_metrics }`): its
    category id and display name, the keypoints scored (indices into the keypoint axis, the label
    map's keypoint ids) and the OKS sigma of each of them."""

    category_id: int
    class_name: str
    sigmas: tuple[float, ...]
    keypoint_indices: tuple[int, ...]


@dataclass(frozen=True)
class EvalOptions:
    """The evaluation's settings; the defaults are those of an `eval_config` left empty.

    `metrics_set`: one or more of `METRICS_SETS` (empty: COCO). `min_score_threshold`: the global
    threshold of the per-class table, plots and report. `num_visualizations`: example images in
    report.html (a model's evaluation; files of detections take theirs from `--image_dir`).
    `operating_point_rule` chooses every class's threshold except those named in `class_rules`
    (display name -> rule). `operating_points_to_grade`: a loaded operating_points.json chosen on other
    images, whose thresholds are then graded here instead of choosing new ones.
    `images_description` says which images these are (it goes into operating_points.json);
    `score_floor`: the lowest score a detection could have had (the model's NMS score_threshold).
    `keypoint_metrics`: the classes whose keypoints are scored (COCO keypoint AP with their sigmas).
    `super_categories`: name -> class display names (`eval_config.super_categories`), each reported as
    the mean AP of its classes (`...PerformanceBySuperCategory/<name>`).
    """

    metrics_set: str | Sequence[str] = COCO_SET
    min_score_threshold: float = 0.5
    include_metrics_per_category: bool = True
    num_visualizations: int = 10
    operating_point_rule: Rule = Rule()
    class_rules: Mapping[str, Rule] = field(default_factory=dict)
    operating_points_to_grade: Mapping[str, Any] | None = None
    images_description: str = ""
    score_floor: float = 0.0
    keypoint_metrics: tuple[KeypointMetric, ...] = ()
    super_categories: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
