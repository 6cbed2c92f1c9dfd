"""The TF-OD-API copy of a config: raredet's own fields out, nothing else touched.

The reference for which fields the TF OD API has is its own schema (config/tf_od_api_schema.json,
written from the TF OD API's descriptors) and its own files: the 40 zoo configs raredet loads are TF's,
so their copies must lose nothing.
"""

from __future__ import annotations

import warnings

import pytest
from google.protobuf import text_format

from raredet import builders
from raredet.config import load, parse_config
from raredet.config.tf_od_api import tf_od_api_copy, tf_schema
from raredet.protos import pipeline_pb2
from raredet.zoo import CONFIG_DIR

ZOO = CONFIG_DIR
ZOO_LOADABLE = sorted(ZOO.glob("*.config"))

RAREDET_FIELDS = """
model { ssd {
  num_classes: 3
  loss {
    classification_loss { weighted_sigmoid_focal { alpha: 0.25 gamma: 2.0
      class_alpha { name: "crack" value: 0.75 } } }
    localization_loss { weighted_smooth_l1 { } }
    class_weights { weight { name: "crack" value: 8.0 } }
  }
} }
train_config { batch_size: 2 checkpoint_every_n: 50 }
train_input_reader {
  label_map_path: "label_map.pbtxt"
  tf_record_input_reader { input_path: "train.tfrecord" }
  repeat_factor_sampling { threshold: 1.0 }
}
eval_config { num_examples: 10 operating_points { target_precision: 0.9 } }
eval_input_reader { coco_input_reader { annotations_path: "val.json" image_dir: "images" } }
"""


def test_schema_is_the_tf_od_api_one():
    messages = tf_schema()["messages"]
    assert messages["Loss"]["classification_loss"]["number"] == 2
    assert "class_weights" not in messages["Loss"]
    assert "operating_points" not in messages["EvalConfig"]
    assert "calibration_config" in messages["PostProcessing"]


@pytest.mark.parametrize("path", ZOO_LOADABLE, ids=lambda p: p.stem)
def test_a_zoo_config_loses_nothing(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = load(path).pipeline
    copy, removed = tf_od_api_copy(config)
    assert removed == []
    assert copy == config


def test_raredet_fields_are_left_out_and_named():
    config = parse_config(RAREDET_FIELDS)
    copy, removed = tf_od_api_copy(config)
    assert sorted(removed) == sorted([
        "model.ssd.loss.classification_loss.weighted_sigmoid_focal.class_alpha",
        "model.ssd.loss.class_weights",
        "train_config.checkpoint_every_n",
        "train_input_reader.repeat_factor_sampling",
        "eval_config.operating_points",
        "eval_input_reader[0].coco_input_reader",
    ])
    loss = copy.model.ssd.loss
    assert loss.classification_loss.weighted_sigmoid_focal.alpha == pytest.approx(0.25)
    assert loss.classification_loss.weighted_sigmoid_focal.gamma == pytest.approx(2.0)
    assert loss.localization_loss.HasField("weighted_smooth_l1")
    assert not loss.HasField("class_weights")
    assert copy.train_config.batch_size == 2
    assert list(copy.train_input_reader.tf_record_input_reader.input_path) == ["train.tfrecord"]
    assert copy.eval_config.num_examples == 10
    assert config.eval_config.HasField("operating_points")  # the original is untouched


def test_config_text_keeps_the_header_and_says_what_was_left_out():
    text = "# Written by raredet eval: thresholds.\n" + RAREDET_FIELDS
    out = builders.tf_od_api_config_text(text)
    lines = out.splitlines()
    assert lines[0] == "# Written by raredet eval: thresholds."
    assert "#   model.ssd.loss.class_weights" in lines
    body = "\n".join(line for line in lines if not line.startswith("#"))
    reparsed = text_format.Parse(body, pipeline_pb2.TrainEvalPipelineConfig())
    assert not reparsed.eval_config.HasField("operating_points")


def test_center_net_class_weights_are_left_out():
    config = parse_config("""model { center_net { num_classes: 3
      class_weights { weight { id: 3 value: 8.0 } }
      object_center_params { classification_loss {
        penalty_reduced_logistic_focal_loss { alpha: 2 beta: 4 } } }
    } }""")
    copy, removed = tf_od_api_copy(config)
    assert removed == ["model.center_net.class_weights"]
    assert not copy.model.center_net.HasField("class_weights")
    focal = copy.model.center_net.object_center_params.classification_loss.penalty_reduced_logistic_focal_loss
    assert (focal.alpha, focal.beta) == (2.0, 4.0)
