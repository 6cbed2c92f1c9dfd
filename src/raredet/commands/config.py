"""`raredet config check` (load, build what needs no data, a one-screen summary) and `raredet config show`
(the effective config, every default written out, optionally with the resolved class-weight table)."""

from __future__ import annotations

import dataclasses
import os
import warnings
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from raredet.builders import check_buildable, model_message, post_processing_of, resolve_class_weight_table
from raredet.config import (
    PAIR_AWARE_RANGES,
    ConfigWarning,
    LabelMap,
    LoadedConfig,
    class_index,
    effective_config_text,
    fill_defaults,
    input_readers,
    load,
    reader_paths,
)
from raredet.losses.class_weights import format_class_weight_table
from raredet.protos import (
    center_net_pb2,
    faster_rcnn_pb2,
    losses_pb2,
    pipeline_pb2,
    post_processing_pb2,
    ssd_pb2,
)


def check(path: str | os.PathLike[str], check_paths: bool = False) -> str:
    """Load and validate `path` (ConfigError if unusable, including what only building the model,
    loss, augmentations and optimizer finds); return a one-screen summary of it.

    The not-acted-on warning, and the warnings building the parts gives (e.g. frozen batch norms without
    a fine_tune_checkpoint), go into the summary instead of Python's warning output.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConfigWarning)
        loaded = load(path, check_paths=check_paths)
    with warnings.catch_warnings(record=True) as caught:  # what building finds goes into the summary too
        warnings.simplefilter("always", ConfigWarning)
        check_buildable(loaded)
    for w in caught:
        if not issubclass(w.category, ConfigWarning):  # not ours: as Python would have shown it
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    built = tuple(str(w.message) for w in caught if issubclass(w.category, ConfigWarning))
    return summary_text(dataclasses.replace(loaded, warnings=loaded.warnings + built))


def show(path: str | os.PathLike[str], resolve_weights: bool = False) -> str:
    """The effective config text of `path`; with `resolve_weights`, followed by the class-weight table
    training would use (counts from the training set)."""
    loaded = load(path)
    text = effective_config_text(loaded.pipeline)
    if resolve_weights:
        table = format_class_weight_table(resolve_class_weight_table(loaded))
        text += f"\n# resolved class weights (training set counts)\n{table}\n"
    return text


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


def _post_processing_lines(config: pipeline_pb2.TrainEvalPipelineConfig) -> list[str]:
    """Score converter, NMS threshold, calibration (per-class thresholds) and the operating-point rule."""
    model = model_message(config)
    post = post_processing_of(model)
    converter = post_processing_pb2.PostProcessing.ScoreConverter.Name(post.score_converter)
    lines = [f"scores:       {converter}, NMS score_threshold "
             f"{post.batch_non_max_suppression.score_threshold:g}"]
    if isinstance(model, center_net_pb2.CenterNet):
        center = model.object_center_params
        nms = "none" if not post.HasField("batch_non_max_suppression") else (
            f"iou_threshold {post.batch_non_max_suppression.iou_threshold:g}")
        lines = [f"scores:       sigmoid of the center heatmap, {center.peak_max_pool_kernel_size}x"
                 f"{center.peak_max_pool_kernel_size} peaks, top {center.max_box_predictions}, NMS {nms}"]
    if post.HasField("calibration_config"):
        cal = post.calibration_config
        kind = cal.WhichOneof("calibrator") or "none"
        ids = ""
        if kind == "class_id_function_approximations":
            ids = f" for class ids {sorted(cal.class_id_function_approximations.class_id_xy_pairs_map)}"
        elif kind == "class_id_sigmoid_calibrations":
            keys = cal.class_id_sigmoid_calibrations.class_id_sigmoid_parameters_map
            ids = f" for class ids {sorted(keys)}"
        lines.append(f"  calibration: {kind}{ids}")
    ops = config.eval_config.operating_points
    kind = ops.WhichOneof("rule")
    rule = "max_f1" if kind in (None, "max_f1") else f"{kind} {getattr(ops, kind):g}"
    extra = f", review_precision {ops.review_precision:g}" if ops.HasField("review_precision") else ""
    per_class = f", {len(ops.class_rule)} per-class rule(s)" if ops.class_rule else ""
    lines.append(f"  operating points (raredet eval): {rule}{extra}{per_class}")
    return lines


def _faster_rcnn_lines(frcnn: faster_rcnn_pb2.FasterRcnn) -> list[str]:
    cls = "seesaw (softmax)" if frcnn.HasField("second_stage_seesaw_loss") else "weighted_softmax"
    return [
        f"model:        faster_rcnn, feature extractor {frcnn.feature_extractor.type or '(unset)'}",
        f"  resizer:    {_oneof_text(frcnn.image_resizer, 'image_resizer_oneof')}",
        f"  anchors:    {_oneof_text(frcnn.first_stage_anchor_generator, 'anchor_generator_oneof')}",
        f"  stage 1:    {frcnn.first_stage_minibatch_size} anchors/image (positive fraction "
        f"{frcnn.first_stage_positive_balance_fraction:g}), {frcnn.first_stage_max_proposals} proposals",
        f"  stage 2:    {frcnn.second_stage_batch_size} proposals/image (positive fraction "
        f"{frcnn.second_stage_balance_fraction:g}), crop {frcnn.initial_crop_size}, loss {cls}",
    ]


def _center_net_lines(msg: center_net_pb2.CenterNet) -> list[str]:
    task, center = msg.object_detection_task, msg.object_center_params
    focal = center.classification_loss.penalty_reduced_logistic_focal_loss
    tasks = ["object_detection_task"] + [f.name for f, _ in msg.ListFields()
                                         if f.name.endswith(("_task", "_estimation"))
                                         and f.name != "object_detection_task"]
    return [
        f"model:        center_net, feature extractor {msg.feature_extractor.type or '(unset)'} (stride 4)",
        f"  resizer:    {_oneof_text(msg.image_resizer, 'image_resizer_oneof')}",
        f"  tasks:      {', '.join(tasks)}",
        f"losses:       center heatmap penalty_reduced_logistic_focal_loss alpha {focal.alpha:g} beta "
        f"{focal.beta:g} x {center.object_center_loss_weight:g}, min_box_overlap_iou "
        f"{center.min_box_overlap_iou:g}",
        f"              box scale L1 x {task.scale_loss_weight:g}, offset L1 x {task.offset_loss_weight:g}, "
        f"task x {task.task_loss_weight:g}",
    ]


def _class_lines(ssd: ssd_pb2.Ssd | faster_rcnn_pb2.FasterRcnn | center_net_pb2.CenterNet,
                 label_map: LabelMap | None) -> list[str]:
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
    cls = loss.classification_loss
    if cls.WhichOneof("classification_loss") in PAIR_AWARE_RANGES:  # show every parameter in effect
        cls = type(cls)()
        cls.CopyFrom(loss.classification_loss)
        fill_defaults(cls)
    return [
        f"losses:       classification {_oneof_text(cls, 'classification_loss')}"
        f" x {loss.classification_weight:g}",
        f"              localization {_oneof_text(loss.localization_loss, 'localization_loss')}"
        f" x {loss.localization_weight:g}",
        f"  hard example miner: {miner}",
    ]


def _class_weight_lines(weights: losses_pb2.ClassWeights, label_map: LabelMap | None,
                        field: str) -> list[str]:
    """The class-weight block of the summary; `field` is where `weights` is in the config (for errors)."""
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
    for id_, name, value in _weight_rows(weights, label_map, f"{field}.weight"):
        lines.append(f"  {id_:>4}  {name:<24} {value}")
    return lines


def _weight_rows(weights: losses_pb2.ClassWeights, label_map: LabelMap | None,
                 field: str) -> list[tuple[str, str, str]]:
    """(id, name, weight) per class: every class when a label map is loaded, else the entries given.
    `field`: the config path of `weights.weight`, which an error names."""
    if label_map is None:
        return [_given_row(w) for w in weights.weight]
    given = {class_index(w, label_map, field): f"{w.value:g}" for w in weights.weight}
    rest = "auto" if weights.HasField("auto") else "1"
    return [(str(label_map.id_of_index(i)), label_map.name_of_index(i), given.get(i, rest))
            for i in range(label_map.num_classes)]


def _given_row(weight: losses_pb2.ClassWeight) -> tuple[str, str, str]:
    by_id = weight.WhichOneof("class_ref") == "id"
    return (str(weight.id) if by_id else "?", "?" if by_id else weight.name, f"{weight.value:g}")


def _input_lines(config: pipeline_pb2.TrainEvalPipelineConfig) -> list[str]:
    lines = ["inputs:"]
    for name, reader in input_readers(config):
        source = reader.WhichOneof("input_reader")
        paths = reader_paths(reader, name)[1 if reader.label_map_path else 0:]
        shown = ", ".join(p for _, p, _ in paths[:3]) + (", ..." if len(paths) > 3 else "")
        lines.append(f"  {name}: {source} {shown}")
        if reader.HasField("repeat_factor_sampling"):
            lines.append(f"    repeat factor sampling, threshold {reader.repeat_factor_sampling.threshold:g}")
    return lines if len(lines) > 1 else ["inputs:       none"]


def summary_text(loaded: LoadedConfig) -> str:
    """A one-screen description: model, classes, losses, class weights table, inputs, warnings."""
    lines = [f"{loaded.path}: OK"]
    if loaded.pipeline.model.WhichOneof("model") == "center_net":
        msg = loaded.pipeline.model.center_net
        lines += _center_net_lines(msg) + _class_lines(msg, loaded.label_map)
        lines += _post_processing_lines(loaded.pipeline)
        lines += _class_weight_lines(msg.class_weights, loaded.label_map, "model.center_net.class_weights")
    elif loaded.pipeline.model.WhichOneof("model") == "faster_rcnn":
        frcnn = loaded.pipeline.model.faster_rcnn
        lines += _faster_rcnn_lines(frcnn) + _class_lines(frcnn, loaded.label_map)
        lines += _post_processing_lines(loaded.pipeline)
        lines += _class_weight_lines(frcnn.second_stage_class_weights, loaded.label_map,
                                     "model.faster_rcnn.second_stage_class_weights")
    else:
        ssd = loaded.pipeline.model.ssd
        lines += _model_lines(ssd) + _class_lines(ssd, loaded.label_map) + _loss_lines(ssd.loss)
        lines += _post_processing_lines(loaded.pipeline)
        lines += _class_weight_lines(ssd.loss.class_weights, loaded.label_map, "model.ssd.loss.class_weights")
    lines += _input_lines(loaded.pipeline)
    lines += [f"warning: {w}" for w in loaded.warnings]
    return "\n".join(lines)
