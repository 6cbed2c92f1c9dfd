"""Reading a `pipeline.config`: load, relative paths, the config's label map, input paths, effective config.

`load(path)` is the only way the rest of raredet gets a config: it parses the protobuf text format,
turns every syntax error or misspelt field into a `ConfigError` naming file, line, column and the
nearest valid field name, resolves relative paths against the config file's directory, checks the
values raredet acts on, and warns once about fields it parses but ignores.
"""

from __future__ import annotations

import glob
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from google.protobuf import text_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from raredet.config.label_map import LabelMap
from raredet.config.text import parse_text, read_text
from raredet.config.validate import (
    NOT_ACTED_ON,
    ConfigWarning,
    input_readers,
    not_acted_on_warnings,
    unchecked_classes_warnings,
    validate,
)
from raredet.errors import ConfigError
from raredet.protos import pipeline_pb2
from raredet.protos.input_reader_pb2 import InputReader


@dataclass(frozen=True)
class LoadedConfig:
    """What `load` returns.

    pipeline: the parsed message, with relative input paths already resolved against `path`'s folder.
    label_map: the train (else eval) reader's label map, None when no label_map_path is set or the
        file does not exist (only an error with check_paths=True).
    path: the config file.  text: its text as read.  warnings: the messages also issued as warnings.
    """

    pipeline: pipeline_pb2.TrainEvalPipelineConfig
    label_map: LabelMap | None
    path: Path
    text: str
    warnings: tuple[str, ...] = ()


def parse_config(
    text: str, path: str | os.PathLike[str] = "<pipeline.config>"
) -> pipeline_pb2.TrainEvalPipelineConfig:
    """Parse pipeline.config text only (no path resolution, no validation)."""
    return parse_text(text, pipeline_pb2.TrainEvalPipelineConfig(), path)


def load(path: str | os.PathLike[str], check_paths: bool = False) -> LoadedConfig:
    """Read, parse and validate a pipeline.config; see the module docstring.

    Relative paths in input readers (`label_map_path`, `input_path`, `annotations_path`, `image_dir`,
    `root`) and `train_config.fine_tune_checkpoint` are resolved against the config file's folder, so
    a config works from any working directory. With `check_paths`, input paths that do not exist (or
    globs that match nothing) are an error. Raises ConfigError; warns (ConfigWarning) once about
    fields raredet parses but does not act on.
    """
    path = Path(path)
    text = read_text(path, "pipeline config")
    config = parse_config(text, path)
    resolve_paths(config, path.resolve().parent)
    label_map = _load_label_map(config, path)
    validate(config, label_map, path)
    if check_paths:
        check_input_paths(config, path)
    notes = (not_acted_on_warnings(config, path) + unchecked_classes_warnings(config, label_map, path)
             + unchecked_keypoint_warnings(config, path))
    for note in notes:
        warnings.warn(note, ConfigWarning, stacklevel=2)
    return LoadedConfig(config, label_map, path, text, tuple(notes))

def _exists(path: str, kind: str = "any") -> bool:
    try:
        p = Path(path)
        return p.is_file() if kind == "file" else p.is_dir() if kind == "dir" else p.exists()
    except (OSError, ValueError):  # e.g. an embedded NUL byte: certainly not an existing path
        return False


# ---- relative paths --------------------------------------------------------------------------------


def _resolved(value: str, base: Path) -> str:
    if not value:
        return value
    candidate = Path(os.path.expanduser(value))
    return str(candidate if candidate.is_absolute() else Path(os.path.normpath(base / candidate)))


def resolve_paths(config: pipeline_pb2.TrainEvalPipelineConfig, base: Path) -> None:
    """Make the input paths of `config` absolute, relative ones taken from `base` (in place)."""
    for _, reader in input_readers(config):
        reader.label_map_path = _resolved(reader.label_map_path, base)
        source = reader.WhichOneof("input_reader")  # touch only the set member: others would switch it
        if source == "tf_record_input_reader":
            paths = reader.tf_record_input_reader.input_path
            paths[:] = [_resolved(p, base) for p in paths]
        elif source == "coco_input_reader":
            coco = reader.coco_input_reader
            coco.annotations_path = _resolved(coco.annotations_path, base)
            coco.image_dir = _resolved(coco.image_dir, base)
        elif source == "voc_input_reader":
            reader.voc_input_reader.root = _resolved(reader.voc_input_reader.root, base)
    train = config.train_config
    if train.fine_tune_checkpoint:
        train.fine_tune_checkpoint = _resolved(train.fine_tune_checkpoint, base)
    if config.model.WhichOneof("model") == "center_net":
        center_net = config.model.center_net
        center_net.keypoint_label_map_path = _resolved(center_net.keypoint_label_map_path, base)


def keypoint_label_map_missing(config: pipeline_pb2.TrainEvalPipelineConfig) -> bool:
    """Whether the config has a CenterNet keypoint task whose `keypoint_label_map_path` is not found (the
    zoo's kpts configs ship with PATH_TO_BE_CONFIGURED there, as they do for the data): `config check`
    then checks the model without the task, with a note; `raredet train` refuses it."""
    if config.model.WhichOneof("model") != "center_net":
        return False
    center_net = config.model.center_net
    return bool(center_net.keypoint_estimation_task) and not _exists(center_net.keypoint_label_map_path,
                                                                     "file")


def unchecked_keypoint_warnings(config: pipeline_pb2.TrainEvalPipelineConfig, path: Path) -> list[str]:
    """The note of `keypoint_label_map_missing`."""
    if not keypoint_label_map_missing(config):
        return []
    given = config.model.center_net.keypoint_label_map_path or "(unset)"
    return [f"{path}: model.center_net.keypoint_label_map_path: {given} not found, so the keypoint task "
            "was not checked; set it to the label map whose item for keypoint_class_name lists the "
            "keypoints (raredet train needs it)"]


# ---- label map of a config ---------------------------------------------------------------------------


def _load_label_map(config: pipeline_pb2.TrainEvalPipelineConfig, path: Path) -> LabelMap | None:
    """The readers' label map; all readers that name an existing one must agree."""
    found: list[tuple[str, LabelMap]] = []
    for name, reader in input_readers(config):
        if reader.label_map_path and _exists(reader.label_map_path):
            found.append((f"{name}.label_map_path", LabelMap.load(reader.label_map_path)))
    if not found:
        return None
    first_field, first = found[0]
    for field, other in found[1:]:
        if other != first:
            raise ConfigError(
                f"{path}: {field} ({other.path}) differs from {first_field} ({first.path}); "
                "train and eval must use the same classes — point both at one label map"
            )
    return first


# ---- input paths -------------------------------------------------------------------------------------


def reader_paths(reader: InputReader, where: str) -> list[tuple[str, str, str]]:
    """(field, path, kind) for every input path a reader needs; kind is file, dir or glob."""
    needed = [(f"{where}.label_map_path", reader.label_map_path, "file")] if reader.label_map_path else []
    source = reader.WhichOneof("input_reader")
    if source == "tf_record_input_reader":
        paths = reader.tf_record_input_reader.input_path
        if not paths:
            needed.append((f"{where}.tf_record_input_reader.input_path", "", "glob"))
        field = f"{where}.tf_record_input_reader.input_path"
        needed += [(f"{field}[{i}]", p, "glob") for i, p in enumerate(paths)]
    elif source == "coco_input_reader":
        coco = reader.coco_input_reader
        needed.append((f"{where}.coco_input_reader.annotations_path", coco.annotations_path, "file"))
        needed.append((f"{where}.coco_input_reader.image_dir", coco.image_dir, "dir"))
    elif source == "voc_input_reader":
        voc = reader.voc_input_reader
        root = Path(voc.root) if voc.root else None
        needed.append((f"{where}.voc_input_reader.root", voc.root, "dir"))
        if root is not None:
            needed.append((f"{where}.voc_input_reader.root (Annotations)", str(root / "Annotations"), "dir"))
            needed.append((f"{where}.voc_input_reader.root (JPEGImages)", str(root / "JPEGImages"), "dir"))
            image_set = root / "ImageSets" / "Main" / f"{voc.image_set}.txt"
            needed.append((f"{where}.voc_input_reader.image_set", str(image_set), "file"))
    return needed


def _path_ok(path: str, kind: str) -> bool:
    if not path:
        return False
    if kind == "checkpoint":  # a file (.pt, .pth, .safetensors) or a TF checkpoint's PREFIX
        from raredet.tfcheckpoint import is_tf_checkpoint

        return _exists(path, "file") or is_tf_checkpoint(path)
    if kind == "glob":
        try:
            return bool(glob.glob(path)) if glob.has_magic(path) else _exists(path, "file")
        except (OSError, ValueError):
            return False
    return _exists(path, kind)


def check_input_paths(
    config: pipeline_pb2.TrainEvalPipelineConfig, path: Path | str = "<pipeline.config>"
) -> None:
    """ConfigError listing every input path that does not exist (globs: that match nothing)."""
    needed = [item for name, reader in input_readers(config) for item in reader_paths(reader, name)]
    if config.train_config.fine_tune_checkpoint:
        needed.append(("train_config.fine_tune_checkpoint", config.train_config.fine_tune_checkpoint,
                       "checkpoint"))
    missing = [f"{field} = {p or '(empty)'}" for field, p, kind in needed if not _path_ok(p, kind)]
    if missing:
        raise ConfigError(
            f"{path}: input paths not found (relative paths are taken from the config's folder): "
            + "; ".join(missing)
        )


# ---- effective config --------------------------------------------------------------------------------


def fill_defaults(msg: Message) -> None:
    """Set every unset scalar that has an explicit default, in `msg` and its set sub-messages.
    Fields raredet ignores (NOT_ACTED_ON) are not filled in.

    Fields without an explicit default (e.g. focal `alpha`, where unset means "no alpha term") and
    oneof members stay unset, so the output parses back to the same meaning.
    """
    fields = cast(Sequence[FieldDescriptor], msg.DESCRIPTOR.fields)  # the stubs name two classes
    for fd in fields:
        if fd.message_type is not None:
            if fd.message_type.GetOptions().map_entry:
                continue
            if fd.is_repeated:
                for item in getattr(msg, fd.name):
                    fill_defaults(item)
            elif msg.HasField(fd.name):
                fill_defaults(getattr(msg, fd.name))
        elif _fillable(msg, fd):
            setattr(msg, fd.name, fd.default_value)


def _fillable(msg: Message, fd: FieldDescriptor) -> bool:
    if fd.is_repeated or fd.containing_oneof is not None or not fd.has_default_value:
        return False
    # "" means unset: not worth a line. Ignored fields are not shown as if they had an effect.
    return not msg.HasField(fd.name) and fd.default_value != "" and fd.full_name not in NOT_ACTED_ON


def effective_config_text(config: Message) -> str:
    """`config` as protobuf text with every default of the blocks present written out."""
    filled = type(config)()
    filled.CopyFrom(config)
    fill_defaults(filled)
    return text_format.MessageToString(filled)
