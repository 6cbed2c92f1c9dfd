"""builders/data.py: a reader's, augmentation's, resizer's or sampler's refusal of a config value reaches
the user as a ConfigError naming the field, with the whole message as written here; the eval loader
samples one image in n."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format
from tests.helpers import tiny_pipeline as tiny

from raredet import builders, config
from raredet.config import LabelMap
from raredet.data.stats import DatasetStats
from raredet.errors import ConfigError
from raredet.protos import input_reader_pb2, pipeline_pb2, train_pb2


@pytest.mark.parametrize(("reader", "message"), [
    ("tf_record_input_reader { }",
     "tf_record_input_reader.input_path is empty; give the TFRecord files (globs allowed)"),
    ('coco_input_reader { image_dir: "images" }',
     "coco_input_reader.annotations_path is empty; give the COCO JSON file"),
    ('voc_input_reader { image_set: "val" }', "voc_input_reader.root is empty; give the Pascal VOC folder"),
])
def test_reader_refusals_name_the_field(reader: str, message: str) -> None:
    msg = text_format.Parse(reader, input_reader_pb2.InputReader())
    with pytest.raises(ConfigError) as caught:
        builders.build_reader(msg, LabelMap.from_names(["a"]), "train_input_reader")
    assert str(caught.value) == message


@pytest.mark.parametrize(("step", "message"), [
    ("random_square_crop_by_scale { num_scales: 0 }",
     "random_square_crop_by_scale: needs num_scales >= 1 and 0 < scale_min <= scale_max"),
    ("random_distort_color { color_ordering: 2 }", "random_distort_color.color_ordering is 2; use 0 or 1"),
    ("normalize_image { }",
     "data_augmentation_options: 'normalize_image' is not supported; supported: "
     "random_absolute_pad_image, random_adjust_brightness, random_adjust_contrast, random_adjust_hue, "
     "random_adjust_saturation, random_black_patches, random_crop_image, random_distort_color, "
     "random_horizontal_flip, random_image_scale, random_jitter_boxes, random_pad_image, random_rotation90, "
     "random_scale_crop_and_pad_to_square, random_square_crop_by_scale, random_vertical_flip, "
     "ssd_random_crop"),
])
def test_augmentation_refusals_name_the_option(step: str, message: str) -> None:
    train_config = text_format.Parse(f"data_augmentation_options {{ {step} }}", train_pb2.TrainConfig())
    with pytest.raises(ConfigError) as caught:
        builders.build_augmentations(train_config)
    assert str(caught.value) == message


def test_negative_repeat_factor_threshold_names_the_field() -> None:
    msg = text_format.Parse("repeat_factor_sampling { threshold: -1 }", input_reader_pb2.InputReader())
    stats = DatasetStats(["a"], [1], np.array([1]), np.array([1]), np.array([10.0]), 1, 0, [np.array([0])])
    with pytest.raises(ConfigError) as caught:
        builders.build_sampler(msg, stats, seed=0)
    assert str(caught.value) == "repeat_factor_sampling.threshold is -1.0; it must be >= 0"


def test_eval_loader_samples_one_of_n(data_dir):
    loaded = config.load(tiny.write_config(data_dir, "eval.config"))
    assert len(builders.build_eval_loader(loaded).dataset) == 3
    assert len(builders.build_eval_loader(loaded, sample_1_of_n=2).dataset) == 2
    empty = pipeline_pb2.TrainEvalPipelineConfig()
    assert builders.build_eval_loader(config.LoadedConfig(empty, None, Path("x"), "")) is None
