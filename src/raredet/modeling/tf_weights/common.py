"""What every family's TF-name mapping shares: a ``TensorMap`` per raredet tensor, the layouts TF keeps
its tensors in, and copying the mapped tensors into a model with a load report.

A family module (``mobilenet.py``, ``resnet.py``, ``efficientdet.py``, ``faster_rcnn.py`` ...) only
says *which* TF variable feeds *which* raredet tensor (``TensorMap``), for the parts it knows; this
module reads, converts, checks the shapes and copies. Layouts:

* ``"conv"``: a Keras ``Conv2D`` kernel ``[kh, kw, in, out]`` -> torch ``[out, in, kh, kw]``;
* ``"depthwise"``: a Keras ``DepthwiseConv2D`` kernel ``[kh, kw, in, multiplier]`` -> torch
  ``[in * multiplier, 1, kh, kw]`` (output channel ``c * multiplier + m``, as both order them);
* ``"dense"``: a Keras ``Dense`` kernel ``[in, out]`` -> torch ``Linear.weight [out, in]``;
* ``"vector"``: a bias, a batch-norm gamma/beta/moving mean/moving variance: unchanged;
* ``"flat"``: any shape -> 1-D (a BiFPN's fusion weights ``[n, 1]`` -> ``[n]``).

A ``TensorMap`` may also select output channels (``out_index``: e.g. a class head that drops TF's
background column) after the layout change.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from raredet.errors import CheckpointError
from raredet.modeling.load_report import LoadReport

LAYOUTS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "conv": lambda a: a.transpose(3, 2, 0, 1),
    "depthwise": lambda a: a.transpose(2, 3, 0, 1).reshape(a.shape[2] * a.shape[3], 1, *a.shape[:2]),
    "dense": lambda a: a.T,
    "vector": lambda a: a,
    "flat": lambda a: a.reshape(-1),
}


@dataclass(frozen=True)
class TensorMap:
    """One raredet tensor (``target``, a ``state_dict`` name) filled from one TF variable (``source``,
    its object path in the checkpoint, without ``/.ATTRIBUTES/VARIABLE_VALUE``).

    ``part`` groups the maps for the load report and for ``fine_tune_checkpoint_type`` (e.g.
    ``"backbone"``, ``"fpn"``, ``"box_predictor"``); ``out_index`` picks rows of dimension 0 after the
    layout change (None: all)."""

    target: str
    source: str
    layout: str
    part: str
    out_index: tuple[int, ...] | None = None


def convert(array: np.ndarray, layout: str, out_index: Sequence[int] | None = None) -> torch.Tensor:
    """``array`` as TF holds it -> a float32 torch tensor in raredet's layout."""
    converted = LAYOUTS[layout](np.asarray(array, dtype=np.float32))
    if out_index is not None:
        converted = converted[np.asarray(out_index, dtype=np.int64)]
    return torch.from_numpy(np.ascontiguousarray(converted))


def copy_mapped(model: nn.Module, read: Callable[[str], np.ndarray], maps: Iterable[TensorMap],
                where: str) -> LoadReport:
    """Copy every map's source into ``model``'s ``target``; the report lists targets loaded and the
    model's tensors no map fed (``missing``). ``read(source)`` returns the TF array (or raises
    ``KeyError`` when the checkpoint has no such variable, reported as ``unexpected`` by its source).
    A shape that differs after conversion is ``shape_mismatch`` (a head for another number of classes
    keeps its initialiser). ``where`` names the checkpoint in errors."""
    own = model.state_dict()
    report = LoadReport()
    values: dict[str, torch.Tensor] = {}
    for item in maps:
        if item.target not in own:
            raise CheckpointError(f"{where}: internal mapping names {item.target!r}, which the model lacks")
        try:
            tensor = convert(read(item.source), item.layout, item.out_index)
        except KeyError:
            report.unexpected.append(item.source)
            continue
        if tuple(tensor.shape) != tuple(own[item.target].shape):
            report.shape_mismatch.append(item.target)
            report.mismatched_shapes[item.target] = (tuple(tensor.shape), tuple(own[item.target].shape))
            continue
        values[item.target] = tensor
    model.load_state_dict(values, strict=False)
    report.loaded = sorted(values)
    report.missing = sorted(set(own) - set(values) - set(report.shape_mismatch) - _untrained_buffers(model))
    report.unexpected.sort()
    report.shape_mismatch.sort()
    return report


def _untrained_buffers(model: nn.Module) -> set[str]:
    """Buffers no checkpoint carries: batch norm's ``num_batches_tracked``."""
    return {name for name in model.state_dict() if name.endswith("num_batches_tracked")}
