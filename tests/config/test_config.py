"""config.load: parsing, path resolution, validation errors, the not-acted-on warning, effective text."""

import math
import re
import warnings
from pathlib import Path

import pytest

from raredet import config as cfg
from raredet.cli import main
from raredet.config.validate import _Checker
from raredet.errors import ConfigError

FIXTURES = Path(__file__).parents[1] / "fixtures" / "configs"
WEIGHTED = FIXTURES / "weighted.config"
# A real TF2 model-zoo config, kept verbatim (also in shared/fixtures beside the checkout).
ZOO = FIXTURES / "ssd_mobilenet_v2_fpnlite_320x320_coco17_tpu-8.config"
ZOO_FILES = [p for p in [ZOO] if p.exists()] + sorted(FIXTURES.glob("zoo_*.config"))


def load_quiet(path, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", cfg.ConfigWarning)
        return cfg.load(path, **kw)


def write_variant(tmp_path, old, new, name="pipeline.config"):
    """A copy of the weighted fixture (with its label map) where `old` is replaced by `new`."""
    text = WEIGHTED.read_text()
    assert old in text, old
    (tmp_path / "label_map.pbtxt").write_text((FIXTURES / "label_map.pbtxt").read_text())
    path = tmp_path / name
    path.write_text(text.replace(old, new, 1))
    return path


# ---- the zoo configs -------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ZOO_FILES, ids=lambda p: p.name)
def test_zoo_configs_parse_without_error(path):
    loaded = load_quiet(path)
    ssd = loaded.pipeline.model.ssd
    assert ssd.num_classes == 90
    assert loaded.label_map is None  # placeholder label map paths: not an error unless asked
    assert ssd.loss.classification_loss.WhichOneof("classification_loss") == "weighted_sigmoid_focal"


def test_zoo_values_and_one_warning_listing_ignored_fields():
    with pytest.warns(cfg.ConfigWarning) as record:
        loaded = cfg.load(ZOO)
    assert len(record) == 1
    expected = [  # the fields the zoo file sets away from their defaults that raredet ignores
        "model.ssd.matcher.argmax_matcher.use_matmul_gather",
        "model.ssd.inplace_batchnorm_update",
        "train_config.sync_replicas",
        "train_config.startup_delay_steps",
        "train_config.replicas_to_aggregate",
        "train_config.unpad_groundtruth_tensors",
        "train_config.fine_tune_checkpoint_version",
    ]
    message = str(record[0].message)
    assert all(field in message for field in expected)
    assert loaded.warnings == (message,)
    train = loaded.pipeline.train_config
    assert train.optimizer.momentum_optimizer.learning_rate.cosine_decay_learning_rate.learning_rate_base == \
        pytest.approx(0.08)
    assert train.data_augmentation_options[1].random_crop_image.max_aspect_ratio == pytest.approx(3.0)
    assert list(loaded.pipeline.model.ssd.anchor_generator.multiscale_anchor_generator.aspect_ratios) == \
        [1.0, 2.0, 0.5]


def test_zoo_placeholder_paths_reported_only_when_checking():
    with pytest.raises(ConfigError) as info:
        load_quiet(ZOO, check_paths=True)
    msg = str(info.value)
    assert str(ZOO) in msg
    assert "train_input_reader.label_map_path" in msg
    assert "train_input_reader.tf_record_input_reader.input_path[0]" in msg
    assert "eval_input_reader[0].tf_record_input_reader.input_path[0]" in msg
    assert "train_config.fine_tune_checkpoint" in msg


def test_other_zoo_fields_parse():
    resnet = load_quiet(FIXTURES / "zoo_ssd_resnet50_v1_fpn_640x640.config").pipeline
    assert resnet.train_config.use_bfloat16 is True
    assert resnet.train_config.max_number_of_boxes == 100
    step = resnet.train_config.data_augmentation_options[2].random_scale_crop_and_pad_to_square
    assert (step.output_size, step.scale_min, step.scale_max) == (1024, pytest.approx(0.1), 2.0)
    mobilenet = load_quiet(FIXTURES / "zoo_ssd_mobilenet_v2_320x320.config").pipeline
    assert mobilenet.model.ssd.anchor_generator.ssd_anchor_generator.num_layers == 6
    assert mobilenet.train_config.data_augmentation_options[1].HasField("ssd_random_crop")


# ---- the weighted fixture ------------------------------------------------------------------------


def test_weighted_fixture_loads_with_label_map_and_no_warning(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative paths must not depend on the working directory
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = cfg.load(WEIGHTED)
    assert loaded.warnings == ()
    assert loaded.label_map.names == ["scratch", "dent", "crack"]
    loss = loaded.pipeline.model.ssd.loss
    assert loss.HasField("hard_example_miner")  # focal + miner is accepted
    assert [(w.name, w.id, w.value) for w in loss.class_weights.weight] == [("crack", 0, 8.0), ("", 2, 2.0)]
    assert loss.class_weights.apply_to_localization is True  # the default
    reader = loaded.pipeline.train_input_reader
    assert reader.coco_input_reader.annotations_path == str(FIXTURES.resolve() / "data" / "train.json")
    assert reader.label_map_path == str(FIXTURES.resolve() / "label_map.pbtxt")
    assert loaded.pipeline.eval_input_reader[0].tf_record_input_reader.input_path[0] == \
        str(FIXTURES.resolve() / "data" / "val-*.tfrecord")
    assert reader.repeat_factor_sampling.threshold == pytest.approx(0.3)


def test_check_paths_passes_when_inputs_exist(tmp_path):
    path = write_variant(tmp_path, "threshold: 0.3", "threshold: 0.3")
    (tmp_path / "data" / "images").mkdir(parents=True)
    (tmp_path / "data" / "train.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"val-\*\.tfrecord"):  # the glob matches nothing yet
        load_quiet(path, check_paths=True)
    (tmp_path / "data" / "val-0.tfrecord").write_bytes(b"")
    assert load_quiet(path, check_paths=True).label_map.num_classes == 3


def test_voc_reader_paths(tmp_path):
    path = write_variant(tmp_path, 'coco_input_reader { annotations_path: "data/train.json" image_dir: '
                         '"data/images" }', 'voc_input_reader { root: "voc" image_set: "trainval" }')
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "val-0.tfrecord").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"voc_input_reader\.root = .*voc\b"):
        load_quiet(path, check_paths=True)
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (tmp_path / "voc" / sub).mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"image_set = .*ImageSets/Main/trainval\.txt"):
        load_quiet(path, check_paths=True)
    (tmp_path / "voc" / "ImageSets" / "Main" / "trainval.txt").write_text("a\n")
    assert load_quiet(path, check_paths=True).pipeline.train_input_reader.voc_input_reader.root == \
        str(tmp_path / "voc")


# ---- errors ----------------------------------------------------------------------------------------


def line_col(text, needle):
    """1-based line and column of the first `needle` in `text` (an independent reference)."""
    before = text[: text.index(needle)]
    return before.count("\n") + 1, len(before) - (before.rfind("\n") + 1) + 1


def test_misspelt_field_names_file_line_column_and_nearest(tmp_path):
    path = write_variant(tmp_path, "num_classes: 3", "num_clases: 3")
    line, col = line_col(path.read_text(), "num_clases")
    with pytest.raises(ConfigError) as info:
        cfg.load(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}:{line}:{col}: ")
    assert "did you mean 'num_classes'" in msg


def test_misspelt_enum_value_suggests_nearest(tmp_path):
    path = write_variant(tmp_path, "loss_type: CLASSIFICATION", "loss_type: CLASIFICATION")
    with pytest.raises(ConfigError, match=r"CLASIFICATION.*did you mean CLASSIFICATION"):
        cfg.load(path)


def test_unknown_field_with_nothing_close_lists_valid_fields(tmp_path):
    path = write_variant(tmp_path, "num_classes: 3", "num_classes: 3 zzzzqqq: 1")
    with pytest.raises(ConfigError, match=r"valid fields here: .*num_classes"):
        cfg.load(path)


def test_syntax_error_names_line(tmp_path):
    path = write_variant(tmp_path, "eval_config {", "eval_config {{")
    line, _ = line_col(path.read_text(), "eval_config {{")
    with pytest.raises(ConfigError, match=rf"{path.name}:{line}:\d+: "):
        cfg.load(path)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        cfg.load(tmp_path / "nope.config")


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


def test_train_and_eval_label_maps_must_agree(tmp_path):
    path = write_variant(tmp_path, '  shuffle: false\n  tf_record_input_reader { input_path: "data/val',
                         '  label_map_path: "other.pbtxt"\n  shuffle: false\n'
                         '  tf_record_input_reader { input_path: "data/val')
    path.write_text(path.read_text().replace('  label_map_path: "label_map.pbtxt"\n  label_map_path: "other',
                                             '  label_map_path: "other'))
    (tmp_path / "other.pbtxt").write_text('item { id: 1 name: "x" }')
    with pytest.raises(ConfigError, match=r"eval_input_reader\[0\]\.label_map_path .*differs"):
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


# ---- effective config and summary ---------------------------------------------------------------------


def test_effective_config_fills_defaults_but_keeps_meaning():
    loaded = load_quiet(WEIGHTED)
    text = cfg.effective_config_text(loaded.pipeline)
    assert "normalize_loss_by_num_matches: true" in text  # not in the file: the TF OD API default
    assert "apply_to_localization: true" in text
    assert "min_score_threshold: 0.5" in text
    assert "negative_class_weight: 1.0" in text
    again = cfg.parse_config(text)
    assert again.model.ssd.num_classes == 3
    weights = loaded.pipeline.model.ssd.loss.class_weights.weight
    assert list(again.model.ssd.loss.class_weights.weight) == list(weights)
    assert again.train_input_reader.WhichOneof("input_reader") == "coco_input_reader"
    assert not again.model.ssd.loss.HasField("random_example_sampler")  # absent blocks stay absent
    assert cfg.not_acted_on(again) == []  # ignored fields are not written out as if they mattered


def test_effective_config_leaves_focal_alpha_unset_when_unset(tmp_path):
    path = write_variant(tmp_path, "gamma: 2.0 alpha: 0.25", "gamma: 2.0")
    text = cfg.effective_config_text(load_quiet(path).pipeline)
    focal = cfg.parse_config(text).model.ssd.loss.classification_loss.weighted_sigmoid_focal
    assert not focal.HasField("alpha")  # unset alpha means "no alpha term", not alpha = 0
    assert focal.gamma == 2.0


# ---- CLI ---------------------------------------------------------------------------------------------


def test_cli_check_ok_and_errors(tmp_path, capsys):
    assert main(["config", "check", str(WEIGHTED)]) == 0
    assert "crack" in capsys.readouterr().out
    bad = write_variant(tmp_path, "num_classes: 3", "num_clases: 3")
    assert main(["config", "check", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "did you mean 'num_classes'" in err and str(bad) in err


@pytest.mark.parametrize(("old", "new", "pattern"), [
    ('type: "ssd_resnet18_v1_fpn"', 'type: "ssd_resnet19_v1_fpn"',
     r"feature_extractor\.type: unknown 'ssd_resnet19_v1_fpn'; valid: .*ssd_resnet18_v1_fpn"),
    ("random_horizontal_flip { }", "random_patch_gaussian { }",
     r"'random_patch_gaussian' is not supported; supported: .*random_horizontal_flip"),
    ("localization_loss { weighted_smooth_l1 { } }",
     'localization_loss { custom { name: "nope" module: "no_such_module_xyz" } }',
     r"no_such_module_xyz"),
])
def test_cli_check_fails_on_what_training_would_refuse(tmp_path, capsys, old, new, pattern):
    # These parse and validate, but `raredet train` stops on them while building; `config check` must
    # not call such a config OK.
    path = write_variant(tmp_path, old, new)
    assert main(["config", "check", str(path)]) == 2
    err = capsys.readouterr().err
    assert re.search(pattern, err), err


def test_cli_show_prints_parseable_effective_config(capsys):
    assert main(["config", "show", str(WEIGHTED)]) == 0
    out = capsys.readouterr().out
    assert cfg.parse_config(out).model.ssd.loss.hard_example_miner.num_hard_examples == 32
    assert "normalize_loss_by_num_matches: true" in out


def test_number_check_rejects_non_finite_even_without_upper_bound():
    checker = _Checker("p", None)
    expected = "p: f: inf is not a finite number; it must be a finite number >= 0"
    with pytest.raises(ConfigError, match=expected):
        checker.number(math.inf, "f")


def test_invalid_escape_in_string_is_an_error_not_a_python_warning(tmp_path):
    path = write_variant(tmp_path, 'image_dir: "data/images"', 'image_dir: "C:\\data\\images"')
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        with pytest.raises(ConfigError, match=r"invalid escape sequence '\\d'; write a backslash as \\\\"):
            cfg.load(path)


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


@pytest.mark.parametrize(("name", "pattern"), [
    ("bad_typo.config", r"bad_typo\.config:\d+:\d+: .*did you mean 'encode_background_as_zeros'"),
    ("bad_weight.config", r"class_weights\.weight\[1\]\.value: -2\.0 is out of range"),
    ("bad_class_name.config", r"'crak' is not in the label map .*did you mean 'crack'"),
])
def test_cli_bad_fixture_configs_exit_2(capsys, name, pattern):
    assert main(["config", "check", str(FIXTURES / name)]) == 2
    err = capsys.readouterr().err
    assert re.search(pattern, err), err
    assert err.count("\n") == 1  # one line


def test_efficientdet_and_tf1_fields_parse():
    text = """
    model { ssd {
      num_classes: 90
      add_background_class: false
      image_resizer { keep_aspect_ratio_resizer { min_dimension: 512 max_dimension: 512
                                                  pad_to_max_dimension: true } }
      feature_extractor {
        type: "ssd_efficientnet-b0_bifpn_keras"
        bifpn { min_level: 3 max_level: 7 num_iterations: 3 num_filters: 64 }
        conv_hyperparams { force_use_bias: true activation: SWISH batch_norm { decay: 0.99 } }
      }
      box_predictor { weight_shared_convolutional_box_predictor { depth: 64 use_depthwise: true } }
      loss { classification_loss { weighted_sigmoid { } }
             hard_example_miner { num_hard_examples: 3000 loss_type: CLASSIFICATION } }
    } }
    train_config { from_detection_checkpoint: true
      optimizer { rms_prop_optimizer { learning_rate { exponential_decay_learning_rate {
        initial_learning_rate: 0.004 decay_steps: 800720 decay_factor: 0.95 } } } } }
    eval_config { num_examples: 8000 max_evals: 10 }
    graph_rewriter { quantization { delay: 48000 weight_bits: 8 activation_bits: 8 } }
    """
    msg = cfg.parse_config(text)
    assert msg.model.ssd.feature_extractor.bifpn.num_filters == 64
    assert msg.model.ssd.image_resizer.keep_aspect_ratio_resizer.pad_to_max_dimension
    ignored = cfg.not_acted_on(msg)
    assert "graph_rewriter" in ignored and "eval_config.max_evals" in ignored
    assert "train_config.from_detection_checkpoint" in ignored


def test_other_meta_architectures_get_a_clear_error():
    expected = r"x\.config:1:9: model\.center_net: 'center_net' is the TF OD API's CenterNet"
    with pytest.raises(ConfigError, match=expected) as err:
        cfg.parse_config("model { center_net { num_classes: 3 } }", "x.config")
    assert "has no field named" not in str(err.value)  # protobuf's wording is replaced, not appended to
    assert "ssd_resnet152_v1_fpn" in str(err.value) and "model { faster_rcnn" in str(err.value)
