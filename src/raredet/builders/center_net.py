"""`model.center_net` -> CenterNet and its parts (docs/center_net.md), and its loss.

`FEATURE_EXTRACTORS` maps `feature_extractor.type` to a function of the feature-extractor message that
builds the extractor (an `nn.Module` with `out_channels`, `num_outputs` and a stride-4
`forward(x) -> [map per output]`). `TASK_BUILDERS` maps a task's field to the function that builds
its `CenterNetTask`s from the CenterNet message (none when the field is unset); the object-detection
task is always built. config/validate.py refuses the tasks no builder here builds yet.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import cast

from torch import nn

from raredet.builders.center_net_keypoints import build_keypoint_tasks
from raredet.builders.deepmac import build_deepmac_tasks
from raredet.builders.messages import field_value, refused_as_config_error
from raredet.builders.parts import build_non_max_suppression
from raredet.errors import ConfigError
from raredet.losses import ClassWeight, class_weight_tensor
from raredet.losses.center_net import CenterNetLoss, ObjectDetectionLoss
from raredet.modeling.calibration import Calibration
from raredet.modeling.center_net import CenterNet, CenterNetTask, ObjectDetectionTask
from raredet.modeling.center_net_resnet_fpn import CenterNetResnetV1Fpn
from raredet.modeling.hourglass import center_net_hourglass
from raredet.modeling.postprocess import ScoreConverter
from raredet.modeling.resnet_v2 import resnet_v2_50, resnet_v2_101
from raredet.protos import center_net_pb2

WHERE = "model.center_net"
Extractor = center_net_pb2.CenterNetFeatureExtractor

FEATURE_EXTRACTORS: dict[str, Callable[[Extractor], nn.Module]] = {
    "resnet_v1_50_fpn": lambda msg: CenterNetResnetV1Fpn(50),
    "resnet_v1_101_fpn": lambda msg: CenterNetResnetV1Fpn(101),
    # TF's hourglass and ResNet v2 extractors take no setting beyond the means, stds and channel order.
    "hourglass_10": lambda msg: center_net_hourglass("hourglass_10"),
    "hourglass_20": lambda msg: center_net_hourglass("hourglass_20"),
    "hourglass_32": lambda msg: center_net_hourglass("hourglass_32"),
    "hourglass_52": lambda msg: center_net_hourglass("hourglass_52"),
    "hourglass_104": lambda msg: center_net_hourglass("hourglass_104"),
    "resnet_v2_50": lambda msg: resnet_v2_50(),
    "resnet_v2_101": lambda msg: resnet_v2_101(),
}

# field -> (CenterNet message, extractor out_channels, num_outputs, label-map ids in index order) ->
# that field's tasks. Each task's helper adds its own entry.
TaskBuilder = Callable[[center_net_pb2.CenterNet, int, int, Sequence[int]], list[CenterNetTask]]
TASK_BUILDERS: dict[str, TaskBuilder] = {
    "deepmac_mask_estimation": build_deepmac_tasks,
    "keypoint_estimation_task": build_keypoint_tasks,
}

DEFAULT_HEAD = ((3,), (256,))  # kernel_sizes, num_filters when a *_head_params is unset (TF's default)


def build_feature_extractor(msg: Extractor) -> nn.Module:
    """The extractor `feature_extractor.type` names; ConfigError listing the valid types otherwise."""
    make = FEATURE_EXTRACTORS.get(msg.type)
    if make is None:
        raise ConfigError(f"{WHERE}.feature_extractor.type: {msg.type!r} is not a CenterNet feature "
                          f"extractor raredet builds; valid: {', '.join(sorted(FEATURE_EXTRACTORS))}")
    with refused_as_config_error(f"{WHERE}.feature_extractor"):
        return make(msg)


def _head(params: center_net_pb2.CenterNet.PredictionHeadParams, is_set: bool
          ) -> tuple[Sequence[int], Sequence[int]]:
    return (list(params.kernel_sizes), list(params.num_filters)) if is_set else DEFAULT_HEAD


def build_object_detection_task(msg: center_net_pb2.CenterNet, in_channels: int, num_outputs: int
                                ) -> ObjectDetectionTask:
    center, task = msg.object_center_params, msg.object_detection_task
    with refused_as_config_error(WHERE):
        return ObjectDetectionTask(
            in_channels, msg.num_classes, num_outputs, heatmap_bias_init=center.heatmap_bias_init,
            center_head=_head(center.center_head_params, center.HasField("center_head_params")),
            scale_head=_head(task.scale_head_params, task.HasField("scale_head_params")),
            offset_head=_head(task.offset_head_params, task.HasField("offset_head_params")),
            use_depthwise=msg.use_depthwise)


def build_center_net(msg: center_net_pb2.CenterNet, calibration: Calibration | None = None,
                     class_ids: Sequence[int] | None = None) -> CenterNet:
    """The model of `model.center_net`; `calibration`: its post_processing.calibration_config, built;
    `class_ids`: the label-map ids in index order (default 1..num_classes), for tasks that name classes."""
    extractor_msg = msg.feature_extractor
    extractor = build_feature_extractor(extractor_msg)
    channels = int(cast(int, extractor.out_channels))
    outputs = int(getattr(extractor, "num_outputs", 1))
    detection = build_object_detection_task(msg, channels, outputs)
    ids = list(class_ids) if class_ids is not None else list(range(1, msg.num_classes + 1))
    tasks: list[CenterNetTask] = []
    for build in TASK_BUILDERS.values():
        tasks += build(msg, channels, outputs, ids)
    post = msg.post_processing
    nms = build_non_max_suppression(post) if post.HasField("batch_non_max_suppression") else None
    with refused_as_config_error(WHERE):
        model = CenterNet(
            msg.num_classes, extractor, detection,
            ScoreConverter("SIGMOID", 1.0, calibration, msg.num_classes), tasks,
            channel_means=list(extractor_msg.channel_means) or (0.0, 0.0, 0.0),
            channel_stds=list(extractor_msg.channel_stds) or (1.0, 1.0, 1.0),
            bgr_ordering=extractor_msg.bgr_ordering,
            max_box_predictions=msg.object_center_params.max_box_predictions,
            peak_max_pool_kernel_size=msg.object_center_params.peak_max_pool_kernel_size,
            non_max_suppression=nms, feature_extractor_type=extractor_msg.type)
    if nms is not None:  # as TF's NMS: scores at or below its score_threshold are dropped
        model.score_threshold = nms.score_threshold
    return model


def build_center_net_loss(msg: center_net_pb2.CenterNet, class_weights: Sequence[ClassWeight],
                          model: nn.Module | None = None) -> CenterNetLoss:
    """The CenterNetLoss of `model.center_net` with the resolved per-class weights (applied only when
    `class_weights` is set in the config). `model`: the built CenterNet, whose further tasks compute
    their own losses (none without it)."""
    center = msg.object_center_params
    focal = center.classification_loss.penalty_reduced_logistic_focal_loss  # unset = 0, as TF reads it
    task = msg.object_detection_task
    detection = ObjectDetectionLoss(
        msg.num_classes, alpha=field_value(focal, "alpha"), beta=field_value(focal, "beta"),
        min_box_overlap_iou=field_value(center, "min_box_overlap_iou"),
        object_center_loss_weight=field_value(center, "object_center_loss_weight"),
        **{f: field_value(task, f) for f in ("task_loss_weight", "scale_loss_weight", "offset_loss_weight")},
        class_weights=class_weight_tensor(class_weights) if msg.HasField("class_weights") else None,
        apply_to_localization=msg.class_weights.apply_to_localization)
    tasks = list(getattr(model, "tasks", [])) if model is not None else []
    return CenterNetLoss(detection, tasks)
