"""Class weights and the loss (`model.ssd.loss`, or Faster R-CNN's) from the model message."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from raredet.builders.data import _label_map, training_stats
from raredet.builders.messages import (
    ModelMessage,
    _enum_name,
    class_weights_field,
    message_kwargs,
    model_message,
    oneof_choice,
    refused_as_config_error,
)
from raredet.config import LabelMap, LoadedConfig, class_index
from raredet.data.stats import DatasetStats
from raredet.errors import ConfigError
from raredet.losses import (
    CLASSIFICATION_LOSSES,
    LOCALIZATION_LOSSES,
    ClassWeight,
    DetectionLoss,
    HardExampleMiner,
    class_weight_tensor,
    get_custom_loss,
    resolve_class_alpha,
    resolve_class_weights,
    statistics_for,
)
from raredet.losses.pair_aware import STATISTICS_OPTIONS
from raredet.modeling.box_coder import FasterRcnnBoxCoder
from raredet.modeling.box_ops import box_iou
from raredet.modeling.matcher import ArgMaxMatcher
from raredet.protos import center_net_pb2, faster_rcnn_pb2, losses_pb2, ssd_pb2

SIMILARITIES: dict[str, Callable[..., Any]] = {"iou_similarity": lambda: box_iou}


MATCHERS: dict[str, Callable[..., Any]] = {"argmax_matcher": ArgMaxMatcher}


BOX_CODERS: dict[str, Callable[..., Any]] = {"faster_rcnn_box_coder": FasterRcnnBoxCoder}


def explicit_class_values(refs: Sequence[Any], label_map: LabelMap, where: str) -> dict[int, float]:
    """Contiguous class index -> value for `weight { name|id value }` / `class_alpha` entries."""
    return {class_index(r, label_map, f"{where}[{i}]"): float(r.value) for i, r in enumerate(refs)}


def build_class_weights(
    loss: losses_pb2.Loss | ModelMessage, label_map: LabelMap, stats: DatasetStats | None
) -> list[ClassWeight]:
    """One resolved weight per class (all 1.0 without `class_weights`); `loss` is `model.ssd.loss` or
    the model message itself."""
    if isinstance(loss, losses_pb2.Loss):
        cw, where = loss.class_weights, "model.ssd.loss.class_weights"
    else:
        cw, where, _ = class_weights_field(loss)
    explicit = explicit_class_values(cw.weight, label_map, f"{where}.weight")
    scheme = _enum_name(cw.auto, "scheme") if cw.HasField("auto") else None
    if scheme is not None and stats is None:
        raise ConfigError(f"{where}.auto needs the training set's counts; set train_input_reader")
    k = label_map.num_classes
    boxes = stats.box_counts.tolist() if stats is not None else [0] * k
    images = stats.image_counts.tolist() if stats is not None else [0] * k
    with refused_as_config_error("class_weights", fields=("auto", "weight")):
        return resolve_class_weights(
            label_map.names, label_map.ids, boxes, images, explicit,
            auto_scheme=scheme, beta=cw.auto.beta, count=_enum_name(cw.auto, "count"),
            max_weight=cw.auto.max_weight or None,
        )


def resolve_class_weight_table(loaded: LoadedConfig, stats: DatasetStats | None = None) -> list[ClassWeight]:
    """The class-weight table training would use (for `raredet config show --resolve_weights`)."""
    if stats is None:
        stats = training_stats(loaded)
    return build_class_weights(model_message(loaded.pipeline), _label_map(loaded), stats)


def _classification_loss(loss: losses_pb2.Loss, label_map: LabelMap) -> tuple[Callable[..., Any], dict]:
    where = "model.ssd.loss.classification_loss"
    table = {**CLASSIFICATION_LOSSES, "custom": None}
    name, fn, sub = oneof_choice(loss.classification_loss, "classification_loss", table, where)
    if name == "custom":
        with refused_as_config_error("classification_loss.custom", fields=()):
            return get_custom_loss("classification", sub.name, sub.module), dict(sub.params)
    params = message_kwargs(sub, skip=("class_alpha",))
    if name == "weighted_sigmoid_focal" and len(sub.class_alpha):
        values = explicit_class_values(sub.class_alpha, label_map, f"{where}.{name}.class_alpha")
        with refused_as_config_error(""):  # its message names the field and the class
            params["class_alpha"] = resolve_class_alpha(label_map.num_classes, values, label_map.names)
    return fn, params


def _localization_loss(loss: losses_pb2.Loss) -> tuple[Callable[..., Any], dict]:
    where = "model.ssd.loss.localization_loss"
    table = {**LOCALIZATION_LOSSES, "custom": None}
    name, fn, sub = oneof_choice(loss.localization_loss, "localization_loss", table, where)
    if name == "custom":
        with refused_as_config_error("localization_loss.custom", fields=()):
            return get_custom_loss("localization", sub.name, sub.module), dict(sub.params)
    return fn, message_kwargs(sub)


def build_box_coder(ssd: ssd_pb2.Ssd) -> Any:
    _, make, sub = oneof_choice(ssd.box_coder, "box_coder_oneof", BOX_CODERS, "model.ssd.box_coder")
    return make(**message_kwargs(sub))


def build_faster_rcnn_loss(msg: faster_rcnn_pb2.FasterRcnn, class_weights: Sequence[ClassWeight]) -> Any:
    """The FasterRcnnLoss of `model.faster_rcnn` with the resolved per-class weights."""
    from raredet.losses.faster_rcnn import FasterRcnnLoss

    fields = ("first_stage_minibatch_size", "first_stage_positive_balance_fraction",
              "first_stage_localization_loss_weight", "first_stage_objectness_loss_weight",
              "second_stage_batch_size", "second_stage_balance_fraction",
              "second_stage_localization_loss_weight", "second_stage_classification_loss_weight",
              "second_stage_mask_prediction_loss_weight")
    set_weights = msg.HasField("second_stage_class_weights")
    softmax = msg.second_stage_classification_loss.weighted_softmax
    return FasterRcnnLoss(
        num_classes=msg.num_classes, **{f: getattr(msg, f) for f in fields},
        class_weights=class_weight_tensor(class_weights) if set_weights else None,
        apply_to_localization=msg.second_stage_class_weights.apply_to_localization,
        logit_scale=softmax.logit_scale,
        seesaw=(message_kwargs(msg.second_stage_seesaw_loss)
                if msg.HasField("second_stage_seesaw_loss") else None),
    )


def build_loss(ssd: ModelMessage, label_map: LabelMap, class_weights: Sequence[ClassWeight],
               box_coder: FasterRcnnBoxCoder | None = None, model: Any = None) -> Any:
    """The loss of `model.ssd` (DetectionLoss), `model.faster_rcnn` or `model.center_net` with the
    resolved per-class weights.

    `box_coder`: the SSD's own (`SSD.box_coder`), so the loss encodes with the coder the model decodes
    with; None builds `model.ssd.box_coder`. `model`: the built CenterNet, whose further tasks
    (keypoints, masks) compute their own losses."""
    if isinstance(ssd, faster_rcnn_pb2.FasterRcnn):
        return build_faster_rcnn_loss(ssd, class_weights)
    if isinstance(ssd, center_net_pb2.CenterNet):
        from raredet.builders.center_net import build_center_net_loss  # imports the model code

        return build_center_net_loss(ssd, class_weights, model)
    loss = ssd.loss
    m_name, matcher, m_sub = oneof_choice(ssd.matcher, "matcher_oneof", MATCHERS, "model.ssd.matcher")
    with refused_as_config_error(m_name, fields=()):
        built_matcher = matcher(**message_kwargs(m_sub))
    _, similarity, _ = oneof_choice(ssd.similarity_calculator, "region_similarity", SIMILARITIES,
                                    "model.ssd.similarity_calculator")
    cls_fn, cls_params = _classification_loss(loss, label_map)
    cls_statistics = None
    if statistics_for(cls_fn, 1) is not None:  # a pair-aware loss: some fields set up its statistics
        options = {k: cls_params.pop(k) for k in STATISTICS_OPTIONS & cls_params.keys()}
        cls_statistics = statistics_for(cls_fn, label_map.num_classes, **options)
    loc_fn, loc_params = _localization_loss(loss)
    miner = None
    if loss.HasField("hard_example_miner"):
        with refused_as_config_error("hard_example_miner"):
            miner = HardExampleMiner(**message_kwargs(loss.hard_example_miner),
                                     cls_loss_weight=loss.classification_weight,
                                     loc_loss_weight=loss.localization_weight)
    weights = class_weight_tensor(class_weights) if loss.HasField("class_weights") else None
    if box_coder is None or ssd.box_coder.WhichOneof("box_coder_oneof") is None:
        box_coder = build_box_coder(ssd)  # ConfigError when unset: training needs the coder named
    return DetectionLoss(
        matcher=built_matcher, box_coder=box_coder, similarity=similarity(),
        classification_loss=cls_fn, classification_loss_params=cls_params,
        localization_loss=loc_fn, localization_loss_params=loc_params,
        class_weights=weights, apply_to_localization=loss.class_weights.apply_to_localization,
        negative_class_weight=ssd.negative_class_weight, hard_example_miner=miner,
        positive_sample_fraction=(loss.random_example_sampler.positive_sample_fraction
                                  if loss.HasField("random_example_sampler") else None),
        normalize_loss_by_num_matches=ssd.normalize_loss_by_num_matches,
        normalize_loc_loss_by_codesize=ssd.normalize_loc_loss_by_codesize,
        classification_weight=loss.classification_weight, localization_weight=loss.localization_weight,
        classification_statistics=cls_statistics,
    )
