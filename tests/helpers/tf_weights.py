"""Helpers of the TF-weights tests: a model built from a fixture folder's pipeline.config, and raredet's
post-processed detections compared with the TF OD API's (a fixture's `tf_outputs.npz`)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

import raredet.config
from raredet import builders


def build(folder: Path, weights_convention: str | None = None) -> Any:
    """The model of `folder`/pipeline.config (`weights_convention` None: the config's default)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fields raredet parses but does not act on
        loaded = raredet.config.load(folder / "pipeline.config")
    model, _ = builders.build_model(builders.model_message(loaded.pipeline), None, weights_convention)
    return model


def assert_detections_equal_tf(model: Any, outputs: Mapping[str, torch.Tensor], tf: Mapping[str, np.ndarray],
                               tolerance: float = 1e-3) -> None:
    """Every TF detection above 0.01, in TF's order: the same class, its box (TF: ymin, xmin, ymax, xmax
    normalised to the true image inside the padded one, `true_image_shape`; raredet: x0, y0, x1, y1
    pixels, clipped to that image) and score within `tolerance`."""
    height, width = (int(v) for v in tf["true_image_shape"][:2])
    det = model.postprocess(outputs, torch.tensor([[height, width]]))
    tf_scores = tf["postprocess/detection_scores"]
    n = int((tf_scores > 0.01).sum())
    assert n > 10 and int(det["num_detections"][0]) >= n
    boxes = det["detection_boxes"][0, :n].numpy()[:, [1, 0, 3, 2]] / np.array([height, width] * 2)
    assert np.abs(boxes - tf["postprocess/detection_boxes"][:n]).max() < tolerance
    assert np.abs(det["detection_scores"][0, :n].numpy() - tf_scores[:n]).max() < tolerance
    assert (det["detection_classes"][0, :n].numpy() == tf["postprocess/detection_classes"][:n]).all()
