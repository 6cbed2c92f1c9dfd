"""CenterNet's DeepMAC mask task (`model.center_net.deepmac_mask_estimation`) from its message."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from raredet.builders.messages import message_kwargs, oneof_choice, refused_as_config_error
from raredet.config import ConfigWarning
from raredet.errors import ConfigError
from raredet.losses import CLASSIFICATION_LOSSES
from raredet.losses.deepmac import weighted_dice
from raredet.modeling.center_net import CenterNetTask
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


def allowed_class_indices(ids: Sequence[int], class_ids: Sequence[int] | None) -> list[int]:
    """`allowed_masked_classes_ids` (label-map ids) -> contiguous class indices, given the label-map ids
    in index order (`class_ids`; None: the TF OD API's own reading, index = id - 1). Ids the label map
    lacks select no box, as in the TF OD API (a zoo config's COCO ids on a smaller label map): a warning
    names them. When none of them is in the label map (the zoo's non_voc_only config on a small label
    map) the TF OD API trains the mask head on no instance (mask loss 0) without a word; raredet trains
    the same way, returning [-1] (an index no class has, so it selects nothing; an empty list would mean
    every class), and warns that the masks will not train and what to set."""
    if class_ids is None:
        return [i - 1 for i in ids]
    index_of = {class_id: index for index, class_id in enumerate(class_ids)}
    missing = [i for i in ids if i not in index_of]
    where = f"{WHERE}.allowed_masked_classes_ids"
    if ids and len(missing) == len(ids):
        warnings.warn(f"{where}: none of {list(ids)} is a label-map id (the label map's ids are "
                      f"{list(class_ids)}), so no instance trains the mask head and the masks it predicts "
                      "stay untrained (the TF OD API trains this config the same way); set it to the ids "
                      "whose masks should train, or remove it to train masks for every class",
                      ConfigWarning, stacklevel=2)
        return [-1]
    if missing:
        warnings.warn(f"{where}: {missing} are not label-map ids and select no instance", ConfigWarning,
                      stacklevel=2)
    return [index_of[i] for i in ids if i in index_of]


def build_deepmac_task(
    msg: center_net_pb2.CenterNet.DeepMACMaskEstimation, in_channels: int, num_feature_outputs: int,
    class_ids: Sequence[int] | None = None,
) -> DeepMACTask:
    """The DeepMAC task for an extractor of `num_feature_outputs` maps of `in_channels` channels.
    `class_ids`: the label-map ids in index order, for `allowed_masked_classes_ids` (TF's id - 1 when
    None)."""
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
            allowed_masked_classes_ids=allowed_class_indices(list(msg.allowed_masked_classes_ids), class_ids),
        )


def build_deepmac_tasks(msg: center_net_pb2.CenterNet, in_channels: int, num_outputs: int,
                        class_ids: Sequence[int]) -> list[CenterNetTask]:
    """builders/center_net.py's TASK_BUILDERS entry: the DeepMAC task when the block is set."""
    if not msg.HasField("deepmac_mask_estimation"):
        return []
    return [build_deepmac_task(msg.deepmac_mask_estimation, in_channels, num_outputs, class_ids)]
