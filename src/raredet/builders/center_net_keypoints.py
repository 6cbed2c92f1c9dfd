"""CenterNet's keypoint tasks (`model.center_net.keypoint_estimation_task`) from their messages.

As the TF OD API's `keypoint_proto_to_params` (builders/model_builder.py): the task's keypoints are
those of the item named `keypoint_class_name` (its `name`, not `display_name`) in the label map at
`model.center_net.keypoint_label_map_path`, `item { name: "/m/01g317" id: 1 keypoints { id: 0
label: "nose" } ... }`: each keypoint's `id` is its column in the data's keypoints, its `label` the key
of `keypoint_label_to_std` (a Gaussian std dev of 1.0 when not listed). The boxes carrying the
keypoints are those of the item's class (its `id`, through the training label map's ids).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path

from raredet.builders.messages import field_value, message_kwargs, refused_as_config_error
from raredet.config.text import parse_text, read_text
from raredet.errors import ConfigError
from raredet.losses.center_net import penalty_reduced_logistic_focal
from raredet.losses.center_net_keypoints import l1_elementwise
from raredet.modeling.center_net import CenterNetTask
from raredet.modeling.center_net_keypoints import (
    DEFAULT_HEAD,
    RANKING_MODES,
    CenterNetKeypointTask,
    ElementwiseLoss,
    HeadShape,
    KeypointTaskParams,
    std_devs_for,
)
from raredet.protos import center_net_pb2, string_int_label_map_pb2

WHERE = "model.center_net"
KeypointMessage = center_net_pb2.CenterNet.KeypointEstimation
LabelMapItem = string_int_label_map_pb2.StringIntLabelMapItem

# Fields raredet does not build, each in effect when true (or above 0).
UNBUILT_FIELDS = ("predict_depth", "per_keypoint_depth", "argmax_postprocessing")
# Fields copied as they are into KeypointTaskParams (proto name -> parameter name).
COPIED_FIELDS = {
    "task_loss_weight": "task_loss_weight", "keypoint_heatmap_loss_weight": "heatmap_loss_weight",
    "keypoint_offset_loss_weight": "offset_loss_weight",
    "keypoint_regression_loss_weight": "regression_loss_weight", "heatmap_bias_init": "heatmap_bias_init",
    "offset_peak_radius": "offset_peak_radius", "per_keypoint_offset": "per_keypoint_offset",
    "keypoint_candidate_score_threshold": "candidate_score_threshold",
    "num_candidates_per_keypoint": "num_candidates_per_keypoint",
    "peak_max_pool_kernel_size": "peak_max_pool_kernel_size",
    "unmatched_keypoint_score": "unmatched_keypoint_score", "box_scale": "box_scale",
    "candidate_search_scale": "candidate_search_scale", "candidate_ranking_mode": "candidate_ranking_mode",
    "score_distance_offset": "score_distance_offset",
    "score_distance_multiplier": "score_distance_multiplier", "std_dev_multiplier": "std_dev_multiplier",
    "clip_out_of_frame_keypoints": "clip_out_of_frame_keypoints", "rescore_instances": "rescore_instances",
    "rescoring_threshold": "rescoring_threshold",
}


def build_keypoint_tasks(msg: center_net_pb2.CenterNet, in_channels: int, num_outputs: int,
                         class_ids: Sequence[int]) -> list[CenterNetTask]:
    """The keypoint task of `msg` (none when `keypoint_estimation_task` is unset), for an extractor of
    `num_outputs` maps of `in_channels` channels; `class_ids` are the label-map ids in index order."""
    messages = list(msg.keypoint_estimation_task)
    if not messages:
        return []
    if len(messages) > 1:
        raise ConfigError(f"{WHERE}.keypoint_estimation_task: {len(messages)} tasks; raredet builds one "
                          "keypoint task per model: keep one block")
    items = keypoint_items(msg.keypoint_label_map_path)
    return [build_keypoint_task(messages[0], items, in_channels, num_outputs, class_ids,
                                use_depthwise=msg.use_depthwise)]


def keypoint_items(path: str) -> dict[str, LabelMapItem]:
    """The items with keypoints of the label map at `keypoint_label_map_path`, by `name`."""
    where = f"{WHERE}.keypoint_label_map_path"
    if not path:
        raise ConfigError(f"{where}: is not set; a keypoint task needs the label map whose item for "
                          "keypoint_class_name lists `keypoints { id: 0 label: \"nose\" }`")
    text = read_text(Path(path), f"{where}:")
    label_map = parse_text(text, string_int_label_map_pb2.StringIntLabelMap(), path)
    return {item.name: item for item in label_map.item if len(item.keypoints)}


def build_keypoint_task(msg: KeypointMessage, items: dict[str, LabelMapItem], in_channels: int,
                        num_outputs: int, class_ids: Sequence[int], use_depthwise: bool = False,
                        where: str = f"{WHERE}.keypoint_estimation_task") -> CenterNetKeypointTask:
    """One task from its message and the keypoint label map's `items` (by name)."""
    _refuse_unbuilt(msg, where)
    item = _item(msg, items, where)
    labels = [kp.label for kp in item.keypoints]
    indices = [kp.id for kp in item.keypoints]
    if min(indices) < 0 or len(set(indices)) < len(indices):
        raise ConfigError(f"{where}: the keypoint ids {indices} of '{item.name}' in the keypoint label map "
                          "must be distinct and >= 0 (each is a column of the data's keypoints)")
    if item.id not in class_ids:
        raise ConfigError(f"{where}.keypoint_class_name: '{item.name}' has id {item.id} in the keypoint "
                          f"label map, which is not a class of the model (its ids: {list(class_ids)})")
    kwargs = {name: field_value(msg, field) for field, name in COPIED_FIELDS.items()}
    _check_values(kwargs, where)
    with refused_as_config_error(where):
        params = KeypointTaskParams(
            task_name=msg.task_name or "keypoint", class_id=list(class_ids).index(item.id),
            keypoint_indices=tuple(indices), keypoint_std_dev=std_devs_for(labels, msg.keypoint_label_to_std),
            heatmap_head=_head(msg, "heatmap_head_params", where),
            offset_head=_head(msg, "offset_head_params", where),
            regression_head=_head(msg, "regress_head_params", where), use_depthwise=use_depthwise, **kwargs)
        heatmap_loss, localization_loss = _losses(msg, where)
        return CenterNetKeypointTask(params, in_channels, num_outputs, heatmap_loss, localization_loss)


def _refuse_unbuilt(msg: KeypointMessage, where: str) -> None:
    for field in UNBUILT_FIELDS:
        if getattr(msg, field):
            raise ConfigError(f"{where}.{field}: is not supported by raredet's keypoint task; remove it")


def _item(msg: KeypointMessage, items: dict[str, LabelMapItem], where: str) -> LabelMapItem:
    item = items.get(msg.keypoint_class_name)
    if item is None:
        raise ConfigError(f"{where}.keypoint_class_name: no item named '{msg.keypoint_class_name}' with "
                          f"keypoints in the keypoint label map ({WHERE}.keypoint_label_map_path); items "
                          f"with keypoints: {sorted(items) or 'none'}")
    return item


def _check_values(kwargs: dict[str, object], where: str) -> None:
    if kwargs["candidate_ranking_mode"] not in RANKING_MODES:
        raise ConfigError(f"{where}.candidate_ranking_mode: {kwargs['candidate_ranking_mode']!r} is not one "
                          f"raredet builds; valid: {', '.join(RANKING_MODES)}")
    if int(kwargs["num_candidates_per_keypoint"]) < 1:  # type: ignore[call-overload]
        raise ConfigError(f"{where}.num_candidates_per_keypoint: must be at least 1, got "
                          f"{kwargs['num_candidates_per_keypoint']}")
    kernel = int(kwargs["peak_max_pool_kernel_size"])  # type: ignore[call-overload]
    if kernel < 1 or kernel % 2 == 0:
        raise ConfigError(f"{where}.peak_max_pool_kernel_size: must be an odd number >= 1, got {kernel}")
    if int(kwargs["offset_peak_radius"]) < 0:  # type: ignore[call-overload]
        raise ConfigError(f"{where}.offset_peak_radius: must be >= 0, got {kwargs['offset_peak_radius']}")


def _head(msg: KeypointMessage, field: str, where: str) -> HeadShape:
    """(kernel_sizes, num_filters) of a head's hidden convs: one 3x3 of 256 when unset, as the TF OD API."""
    if not msg.HasField(field):
        return DEFAULT_HEAD
    params = getattr(msg, field)
    kernels, filters = list(params.kernel_sizes), list(params.num_filters)
    odd = all(k >= 1 and k % 2 == 1 for k in kernels)
    if len(kernels) != len(filters) or not odd or min(filters, default=1) < 1:
        raise ConfigError(f"{where}.{field}: kernel_sizes {kernels} and num_filters {filters} need the same "
                          "length, odd kernel sizes and at least one filter each")
    return tuple(kernels), tuple(filters)


def _losses(msg: KeypointMessage, where: str) -> tuple[ElementwiseLoss, ElementwiseLoss]:
    """The heatmap loss (penalty_reduced_logistic_focal_loss) and the offset/regression loss (l1)."""
    loss = msg.loss
    classification = loss.classification_loss.WhichOneof("classification_loss")
    if classification != "penalty_reduced_logistic_focal_loss":
        raise ConfigError(f"{where}.loss.classification_loss: {classification or 'unset'}; the keypoint "
                          "heatmap needs penalty_reduced_logistic_focal_loss { alpha: 2.0 beta: 4.0 }")
    localization = loss.localization_loss.WhichOneof("localization_loss")
    if localization != "l1_localization_loss":
        raise ConfigError(f"{where}.loss.localization_loss: {localization or 'unset'}; keypoint offsets and "
                          "regressions need l1_localization_loss { } (the TF OD API's other localization "
                          "losses do not run on them)")
    focal = message_kwargs(loss.classification_loss.penalty_reduced_logistic_focal_loss)
    return partial(penalty_reduced_logistic_focal, **focal), l1_elementwise
