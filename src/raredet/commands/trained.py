"""The one loader of a trained model (`raredet eval`, `predict` and `export` share it) and the one rule
for which weights of a checkpoint to use: the EMA weights when `eval_config.use_moving_averages` asks for
them and the checkpoint has them, else the raw weights (with a warning when EMA was asked for)."""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from raredet import builders
from raredet import config as config_lib
from raredet.config import LabelMap
from raredet.engine.checkpoint import latest_checkpoint
from raredet.errors import CheckpointError, ConfigError, DataError
from raredet.evaluation import operating_points as ops
from raredet.modeling.calibration import Calibration
from raredet.modeling.tf_compat import apply_weights_convention


@dataclass
class TrainedModel:
    """A model restored from a training run, ready for inference (eval mode, on CPU)."""

    model: nn.Module  # raredet.modeling.ssd.SSD
    config: Any  # the TrainEvalPipelineConfig message it was built from
    label_map: LabelMap
    checkpoint: Path
    step: int
    config_text: str  # the pipeline.config text used (saved in the checkpoint, or the given file)


def _config_and_label_map(path: Path, state: dict[str, Any],
                          pipeline_config_path: str | os.PathLike[str] | None) -> tuple[Any, LabelMap, str]:
    """The config (given, else saved in the checkpoint) and its label map (the checkpoint's, else the
    config's label_map_path)."""
    if pipeline_config_path is not None:
        loaded = config_lib.load(pipeline_config_path)
        cfg, text, where, label_map = loaded.config, loaded.text, str(pipeline_config_path), loaded.label_map
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
                       pipeline_config_path: str | os.PathLike[str] | None = None) -> TrainedModel:
    """The newest loadable checkpoint of `model_dir` as a model in eval mode on CPU.

    Uses the EMA weights when the config's `eval_config.use_moving_averages` is set and the checkpoint
    has them (as `raredet eval` does).
    """
    found = latest_checkpoint(model_dir)
    if found is None:
        raise CheckpointError(f"{model_dir}: no ckpt-<step>.pt checkpoint; train first with "
                              f"`raredet train --model_dir {model_dir} ...`")
    path, state = found
    cfg, label_map, text = _config_and_label_map(path, state, pipeline_config_path)
    model, _ = builders.build_model(builders.model_message(cfg), label_map.ids)
    if state.get("weights_convention") == "tf":  # trained from TF OD API weights: compute as TF does
        apply_weights_convention(model, "tf")
    try:
        model.load_state_dict(model_weights(state, cfg.eval_config.use_moving_averages, path))
    except RuntimeError as err:
        raise CheckpointError(f"{path} does not fit the model of the config ({err}); use the "
                              "pipeline.config the run was trained with") from None
    return TrainedModel(model.eval(), cfg, label_map, path, int(state.get("step", 0)), text)



def apply_operating_points(trained: TrainedModel, path: str | os.PathLike[str],
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
                            "chosen for this model")
    maps = {lm.index_of_id(class_id): xy for class_id, xy in content["calibration"].items()}
    threshold = content["score_threshold"]
    if review and content["review_score_threshold"] is not None:
        threshold = content["review_score_threshold"]
    trained.model.set_operating_points(  # type: ignore[operator]
        Calibration.piecewise_linear(lm.num_classes, maps), float(threshold))
    return content
