"""Shared measuring rules for the benchmarks: medians of repeated runs, results saved atomically."""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from google.protobuf import text_format

from raredet import config
from raredet.fileio import atomic_write_json
from raredet.protos import pipeline_pb2
from raredet.zoo import CONFIG_DIR

RESULTS_DIR = Path(__file__).resolve().parent / "results"
# The 40 configs of the TF2 detection model zoo, verbatim.
ZOO = CONFIG_DIR


def zoo_user_copy(name: str, data_dir: Path, *, batch: int, size: int | None = None,
                  absolute_paths: bool = False) -> Path:
    """The zoo config `name` with only what a user changes: 3 classes, the synthetic data in `data_dir`
    (its label map and train-/val- TFRecords; paths relative to the config unless `absolute_paths`),
    `batch`, and no fine_tune_checkpoint (no TF checkpoint can be loaded here). `size`, if given,
    replaces the native image size in the resizer and in EfficientDet's square crop. Written to
    data_dir/name; returns its path."""
    msg = config.parse_text((ZOO / name).read_text(encoding="utf-8"), pipeline_pb2.TrainEvalPipelineConfig(),
                            ZOO / name)
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


def run_times(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> list[float]:
    """Wall times of `fn()` over `repeats` runs after `warmup` untimed runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def median_seconds(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> float:
    """Median wall time of `fn()` over `repeats` runs after `warmup` untimed runs."""
    return statistics.median(run_times(fn, repeats, warmup))


def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads(),
        "processor": platform.processor() or platform.machine(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def save_result(name: str, result: dict[str, Any]) -> Path:
    """Write bench/results/<name>.json (atomic), with the machine it was measured on."""
    return atomic_write_json(RESULTS_DIR / f"{name}.json", {"machine": machine(), **result})
