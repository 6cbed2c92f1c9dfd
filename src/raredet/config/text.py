"""Protobuf text parsing with `file:line:col` errors and "did you mean" hints; reading a text file."""

from __future__ import annotations

import difflib
import os
import re
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import TypeVar

from google.protobuf import descriptor_pool, text_format
from google.protobuf.message import Message

from raredet.config.extractors import (
    CENTER_NET_FEATURE_EXTRACTORS,
    FASTER_RCNN_FEATURE_EXTRACTORS,
    SSD_FEATURE_EXTRACTORS,
)
from raredet.errors import ConfigError

M = TypeVar("M", bound=Message)

# ---- text-format parsing with useful errors ------------------------------------------------------

_UNKNOWN_FIELD = re.compile(r'Message type "([\w.]+)" has no field named "([^"]*)"')
_UNKNOWN_ENUM = re.compile(r'Enum type "([\w.]+)" has no value named (\S+?)\.?$')


def _nearest(word: str, candidates: Iterable[str]) -> str | None:
    matches = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return matches[0] if matches else None


def _hint(message: str) -> str:
    """A 'did you mean' suffix for unknown field / enum value errors, else ''."""
    pool = descriptor_pool.Default()
    found = _UNKNOWN_FIELD.search(message)
    if found:
        try:
            fields = pool.FindMessageTypeByName(found.group(1)).fields_by_name
        except KeyError:
            return ""
        best = _nearest(found.group(2), fields)
        valid = ", ".join(sorted(fields))
        return f"; did you mean '{best}'?" if best else f"; valid fields here: {valid}"
    found = _UNKNOWN_ENUM.search(message)
    if found:
        try:
            values = pool.FindEnumTypeByName(found.group(1)).values_by_name
        except KeyError:
            return ""
        best = _nearest(found.group(2).strip('"'), values)
        valid = ", ".join(values)
        return f"; did you mean {best}?" if best else f"; valid values: {valid}"
    return ""


# TF OD API meta-architectures (the `model` oneof) that raredet does not build, by their config name.
OTHER_META_ARCHITECTURES = {
    "experimental_model": "experimental",
}


def unsupported_model_message(name: str) -> str:
    """What raredet says about `model { <name> { ... } }` for a meta-architecture it does not know: what
    it is and what raredet builds instead."""
    kind = OTHER_META_ARCHITECTURES.get(name)
    what = f"'{name}' is the TF OD API's {kind} meta-architecture, which" if kind else f"'{name}'"
    return (
        f"{what} raredet does not build. raredet trains the SSD family: model {{ ssd {{ ... }} }} "
        "(RetinaNet is an ssd with an FPN and the weight-shared predictor), with feature_extractor.type "
        f"one of {', '.join(sorted(SSD_FEATURE_EXTRACTORS))}; Faster R-CNN: "
        "model { faster_rcnn { ... } } "
        f"with one of {', '.join(sorted(FASTER_RCNN_FEATURE_EXTRACTORS))} (a _keras suffix is accepted); "
        f"and CenterNet: model {{ center_net {{ ... }} }} with one of "
        f"{', '.join(sorted(CENTER_NET_FEATURE_EXTRACTORS))}; "
        "docs/migrating.md lists which TF2 model-zoo configs train"
    )


def parse_text(text: str, message: M, path: str | os.PathLike[str]) -> M:
    """Parse protobuf text `text` into `message`; any failure becomes a ConfigError naming `path`.

    The error reads `path:line:column: what is wrong; did you mean 'x'?`.
    """
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            text_format.Parse(text, message)
    except text_format.ParseError as err:
        line, column = err.GetLine(), err.GetColumn()
        detail = str(err)
        if line is not None:
            detail = re.sub(r"^\d+:\d+ : ", "", detail)
        detail = detail.rstrip(".")
        where = f"{path}:{line}:{column}" if line is not None else str(path)
        other_model = _UNKNOWN_FIELD.search(detail)
        if other_model and other_model.group(1) == "raredet.protos.DetectionModel":
            name = other_model.group(2)
            raise ConfigError(f"{where}: model.{name}: {unsupported_model_message(name)}") from None
        raise ConfigError(f"{where}: {detail}{_hint(detail)}") from None
    except (ValueError, TypeError, OverflowError, RecursionError) as err:  # e.g. bad UTF-8 bytes
        raise ConfigError(f"{path}: cannot parse as protobuf text format: {err}") from None
    for warning in caught:  # protobuf decodes string escapes with Python's codec, which only warns
        if "invalid escape sequence" in str(warning.message):
            raise ConfigError(f"{path}: a string has an {warning.message}; write a backslash as \\\\ "
                              "(or use / in paths)")
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    return message


def read_text(path: Path, what: str) -> str:
    """The UTF-8 text of `path`; a missing, unreadable or non-UTF-8 file is a ConfigError naming `what`
    (e.g. "label map") and the path."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist; check the path") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{what} {path} is not UTF-8 text ({err}); save it as UTF-8") from None
    except OSError as err:
        raise ConfigError(f"{what} {path} cannot be read: {err}") from None


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """` (did you mean 'x'?)` with the candidate nearest `word`, or '' when none is near."""
    best = _nearest(word, candidates)
    return f" (did you mean '{best}'?)" if best else ""
