"""Copies of the TF2 zoo's configs as a user or a test edits them: a few fields changed, the rest verbatim.

`zoo_user_copy` changes only what a user does (classes, data paths, batch, optionally the size); the
benchmarks use it too (bench/common.py imports it from here: one definition). `small_copy` is that at
batch 2 and 128 pixels; `faster_rcnn_small_copy` shrinks a Faster R-CNN config further (64 pixels, 16
proposals) for two-step CPU runs.
"""

from __future__ import annotations

import re
from pathlib import Path

from google.protobuf import text_format

from raredet import config
from raredet.protos import pipeline_pb2
from raredet.zoo import CONFIG_DIR


def zoo_user_copy(name: str, data_dir: Path, *, batch: int, size: int | None = None,
                  absolute_paths: bool = False) -> Path:
    """The zoo config `name` with only what a user changes: 3 classes, the synthetic data in `data_dir`
    (its label map and train-/val- TFRecords; paths relative to the config unless `absolute_paths`),
    `batch`, and no fine_tune_checkpoint (no TF checkpoint can be loaded here). `size`, if given,
    replaces the native image size in the resizer and in EfficientDet's square crop. Written to
    data_dir/name; returns its path."""
    source = CONFIG_DIR / name
    msg = config.parse_text(source.read_text(encoding="utf-8"), pipeline_pb2.TrainEvalPipelineConfig(),
                            source)
    model = getattr(msg.model, msg.model.WhichOneof("model"))  # ssd or faster_rcnn
    model.num_classes = 3
    if size is not None:
        if model.image_resizer.HasField("keep_aspect_ratio_resizer"):
            model.image_resizer.keep_aspect_ratio_resizer.min_dimension = size
            model.image_resizer.keep_aspect_ratio_resizer.max_dimension = size
        else:
            model.image_resizer.fixed_shape_resizer.height = size
            model.image_resizer.fixed_shape_resizer.width = size
        for step in msg.train_config.data_augmentation_options:
            if step.HasField("random_scale_crop_and_pad_to_square"):
                step.random_scale_crop_and_pad_to_square.output_size = size
    msg.train_config.batch_size = batch
    msg.train_config.ClearField("fine_tune_checkpoint")
    msg.train_config.ClearField("fine_tune_checkpoint_type")
    where = (lambda f: str(data_dir / f)) if absolute_paths else (lambda f: f)
    for reader, pattern in ((msg.train_input_reader, "train-*.tfrecord"),
                            (msg.eval_input_reader[0], "val-*.tfrecord")):
        reader.label_map_path = where("label_map.pbtxt")
        reader.tf_record_input_reader.ClearField("input_path")
        reader.tf_record_input_reader.input_path.append(where(pattern))
    path = data_dir / name
    path.write_text(text_format.MessageToString(msg), encoding="utf-8")
    return path


def small_copy(name: str, data_dir: Path, size: int = 128) -> Path:
    """The zoo config as a user edits it (`zoo_user_copy`), batch 2 at `size`."""
    return zoo_user_copy(name, data_dir, batch=2, size=size)


def faster_rcnn_small_copy(name: str, data_dir: Path) -> Path:
    """The zoo config with 64-pixel images, 3 classes, batch 2, 16 proposals and the synthetic data."""
    text = (CONFIG_DIR / name).read_text()
    text = re.sub(r"(min_dimension|max_dimension|height|width): \d+", r"\1: 64", text)
    text = re.sub(r"num_classes: \d+", "num_classes: 3", text)
    text = re.sub(r"batch_size: \d+", "batch_size: 2", text)
    text = re.sub(r"first_stage_max_proposals: \d+", "first_stage_max_proposals: 16", text)
    text = re.sub(r'fine_tune_checkpoint(_type)?: "[^"]*"', "", text)
    text = text.replace("PATH_TO_BE_CONFIGURED/label_map.txt", "label_map.pbtxt")
    text = re.sub(r'"PATH_TO_BE_CONFIGURED/train[^"]*"', '"train-*.tfrecord"', text)
    text = re.sub(r'"PATH_TO_BE_CONFIGURED/val[^"]*"', '"val-*.tfrecord"', text)
    out = data_dir / name
    out.write_text(text)
    return out
