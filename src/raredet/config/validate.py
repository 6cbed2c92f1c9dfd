"""Checking the values raredet acts on, and the fields it parses but ignores (`NOT_ACTED_ON`).

`validate` raises ConfigError naming the config file and the field path; `not_acted_on` lists the set
fields that have no effect in raredet, for the one warning `load` gives.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from raredet.config.label_map import LabelMap
from raredet.config.text import did_you_mean
from raredet.errors import ConfigError
from raredet.protos import (
    calibration_pb2,
    center_net_pb2,
    faster_rcnn_pb2,
    image_resizer_pb2,
    losses_pb2,
    pipeline_pb2,
    ssd_pb2,
)
from raredet.protos.input_reader_pb2 import InputReader

# Fields raredet parses (so TF OD API configs load unchanged) but does not act on. Setting one gives a
# single warning that lists them all. Keys are "<message full name>.<field>"; this is the one list.
NOT_ACTED_ON: frozenset[str] = frozenset(
    "raredet.protos." + name
    for name in (
        # TPU / TF1 distribution and graph details: torchrun replaces them.
        "TrainConfig.sync_replicas",
        "TrainConfig.startup_delay_steps",
        "TrainConfig.replicas_to_aggregate",
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
        # CenterNet: a TF choice between two ops of the same result, and TF's raw-outputs switch.
        "CenterNet.compute_heatmap_sparse",
        "CenterNet.output_prediction_dict",
        # Faster R-CNN: TF implementation choices (static shapes, matmul variants of the same ops),
        # resize_masks (the data path resizes masks with their image either way) and TPU batch-norm details.
        "FasterRcnn.inplace_batchnorm_update",
        "FasterRcnn.use_matmul_gather_in_matcher",
        "FasterRcnn.use_static_balanced_label_sampler",
        "FasterRcnn.use_static_shapes",
        "FasterRcnn.use_static_shapes_for_eval",
        "FasterRcnn.use_partitioned_nms_in_first_stage",
        "FasterRcnn.use_combined_nms_in_first_stage",
        "FasterRcnn.return_raw_detections_during_predict",
        "FasterRcnn.output_final_box_features",
        "FasterRcnn.output_final_box_rpn_features",
        "FasterRcnn.resize_masks",
        "FasterRcnnFeatureExtractor.pad_to_multiple",
        # backbones keep torchvision BN
        "FasterRcnnFeatureExtractor.override_base_feature_extractor_hyperparams",
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
        # Parsed, with no effect in raredet (the boxes per image are not capped; one FPN kind).
        "TrainConfig.max_number_of_boxes",
        "InputReader.max_number_of_boxes",
        "InputReader.use_display_name",
        "InputReader.include_source_id",
        "Loss.expected_loss_weights",
        "Loss.equalization_loss",
        "Ssd.explicit_background_class",
        "EvalConfig.export_path",
        "EvalConfig.visualization_export_dir",
        "EvalConfig.max_num_boxes_to_visualize",
        "EvalConfig.skip_scores",
        "EvalConfig.recall_lower_bound",
        "EvalConfig.super_categories",
        "EvalConfig.keypoint_edge",
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


def input_readers(config: pipeline_pb2.TrainEvalPipelineConfig) -> list[tuple[str, InputReader]]:
    """(field path, reader) for every input reader present."""
    readers = []
    if config.HasField("train_input_reader"):
        readers.append(("train_input_reader", config.train_input_reader))
    readers += [(f"eval_input_reader[{i}]", r) for i, r in enumerate(config.eval_input_reader)]
    return readers


# ---- semantic validation -----------------------------------------------------------------------------


def class_index(ref: losses_pb2.ClassWeight | losses_pb2.ClassAlpha, label_map: LabelMap, field: str) -> int:
    """The contiguous index of the class `ref` names (`id` or `name`/`display_name`); a ConfigError
    naming `field` otherwise. The one resolution of class references: validation and builders use it."""
    kind = ref.WhichOneof("class_ref")
    if kind is None:
        raise ConfigError(f'{field}: names no class; set `name: "..."` or `id: N`')
    lm = label_map
    if kind == "id":
        index = int(lm.ids_to_indices(np.array([ref.id]))[0])
        if index < 0:
            raise ConfigError(f"{field}.id: {ref.id} is not in the label map {lm.path}; its ids are {lm.ids}")
        return index
    index = int(lm.names_to_indices([ref.name])[0])
    if index < 0:
        known = lm.names + lm.display_names
        raise ConfigError(f"{field}.name: '{ref.name}' is not in the label map {lm.path}"
                          f"{did_you_mean(ref.name, known)}; its names are {lm.names}")
    return index


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
        if ref.WhichOneof("class_ref") is None:
            self.fail(field, 'names no class; set `name: "..."` or `id: N`')
        if self.label_map is None:
            return None
        try:
            return class_index(ref, self.label_map, field)
        except ConfigError as err:
            raise ConfigError(f"{self.path}: {err}") from None

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
    kind = config.model.WhichOneof("model")
    if kind is None:
        check.fail("model", "has no `ssd { ... }`, `faster_rcnn { ... }` or `center_net { ... }` block; "
                   "raredet builds the SSD family, Faster R-CNN and CenterNet")
    if kind == "faster_rcnn":
        _validate_faster_rcnn(config.model.faster_rcnn, check)
    elif kind == "center_net":
        _validate_center_net(config.model.center_net, check)
    else:
        _validate_ssd(config.model.ssd, check)
        _validate_loss(config.model.ssd.loss, check)
    if config.train_config.HasField("batch_size") and config.train_config.batch_size < 1:
        check.fail("train_config.batch_size", "must be at least 1")
    for name, reader in input_readers(config):
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
    _validate_background(ssd, check)
    _validate_matcher(ssd, check)
    _validate_anchors(ssd, check)
    _validate_resizer(ssd.image_resizer, check)
    nms = ssd.post_processing.batch_non_max_suppression
    check.number(nms.iou_threshold, "model.ssd.post_processing.batch_non_max_suppression.iou_threshold", 0, 1)
    if ssd.post_processing.HasField("calibration_config"):
        ids = lm.ids if lm is not None else list(range(1, ssd.num_classes + 1))
        check_calibration(ssd.post_processing.calibration_config,
                          "model.ssd.post_processing.calibration_config", ids, check.fail)


# Losses that need a background column (raredet gives them a constant zero logit, see docs/models.md).
_SOFTMAX_LOSSES = ("weighted_softmax", "weighted_logits_softmax")


def _validate_background(ssd: ssd_pb2.Ssd, check: _Checker) -> None:
    """`add_background_class`: raredet's model has one column per class and an implicit background.
    That is the TF OD API's `add_background_class: false` with `encode_background_as_zeros: true`
    exactly; with `add_background_class: true` the TF OD API adds a background column that raredet
    does not need (docs/efficientdet.md). The combinations whose TF meaning raredet cannot give are errors."""
    if ssd.add_background_class:
        return
    if not ssd.encode_background_as_zeros:
        check.fail("model.ssd.add_background_class", "is false while encode_background_as_zeros is false: "
                   "the TF OD API then trains unmatched anchors as the first class (a label map with an "
                   "explicit background class, which raredet does not support); set "
                   "encode_background_as_zeros: true")
    kind = ssd.loss.classification_loss.WhichOneof("classification_loss")
    if kind in _SOFTMAX_LOSSES:
        check.fail("model.ssd.add_background_class", f"is false, but {kind} needs the background class "
                   "(a softmax over the foreground classes alone cannot say 'nothing here'); set it to true "
                   "or use weighted_sigmoid_focal / weighted_sigmoid")


def _validate_num_classes(num_classes: int, where: str, check: _Checker) -> None:
    if num_classes < 1:
        check.fail(where, f"is {num_classes}; set it to the number of classes "
                   "in the label map (background not counted)")
    lm = check.label_map
    if lm is not None and num_classes != lm.num_classes:
        check.fail(where, f"is {num_classes} but the label map {lm.path} has "
                   f"{lm.num_classes} classes; make them agree (background is not counted)")


def _validate_faster_rcnn(frcnn: faster_rcnn_pb2.FasterRcnn, check: _Checker) -> None:
    where = "model.faster_rcnn"
    _validate_num_classes(frcnn.num_classes, f"{where}.num_classes", check)
    predictor = frcnn.second_stage_box_predictor.mask_rcnn_box_predictor
    if predictor.predict_keypoints:
        check.fail(f"{where}.second_stage_box_predictor.mask_rcnn_box_predictor.predict_keypoints",
                   "Mask R-CNN's keypoint head is not supported (the TF OD API's Keras box predictor does "
                   "not build it either); set it false, or use a CenterNet config with a "
                   "keypoint_estimation_task for keypoints")
    if predictor.predict_instance_masks:
        check.number(frcnn.second_stage_mask_prediction_loss_weight,
                     f"{where}.second_stage_mask_prediction_loss_weight")
    _validate_resizer(frcnn.image_resizer, check, f"{where}.image_resizer")
    for name in ("first_stage_positive_balance_fraction", "second_stage_balance_fraction"):
        check.number(getattr(frcnn, name), f"{where}.{name}", 0.0, 1.0, low_open=True)
    for name in ("first_stage_nms_iou_threshold", "first_stage_nms_score_threshold"):
        check.number(getattr(frcnn, name), f"{where}.{name}", 0.0, 1.0)
    for name in ("first_stage_minibatch_size", "second_stage_batch_size", "first_stage_max_proposals"):
        if getattr(frcnn, name) < 1:
            check.fail(f"{where}.{name}", "must be at least 1")
    for name in ("first_stage_localization_loss_weight", "first_stage_objectness_loss_weight",
                 "second_stage_localization_loss_weight", "second_stage_classification_loss_weight"):
        check.number(getattr(frcnn, name), f"{where}.{name}")
    if frcnn.second_stage_post_processing.HasField("calibration_config"):
        lm = check.label_map
        ids = lm.ids if lm is not None else list(range(1, frcnn.num_classes + 1))
        check_calibration(frcnn.second_stage_post_processing.calibration_config,
                          f"{where}.second_stage_post_processing.calibration_config", ids, check.fail)
    nms = frcnn.second_stage_post_processing.batch_non_max_suppression
    check.number(nms.iou_threshold,
                 f"{where}.second_stage_post_processing.batch_non_max_suppression.iou_threshold", 0, 1)
    loss = frcnn.second_stage_classification_loss.WhichOneof("classification_loss")
    if loss not in (None, "weighted_softmax"):
        check.fail(f"{where}.second_stage_classification_loss", f"{loss} is not supported in the second "
                   "stage; use weighted_softmax (the default), or second_stage_seesaw_loss")
    if frcnn.HasField("hard_example_miner"):
        check.fail(f"{where}.hard_example_miner", "is not supported for Faster R-CNN; remove it (the "
                   "second stage samples second_stage_batch_size proposals instead)")
    if frcnn.HasField("second_stage_class_weights"):
        _validate_class_weights(
            frcnn.second_stage_class_weights, f"{where}.second_stage_class_weights", check
        )


# CenterNet tasks raredet does not build: field -> why. The first two are being built (issue 28).
CENTER_NET_UNBUILT_TASKS: dict[str, str] = {
    "mask_estimation_task": "(CenterNet's semantic-mask task) is not supported; remove it",
    "densepose_estimation_task": "(DensePose) is not supported by raredet; remove it",
    "track_estimation_task": "(tracking) is not supported by raredet; remove it",
    "temporal_offset_task": "(tracking offsets) is not supported by raredet; remove it",
}


def _is_set(msg: Message, field: str) -> bool:
    value = getattr(msg, field)
    return len(value) > 0 if msg.DESCRIPTOR.fields_by_name[field].is_repeated else msg.HasField(field)


def _validate_center_net(msg: center_net_pb2.CenterNet, check: _Checker) -> None:
    where = "model.center_net"
    _validate_num_classes(msg.num_classes, f"{where}.num_classes", check)
    for task, why in CENTER_NET_UNBUILT_TASKS.items():
        if _is_set(msg, task):
            check.fail(f"{where}.{task}", why)
    if not msg.HasField("object_detection_task"):
        check.fail(f"{where}.object_detection_task", "is not set; raredet builds CenterNet's object "
                   "detection task: add `object_detection_task { localization_loss { l1_localization_loss "
                   "{ } } }`")
    _validate_center_net_heads(msg, check)
    extractor = msg.feature_extractor
    for name in ("channel_means", "channel_stds"):
        if len(getattr(extractor, name)) not in (0, 3):
            check.fail(f"{where}.feature_extractor.{name}", "needs 3 values (one per channel) or none")
    for i, std in enumerate(extractor.channel_stds):
        check.number(std, f"{where}.feature_extractor.channel_stds[{i}]", 0.0, low_open=True)
    _validate_resizer(msg.image_resizer, check, f"{where}.image_resizer")
    post = msg.post_processing
    check.number(post.batch_non_max_suppression.iou_threshold,
                 f"{where}.post_processing.batch_non_max_suppression.iou_threshold", 0, 1)
    if post.HasField("calibration_config"):
        lm = check.label_map
        ids = lm.ids if lm is not None else list(range(1, msg.num_classes + 1))
        check_calibration(post.calibration_config, f"{where}.post_processing.calibration_config", ids,
                          check.fail)
    if msg.HasField("class_weights"):
        _validate_class_weights(msg.class_weights, f"{where}.class_weights", check)


def _validate_center_net_heads(msg: center_net_pb2.CenterNet, check: _Checker) -> None:
    """object_center_params and object_detection_task: the heatmap loss, peak extraction, heads."""
    center, task = msg.object_center_params, msg.object_detection_task
    c_where, t_where = "model.center_net.object_center_params", "model.center_net.object_detection_task"
    if center.classification_loss.WhichOneof("classification_loss") != "penalty_reduced_logistic_focal_loss":
        check.fail(f"{c_where}.classification_loss", "must be penalty_reduced_logistic_focal_loss "
                   "{ alpha: 2.0 beta: 4.0 } (CenterNet's heatmap loss; the only one raredet builds for it)")
    if center.use_labeled_classes:
        check.fail(f"{c_where}.use_labeled_classes", "is not supported by raredet; remove it")
    if len(center.keypoint_weights_for_center):
        check.fail(f"{c_where}.keypoint_weights_for_center", "is not supported by raredet; remove it")
    check.number(center.min_box_overlap_iou, f"{c_where}.min_box_overlap_iou", 0.0, 1.0,
                 low_open=True, high_open=True)
    if center.max_box_predictions < 1:
        check.fail(f"{c_where}.max_box_predictions", "must be at least 1")
    if center.peak_max_pool_kernel_size < 1 or center.peak_max_pool_kernel_size % 2 == 0:
        check.fail(f"{c_where}.peak_max_pool_kernel_size", "must be an odd number >= 1")
    for name in ("task_loss_weight", "offset_loss_weight", "scale_loss_weight"):
        check.number(getattr(task, name), f"{t_where}.{name}")
    if task.localization_loss.WhichOneof("localization_loss") != "l1_localization_loss":
        check.fail(f"{t_where}.localization_loss", "must be l1_localization_loss { } (the TF OD API applies "
                   "it to 2-value scale and offset targets, which only its L1 loss accepts)")
    heads = [(center.center_head_params, f"{c_where}.center_head_params"),
             (task.scale_head_params, f"{t_where}.scale_head_params"),
             (task.offset_head_params, f"{t_where}.offset_head_params")]
    for head, where in heads:
        sizes = [*head.num_filters, *head.kernel_sizes]
        if len(head.num_filters) != len(head.kernel_sizes) or (sizes and min(sizes) < 1):
            check.fail(where, "needs as many kernel_sizes as num_filters, each at least 1")


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


def _validate_resizer(resizer: image_resizer_pb2.ImageResizer, check: _Checker,
                     where: str = "model.ssd.image_resizer") -> None:
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
    elif kind in PAIR_AWARE_RANGES:
        _validate_pair_aware(getattr(cls, kind), kind, f"{where}.classification_loss.{kind}", check)
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


# raredet's pair-aware losses: field -> (low, high, low open, high open).
PAIR_AWARE_RANGES: dict[str, dict[str, tuple[float, float, bool, bool]]] = {
    "seesaw_sigmoid_focal": {
        "gamma": (0.0, math.inf, False, False), "alpha": (0.0, 1.0, False, False),
        "mitigation_power": (0.0, math.inf, False, False),
        "compensation_power": (0.0, math.inf, False, False),
        "compensation_score_floor": (0.0, 1.0, False, True),
    },
    "confusion_gated_focal": {
        "gate_threshold": (0.0, 1.0, False, False), "gamma": (0.0, math.inf, False, False),
        "alpha": (0.0, 1.0, False, False), "warmup_steps": (0.0, math.inf, False, False),
        "gate_sharpness": (0.0, math.inf, False, False),
    },
    "equalized_focal": {
        "gamma_base": (0.0, math.inf, True, False), "scale": (0.0, math.inf, False, False),
        "alpha": (0.0, 1.0, False, False), "gradient_decay": (0.0, 1.0, True, False),
    },
}


def _validate_pair_aware(msg: Message, kind: str, where: str, check: _Checker) -> None:
    for field, (low, high, low_open, high_open) in PAIR_AWARE_RANGES[kind].items():
        check.number(getattr(msg, field), f"{where}.{field}", low, high, low_open=low_open,
                     high_open=high_open)


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


CALIBRATORS = ("function_approximation", "class_id_function_approximations", "sigmoid_calibration",
               "class_id_sigmoid_calibrations", "temperature_scaling_calibration")


def check_calibration(calibration: calibration_pb2.CalibrationConfig, where: str, class_ids: Sequence[int],
                      fail: Callable[[str, str], NoReturn]) -> None:
    """A `calibration_config` raredet (and the TF OD API) can apply: maps with x strictly increasing
    and x, y in [0, 1], class ids that are label-map ids (`class_ids`), a negative sigmoid slope `a`
    (so the map keeps the score order) and a positive temperature. Calls `fail(field, problem)`."""
    kind = calibration.WhichOneof("calibrator")
    if kind is None:
        fail(where, f"sets no calibrator; set one of {', '.join(CALIBRATORS)}, or remove the block")
    sub = getattr(calibration, kind)
    here = f"{where}.{kind}"
    if kind == "function_approximation":
        _check_xy_pairs(sub.x_y_pairs, f"{here}.x_y_pairs", fail)
    elif kind == "temperature_scaling_calibration":
        if not (math.isfinite(sub.scaler) and sub.scaler > 0):
            fail(f"{here}.scaler", f"is {sub.scaler:g}; the temperature must be a number > 0 "
                 "(the logits are divided by it)")
    elif kind == "sigmoid_calibration":
        _check_sigmoid(sub.sigmoid_parameters, f"{here}.sigmoid_parameters", fail)
    else:
        per_class = (sub.class_id_xy_pairs_map if kind == "class_id_function_approximations"
                     else sub.class_id_sigmoid_parameters_map)
        field = "class_id_xy_pairs_map" if kind == "class_id_function_approximations" else \
            "class_id_sigmoid_parameters_map"
        for class_id in sorted(per_class):
            entry = f"{here}.{field}[{class_id}]"
            if class_id not in class_ids:
                extra = " (0 is the TF OD API's background column, which raredet's model does not have)" \
                    if class_id == 0 else ""
                fail(entry, f"class id {class_id} is not a label-map id{extra}; the key is the class's "
                     f"label-map id, one of {list(class_ids)}")
            if kind == "class_id_function_approximations":
                _check_xy_pairs(per_class[class_id], entry, fail)
            else:
                _check_sigmoid(per_class[class_id], entry, fail)


def _check_xy_pairs(pairs: calibration_pb2.XYPairs, where: str, fail: Callable[[str, str], NoReturn]) -> None:
    if not pairs.x_y_pair:
        fail(where, "has no x_y_pair; give at least one `x_y_pair { x: ... y: ... }`")
    previous = -math.inf
    for i, pair in enumerate(pairs.x_y_pair):
        for name in ("x", "y"):
            value = getattr(pair, name)
            if not (math.isfinite(value) and 0.0 <= value <= 1.0):
                fail(f"{where}.x_y_pair[{i}].{name}", f"{value!r} is outside [0, 1]; calibration maps "
                     "take and give scores, which lie in [0, 1]")
        if not pair.x > previous:
            fail(f"{where}.x_y_pair[{i}].x", f"{pair.x:g} is not above the previous x ({previous:g}); "
                 "list the pairs with x strictly increasing")
        previous = pair.x


def _check_sigmoid(params: calibration_pb2.SigmoidParameters, where: str,
                   fail: Callable[[str, str], NoReturn]) -> None:
    if not (math.isfinite(params.a) and params.a < 0):
        fail(f"{where}.a", f"is {params.a!r}; it must be a negative number, so that the sigmoid "
             "1 / (1 + exp(a * score + b)) rises with the score (keeps the score order)")
    if not math.isfinite(params.b):
        fail(f"{where}.b", f"{params.b!r} is not a finite number")


def _validate_reader(reader: InputReader, where: str, check: _Checker) -> None:
    if reader.WhichOneof("input_reader") is None:
        check.fail(where, "has no data source; set one of tf_record_input_reader { input_path }, "
                   "coco_input_reader { annotations_path image_dir } or voc_input_reader { root }")
    if reader.HasField("repeat_factor_sampling"):
        threshold = reader.repeat_factor_sampling.threshold
        check.number(threshold, f"{where}.repeat_factor_sampling.threshold", 0.0, 1.0, low_open=True)
    if reader.sample_1_of_n_examples < 1:
        check.fail(f"{where}.sample_1_of_n_examples", "must be at least 1")


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


def not_acted_on_warnings(config: pipeline_pb2.TrainEvalPipelineConfig, path: Path | str) -> list[str]:
    """The one warning `load` gives about the fields of `config` that raredet parses but ignores (none
    if there are none)."""
    ignored = not_acted_on(config)
    ignored += [f"eval_input_reader[{i}] (only the first eval_input_reader is evaluated)"
                for i in range(1, len(config.eval_input_reader))]
    if not ignored:
        return []
    return [f"{path}: raredet parses but does not act on these fields (they have no effect here): "
            + ", ".join(ignored)]


def unchecked_classes_warnings(config: pipeline_pb2.TrainEvalPipelineConfig, label_map: LabelMap | None,
                               path: Path | str) -> list[str]:
    """The warning `load` gives when classes are named by class weights or alphas but no label map was
    loaded to check them against (none otherwise)."""
    loss = config.model.ssd.loss
    refs = len(loss.class_weights.weight) + len(loss.classification_loss.weighted_sigmoid_focal.class_alpha)
    refs += len(config.model.faster_rcnn.second_stage_class_weights.weight)
    refs += len(config.model.center_net.class_weights.weight)
    if label_map is not None or refs == 0:
        return []
    return [f"{path}: no label map was loaded (label_map_path unset or not found), so the classes named in "
            "model.ssd.loss (class_weights, class_alpha), model.faster_rcnn.second_stage_class_weights or "
            "model.center_net.class_weights "
            "cannot be checked until the label map is there"]
