"""``fine_tune_checkpoint`` loading: torchvision ImageNet backbones, raredet detection checkpoints, and
checkpoints the TF OD API wrote (``PREFIX.index`` + data files: the zoo's ``checkpoint/ckpt-0``, its
ImageNet backbones, a TF ``model_dir``'s ``ckpt-N``), which ``tf_weights.load_tf_checkpoint`` maps by
TF object path and which switch the model to TF's conventions.

``fine_tune_checkpoint_type``:

* ``"classification"``: a torchvision-format state dict (``.pth``/``.pt`` via ``torch.load`` with
  ``weights_only=True``, or ``.safetensors``) loaded by name into the backbone; the classifier
  (``fc.*`` / ``classifier.*``) is reported as unexpected.
* ``"detection"``: a raredet checkpoint (a dict whose ``"model"`` entry is the state dict) or a bare
  state dict, loaded by name into the whole model. Tensors whose shape differs (e.g. a class head
  trained for another number of classes) are skipped and reported, so a detector fine-tunes onto a new
  label map.
* ``"full"``: as ``"detection"``, but every parameter must load with its shape.

A ``module.`` prefix (left by ``DistributedDataParallel``) is removed first.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from raredet.errors import CheckpointError
from raredet.modeling.load_report import CHECKPOINT_TYPES, CheckpointShapeWarning, LoadReport

if TYPE_CHECKING:
    from raredet.modeling.ssd import SSD




def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The state dict in ``path`` (``.safetensors``, or ``torch.save`` read with ``weights_only=True``);
    a dict with a ``"model"`` entry (raredet checkpoint) yields that entry."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"{path}: fine_tune_checkpoint not found; check train_config.fine_tune_checkpoint"
        )
    data: Any
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            data = load_file(str(path))
        else:
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch/safetensors raise many types; all mean "cannot use this file"
        raise CheckpointError(
            f"{path}: cannot read as a state dict ({type(err).__name__}: {err}); give a torchvision .pth, "
            f"a .safetensors file or a raredet ckpt-N.pt"
        ) from err
    if isinstance(data, Mapping) and isinstance(data.get("model"), Mapping):
        data = data["model"]
    if not isinstance(data, Mapping) or not all(isinstance(v, Tensor) for v in data.values()):
        raise CheckpointError(
            f"{path}: expected a state dict (name -> tensor) or a dict with a 'model' entry"
        )
    return {k.removeprefix("module."): v for k, v in data.items()}


def load_state_dict_by_name(module: nn.Module, state: Mapping[str, Tensor]) -> LoadReport:
    """Copy every entry of ``state`` whose name and shape match into ``module``; report the rest."""
    own = module.state_dict()
    report = LoadReport()
    matching = {}
    for name, tensor in state.items():
        if name not in own:
            report.unexpected.append(name)
        elif own[name].shape != tensor.shape:
            report.shape_mismatch.append(name)
            report.mismatched_shapes[name] = (tuple(tensor.shape), tuple(own[name].shape))
        else:
            matching[name] = tensor
    module.load_state_dict(matching, strict=False)
    report.loaded = sorted(matching)
    report.unexpected.sort()
    report.shape_mismatch.sort()
    report.missing = sorted(set(own) - set(matching) - set(report.shape_mismatch))
    return report


def check_checkpoint_type(checkpoint_type: str) -> None:
    """ValueError listing the valid types unless ``checkpoint_type`` is one. TF1's ``"fine_tune"``
    gets the TF OD API's own advice (CenterNet's ``restore_from_objects`` refuses it the same way)."""
    if checkpoint_type == "fine_tune":
        raise ValueError("'fine_tune' is no longer supported for CenterNet (nor by raredet); set "
                         "fine_tune_checkpoint_type to 'detection', which has the same functionality (the "
                         "TF OD API's advice), or 'full' to load every tensor")
    if checkpoint_type not in CHECKPOINT_TYPES:
        raise ValueError(f"unknown {checkpoint_type!r}; valid: {list(CHECKPOINT_TYPES)}")


def load_checkpoint_weights(model: SSD, path: str | Path, checkpoint_type: str) -> LoadReport:
    """Load ``path`` into ``model`` (an ``SSD``) as ``checkpoint_type`` says (see the module docstring)."""
    check_checkpoint_type(checkpoint_type)
    from raredet.tfcheckpoint import is_tf_checkpoint

    if is_tf_checkpoint(path):  # a checkpoint the TF OD API wrote (PREFIX.index + data)
        from raredet.modeling.tf_weights import load_tf_checkpoint

        return load_tf_checkpoint(model, path, checkpoint_type)
    state = read_state_dict(path)
    target = model.backbone if checkpoint_type == "classification" else model
    report = load_state_dict_by_name(target, state)
    if not report.loaded:
        raise CheckpointError(
            f"{path}: no entry matched the model by name and shape ({report.summary()}); is "
            f"fine_tune_checkpoint_type {checkpoint_type!r} right for this file and feature extractor?"
        )
    if checkpoint_type == "full" and (report.missing or report.shape_mismatch):
        raise CheckpointError(
            f"{path}: fine_tune_checkpoint_type 'full' needs every parameter ({report.summary()}); first "
            f"missing/mismatched: {(report.missing + report.shape_mismatch)[:3]}; "
            "use 'detection' to skip them"
        )
    if checkpoint_type == "classification" and report.shape_mismatch:
        # A backbone layer the config builds at another width than the file's (a depth_multiplier, or
        # the TF1 ssd_mobilenet_v2_fpn with use_depthwise, whose last conv is 256 wide): it keeps its
        # initializer's weights, as the TF OD API skips variables whose shape differs from the checkpoint.
        warnings.warn(
            f"{path}: {len(report.shape_mismatch)} backbone tensor(s) keep their initial weights because "
            f"the config builds them at another shape than the checkpoint's: {report.mismatch_details()}",
            CheckpointShapeWarning,
            stacklevel=2,
        )
    return report
