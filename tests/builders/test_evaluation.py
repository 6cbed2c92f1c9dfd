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
                                 "coco_detection_metrics, pascal_voc_detection_metrics, coco_mask_metrics, "
                                 "coco_keypoint_metrics")


def test_mask_metrics_need_the_eval_reader_to_load_masks(tmp_path) -> None:
    loaded = load_quiet(write_variant(tmp_path, METRICS, f'{METRICS} metrics_set: "coco_mask_metrics"'))
    with pytest.raises(ConfigError, match=r"eval_config.metrics_set: 'coco_mask_metrics' scores instance "
                                          r"masks, which eval_input_reader\[0\] does not read; set its "
                                          r"load_instance_masks"):
        builders.eval_options(loaded)
    text = write_variant(tmp_path, METRICS, f'{METRICS} metrics_set: "coco_mask_metrics"').read_text()
    path = tmp_path / "masks.config"
    path.write_text(text.replace("eval_input_reader {", "eval_input_reader {\n  load_instance_masks: true"))
    assert "coco_mask_metrics" in builders.eval_options(load_quiet(path)).metrics_set


SIGMAS = ('parameterized_metric { coco_keypoint_metrics { class_label: "Scratch" '
          'keypoint_label_to_sigmas { key: "tip" value: 0.05 } '
          'keypoint_label_to_sigmas { key: "base" value: 0.1 } } }')


def test_keypoint_metrics_follow_the_label_maps_keypoint_ids(tmp_path) -> None:
    path = write_variant(tmp_path, METRICS, f"{METRICS} {SIGMAS}")
    label_map = tmp_path / "label_map.pbtxt"
    # Keypoint ids 2 and 0: sorted by id, base (0) comes first; keypoint 1 is not scored.
    label_map.write_text(label_map.read_text().replace(
        'item { id: 1 name: "scratch" display_name: "Scratch" }',
        'item { id: 1 name: "scratch" display_name: "Scratch" keypoints { id: 2 label: "tip" } '
        'keypoints { id: 0 label: "base" } }'))
    (metric,) = builders.eval_options(load_quiet(path)).keypoint_metrics
    assert (metric.category_id, metric.class_name) == (1, "Scratch")
    assert metric.keypoint_indices == (0, 2) and metric.sigmas == (0.1, 0.05)


def test_keypoint_metrics_refusals_name_the_field(tmp_path) -> None:
    loaded = load_quiet(write_variant(tmp_path, METRICS, f"{METRICS} {SIGMAS}"))
    with pytest.raises(ConfigError, match=r"parameterized_metric\[0\].coco_keypoint_metrics: the label "
                                          r"map .* lists no keypoints for class 'Scratch'"):
        builders.eval_options(loaded)
    loaded = load_quiet(write_variant(tmp_path, METRICS, f'{METRICS} metrics_set: "coco_keypoint_metrics"'))
    with pytest.raises(ConfigError, match=r"'coco_keypoint_metrics' needs the class and keypoint sigmas"):
        builders.eval_options(loaded)
    bad_class = SIGMAS.replace('"Scratch"', '"person"')
    loaded = load_quiet(write_variant(tmp_path, METRICS, f"{METRICS} {bad_class}"))
    with pytest.raises(ConfigError, match=r"class_label: 'person' is not a class of the label map"):
        builders.eval_options(loaded)


def test_super_categories_name_classes_by_display_name(tmp_path) -> None:
    entry = 'super_categories { key: "surface" value: "scratch, dent,unknown" }'
    options = builders.eval_options(load_quiet(write_variant(tmp_path, METRICS, f"{METRICS} {entry}")))
    assert options.super_categories == {"surface": ("Scratch", "dent", "unknown")}
