"""Validation of a parsed pipeline.config: bad values named by file and field with what is allowed; label
maps checked against the config; the not-acted-on fields and their one warning."""

import math

import pytest
from tests.helpers.configs import load_quiet, write_variant

from raredet import config as cfg
from raredet.config.validate import _Checker
from raredet.errors import ConfigError

BAD_VALUES = [
    ("num_classes: 3", "num_classes: 4", r"model\.ssd\.num_classes: is 4 but the label map .* has 3 classes"),
    ('weight { name: "crack" value: 8.0 }', 'weight { name: "crak" value: 8.0 }',
     r"class_weights\.weight\[0\]\.name: 'crak' is not in the label map.*did you mean 'crack'"),
    ("weight { id: 2 value: 2.0 }", "weight { id: 9 value: 2.0 }",
     r"class_weights\.weight\[1\]\.id: 9 is not in the label map .*\[1, 2, 3\]"),
    ("weight { id: 2 value: 2.0 }", "weight { id: 2 value: -2.0 }",
     r"class_weights\.weight\[1\]\.value: -2\.0 is out of range; it must be a finite number >= 0"),
    ("weight { id: 2 value: 2.0 }", "weight { id: 2 value: nan }",
     r"class_weights\.weight\[1\]\.value: nan is not a finite number; it must be"),
    ("weight { id: 2 value: 2.0 }", "weight { id: 2 value: inf }", r"class_weights\.weight\[1\]\.value: inf"),
    ("weight { id: 2 value: 2.0 }", "weight { id: 3 value: 2.0 }",
     r"class_weights\.weight\[1\]: names the same class as model\.ssd\.loss\.class_weights\.weight\[0\]"),
    ("weight { id: 2 value: 2.0 }", "weight { id: 2 }", r"class_weights\.weight\[1\]: has no value"),
    ("weight { id: 2 value: 2.0 }", "weight { value: 2.0 }", r"class_weights\.weight\[1\]: names no class"),
    ("weight { id: 2 value: 2.0 }", "auto { scheme: EFFECTIVE_NUMBER beta: 1.0 }",
     r"class_weights\.auto\.beta: 1\.0 is out of range; it must be in \[0, 1\)"),
    ("weight { id: 2 value: 2.0 }", "auto { beta: -0.1 }", r"class_weights\.auto\.beta: -0\.1"),
    ("weight { id: 2 value: 2.0 }", "auto { max_weight: -1 }", r"class_weights\.auto\.max_weight: -1\.0"),
    ("gamma: 2.0", "gamma: -1.0",
     r"weighted_sigmoid_focal\.gamma: -1\.0 is out of range; it must be a finite number >= 0"),
    ("alpha: 0.25", "alpha: 1.5",
     r"weighted_sigmoid_focal\.alpha: 1\.5 is out of range; it must be in \[0, 1\]"),
    ('class_alpha { name: "crack" value: 0.75 }', 'class_alpha { name: "crack" value: -0.5 }',
     r"class_alpha\[0\]\.value: -0\.5"),
    ('class_alpha { name: "crack" value: 0.75 }', 'class_alpha { name: "bump" value: 0.5 }',
     r"class_alpha\[0\]\.name: 'bump' is not in the label map"),
    ("localization_loss { weighted_smooth_l1 { } }", 'localization_loss { custom { name: "mine" } }',
     r"localization_loss\.custom: needs both"),
    ("repeat_factor_sampling { threshold: 0.3 }", "repeat_factor_sampling { threshold: 0 }",
     r"train_input_reader\.repeat_factor_sampling\.threshold: 0\.0 is out of range; it must be in \(0, 1\]"),
    ('tf_record_input_reader { input_path: "data/val-*.tfrecord" }', "",
     r"eval_input_reader\[0\]: has no data source"),
    ("num_classes: 3", "num_classes: 0", r"model\.ssd\.num_classes: is 0"),
    ("batch_size: 2", "batch_size: 0", r"train_config\.batch_size: must be at least 1"),
    ("unmatched_threshold: 0.4", "unmatched_threshold: 0.6",
     r"argmax_matcher\.unmatched_threshold: 0\.6 is above matched_threshold 0\.5"),
    ("max_level: 5\n        anchor_scale", "max_level: 6\n        anchor_scale",
     r"multiscale_anchor_generator: levels 3-6 differ from model\.ssd\.feature_extractor\.fpn levels 3-5"),
    ("aspect_ratios: [1.0, 2.0, 0.5]", "aspect_ratios: [1.0, -2.0]", r"aspect_ratios\[1\]: -2\.0"),
    ("height: 64 width: 64", "height: 0 width: 64", r"fixed_shape_resizer: height and width must be"),
    ("iou_threshold: 0.5 max_detections", "iou_threshold: 1.5 max_detections",
     r"batch_non_max_suppression\.iou_threshold: 1\.5"),
]


@pytest.mark.parametrize(("old", "new", "pattern"), BAD_VALUES, ids=[b[2][:40] for b in BAD_VALUES])
def test_bad_values_name_file_and_field(tmp_path, old, new, pattern):
    path = write_variant(tmp_path, old, new)
    with pytest.raises(ConfigError, match=pattern) as info:
        load_quiet(path)
    assert str(info.value).startswith(f"{path}: ")


def test_bad_label_map_of_config_names_label_map_file(tmp_path):
    path = write_variant(tmp_path, "num_classes: 3", "num_classes: 3")
    (tmp_path / "label_map.pbtxt").write_text('item { id: 0 name: "bg" } item { id: 1 name: "a" }')
    with pytest.raises(ConfigError, match=r"label_map\.pbtxt: item 'bg' has id 0; ids must be >= 1"):
        cfg.load(path)
    (tmp_path / "label_map.pbtxt").write_text('item { id: 1 name: "a" } item { id: 1 name: "b" }')
    with pytest.raises(ConfigError, match=r"label_map\.pbtxt: id 1 appears more than once"):
        cfg.load(path)


def test_not_acted_on_fields_at_default_values_do_not_warn(tmp_path):
    # (use_bfloat16 served here until it became acted on: it now chooses the autocast precision)
    path = write_variant(tmp_path, "batch_size: 2",
                         "batch_size: 2 sync_replicas: false summarize_gradients: true")
    with pytest.warns(cfg.ConfigWarning) as record:
        loaded = cfg.load(path)
    assert len(record) == 1
    assert "train_config.summarize_gradients" in str(record[0].message)
    assert "sync_replicas" not in str(record[0].message)
    assert cfg.not_acted_on(loaded.pipeline) == ["train_config.summarize_gradients"]


def test_number_check_rejects_non_finite_even_without_upper_bound():
    checker = _Checker("p", None)
    expected = "p: f: inf is not a finite number; it must be a finite number >= 0"
    with pytest.raises(ConfigError, match=expected):
        checker.number(math.inf, "f")


def test_not_acted_on_list_names_real_fields():
    from google.protobuf import descriptor_pool

    pool = descriptor_pool.Default()
    for full_name in cfg.NOT_ACTED_ON:
        message, field = full_name.rsplit(".", 1)
        assert field in pool.FindMessageTypeByName(message).fields_by_name, full_name


def test_class_names_that_cannot_be_checked_give_a_warning(tmp_path):
    path = write_variant(tmp_path, "num_classes: 3", "num_classes: 3")
    (tmp_path / "label_map.pbtxt").unlink()
    with pytest.warns(cfg.ConfigWarning, match="cannot be checked until the label map is there"):
        loaded = cfg.load(path)
    assert loaded.label_map is None and len(loaded.warnings) == 1
    with pytest.raises(ConfigError, match=r"train_input_reader\.label_map_path = .*label_map\.pbtxt"):
        load_quiet(path, check_paths=True)


def test_second_eval_reader_is_reported_as_unused(tmp_path):
    reader = 'eval_input_reader {\n  tf_record_input_reader { input_path: "more.tfrecord" }\n}\n'
    path = write_variant(tmp_path, "eval_input_reader {", reader + "eval_input_reader {")
    with pytest.warns(cfg.ConfigWarning, match=r"eval_input_reader\[1\] \(only the first"):
        loaded = cfg.load(path)
    assert len(loaded.pipeline.eval_input_reader) == 2
