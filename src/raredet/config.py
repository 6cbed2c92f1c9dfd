"""Reading `pipeline.config` and `label_map.pbtxt`: parsing, validation, LabelMap, effective config.

`load(path)` is the only way the rest of raredet gets a config: it parses the protobuf text format,
turns every syntax error or misspelt field into a `ConfigError` naming file, line, column and the
nearest valid field name, resolves relative paths against the config file's directory, checks the
values raredet acts on, and warns once about fields it parses but ignores.
"""

from __future__ import annotations

import difflib
import glob
import math
import os
import re
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar, cast

import numpy as np
from google.protobuf import descriptor_pool, text_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from raredet.errors import ConfigError
from raredet.fileio import atomic_write_text
from raredet.protos import image_resizer_pb2, losses_pb2, pipeline_pb2, ssd_pb2, string_int_label_map_pb2
from raredet.protos.input_reader_pb2 import InputReader

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
    if found and found.group(1) == "raredet.protos.DetectionModel":
        return "; raredet builds SSD-family models only: model { ssd { ... } } (RetinaNet is an ssd)"
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
        raise ConfigError(f"{where}: {detail}{_hint(detail)}") from None
    except (ValueError, TypeError, OverflowError, RecursionError) as err:  # e.g. bad UTF-8 bytes
        raise ConfigError(f"{path}: cannot parse as protobuf text format: {err}") from None
    for warning in caught:  # protobuf decodes string escapes with Python's codec, which only warns
        if "invalid escape sequence" in str(warning.message):
            raise ConfigError(f"{path}: a string has an {warning.message}; write a backslash as \\\\ "
                              "(or use / in paths)")
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    return message


def _read_text(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist; check the path") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{what} {path} is not UTF-8 text ({err}); save it as UTF-8") from None
    except OSError as err:
        raise ConfigError(f"{what} {path} cannot be read: {err}") from None


# ---- label map -----------------------------------------------------------------------------------


class LabelMap:
    """The single owner of label-map id <-> name <-> contiguous index conversions.

    Label-map ids start at 1 (0 is background, never listed); contiguous indices 0..K-1 follow
    ascending id. `name` falls back to `display_name` and vice versa when only one is given.
    """

    def __init__(
        self,
        ids: Sequence[int],
        names: Sequence[str],
        display_names: Sequence[str],
        path: str = "<label map>",
    ) -> None:
        order = sorted(range(len(ids)), key=lambda i: ids[i])
        self.path = path
        self._ids = tuple(int(ids[i]) for i in order)
        self._names = tuple(names[i] for i in order)
        self._display = tuple(display_names[i] for i in order)
        self._validate()
        self._index_by_id = {id_: i for i, id_ in enumerate(self._ids)}
        self._index_by_name = {n: i for i, n in enumerate(self._display)}
        self._index_by_name.update({n: i for i, n in enumerate(self._names)})  # name wins

    def _validate(self) -> None:
        if not self._ids:
            raise ConfigError(f"{self.path}: the label map has no items; add `item {{ id: 1 name: ... }}`")
        for id_, name in zip(self._ids, self._names, strict=True):
            if id_ <= 0:
                raise ConfigError(
                    f"{self.path}: item '{name}' has id {id_}; ids must be >= 1 "
                    "(0 is background, which raredet adds itself — remove that item)"
                )
            if not name:
                raise ConfigError(f"{self.path}: item with id {id_} has neither name nor display_name")
        _reject_duplicates(self._ids, "id", self.path)
        _reject_duplicates(self._names, "name", self.path)

    # -- construction --
    @classmethod
    def parse(cls, text: str, path: str | os.PathLike[str] = "<label map>") -> LabelMap:
        """Parse label-map text (`item { id name display_name }`); errors name `path`."""
        msg = parse_text(text, string_int_label_map_pb2.StringIntLabelMap(), path)
        for n, item in enumerate(msg.item):
            if not item.HasField("id"):
                raise ConfigError(f"{path}: item #{n + 1} ('{item.name or item.display_name}') has no id")
        names = [item.name or item.display_name for item in msg.item]
        display = [item.display_name or item.name for item in msg.item]
        return cls([item.id for item in msg.item], names, display, str(path))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> LabelMap:
        """Read and parse a label_map.pbtxt file."""
        return cls.parse(_read_text(Path(path), "label map"), path)

    @classmethod
    def from_names(cls, names: Sequence[str]) -> LabelMap:
        """Ids 1..K in the given order, display_name = name."""
        return cls(list(range(1, len(names) + 1)), list(names), list(names), "<label map from names>")

    # -- properties, in index order --
    @property
    def num_classes(self) -> int:
        return len(self._ids)

    @property
    def ids(self) -> list[int]:
        return list(self._ids)

    @property
    def names(self) -> list[str]:
        return list(self._names)

    @property
    def display_names(self) -> list[str]:
        return list(self._display)

    # -- single conversions --
    def index_of_id(self, id_: int) -> int:
        """Contiguous index of label-map id `id_`; ConfigError when the id is not in the map."""
        try:
            return self._index_by_id[int(id_)]
        except KeyError:
            raise ConfigError(f"{self.path}: no class with id {id_}; the ids are {self.ids}") from None

    def index_of_name(self, name: str) -> int:
        """Contiguous index of the class whose `name` (else `display_name`) is `name`."""
        try:
            return self._index_by_name[name]
        except KeyError:
            raise ConfigError(
                f"{self.path}: no class named '{name}'{_did_you_mean(name, self._index_by_name)}; "
                f"the names are {self.names}"
            ) from None

    def id_of_index(self, index: int) -> int:
        return self._ids[self._check_index(index)]

    def name_of_index(self, index: int) -> str:
        return self._names[self._check_index(index)]

    def _check_index(self, index: int) -> int:
        if not 0 <= index < len(self._ids):
            raise ConfigError(f"{self.path}: class index {index} is outside 0..{len(self._ids) - 1}")
        return index

    # -- vectorised conversions (-1 for unknown, so the caller can name the record) --
    def ids_to_indices(self, ids: np.ndarray) -> np.ndarray:
        """Label-map ids (any integer shape) -> int64 contiguous indices of the same shape, -1 unknown."""
        ids = np.asarray(ids, dtype=np.int64)
        table = np.asarray(self._ids, dtype=np.int64)
        pos = np.clip(np.searchsorted(table, ids), 0, len(table) - 1)  # table is sorted ascending
        return np.where(table[pos] == ids, pos, -1).astype(np.int64)

    def names_to_indices(self, names: Sequence[str]) -> np.ndarray:
        """Class names (or display names) -> int64 [N] contiguous indices, -1 unknown."""
        lookup = self._index_by_name
        return np.fromiter((lookup.get(n, -1) for n in names), dtype=np.int64, count=len(names))

    # -- writing --
    def to_pbtxt(self) -> str:
        msg = string_int_label_map_pb2.StringIntLabelMap()
        for id_, name, display in zip(self._ids, self._names, self._display, strict=True):
            msg.item.add(id=id_, name=name, display_name=display)
        return text_format.MessageToString(msg)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the label map atomically as pbtxt."""
        return atomic_write_text(path, self.to_pbtxt())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LabelMap):
            return NotImplemented
        return (self._ids, self._names, self._display) == (other._ids, other._names, other._display)

    def __repr__(self) -> str:
        return f"LabelMap({dict(zip(self._ids, self._names, strict=True))})"


def _did_you_mean(word: str, candidates: Iterable[str]) -> str:
    best = _nearest(word, candidates)
    return f" (did you mean '{best}'?)" if best else ""


def _reject_duplicates(values: Sequence[object], what: str, path: str) -> None:
    seen: set[object] = set()
    for value in values:
        if value in seen:
            raise ConfigError(f"{path}: {what} {value!r} appears more than once; each {what} must be unique")
        seen.add(value)


# ---- pipeline.config -----------------------------------------------------------------------------

# Fields raredet parses (so TF OD API configs load unchanged) but does not act on. Setting one gives a
# single warning that lists them all. Keys are "<message full name>.<field>"; this is the one list.
NOT_ACTED_ON: frozenset[str] = frozenset(
    "raredet.protos." + name
    for name in (
        # TPU / TF1 distribution and graph details: torchrun replaces them.
        "TrainConfig.sync_replicas",
        "TrainConfig.startup_delay_steps",
        "TrainConfig.replicas_to_aggregate",
        "TrainConfig.use_bfloat16",
        "TrainConfig.fine_tune_checkpoint_version",
        "TrainConfig.keep_checkpoint_every_n_hours",
        "TrainConfig.batch_queue_capacity",
        "TrainConfig.num_batch_queue_threads",
        "TrainConfig.prefetch_queue_capacity",
        "TrainConfig.unpad_groundtruth_tensors",
        "TrainConfig.retain_original_images",
        "TrainConfig.summarize_gradients",
        "TrainConfig.from_detection_checkpoint",
        "TrainConfig.load_all_detection_checkpoint_vars",
        "TrainConfig.run_fine_tune_checkpoint_dummy_computation",
        "TrainConfig.merge_multiple_label_boxes",
        "TrainConfig.use_multiclass_scores",
        "TrainConfig.bias_grad_multiplier",
        "Ssd.inplace_batchnorm_update",
        "Ssd.return_raw_detections_during_predict",
        "Ssd.use_confidences_as_targets",
        "SsdFeatureExtractor.replace_preprocessor_with_placeholder",
        "ArgMaxMatcher.use_matmul_gather",
        "BipartiteMatcher.use_matmul_gather",
        "BatchNonMaxSuppression.use_static_shapes",
        "BatchNonMaxSuppression.use_partitioned_nms",
        "BatchNonMaxSuppression.use_combined_nms",
        "BatchNonMaxSuppression.use_cpu_nms",
        "Hyperparams.regularize_depthwise",
        # Deprecated in the TF OD API: the losses are always per anchor.
        "WeightedL2LocalizationLoss.anchorwise_output",
        "WeightedSmoothL1LocalizationLoss.anchorwise_output",
        "WeightedSigmoidClassificationLoss.anchorwise_output",
        "SigmoidFocalClassificationLoss.anchorwise_output",
        "WeightedSoftmaxClassificationLoss.anchorwise_output",
        "WeightedSoftmaxClassificationAgainstLogitsLoss.anchorwise_output",
        "BootstrappedSigmoidClassificationLoss.anchorwise_output",
        # Parsed, with no effect in raredet (the boxes per image are not capped; no masks; one FPN kind).
        "TrainConfig.max_number_of_boxes",
        "InputReader.max_number_of_boxes",
        "InputReader.use_display_name",
        "InputReader.load_instance_masks",
        "InputReader.include_source_id",
        "Loss.expected_loss_weights",
        "Loss.equalization_loss",
        "Ssd.add_background_class",
        "Ssd.explicit_background_class",
        "SsdFeatureExtractor.bifpn",
        "EvalConfig.export_path",
        "EvalConfig.visualization_export_dir",
        "EvalConfig.max_num_boxes_to_visualize",
        "EvalConfig.skip_scores",
        "EvalConfig.recall_lower_bound",
        "EvalConfig.force_no_resize",
        # tf.data queue tuning: raredet uses a torch DataLoader.
        "InputReader.num_readers",  # the DataLoader's worker count is the caller's choice
        "InputReader.shuffle_buffer_size",  # the sampler shuffles the whole dataset
        "InputReader.queue_capacity",
        "InputReader.min_after_dequeue",
        "InputReader.prefetch_size",
        "InputReader.num_parallel_map_calls",
        "InputReader.read_block_length",
        "InputReader.num_parallel_batches",
        "InputReader.num_prefetch_batches",
        "InputReader.filenames_shuffle_buffer_size",
        "InputReader.input_type",
        "InputReader.frame_index",
        "InputReader.load_context_features",
        "InputReader.load_dense_pose",
        "InputReader.load_track_id",
        "InputReader.expand_labels_hierarchy",
        "TrainEvalPipelineConfig.graph_rewriter",
        # TF1 continuous evaluation loop and TF-graph details.
        "EvalConfig.eval_interval_secs",
        "EvalConfig.max_evals",
        "EvalConfig.num_examples",
        "EvalConfig.save_graph",
        "EvalConfig.eval_master",
        "EvalConfig.eval_instance_masks",
        "EvalConfig.retain_original_images",
        "EvalConfig.retain_original_image_additional_channels",
        "EvalConfig.use_dummy_loss_in_eval",
    )
)


class ConfigWarning(UserWarning):
    """A pipeline.config that raredet can use, with something the user should know about."""


@dataclass(frozen=True)
class LoadedConfig:
    """What `load` returns.

    config: the parsed message, with relative input paths already resolved against `path`'s folder.
    label_map: the train (else eval) reader's label map, None when no label_map_path is set or the
        file does not exist (only an error with check_paths=True).
    path: the config file.  text: its text as read.  warnings: the messages also issued as warnings.
    """

    config: pipeline_pb2.TrainEvalPipelineConfig
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
    text = _read_text(path, "pipeline config")
    config = parse_config(text, path)
    resolve_paths(config, path.resolve().parent)
    label_map = _load_label_map(config, path)
    validate(config, label_map, path)
    if check_paths:
        check_input_paths(config, path)
    notes = _not_acted_on_warnings(config, path) + _unchecked_classes_warnings(config, label_map, path)
    for note in notes:
        warnings.warn(note, ConfigWarning, stacklevel=2)
    return LoadedConfig(config, label_map, path, text, tuple(notes))


def _readers(config: pipeline_pb2.TrainEvalPipelineConfig) -> list[tuple[str, InputReader]]:
    """(field path, reader) for every input reader present."""
    readers = []
    if config.HasField("train_input_reader"):
        readers.append(("train_input_reader", config.train_input_reader))
    readers += [(f"eval_input_reader[{i}]", r) for i, r in enumerate(config.eval_input_reader)]
    return readers


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
    for _, reader in _readers(config):
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


# ---- label map of a config ---------------------------------------------------------------------------


def _load_label_map(config: pipeline_pb2.TrainEvalPipelineConfig, path: Path) -> LabelMap | None:
    """The readers' label map; all readers that name an existing one must agree."""
    found: list[tuple[str, LabelMap]] = []
    for name, reader in _readers(config):
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


# ---- semantic validation -----------------------------------------------------------------------------


class _Checker:
    """Raises ConfigError naming the config file and the field path."""

    def __init__(self, path: Path | str, label_map: LabelMap | None) -> None:
        self.path = path
        self.label_map = label_map

    def fail(self, field: str, problem: str) -> NoReturn:
        raise ConfigError(f"{self.path}: {field}: {problem}")

    def number(self, value: float, field: str, low: float = 0.0, high: float = math.inf, *,
               low_open: bool = False, high_open: bool = False) -> None:
        """`value` must be finite and within [low, high] (ends open when asked)."""
        ok = math.isfinite(value) and (value > low if low_open else value >= low)
        ok = ok and (value < high if high_open else value <= high)
        if ok:
            return
        if math.isinf(high):
            allowed = f"a finite number {'>' if low_open else '>='} {low:g}"
        else:
            allowed = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        problem = "is out of range" if math.isfinite(value) else "is not a finite number"
        self.fail(field, f"{value!r} {problem}; it must be {allowed}")

    def class_ref(self, ref: losses_pb2.ClassWeight | losses_pb2.ClassAlpha, field: str) -> int | None:
        """The contiguous index of the class `ref` names; None when no label map is loaded."""
        kind = ref.WhichOneof("class_ref")
        if kind is None:
            self.fail(field, 'names no class; set `name: "..."` or `id: N`')
        if self.label_map is None:
            return None
        lm = self.label_map
        if kind == "id":
            index = int(lm.ids_to_indices(np.array([ref.id]))[0])
            if index < 0:
                self.fail(f"{field}.id", f"{ref.id} is not in the label map {lm.path}; its ids are {lm.ids}")
            return index
        index = int(lm.names_to_indices([ref.name])[0])
        if index < 0:
            known = lm.names + lm.display_names
            self.fail(f"{field}.name", f"'{ref.name}' is not in the label map {lm.path}"
                      f"{_did_you_mean(ref.name, known)}; its names are {lm.names}")
        return index

    def per_class_values(self, refs: Sequence[losses_pb2.ClassWeight | losses_pb2.ClassAlpha],
                         field: str, high: float) -> None:
        seen: dict[int, int] = {}
        for i, ref in enumerate(refs):
            where = f"{field}[{i}]"
            index = self.class_ref(ref, where)
            if not ref.HasField("value"):
                self.fail(where, "has no value; add `value: <number>`")
            self.number(ref.value, f"{where}.value", 0.0, high)
            if index is not None and index in seen:
                self.fail(where, f"names the same class as {field}[{seen[index]}]; give each class once")
            if index is not None:
                seen[index] = i


def validate(config: pipeline_pb2.TrainEvalPipelineConfig, label_map: LabelMap | None,
             path: Path | str = "<pipeline.config>") -> None:
    """Check the values raredet acts on; raises ConfigError naming `path` and the field path."""
    check = _Checker(path, label_map)
    if not config.model.HasField("ssd"):
        check.fail("model", "has no `ssd { ... }` block; raredet builds SSD-family models only")
    _validate_ssd(config.model.ssd, check)
    _validate_loss(config.model.ssd.loss, check)
    if config.train_config.HasField("batch_size") and config.train_config.batch_size < 1:
        check.fail("train_config.batch_size", "must be at least 1")
    for name, reader in _readers(config):
        _validate_reader(reader, name, check)


def _validate_ssd(ssd: ssd_pb2.Ssd, check: _Checker) -> None:
    if ssd.num_classes < 1:
        check.fail("model.ssd.num_classes", f"is {ssd.num_classes}; set it to the number of classes "
                   "in the label map (background not counted)")
    lm = check.label_map
    if lm is not None and ssd.num_classes != lm.num_classes:
        check.fail("model.ssd.num_classes", f"is {ssd.num_classes} but the label map {lm.path} has "
                   f"{lm.num_classes} classes; make them agree (background is not counted)")
    check.number(ssd.negative_class_weight, "model.ssd.negative_class_weight", 0.0, 1.0)
    _validate_matcher(ssd, check)
    _validate_anchors(ssd, check)
    _validate_resizer(ssd.image_resizer, check)
    nms = ssd.post_processing.batch_non_max_suppression
    check.number(nms.iou_threshold, "model.ssd.post_processing.batch_non_max_suppression.iou_threshold", 0, 1)


def _validate_matcher(ssd: ssd_pb2.Ssd, check: _Checker) -> None:
    if ssd.matcher.WhichOneof("matcher_oneof") != "argmax_matcher":
        return
    where = "model.ssd.matcher.argmax_matcher"
    argmax = ssd.matcher.argmax_matcher
    check.number(argmax.matched_threshold, f"{where}.matched_threshold", 0.0, 1.0)
    check.number(argmax.unmatched_threshold, f"{where}.unmatched_threshold", 0.0, 1.0)
    if not argmax.ignore_thresholds and argmax.unmatched_threshold > argmax.matched_threshold:
        check.fail(f"{where}.unmatched_threshold", f"{argmax.unmatched_threshold:g} is above "
                   f"matched_threshold {argmax.matched_threshold:g}; it must be lower or equal")


def _validate_anchors(ssd: ssd_pb2.Ssd, check: _Checker) -> None:
    if ssd.anchor_generator.WhichOneof("anchor_generator_oneof") != "multiscale_anchor_generator":
        return
    where = "model.ssd.anchor_generator.multiscale_anchor_generator"
    anchors = ssd.anchor_generator.multiscale_anchor_generator
    if anchors.min_level > anchors.max_level:
        check.fail(where, f"min_level {anchors.min_level} is above max_level {anchors.max_level}")
    check.number(anchors.anchor_scale, f"{where}.anchor_scale", 0.0, low_open=True)
    for i, ratio in enumerate(anchors.aspect_ratios):
        check.number(ratio, f"{where}.aspect_ratios[{i}]", 0.0, low_open=True)
    if anchors.scales_per_octave < 1:
        check.fail(f"{where}.scales_per_octave", "must be at least 1")
    fpn = ssd.feature_extractor.fpn
    if ssd.feature_extractor.HasField("fpn") and (fpn.min_level, fpn.max_level) != (
            anchors.min_level, anchors.max_level):
        check.fail(where, f"levels {anchors.min_level}-{anchors.max_level} differ from "
                   f"model.ssd.feature_extractor.fpn levels {fpn.min_level}-{fpn.max_level}; "
                   "anchors need one feature map per level, so make them equal")


def _validate_resizer(resizer: image_resizer_pb2.ImageResizer, check: _Checker) -> None:
    where = "model.ssd.image_resizer"
    kind = resizer.WhichOneof("image_resizer_oneof")
    if kind == "fixed_shape_resizer" and min(resizer.fixed_shape_resizer.height,
                                               resizer.fixed_shape_resizer.width) < 1:
        check.fail(f"{where}.fixed_shape_resizer", "height and width must be at least 1")
    if kind == "keep_aspect_ratio_resizer":
        keep = resizer.keep_aspect_ratio_resizer
        if not 1 <= keep.min_dimension <= keep.max_dimension:
            check.fail(f"{where}.keep_aspect_ratio_resizer", "needs 1 <= min_dimension "
                       f"({keep.min_dimension}) <= max_dimension ({keep.max_dimension})")


def _validate_loss(loss: losses_pb2.Loss, check: _Checker) -> None:
    where = "model.ssd.loss"
    check.number(loss.classification_weight, f"{where}.classification_weight")
    check.number(loss.localization_weight, f"{where}.localization_weight")
    cls = loss.classification_loss
    kind = cls.WhichOneof("classification_loss")
    if kind == "weighted_sigmoid_focal":
        focal_where = f"{where}.classification_loss.weighted_sigmoid_focal"
        _validate_focal(cls.weighted_sigmoid_focal, focal_where, check)
    elif kind == "custom":
        _validate_custom(cls.custom, f"{where}.classification_loss.custom", check)
    if loss.localization_loss.WhichOneof("localization_loss") == "custom":
        _validate_custom(loss.localization_loss.custom, f"{where}.localization_loss.custom", check)
    if loss.HasField("hard_example_miner"):
        miner = loss.hard_example_miner
        check.number(miner.iou_threshold, f"{where}.hard_example_miner.iou_threshold", 0.0, 1.0)
        for name in ("num_hard_examples", "max_negatives_per_positive", "min_negatives_per_image"):
            check.number(getattr(miner, name), f"{where}.hard_example_miner.{name}")
    if loss.HasField("class_weights"):
        _validate_class_weights(loss.class_weights, f"{where}.class_weights", check)


def _validate_focal(focal: losses_pb2.SigmoidFocalClassificationLoss, where: str, check: _Checker) -> None:
    check.number(focal.gamma, f"{where}.gamma")
    if focal.HasField("alpha"):
        check.number(focal.alpha, f"{where}.alpha", 0.0, 1.0)
    check.per_class_values(focal.class_alpha, f"{where}.class_alpha", high=1.0)


def _validate_custom(custom: losses_pb2.CustomLoss, where: str, check: _Checker) -> None:
    if not custom.name or not custom.module:
        check.fail(where, 'needs both `name: "<registered loss>"` and `module: "<importable.module>"`')
    for key, value in custom.params.items():
        if not math.isfinite(value):
            check.fail(f"{where}.params['{key}']", f"{value!r} is not a finite number")


def _validate_class_weights(weights: losses_pb2.ClassWeights, where: str, check: _Checker) -> None:
    check.per_class_values(weights.weight, f"{where}.weight", high=math.inf)
    if weights.HasField("auto"):
        auto = weights.auto
        check.number(auto.beta, f"{where}.auto.beta", 0.0, 1.0, high_open=True)
        check.number(auto.max_weight, f"{where}.auto.max_weight")
    elif not weights.weight:
        check.fail(where, "is empty; add `weight { name: \"...\" value: ... }` entries or `auto { }`")


def _validate_reader(reader: InputReader, where: str, check: _Checker) -> None:
    if reader.WhichOneof("input_reader") is None:
        check.fail(where, "has no data source; set one of tf_record_input_reader { input_path }, "
                   "coco_input_reader { annotations_path image_dir } or voc_input_reader { root }")
    if reader.HasField("repeat_factor_sampling"):
        threshold = reader.repeat_factor_sampling.threshold
        check.number(threshold, f"{where}.repeat_factor_sampling.threshold", 0.0, 1.0, low_open=True)
    if reader.sample_1_of_n_examples < 1:
        check.fail(f"{where}.sample_1_of_n_examples", "must be at least 1")


# ---- input paths -------------------------------------------------------------------------------------


def _reader_paths(reader: InputReader, where: str) -> list[tuple[str, str, str]]:
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
    needed = [item for name, reader in _readers(config) for item in _reader_paths(reader, name)]
    if config.train_config.fine_tune_checkpoint:
        needed.append(("train_config.fine_tune_checkpoint", config.train_config.fine_tune_checkpoint, "file"))
    missing = [f"{field} = {p or '(empty)'}" for field, p, kind in needed if not _path_ok(p, kind)]
    if missing:
        raise ConfigError(
            f"{path}: input paths not found (relative paths are taken from the config's folder): "
            + "; ".join(missing)
        )


# ---- fields parsed but not acted on ---------------------------------------------------------------------


def _set_fields(msg: Message, prefix: str = "") -> Iterator[tuple[str, FieldDescriptor, Any]]:
    """(field path, descriptor, value) for every field set in `msg`, depth first (maps not entered)."""
    for fd, value in msg.ListFields():
        name = f"{prefix}.{fd.name}" if prefix else fd.name
        yield name, fd, value
        if fd.message_type is None or fd.message_type.GetOptions().map_entry:
            continue
        if fd.is_repeated:
            for i, item in enumerate(value):
                yield from _set_fields(item, f"{name}[{i}]")
        else:
            yield from _set_fields(value, name)


def not_acted_on(config: Message) -> list[str]:
    """Field paths in `config` that raredet ignores (NOT_ACTED_ON) and that are set to a value other
    than their default (a default value changes nothing, so it is not worth a warning)."""
    ignored = []
    for name, fd, value in _set_fields(config):
        if fd.full_name in NOT_ACTED_ON and (fd.message_type is not None or value != fd.default_value):
            ignored.append(name)
    return ignored


def _not_acted_on_warnings(config: pipeline_pb2.TrainEvalPipelineConfig, path: Path | str) -> list[str]:
    ignored = not_acted_on(config)
    ignored += [f"eval_input_reader[{i}] (only the first eval_input_reader is evaluated)"
                for i in range(1, len(config.eval_input_reader))]
    if not ignored:
        return []
    return [f"{path}: raredet parses but does not act on these fields (they have no effect here): "
            + ", ".join(ignored)]


def _unchecked_classes_warnings(config: pipeline_pb2.TrainEvalPipelineConfig, label_map: LabelMap | None,
                                path: Path | str) -> list[str]:
    loss = config.model.ssd.loss
    refs = len(loss.class_weights.weight) + len(loss.classification_loss.weighted_sigmoid_focal.class_alpha)
    if label_map is not None or refs == 0:
        return []
    return [f"{path}: no label map was loaded (label_map_path unset or not found), so the classes named in "
            "model.ssd.loss (class_weights, class_alpha) cannot be checked until the label map is there"]


# ---- effective config --------------------------------------------------------------------------------


def _fill_defaults(msg: Message) -> None:
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
                    _fill_defaults(item)
            elif msg.HasField(fd.name):
                _fill_defaults(getattr(msg, fd.name))
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
    _fill_defaults(filled)
    return text_format.MessageToString(filled)


# ---- one-screen summary (`raredet config check`) ---------------------------------------------------


def check(path: str | os.PathLike[str], check_paths: bool = False) -> str:
    """Load and validate `path` (ConfigError if unusable, including what only building the model,
    loss, augmentations and optimizer finds); return a one-screen summary of it.

    The not-acted-on warning goes into the summary instead of Python's warning output.
    """
    from raredet.builders import check_buildable  # imported here: builders import this module

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConfigWarning)
        loaded = load(path, check_paths=check_paths)
    check_buildable(loaded)
    return summary_text(loaded)


def _scalar_text(fd: FieldDescriptor, value: Any) -> str:
    if fd.enum_type is not None:
        return fd.enum_type.values_by_number[value].name
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"  # float32 fields: 0.800000011920929 reads as 0.8
    return '"' + value.replace('"', '\\"') + '"' if isinstance(value, str) else str(value)


def _one_line(msg: Message) -> str:
    """Compact text of the set fields: repeated scalars as [a, b], floats to 6 significant digits."""
    parts = []
    for fd, value in msg.ListFields():
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            parts.append(f"{fd.name} {dict(value)}")
        elif fd.message_type is not None:
            parts += [f"{fd.name} {{ {_one_line(v)} }}" for v in (value if fd.is_repeated else [value])]
        elif fd.is_repeated:
            parts.append(f"{fd.name}: [{', '.join(_scalar_text(fd, v) for v in value)}]")
        else:
            parts.append(f"{fd.name}: {_scalar_text(fd, value)}")
    return " ".join(parts)


def _oneof_text(msg: Message, oneof: str) -> str:
    """`name { a: 1 b: 2 }` for the member set in `oneof`, or 'none'."""
    kind = msg.WhichOneof(oneof)
    if kind is None:
        return "none"
    body = _one_line(getattr(msg, kind))
    return f"{kind} {{ {body} }}" if body else kind


def _model_lines(ssd: ssd_pb2.Ssd) -> list[str]:
    fe = ssd.feature_extractor
    fpn = f", fpn levels {fe.fpn.min_level}-{fe.fpn.max_level}" if fe.HasField("fpn") else ""
    return [
        f"model:        ssd, feature extractor {fe.type or '(unset)'}{fpn}",
        f"  resizer:    {_oneof_text(ssd.image_resizer, 'image_resizer_oneof')}",
        f"  anchors:    {_oneof_text(ssd.anchor_generator, 'anchor_generator_oneof')}",
        f"  predictor:  {ssd.box_predictor.WhichOneof('box_predictor_oneof') or 'none'}",
    ]


def _class_lines(ssd: ssd_pb2.Ssd, label_map: LabelMap | None) -> list[str]:
    if label_map is None:
        return [f"classes:      {ssd.num_classes} (no label map loaded: label_map_path unset or not found)"]
    shown = ", ".join(f"{i}:{n}" for i, n in zip(label_map.ids, label_map.names, strict=True))
    if len(shown) > 90:
        shown = shown[:87] + "..."
    return [f"classes:      {label_map.num_classes} from {label_map.path}", f"  ids:names:  {shown}"]


def _loss_lines(loss: losses_pb2.Loss) -> list[str]:
    miner = "none"
    if loss.HasField("hard_example_miner"):
        miner = _one_line(loss.hard_example_miner) or "defaults"
    return [
        f"losses:       classification {_oneof_text(loss.classification_loss, 'classification_loss')}"
        f" x {loss.classification_weight:g}",
        f"              localization {_oneof_text(loss.localization_loss, 'localization_loss')}"
        f" x {loss.localization_weight:g}",
        f"  hard example miner: {miner}",
    ]


def _class_weight_lines(weights: losses_pb2.ClassWeights, label_map: LabelMap | None) -> list[str]:
    if not weights.weight and not weights.HasField("auto"):
        return ["class weights: none (every class 1.0)"]
    lines = ["class weights:" + ("" if weights.apply_to_localization else " (classification only)")]
    if weights.HasField("auto"):
        auto = weights.auto
        clip = f" max_weight={auto.max_weight:g}" if auto.max_weight > 0 else ""
        lines.append(f"  auto: {losses_pb2.AutoClassWeights.Scheme.Name(auto.scheme)} beta={auto.beta:g} "
                     f"count={losses_pb2.AutoClassWeights.Count.Name(auto.count)}{clip} "
                     "(computed from the training data at train time)")
    lines.append(f"  {'id':>4}  {'name':<24} weight")
    for id_, name, value in _weight_rows(weights, label_map):
        lines.append(f"  {id_:>4}  {name:<24} {value}")
    return lines


def _weight_rows(weights: losses_pb2.ClassWeights, label_map: LabelMap | None) -> list[tuple[str, str, str]]:
    """(id, name, weight) per class: every class when a label map is loaded, else the entries given."""
    if label_map is None:
        return [_given_row(w) for w in weights.weight]
    given = {}
    for w in weights.weight:
        by_id = w.WhichOneof("class_ref") == "id"
        given[label_map.index_of_id(w.id) if by_id else label_map.index_of_name(w.name)] = f"{w.value:g}"
    rest = "auto" if weights.HasField("auto") else "1"
    return [(str(label_map.id_of_index(i)), label_map.name_of_index(i), given.get(i, rest))
            for i in range(label_map.num_classes)]


def _given_row(weight: losses_pb2.ClassWeight) -> tuple[str, str, str]:
    by_id = weight.WhichOneof("class_ref") == "id"
    return (str(weight.id) if by_id else "?", "?" if by_id else weight.name, f"{weight.value:g}")


def _input_lines(config: pipeline_pb2.TrainEvalPipelineConfig) -> list[str]:
    lines = ["inputs:"]
    for name, reader in _readers(config):
        source = reader.WhichOneof("input_reader")
        paths = _reader_paths(reader, name)[1 if reader.label_map_path else 0:]
        shown = ", ".join(p for _, p, _ in paths[:3]) + (", ..." if len(paths) > 3 else "")
        lines.append(f"  {name}: {source} {shown}")
        if reader.HasField("repeat_factor_sampling"):
            lines.append(f"    repeat factor sampling, threshold {reader.repeat_factor_sampling.threshold:g}")
    return lines if len(lines) > 1 else ["inputs:       none"]


def summary_text(loaded: LoadedConfig) -> str:
    """A one-screen description: model, classes, losses, class weights table, inputs, warnings."""
    ssd = loaded.config.model.ssd
    lines = [f"{loaded.path}: OK"]
    lines += _model_lines(ssd) + _class_lines(ssd, loaded.label_map) + _loss_lines(ssd.loss)
    lines += _class_weight_lines(ssd.loss.class_weights, loaded.label_map) + _input_lines(loaded.config)
    lines += [f"warning: {w}" for w in loaded.warnings]
    return "\n".join(lines)
