"""An SSD (or its conv_hyperparams) built from plain dicts shaped like the `model.ssd` message (field
names as in a pipeline.config, enums by name) through the builders: the modeling tests' small
configurations."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format

from raredet.builders.hyperparams import build_conv_hyperparams
from raredet.builders.ssd import build_ssd
from raredet.modeling.calibration import Calibration
from raredet.modeling.layers import ConvHyperparams
from raredet.modeling.ssd import SSD
from raredet.protos import hyperparams_pb2, ssd_pb2


def ssd_message(**fields: Any) -> ssd_pb2.Ssd:
    """`fields` as an `ssd` message (unknown names are a ParseError)."""
    return json_format.ParseDict(fields, ssd_pb2.Ssd())


def ssd_from_dicts(calibration: Calibration | None = None, **fields: Any) -> SSD:
    """The SSD of the `ssd` message `fields` spell out, as `raredet train` builds it."""
    return build_ssd(ssd_message(**fields), calibration)


def conv_hyperparams(fields: dict[str, Any], where: str = "conv_hyperparams") -> ConvHyperparams:
    """The ConvHyperparams of the `conv_hyperparams` block `fields` spell out (`builders.hyperparams`)."""
    return build_conv_hyperparams(json_format.ParseDict(fields, hyperparams_pb2.Hyperparams()), where)
