"""The one loader of a trained model (`raredet eval`, `predict` and `export` share it) and the one rule
for which weights of a checkpoint to use: the EMA weights when `eval_config.use_moving_averages` asks for
them and the checkpoint has them, else the raw weights (with a warning when EMA was asked for).

A model folder is a raredet run (`ckpt-<step>.pt`, used first) or a model the TF OD API trained: an
extracted TF2 zoo model folder (`pipeline.config` + `checkpoint/ckpt-0.*`) or a `model_main_tf2.py`
`model_dir` (`ckpt-N.*` and the `checkpoint` state file, the config given separately). A TF checkpoint
is loaded whole (`fine_tune_checkpoint_type` "full") and the model computes with TF's conventions.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
from torch import nn

from raredet import builders
from raredet import config as config_lib
from raredet.config import LabelMap
from raredet.engine.checkpoint import latest_checkpoint
from raredet.errors import CheckpointError, ConfigError, DataError
from raredet.evaluation import operating_points as ops
from raredet.modeling import load_checkpoint_weights
from raredet.modeling.calibration import Calibration
from raredet.modeling.center_net import CenterNet
from raredet.modeling.faster_rcnn import FasterRCNN
from raredet.modeling.ssd import SSD
from raredet.protos import pipeline_pb2
from raredet.tfcheckpoint import open_checkpoint, resolve_prefix

TF_STEP_NAME = re.compile(r"ckpt-(\d+)$")

Detector = SSD | FasterRCNN | CenterNet  # the models `builders.build_model` makes


@dataclass
class TrainedModel:
    """A model restored from a training run, ready for inference (eval mode, on CPU)."""

    model: Detector
    pipeline: pipeline_pb2.TrainEvalPipelineConfig  # the message it was built from
    label_map: LabelMap
    checkpoint: Path
    step: int
    config_text: str  # the pipeline.config text used (saved in the checkpoint, or the given file)
    notes: tuple[str, ...] = ()  # what the user should know about how it was loaded (printed by commands)


def _config_and_label_map(path: Path, state: dict[str, Any],
                          pipeline_config_path: str | os.PathLike[str] | None
                          ) -> tuple[pipeline_pb2.TrainEvalPipelineConfig, LabelMap, str]:
    """The config (given, else saved in the checkpoint) and its label map (the checkpoint's, else the
    config's label_map_path)."""
    if pipeline_config_path is not None:
        loaded = config_lib.load(pipeline_config_path)
        cfg, text, label_map = loaded.pipeline, loaded.text, loaded.label_map
        where = str(pipeline_config_path)
    else:
        text = state.get("config_text") or ""
        if not text:
            raise CheckpointError(f"{path} has no saved config_text; pass --pipeline_config_path")
        where = f"{path} (config_text)"
        cfg, label_map = config_lib.parse_config(text, where), None
    if state.get("label_map_text"):
        label_map = LabelMap.parse(state["label_map_text"], f"{path} (label_map_text)")
    if label_map is None:
        raise ConfigError(f"{where}: no label map (none saved in {path}, label_map_path unset or missing); "
                          "pass a --pipeline_config_path whose train_input_reader.label_map_path exists")
    config_lib.validate(cfg, label_map, where)
    return cfg, label_map, text


def model_weights(state: Mapping[str, Any], use_moving_averages: bool, path: Path) -> Mapping[str, Any]:
    """The checkpoint's EMA weights when asked for and present, else its model weights (the one rule:
    `raredet eval`, `predict` and `export` all load through it)."""
    if use_moving_averages:
        if state.get("ema") is not None:
            return state["ema"]
        warnings.warn(f"{path}: eval_config.use_moving_averages is set but the checkpoint has no moving "
                      "averages (train with optimizer.use_moving_average); using the raw weights",
                      stacklevel=3)
    return state["model"]


def load_trained_model(model_dir: str | os.PathLike[str],
                       pipeline_config_path: str | os.PathLike[str] | None = None,
                       label_map_path: str | os.PathLike[str] | None = None) -> TrainedModel:
    """The newest loadable checkpoint of `model_dir` as a model in eval mode on CPU: a raredet
    `ckpt-<step>.pt`, else a TF checkpoint (`find_tf_checkpoint`, `load_tf_model`).

    Uses the EMA weights when the config's `eval_config.use_moving_averages` is set and the checkpoint
    has them (as `raredet eval` does). `label_map_path` replaces the label map of the config or checkpoint.
    """
    found = latest_checkpoint(model_dir)
    if found is None:
        prefix = find_tf_checkpoint(model_dir)
        if prefix is None:
            raise CheckpointError(no_checkpoint_message(model_dir))
        return load_tf_model(Path(model_dir), prefix, pipeline_config_path, label_map_path)
    path, state = found
    cfg, label_map, text = _config_and_label_map(path, state, pipeline_config_path)
    if label_map_path is not None:
        label_map = LabelMap.load(label_map_path)
        config_lib.validate(cfg, label_map, str(label_map_path))
    # computing as the run did: TF's conventions for TF weights and the zoo's *_keras extractors
    model, _ = builders.build_model(builders.model_message(cfg), label_map.ids,
                                    state.get("weights_convention", "torchvision"))
    try:
        model.load_state_dict(model_weights(state, cfg.eval_config.use_moving_averages, path))
    except RuntimeError as err:
        raise CheckpointError(f"{path} does not fit the model of the config ({err}); use the "
                              "pipeline.config the run was trained with") from None
    return TrainedModel(_detector(model.eval()), cfg, label_map, path, int(state.get("step", 0)), text)


def _detector(model: nn.Module) -> Detector:
    return cast(Detector, model)  # `builders.build_model` is typed nn.Module; it builds one of these


# ---- models the TF OD API trained ----------------------------------------------------------------


def find_tf_checkpoint(folder: str | os.PathLike[str]) -> Path | None:
    """The prefix of the TF checkpoint in `folder`: an extracted zoo model folder's `checkpoint/ckpt-0`,
    or a TF `model_dir`'s newest `ckpt-N` (both by their `checkpoint` state file, else the newest
    `*.index`); None when neither has one."""
    folder = Path(folder)
    for place in (folder / "checkpoint", folder):
        if place.is_dir():
            prefix = resolve_prefix(place)
            if prefix is not None:
                return prefix
    return None


def no_checkpoint_message(folder: str | os.PathLike[str]) -> str:
    """What was looked for in `folder`, for the error when nothing was found."""
    where = "" if Path(folder).is_dir() else " (no such folder)"
    return (f"{folder}{where}: no ckpt-<step>.pt checkpoint (a raredet run) and no TF checkpoint "
            f"(ckpt-N.index + ckpt-N.data-*) in {Path(folder) / 'checkpoint'} (an extracted TF2 zoo model) "
            f"or in the folder itself (a TF model_dir); train first with `raredet train --model_dir "
            f"{folder} ...`, or give the folder that holds the checkpoint")


def list_tf_checkpoints(folder: str | os.PathLike[str]) -> list[tuple[int, Path]]:
    """(N, prefix) of every complete `ckpt-N` TF checkpoint (its .index written) in `folder/checkpoint`
    and `folder`, oldest first (the TF OD API numbers its saves in order)."""
    found = []
    for place in (Path(folder) / "checkpoint", Path(folder)):
        if place.is_dir():
            for index in place.glob("ckpt-*.index"):
                match = TF_STEP_NAME.search(index.name[: -len(".index")])
                if match:
                    found.append((int(match.group(1)), index.with_name(index.name[: -len(".index")])))
    return sorted(found)


def tf_checkpoint_step(prefix: Path) -> int:
    """The training step of a TF checkpoint: its `step` variable (a `model_main_tf2.py` model_dir),
    else the N of `ckpt-N` (the zoo's ckpt-0 has no step)."""
    with open_checkpoint(prefix) as ckpt:
        key = ckpt.variables().get("step")
        if key is not None and ckpt.info(key).shape == ():
            return int(ckpt.tensor(key))
    match = TF_STEP_NAME.search(prefix.name)
    return int(match.group(1)) if match else 0


def _tf_config_path(folder: Path, prefix: Path,
                    pipeline_config_path: str | os.PathLike[str] | None) -> Path:
    if pipeline_config_path is not None:
        return Path(pipeline_config_path)
    for candidate in (folder / "pipeline.config", prefix.parent / "pipeline.config"):
        if candidate.is_file():
            return candidate
    raise ConfigError(f"{folder}: holds the TF checkpoint {prefix} but no pipeline.config; pass "
                      "--pipeline_config_path (the config the model was trained with)")


def tf_label_map(loaded: config_lib.LoadedConfig,
                 label_map_path: str | os.PathLike[str] | None) -> tuple[LabelMap, str | None]:
    """(label map, note): `label_map_path`, else the config's label_map_path where it exists, else
    classes named `class_<id>` for ids 1..num_classes (an extracted zoo folder's config says
    PATH_TO_BE_CONFIGURED), with a note saying so."""
    if label_map_path is not None:
        return LabelMap.load(label_map_path), None
    if loaded.label_map is not None:
        return loaded.label_map, None
    num_classes = int(builders.model_message(loaded.pipeline).num_classes)
    names = [f"class_{i}" for i in range(1, num_classes + 1)]
    note = (f"no label map (the config's label_map_path does not exist): classes named class_1 .. "
            f"class_{num_classes} by id; pass --label_map LABEL_MAP.pbtxt to name them")
    return LabelMap(list(range(1, num_classes + 1)), names, names, "<class_<id> names>"), note


def warn_tf_moving_averages(cfg: pipeline_pb2.TrainEvalPipelineConfig, config_path: str | os.PathLike[str],
                            prefix: Path) -> None:
    """Warn that a TF checkpoint's moving averages (optimizer slots) are not read, when the config asks
    for them."""
    if cfg.eval_config.use_moving_averages:
        warnings.warn(f"{config_path}: eval_config.use_moving_averages is set, but raredet reads a TF "
                      f"checkpoint's weights, not its optimizer's moving averages; using {prefix}'s raw "
                      "weights (the zoo's exported ckpt-0 already holds the averaged ones)", stacklevel=3)


def load_tf_model(folder: Path, prefix: Path, pipeline_config_path: str | os.PathLike[str] | None = None,
                  label_map_path: str | os.PathLike[str] | None = None) -> TrainedModel:
    """The model of a TF checkpoint (`prefix`, found in `folder`), built from the given config or the
    folder's pipeline.config and loaded whole, computing with TF's conventions."""
    config_path = _tf_config_path(folder, prefix, pipeline_config_path)
    loaded = config_lib.load(config_path)
    label_map, note = tf_label_map(loaded, label_map_path)
    config_lib.validate(loaded.pipeline, label_map, str(config_path))
    model, _ = builders.build_model(builders.model_message(loaded.pipeline), label_map.ids)
    warn_tf_moving_averages(loaded.pipeline, config_path, prefix)
    report = load_checkpoint_weights(model, prefix, "full")  # type: ignore[arg-type]
    notes = (f"TF checkpoint {prefix} with {config_path}: {report.summary()}",)
    return TrainedModel(_detector(model.eval()), loaded.pipeline, label_map, prefix,
                        tf_checkpoint_step(prefix), loaded.text, notes + ((note,) if note else ()))


def set_operating_points_from_file(trained: TrainedModel, path: str | os.PathLike[str],
                                   review: bool) -> dict[str, Any]:
    """Give `trained.model` the per-class thresholds of an operating_points.json (`raredet eval`): its
    scores are mapped so that each class's threshold lands on the file's `score_threshold`, which
    becomes NMS's score threshold (the review one with `review` and a review band). Returns the file's
    content. DataError when the file's classes are not the model's."""
    content = ops.load_operating_points(path)
    if not content.get("deployable", True):
        raise DataError(f"{path}: these thresholds lie outside (0, 1) (scores that are not probabilities, "
                        "e.g. score_converter IDENTITY), so no score map can carry them; use SIGMOID or "
                        "SOFTMAX")
    lm = trained.label_map
    for point in content["classes"]:
        index = int(lm.ids_to_indices(np.array([point.class_id]))[0])
        if index < 0 or point.class_name not in (lm.display_names[index], lm.names[index]):
            raise DataError(f"{path}: class {point.class_name!r} (id {point.class_id}) is not in the model's "
                            f"label map (ids {lm.ids}, names {lm.display_names}); use operating points "
                            "chosen for this model (or pass --label_map, the label map they were chosen "
                            "with)")
    maps = {lm.index_of_id(class_id): xy for class_id, xy in content["calibration"].items()}
    threshold = content["score_threshold"]
    if review and content["review_score_threshold"] is not None:
        threshold = content["review_score_threshold"]
    trained.model.set_operating_points(Calibration.piecewise_linear(lm.num_classes, maps), float(threshold))
    return content
