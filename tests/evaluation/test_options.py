"""evaluation/options.py: EvalOptions, the defaults of an empty eval_config, frozen, adjusted by replace."""

from __future__ import annotations

import dataclasses

import pytest

from raredet.evaluation.operating_points import Rule
from raredet.evaluation.options import EvalOptions


def test_defaults_are_an_empty_eval_config():
    # eval.proto: metrics_set unset (COCO), min_score_threshold 0.5, num_visualizations 10; the per-class
    # table always (builders.eval_options sets it whatever the proto says); max-F1, no review band.
    options = EvalOptions()
    assert (options.metrics_set, options.min_score_threshold, options.include_metrics_per_category,
            options.num_visualizations) == ("coco_detection_metrics", 0.5, True, 10)
    assert options.operating_point_rule == Rule("max_f1", None, None)
    assert (options.class_rules, options.operating_points_to_grade, options.images_description,
            options.score_floor) == ({}, None, "", 0.0)


def test_frozen_and_replace_keeps_the_other_fields():
    options = EvalOptions(metrics_set=("coco_detection_metrics", "pascal_voc_detection_metrics"),
                          min_score_threshold=0.3, class_rules={"crack": Rule("target_precision", 0.9)},
                          images_description="val", score_floor=0.05)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.min_score_threshold = 0.4  # type: ignore[misc]
    rule = Rule("target_recall", 0.8, review_precision=0.5)
    replaced = dataclasses.replace(options, operating_point_rule=rule)
    assert replaced.operating_point_rule == rule and options.operating_point_rule == Rule()
    assert replaced == EvalOptions(metrics_set=("coco_detection_metrics", "pascal_voc_detection_metrics"),
                                   min_score_threshold=0.3,
                                   class_rules={"crack": Rule("target_precision", 0.9)},
                                   images_description="val", score_floor=0.05, operating_point_rule=rule)
