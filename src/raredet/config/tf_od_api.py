"""A pipeline.config the TF OD API itself loads: raredet's config with raredet's own fields left out.

The TF OD API's `config_util` parses with its own schema and refuses a whole file for one field it does
not know (`eval_config.operating_points`, `class_weights`, `class_alpha`, `coco_input_reader` ...). So
where raredet writes a config meant for a TF deployment (the per-class operating points as a
`calibration_config`), it also writes this copy. Which fields the TF OD API knows is read from
`tf_od_api_schema.json`: every message, field (name and number) and enum value of the TF OD API's own
`object_detection/protos`, written from its generated descriptors by
`tests/fixtures/tf_schema/write_tf_schema.py` (TF OD API 2.15). A set field is kept when the TF OD API
has a field of that name and number in the message of the same name; an enum value when the TF OD API's
enum of that name has it. Everything else is cleared and named in the returned list.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

PACKAGE = "raredet.protos."


@cache
def tf_schema() -> dict[str, Any]:
    """The TF OD API's messages and enums (`tf_od_api_schema.json`)."""
    text = resources.files("raredet.config").joinpath("tf_od_api_schema.json").read_text(encoding="utf-8")
    return json.loads(text)


def tf_od_api_copy(config: Message) -> tuple[Message, list[str]]:
    """(a copy of `config` with every field the TF OD API lacks cleared, the paths of those fields)."""
    copy = type(config)()
    copy.CopyFrom(config)
    removed: list[str] = []
    _strip(copy, "", removed)
    return copy, removed


def _strip(message: Message, where: str, removed: list[str]) -> None:
    schema = tf_schema()
    known = schema["messages"].get(message.DESCRIPTOR.full_name.removeprefix(PACKAGE), {})
    for field, value in message.ListFields():
        path = f"{where}{field.name}"
        entry = known.get(field.name)
        if entry is None or entry["number"] != field.number:
            message.ClearField(field.name)
            removed.append(path)
        elif field.type == FieldDescriptor.TYPE_ENUM:
            _strip_enum(message, field, value, path, removed)
        elif field.type in (FieldDescriptor.TYPE_MESSAGE, FieldDescriptor.TYPE_GROUP):
            _strip_messages(field, value, path, removed)


def _strip_messages(field: FieldDescriptor, value: Any, path: str, removed: list[str]) -> None:
    assert field.message_type is not None  # a message field
    if field.message_type.GetOptions().map_entry:
        for key in value:
            item = value[key]
            if isinstance(item, Message):
                _strip(item, f"{path}[{key}].", removed)
    elif _is_repeated(field):
        for i, item in enumerate(value):
            _strip(item, f"{path}[{i}].", removed)
    else:
        _strip(value, f"{path}.", removed)


def _strip_enum(message: Message, field: FieldDescriptor, value: Any, path: str, removed: list[str]) -> None:
    assert field.enum_type is not None  # an enum field
    allowed = set(tf_schema()["enums"].get(field.enum_type.full_name.removeprefix(PACKAGE), []))
    values = list(value) if _is_repeated(field) else [value]
    names = [field.enum_type.values_by_number[v].name for v in values]
    if all(name in allowed for name in names):
        return
    message.ClearField(field.name)
    removed.append(f"{path} ({', '.join(n for n in names if n not in allowed)})")


def _is_repeated(field: FieldDescriptor) -> bool:
    return bool(field.is_repeated)
