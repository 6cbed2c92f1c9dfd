"""TF2 object-based checkpoints the TF OD API wrote, loaded into raredet's models.

``load_tf_checkpoint(model, path, checkpoint_type)`` opens the checkpoint (``raredet.tfcheckpoint``, no
TensorFlow), finds its root -- ``model`` in a detection model's checkpoint (the zoo's
``checkpoint/ckpt-0``, a TF ``model_dir``'s ``ckpt-N``), ``feature_extractor`` in a classification
checkpoint (the zoo's ImageNet backbones) --, asks the model's family module which TF variable feeds
which raredet tensor, keeps the parts ``checkpoint_type`` selects, copies them (``common.copy_mapped``)
and switches the model to TF's conventions (``SSD.use_weights_convention("tf")``: padding, input
normalisation and the family's own settings), so that it computes what the TF OD API computes.

``checkpoint_type`` acts as the TF OD API's ``restore_from_objects`` does:

* ``"classification"``: the backbone (the feature extractor's ``classification_backbone``), from a
  classification checkpoint, or from a detection checkpoint's backbone;
* ``"detection"``: everything under ``model/_feature_extractor`` (backbone and FPN / BiFPN / extra
  layers), not the box predictor; for Faster R-CNN the two feature-extractor models
  ``model/_feature_extractor_for_{proposal,box_classifier}_features`` (the same prefix matches both);
* ``"full"``: everything; every raredet tensor must load, except class heads of another width (a
  checkpoint for another ``num_classes``: they keep their initialiser, and the report and a warning say
  so). ``"detection"`` is the TF OD API's way to fine-tune onto another label map.

Family modules (``mobilenet``, ``resnet``, ``efficientdet``, ``faster_rcnn`` -- with
``inception_resnet_v2`` for Mask R-CNN --, ``center_net``), imported when needed,
provide ``tensor_maps(model, shapes, root="model")`` and ``classification_maps(model, shapes,
root="feature_extractor")`` -> ``list[TensorMap]`` (``shapes``: ``{object path: shape}`` of every
variable of the checkpoint), with parts named ``"backbone"``, ``"fpn"`` / ``"bifpn"`` /
``"extra_layers"``, ``"box_predictor"`` (Faster R-CNN also ``"rpn"``, ``"second_stage"``). What an
architecture changes under TF's conventions belongs to the model (``use_weights_convention``, and the
backbones' ``use_tf_conventions``), not to these modules: a model rebuilt from a ``ckpt-N.pt`` trained
from TF weights gets it through ``tf_compat.apply_weights_convention`` alone.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import cast

import numpy as np
from torch import nn

from raredet.errors import CheckpointError
from raredet.modeling.load_report import CHECKPOINT_TYPES, CheckpointShapeWarning, LoadReport
from raredet.modeling.tf_compat import apply_weights_convention
from raredet.modeling.tf_weights.common import TensorMap, copy_mapped
from raredet.tfcheckpoint import open_checkpoint

DETECTION_ROOT = "model"
CLASSIFICATION_ROOT = "feature_extractor"
# SSD's model/_feature_extractor/ and Faster R-CNN's model/_feature_extractor_for_*_features/
FEATURE_EXTRACTOR_PREFIX = f"{DETECTION_ROOT}/_feature_extractor"
# SSD feature extractor name prefix -> family module
SSD_FAMILIES = (("ssd_mobilenet", "mobilenet"), ("ssd_resnet", "resnet"),
                ("ssd_efficientnet", "efficientdet"))

Shapes = Mapping[str, tuple[int, ...]]
# Part names of modules whose attribute name differs from the part their maps carry.
MODULE_PARTS = {"extra": "extra_layers"}


def family_name(model: nn.Module) -> str:
    """The ``tf_weights`` module that maps ``model``'s family."""
    if type(model).__name__ == "FasterRCNN":
        return "faster_rcnn"
    if type(model).__name__ == "CenterNet":
        return "center_net"
    key = str(getattr(model, "feature_extractor_type", ""))
    for prefix, name in SSD_FAMILIES:
        if key.startswith(prefix):
            return name
    raise CheckpointError(
        f"no TF checkpoint mapping for a {type(model).__name__} with feature extractor {key!r}")


def family_module(model: nn.Module) -> ModuleType:
    """The family module of ``model`` (imported now); a CheckpointError when it has no mapping yet."""
    name = family_name(model)
    try:
        module = importlib.import_module(f"raredet.modeling.tf_weights.{name}")
    except ModuleNotFoundError:
        module = None
    if module is None or not hasattr(module, "tensor_maps"):
        what = getattr(model, "feature_extractor_type", type(model).__name__)
        raise CheckpointError(
            f"reading TF checkpoints into {what} models is not supported yet (no TF variable mapping for "
            f"the {name!r} family); use a raredet or torchvision checkpoint, or train from scratch"
        )
    return module


def load_tf_checkpoint(model: nn.Module, path: str | Path, checkpoint_type: str) -> LoadReport:
    """Load the TF checkpoint ``path`` (``PREFIX``, ``PREFIX.index`` or its folder) into ``model`` as
    ``checkpoint_type`` says (module docstring) and switch the model to TF's conventions. The report
    says, per part, how many tensors loaded and which stay at their initialiser."""
    if checkpoint_type not in CHECKPOINT_TYPES:
        raise ValueError(f"unknown {checkpoint_type!r}; valid: {list(CHECKPOINT_TYPES)}")
    ckpt = open_checkpoint(path)
    variables = ckpt.variables()
    shapes = {p: tuple(ckpt.info(k).shape) for p, k in variables.items()}
    module = family_module(model)
    maps, read_prefix = _selected_maps(module, model, shapes, checkpoint_type, path)
    report = copy_mapped(model, lambda source: np.array(ckpt.tensor(variables[source])), maps, str(path))
    read = {variables[m.source] for m in maps if m.source in variables}
    report.unexpected += sorted({p for p, k in variables.items() if p.startswith(read_prefix)
                                 and k not in read and not p.startswith(f"{read_prefix}save_counter")})
    report.parts = part_counts(model, maps, report)
    _check(report, checkpoint_type, path)
    apply_weights_convention(model, "tf")
    report.convention = "tf"
    return report


def _selected_maps(module: ModuleType, model: nn.Module, shapes: Shapes, checkpoint_type: str,
                   path: str | Path) -> tuple[list[TensorMap], str]:
    """The maps ``checkpoint_type`` reads, and the object-path prefix of the variables it reads."""
    has_model = any(p.startswith(f"{DETECTION_ROOT}/") for p in shapes)
    has_backbone = any(p.startswith(f"{CLASSIFICATION_ROOT}/") for p in shapes)
    if not has_model and not has_backbone:
        raise CheckpointError(
            f"{path}: neither a detection model's (root 'model') nor a classification backbone's (root "
            "'feature_extractor') TF OD API checkpoint; `raredet inspect-checkpoint` lists its object paths"
        )
    if checkpoint_type == "classification" and has_backbone:
        return module.classification_maps(model, shapes, CLASSIFICATION_ROOT), f"{CLASSIFICATION_ROOT}/"
    if not has_model:
        raise CheckpointError(
            f"{path}: a classification checkpoint (root 'feature_extractor', a backbone only) cannot be "
            f"loaded as fine_tune_checkpoint_type {checkpoint_type!r}; set fine_tune_checkpoint_type: "
            '"classification"'
        )
    maps = module.tensor_maps(model, shapes, DETECTION_ROOT)
    if checkpoint_type == "classification":
        return [m for m in maps if m.part == "backbone"], FEATURE_EXTRACTOR_PREFIX
    if checkpoint_type == "detection":
        return [m for m in maps if m.source.startswith(FEATURE_EXTRACTOR_PREFIX)], FEATURE_EXTRACTOR_PREFIX
    return maps, f"{DETECTION_ROOT}/"


def _check(report: LoadReport, checkpoint_type: str, path: str | Path) -> None:
    if not report.loaded:
        raise CheckpointError(f"{path}: no TF variable matched the model ({report.summary()}); is "
                              f"fine_tune_checkpoint_type {checkpoint_type!r} right for this checkpoint and "
                              "config?")
    # 'full' needs every tensor; only class heads may differ (a checkpoint for another num_classes).
    wrong = report.missing + [t for t in report.shape_mismatch if not is_class_head(t)]
    if checkpoint_type == "full" and wrong:
        raise CheckpointError(
            f"{path}: fine_tune_checkpoint_type 'full' needs every tensor ({report.summary()}); first "
            f"missing/mismatched: {wrong[:3]}; use 'detection' to load the feature extractor only"
        )
    if report.shape_mismatch:
        warnings.warn(f"{path}: {len(report.shape_mismatch)} tensor(s) keep their initial values because "
                      "the config builds them at another shape than the checkpoint's: "
                      f"{report.mismatch_details()}", CheckpointShapeWarning, stacklevel=3)


def is_class_head(target: str) -> bool:
    """Whether a model tensor belongs to a class head (its width follows num_classes)."""
    return any(piece.startswith("class_head") for piece in target.split("."))


def part_of(target: str, mapped: Mapping[str, str]) -> str:
    """The part a model tensor belongs to: its map's, else named after its module."""
    if target in mapped:
        return mapped[target]
    pieces = target.split(".")
    name = pieces[1] if pieces[0] == "feature_extractor" and len(pieces) > 2 else pieces[0]
    return MODULE_PARTS.get(name, name)


def part_counts(model: nn.Module, maps: list[TensorMap], report: LoadReport) -> dict[str, tuple[int, int]]:
    """``{part: (tensors loaded, tensors in the model)}`` (batch norms' step counters not counted)."""
    mapped = {m.target: m.part for m in maps}
    loaded, counts = set(report.loaded), cast(dict[str, tuple[int, int]], {})
    for name in model.state_dict():
        if name.endswith("num_batches_tracked"):
            continue
        part = part_of(name, mapped)
        done, total = counts.get(part, (0, 0))
        counts[part] = (done + (name in loaded), total + 1)
    return counts
