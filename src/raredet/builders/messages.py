"""Generic message helpers: set fields as keyword arguments, oneof dispatch, enum names, and which
sub-message of a model message holds what."""

from __future__ import annotations

import re
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, cast

import numpy as np
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from raredet.errors import ConfigError, RaredetError
from raredet.protos import (
    center_net_pb2,
    faster_rcnn_pb2,
    losses_pb2,
    pipeline_pb2,
    post_processing_pb2,
    ssd_pb2,
)

# Fields the TF OD API has but whose effect raredet does not need (graph or TPU details).
_INERT_FIELDS = frozenset({"anchorwise_output", "use_matmul_gather"})


def _value(field: FieldDescriptor, value: Any) -> Any:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return message_kwargs(value)
    if field.type == FieldDescriptor.TYPE_ENUM:
        assert field.enum_type is not None
        return field.enum_type.values_by_number[value].name
    if field.type == FieldDescriptor.TYPE_FLOAT:  # float32 in the message: 0.1 -> 0.1, not 0.100000001
        return float(str(np.float32(value)))
    return value


def field_value(msg: Message, name: str) -> Any:
    """`msg.<name>` as `message_kwargs` gives it (enums by name, float32 as written: 0.1, not
    0.100000001); the message's default when unset."""
    field = cast(FieldDescriptor, msg.DESCRIPTOR.fields_by_name[name])
    return _value(field, getattr(msg, name))


def message_kwargs(msg: Message, skip: Sequence[str] = ()) -> dict[str, Any]:
    """The fields set in `msg` as plain Python values (enums as names, sub-messages as dicts)."""
    out: dict[str, Any] = {}
    for field, value in msg.ListFields():
        if field.name in skip or field.name in _INERT_FIELDS:
            continue
        if field.is_repeated and not _is_map(field):
            out[field.name] = [_value(field, v) for v in value]
        elif _is_map(field):
            out[field.name] = dict(value)
        else:
            out[field.name] = _value(field, value)
    return out


def _is_map(field: FieldDescriptor) -> bool:
    return field.message_type is not None and bool(field.message_type.GetOptions().map_entry)


def oneof_choice(msg: Message, oneof: str, table: Mapping[str, Any], where: str) -> tuple[str, Any, Any]:
    """(name, table[name], sub-message) of the oneof `oneof` in `msg`; ConfigError listing valid keys."""
    name = msg.WhichOneof(oneof)
    if name is None or name not in table:
        problem = "is not set" if name is None else f"{name!r} is not supported"
        raise ConfigError(f"{where}: {problem}; valid choices: {', '.join(table)}")
    return name, table[name], getattr(msg, name)


@contextmanager
def refused_as_config_error(where: str, fields: Collection[str] | None = None) -> Iterator[None]:
    """A library part refusing an argument it was given from the config (a ValueError, whose text does
    not know the config) as the ConfigError users see, under `where`, the field path the argument came
    from: `<where>.<text>` when the text starts with a field's name (any identifier if `fields` is
    None), else `<where>: <text>`; the text alone when `where` is "" (it names its field itself).
    raredet's own errors (a ConfigError already worded, a DataError about a file the part read) pass
    through."""
    try:
        yield
    except RaredetError:
        raise
    except ValueError as err:
        text = str(err)
        head = re.match(r"[A-Za-z_]\w*", text)
        by_field = head is not None and (fields is None or head.group() in fields)
        prefix = f"{where}{'.' if by_field else ': '}" if where else ""
        raise ConfigError(prefix + text) from None


def _enum_name(msg: Message, field: str) -> str:
    enum = msg.DESCRIPTOR.fields_by_name[field].enum_type
    assert enum is not None
    return enum.values_by_number[getattr(msg, field)].name


ModelMessage = ssd_pb2.Ssd | faster_rcnn_pb2.FasterRcnn | center_net_pb2.CenterNet


def model_message(config: pipeline_pb2.TrainEvalPipelineConfig) -> ModelMessage:
    """The model the config chose: `model.ssd`, `model.faster_rcnn` or `model.center_net`."""
    return getattr(config.model, config.model.WhichOneof("model") or "ssd")  # type: ignore[no-any-return]


def post_processing_of(msg: ModelMessage) -> post_processing_pb2.PostProcessing:
    """`model.ssd.post_processing` or `model.faster_rcnn.second_stage_post_processing` (the TF OD API's
    own places)."""
    if isinstance(msg, faster_rcnn_pb2.FasterRcnn):
        return msg.second_stage_post_processing
    return msg.post_processing


CALIBRATION_WHERE = "model.ssd.post_processing.calibration_config"


def post_processing_field(msg: ModelMessage) -> tuple[post_processing_pb2.PostProcessing, str]:
    """(the post-processing message of a model (`post_processing_of`), the field path of its
    `calibration_config`)."""
    if isinstance(msg, faster_rcnn_pb2.FasterRcnn):
        return post_processing_of(msg), "model.faster_rcnn.second_stage_post_processing.calibration_config"
    if isinstance(msg, center_net_pb2.CenterNet):
        return post_processing_of(msg), "model.center_net.post_processing.calibration_config"
    return post_processing_of(msg), CALIBRATION_WHERE


def class_weights_field(msg: ModelMessage) -> tuple[losses_pb2.ClassWeights, str, bool]:
    """(the `class_weights` message of a model, its field path, whether it is set)."""
    if isinstance(msg, faster_rcnn_pb2.FasterRcnn):
        return (msg.second_stage_class_weights, "model.faster_rcnn.second_stage_class_weights",
                msg.HasField("second_stage_class_weights"))
    if isinstance(msg, center_net_pb2.CenterNet):
        return msg.class_weights, "model.center_net.class_weights", msg.HasField("class_weights")
    return msg.loss.class_weights, "model.ssd.loss.class_weights", msg.loss.HasField("class_weights")
