"""Operating-point rules and the evaluation options of `eval_config`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf import text_format

from raredet.builders.messages import model_message, post_processing_of, refused_as_config_error
from raredet.config import LabelMap, LoadedConfig, parse_config
from raredet.errors import ConfigError
from raredet.evaluation.operating_points import Rule
from raredet.evaluation.options import COCO_SET, KEYPOINT_SET, MASK_SET, EvalOptions, KeypointMetric
from raredet.protos import eval_pb2, string_int_label_map_pb2

OPERATING_POINTS_WHERE = "eval_config.operating_points"


def _float32(value: float) -> float:
    """A float field as written in the config (0.9, not 0.8999999761581421)."""
    return float(str(np.float32(value)))


def _rule(msg: Any, where: str, default: Rule | None) -> Rule:
    """The Rule of an OperatingPoints / ClassOperatingPoint message; unset parts from `default`."""
    kind = msg.WhichOneof("rule")
    base = default or Rule()
    target: float | None = None
    if kind in ("target_precision", "target_recall"):
        target = _float32(getattr(msg, kind))
        if not (0.0 < target <= 1.0):
            raise ConfigError(f"{where}.{kind}: {target:g} is outside (0, 1]; give a fraction such as 0.9")
    elif kind is None:
        kind, target = base.kind, base.target
    review = _float32(msg.review_precision) if msg.HasField("review_precision") else base.review_precision
    if review is not None and not (0.0 < review <= 1.0):
        raise ConfigError(f"{where}.review_precision: {review:g} is outside (0, 1]; "
                          "give a fraction such as 0.5")
    return Rule(kind, target, review)


def build_operating_point_rules(eval_config: eval_pb2.EvalConfig, label_map: LabelMap | None,
                                override: Rule | None = None) -> tuple[Rule, dict[str, Rule]]:
    """(rule for every class, {label-map name: rule}) from `eval_config.operating_points`.

    `override` (the `--operating_point` flag) replaces the rule for every class, per-class rules
    included. Class names must be label-map names (ConfigError with the field path)."""
    msg = eval_config.operating_points
    default = _rule(msg, OPERATING_POINTS_WHERE, None)
    per_class: dict[str, Rule] = {}
    for i, entry in enumerate(msg.class_rule):
        where = f"{OPERATING_POINTS_WHERE}.class_rule[{i}]"
        if not entry.name:
            raise ConfigError(f"{where}.name: is empty; give the class's label-map name")
        name = entry.name
        if label_map is not None:  # evaluation names classes by display name
            index = int(label_map.names_to_indices([name])[0])
            if index < 0:
                raise ConfigError(f"{where}.name: '{name}' is not a name in the label map {label_map.path}; "
                                  f"its names are {label_map.names}")
            name = label_map.display_names[index]
        if name in per_class:
            raise ConfigError(f"{where}.name: '{entry.name}' has a rule already; give each class once")
        per_class[name] = _rule(entry, where, default)
    if override is not None:
        return override, {}
    return default, per_class


def eval_options(loaded: LoadedConfig, operating_point: Rule | None = None) -> EvalOptions:
    """The evaluation options of `eval_config` (`engine.evaluate.evaluate` takes them).

    `operating_point`: a rule for every class that replaces `eval_config.operating_points`' rules
    (the `--operating_point` flag)."""
    from raredet.evaluation.pipeline import check_metrics_sets  # here: the evaluation's import is slow

    ec = loaded.pipeline.eval_config
    with refused_as_config_error("eval_config.metrics_set", fields=()):
        check_metrics_sets(list(ec.metrics_set))
    rule, class_rules = build_operating_point_rules(ec, loaded.label_map, operating_point)
    _check_masks_loaded(loaded)
    return EvalOptions(
        metrics_set=tuple(ec.metrics_set) or COCO_SET,
        min_score_threshold=ec.min_score_threshold,
        include_metrics_per_category=True,
        num_visualizations=ec.num_visualizations,
        operating_point_rule=rule,
        class_rules=class_rules,
        score_floor=post_processing_of(model_message(loaded.pipeline)).batch_non_max_suppression.score_threshold,
        images_description=_eval_data_description(loaded),
        keypoint_metrics=build_keypoint_metrics(ec, loaded.label_map),
        super_categories=_super_categories(ec, loaded.label_map),
    )


def _super_categories(eval_config: eval_pb2.EvalConfig,
                      label_map: LabelMap | None) -> dict[str, tuple[str, ...]]:
    """`super_categories` (name -> comma-separated classes) with each class as the evaluation names it
    (its label-map display name; a name the label map lacks is kept, and counts for nothing)."""
    out = {}
    for key, value in sorted(eval_config.super_categories.items()):
        members = [n.strip() for n in value.split(",") if n.strip()]
        if label_map is not None:
            index = label_map.names_to_indices(members)
            members = [label_map.display_names[i] if i >= 0 else m
                       for m, i in zip(members, index, strict=True)]
        out[key] = tuple(members)
    return out


def _check_masks_loaded(loaded: LoadedConfig) -> None:
    ec = loaded.pipeline.eval_config
    readers = loaded.pipeline.eval_input_reader
    if MASK_SET in ec.metrics_set and len(readers) and not readers[0].load_instance_masks:
        raise ConfigError(f"eval_config.metrics_set: '{MASK_SET}' scores instance masks, which "
                          "eval_input_reader[0] does not read; set its load_instance_masks: true (and "
                          "mask_type: PNG_MASKS for the TF OD API's COCO records)")


# The 17 COCO person keypoints in COCO's order: the order of keypoint sigmas when the label map's
# class lists no `keypoints { id label }` of its own.
COCO_KEYPOINT_NAMES = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
    "right_knee", "left_ankle", "right_ankle",
)


def build_keypoint_metrics(eval_config: eval_pb2.EvalConfig,
                           label_map: LabelMap | None) -> tuple[KeypointMetric, ...]:
    """One `KeypointMetric` per `parameterized_metric { coco_keypoint_metrics }`, as the TF OD API's
    `get_evaluators`: the class whose label-map display name is `class_label`, its keypoints ordered by
    the label map's keypoint ids (or COCO's 17 when it lists none), each with its sigma."""
    out = []
    for i, param in enumerate(eval_config.parameterized_metric):
        where = f"eval_config.parameterized_metric[{i}].coco_keypoint_metrics"
        if param.WhichOneof("parameterized_metric") != "coco_keypoint_metrics":
            raise ConfigError(f"eval_config.parameterized_metric[{i}] is empty; give coco_keypoint_metrics")
        metric = param.coco_keypoint_metrics
        if label_map is None:
            raise ConfigError(f"{where}: needs the label map (eval_input_reader.label_map_path)")
        index = int(label_map.names_to_indices([metric.class_label])[0])
        if index < 0:
            raise ConfigError(f"{where}.class_label: '{metric.class_label}' is not a class of the label map "
                              f"{label_map.path}; its classes are {label_map.display_names}")
        ids, names = _keypoints(label_map, index, dict(metric.keypoint_label_to_sigmas), where)
        sigmas = dict(metric.keypoint_label_to_sigmas)
        missing = [n for n in names if n not in sigmas]
        if sigmas and missing:
            raise ConfigError(f"{where}.keypoint_label_to_sigmas: has no sigma for {missing}; give one per "
                              "keypoint")
        # No sigmas at all: 0.05 for every keypoint, as the TF OD API.
        values = tuple(float(str(np.float32(sigmas[n]))) if sigmas else 0.05 for n in names)
        out.append(KeypointMetric(label_map.ids[index], label_map.display_names[index], values, ids))
    if KEYPOINT_SET in eval_config.metrics_set and not out:
        raise ConfigError(f"eval_config.metrics_set: '{KEYPOINT_SET}' needs the class and keypoint sigmas: "
                          "add parameterized_metric { coco_keypoint_metrics { class_label: \"person\" "
                          "keypoint_label_to_sigmas { key: \"nose\" value: 0.026 } ... } }")
    return tuple(out)


def _keypoints(label_map: LabelMap, index: int, sigmas: dict[str, float],
               where: str) -> tuple[tuple[int, ...], list[str]]:
    """The class's keypoint ids (indices into the keypoint axis), ascending, and their names, from the
    label map."""
    items = string_int_label_map_pb2.StringIntLabelMap()
    try:
        text_format.Parse(Path(label_map.path).read_text(encoding="utf-8"), items)
    except (OSError, text_format.ParseError):
        items.Clear()  # a label map made in code: no keypoints listed
    item = next((it for it in items.item if it.id == label_map.ids[index]), None)
    if item is not None and len(item.keypoints):
        listed = sorted(item.keypoints, key=lambda k: k.id)
        return tuple(k.id for k in listed), [k.label for k in listed]
    if not sigmas or set(sigmas) == set(COCO_KEYPOINT_NAMES):
        return tuple(range(len(COCO_KEYPOINT_NAMES))), list(COCO_KEYPOINT_NAMES)
    raise ConfigError(f"{where}: the label map {label_map.path} lists no keypoints for class "
                      f"'{label_map.display_names[index]}', and the sigmas' names are not COCO's 17; add "
                      "`keypoints { id: 0 label: \"...\" }` (one per keypoint) to its item")


def _eval_data_description(loaded: LoadedConfig) -> str:
    """`eval_input_reader[0]` in a few words: its kind and paths."""
    if not len(loaded.pipeline.eval_input_reader):
        return ""
    reader = loaded.pipeline.eval_input_reader[0]
    source = reader.WhichOneof("input_reader")
    if source is None:
        return ""
    paths = {"tf_record_input_reader": lambda r: list(r.input_path),
             "coco_input_reader": lambda r: [r.annotations_path],
             "voc_input_reader": lambda r: [r.root]}.get(source, lambda r: [])(getattr(reader, source))
    every = f", every {reader.sample_1_of_n_examples}th" if reader.sample_1_of_n_examples > 1 else ""
    return f"eval_input_reader ({', '.join(paths)}{every}) of {loaded.path}"


def tf_od_api_config_text(text: str) -> str:
    """`text` (a pipeline.config raredet wrote) as the TF OD API's `config_util` loads it: raredet's own
    fields left out (`config.tf_od_api`), the file's header saying which."""
    from raredet.config.tf_od_api import tf_od_api_copy

    config = parse_config(text, "<operating points config>")
    copy, removed = tf_od_api_copy(config)
    comments = [line for line in text.splitlines() if line.startswith("#")]
    if removed:
        comments += ["# For the TF OD API: raredet's own fields, which config_util refuses, are left out:"]
        comments += [f"#   {path}" for path in removed]
    else:
        comments += ["# For the TF OD API: the config has no raredet-only field; nothing is left out."]
    return "\n".join(comments) + "\n" + text_format.MessageToString(copy)
