"""Shared by the tests of raredet.builders (tests/builders/): a three-class label map and a text-format
parser."""

from __future__ import annotations

from typing import TypeVar

from google.protobuf import text_format
from google.protobuf.message import Message

from raredet.config import LabelMap

M = TypeVar("M", bound=Message)

LABELS = LabelMap.from_names(["scratch", "dent", "crack"])


def parse(text: str, message: M) -> M:
    """`message` filled from `text` (protobuf text format)."""
    return text_format.Parse(text, message)
