"""builders/evaluation.py: eval_config's metric sets, checked when the evaluation options are built."""

from __future__ import annotations

import pytest
from tests.helpers.configs import load_quiet, write_variant

from raredet import builders
from raredet.errors import ConfigError

METRICS = 'metrics_set: "coco_detection_metrics"'


def test_eval_options_take_the_metric_sets(tmp_path) -> None:
    both = f'{METRICS} metrics_set: "pascal_voc_detection_metrics"'
    options = builders.eval_options(load_quiet(write_variant(tmp_path, METRICS, both)))
    assert options.metrics_set == ("coco_detection_metrics", "pascal_voc_detection_metrics")


def test_unknown_metric_set_names_the_field(tmp_path) -> None:
    loaded = load_quiet(write_variant(tmp_path, METRICS, 'metrics_set: "oid_V2_detection_metrics"'))
    with pytest.raises(ConfigError) as caught:
        builders.eval_options(loaded)
    assert str(caught.value) == ("eval_config.metrics_set: unknown 'oid_V2_detection_metrics'; valid: "
                                 "coco_detection_metrics, pascal_voc_detection_metrics")
