"""config.load: the zoo configs and the weighted fixture load, paths resolved and checked, label maps,
the effective config text; the fields of other versions parse."""

import warnings

import pytest
from tests.helpers.configs import FIXTURES, WEIGHTED, load_quiet, write_variant

from raredet import config as cfg
from raredet.errors import ConfigError

# A real TF2 model-zoo config, kept verbatim (also in shared/fixtures beside the checkout).
ZOO = FIXTURES / "ssd_mobilenet_v2_fpnlite_320x320_coco17_tpu-8.config"
ZOO_FILES = [p for p in [ZOO] if p.exists()] + sorted(FIXTURES.glob("zoo_*.config"))


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


# ---- label maps --------------------------------------------------------------------------------------


def test_train_and_eval_label_maps_must_agree(tmp_path):
    path = write_variant(tmp_path, '  shuffle: false\n  tf_record_input_reader { input_path: "data/val',
                         '  label_map_path: "other.pbtxt"\n  shuffle: false\n'
                         '  tf_record_input_reader { input_path: "data/val')
    path.write_text(path.read_text().replace('  label_map_path: "label_map.pbtxt"\n  label_map_path: "other',
                                             '  label_map_path: "other'))
    (tmp_path / "other.pbtxt").write_text('item { id: 1 name: "x" }')
    with pytest.raises(ConfigError, match=r"eval_input_reader\[0\]\.label_map_path .*differs"):
        cfg.load(path)


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
    expected = r"x\.config:1:9: model\.experimental_model: 'experimental_model' is the TF OD API's exp"
    with pytest.raises(ConfigError, match=expected) as err:
        cfg.parse_config('model { experimental_model { name: "x" } }', "x.config")
    assert "has no field named" not in str(err.value)  # protobuf's wording is replaced, not appended to
    assert "ssd_resnet152_v1_fpn" in str(err.value) and "model { faster_rcnn" in str(err.value)
    assert "model { center_net" in str(err.value) and "resnet_v1_50_fpn" in str(err.value)
