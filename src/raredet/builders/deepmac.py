"""CenterNet's DeepMAC mask task (`model.center_net.deepmac_mask_estimation`) from its message."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np

from raredet.builders.messages import message_kwargs, oneof_choice, refused_as_config_error
from raredet.config import LabelMap
from raredet.errors import ConfigError
from raredet.losses import CLASSIFICATION_LOSSES
from raredet.losses.deepmac import weighted_dice
from raredet.modeling.deepmac import DeepMACTask
from raredet.protos import center_net_pb2

WHERE = "model.center_net.deepmac_mask_estimation"

# The losses a mask may take: sigmoid losses on one logit per pixel, and the dice loss.
MASK_LOSSES: dict[str, Callable[..., Any]] = {
    **{name: CLASSIFICATION_LOSSES[name] for name in ("weighted_sigmoid", "weighted_sigmoid_focal",
                                                      "bootstrapped_sigmoid")},
    "weighted_dice_classification_loss": weighted_dice,
}

# Fields raredet does not build, each in effect when above 0 (true): RoI jitter, full-resolution masks,
# instance subsampling (the TF OD API refuses it too) and the weakly supervised losses.
UNBUILT_FIELDS = (
    "predict_full_resolution_masks", "max_roi_jitter_ratio", "mask_num_subsamples",
    "box_consistency_loss_weight", "feature_consistency_loss_weight",
    "augmented_self_supervision_loss_weight", "pointly_supervised_keypoint_loss_weight",
    "ignore_per_class_box_overlap",
)


def _refuse_unbuilt(msg: center_net_pb2.CenterNet.DeepMACMaskEstimation) -> None:
    for field in UNBUILT_FIELDS:
        if getattr(msg, field) > 0:
            default = msg.DESCRIPTOR.fields_by_name[field].default_value
            raise ConfigError(f"{WHERE}.{field}: is not supported by raredet's DeepMAC; remove it "
                              f"(or set it to its default, {default})")


def allowed_class_indices(ids: list[int], label_map: LabelMap | None) -> list[int]:
    """`allowed_masked_classes_ids` (label-map ids) -> contiguous class indices; without a label map,
    the TF OD API's own reading (index = id - 1)."""
    if label_map is None:
        return [i - 1 for i in ids]
    indices = label_map.ids_to_indices(np.array(ids, dtype=np.int64)).tolist()
    missing = [i for i, index in zip(ids, indices, strict=True) if index < 0]
    if missing:
        raise ConfigError(f"{WHERE}.allowed_masked_classes_ids: {missing} not in the label map "
                          f"{label_map.path}; its ids are {label_map.ids}")
    return [int(i) for i in indices]


def build_deepmac_task(
    msg: center_net_pb2.CenterNet.DeepMACMaskEstimation, in_channels: int, num_feature_outputs: int,
    label_map: LabelMap | None = None,
) -> DeepMACTask:
    """The DeepMAC task for an extractor of `num_feature_outputs` maps of `in_channels` channels.
    `label_map` resolves `allowed_masked_classes_ids` (TF's id - 1 without one)."""
    _refuse_unbuilt(msg)
    name, fn, sub = oneof_choice(msg.classification_loss, "classification_loss", MASK_LOSSES,
                                 f"{WHERE}.classification_loss")
    if name == "weighted_sigmoid_focal" and len(sub.class_alpha):
        raise ConfigError(f"{WHERE}.classification_loss.{name}.class_alpha: masks have no classes; remove it")
    mask_loss = partial(fn, **message_kwargs(sub, skip=("class_alpha",)))
    fields = ("dim", "pixel_embedding_dim", "mask_size", "use_xy", "network_type", "use_instance_embedding",
              "num_init_channels", "task_loss_weight", "use_only_last_stage")
    for field in ("dim", "pixel_embedding_dim", "mask_size", "num_init_channels"):
        if getattr(msg, field) < 1:
            raise ConfigError(f"{WHERE}.{field}: must be at least 1, got {getattr(msg, field)}")
    with refused_as_config_error(WHERE):
        return DeepMACTask(
            in_channels, num_feature_outputs, mask_loss, **{f: getattr(msg, f) for f in fields},
            allowed_masked_classes_ids=allowed_class_indices(list(msg.allowed_masked_classes_ids), label_map),
        )
