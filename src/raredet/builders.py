"""Config messages -> objects. The only module that reads config messages.

Every choice point in the config (a protobuf `oneof`) is one plain dict from the oneof's field name to
a constructor; an unset or unsupported choice is a ConfigError that lists the valid keys. Constructors
take keyword arguments named as the proto fields, so a message's set fields pass straight through
(`message_kwargs`); unset fields keep the constructors' defaults, which are the TF OD API's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn

import numpy as np
import torch
from google.protobuf import text_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from torch import nn

from raredet.config import (
    LabelMap,
    LoadedConfig,
    check_calibration,
    class_index,
    effective_config_text,
    parse_config,
)
from raredet.data import augment, readers
from raredet.data.dataset import DetectionDataset, collate
from raredet.data.sampling import RepeatFactorSampler, image_repeat_factors
from raredet.data.stats import DatasetStats, compute_stats
from raredet.engine import optim
from raredet.engine.train import TrainComponents
from raredet.errors import ConfigError
from raredet.evaluation.operating_points import Rule
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
from raredet.modeling.calibration import Calibration
from raredet.modeling.matcher import ArgMaxMatcher
from raredet.modeling.tf_compat import apply_weights_convention
from raredet.protos import (
    calibration_pb2,
    eval_pb2,
    faster_rcnn_pb2,
    input_reader_pb2,
    losses_pb2,
    pipeline_pb2,
    post_processing_pb2,
    ssd_pb2,
    train_pb2,
)

# Fields the TF OD API has but whose effect raredet does not need (graph or TPU details).
_INERT_FIELDS = frozenset({"anchorwise_output", "use_matmul_gather"})


# ---- generic message helpers --------------------------------------------------------------------


def _value(field: FieldDescriptor, value: Any) -> Any:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return message_kwargs(value)
    if field.type == FieldDescriptor.TYPE_ENUM:
        assert field.enum_type is not None
        return field.enum_type.values_by_number[value].name
    if field.type == FieldDescriptor.TYPE_FLOAT:  # float32 in the message: 0.1 -> 0.1, not 0.100000001
        return float(str(np.float32(value)))
    return value


def message_kwargs(msg: Message, skip: Sequence[str] = ()) -> dict[str, Any]:
    """The fields set in `msg` as plain Python values (enums as names, sub-messages as dicts)."""
    out: dict[str, Any] = {}
    for field, value in msg.ListFields():
        if field.name in skip or field.name in _INERT_FIELDS:
            continue
        if field.is_repeated and not _is_map(field):
            out[field.name] = [_value(field, v) for v in value]
        elif _is_map(field):
            out[field.name] = dict(value)
        else:
            out[field.name] = _value(field, value)
    return out


def _is_map(field: FieldDescriptor) -> bool:
    return field.message_type is not None and bool(field.message_type.GetOptions().map_entry)


def oneof_choice(msg: Message, oneof: str, table: Mapping[str, Any], where: str) -> tuple[str, Any, Any]:
    """(name, table[name], sub-message) of the oneof `oneof` in `msg`; ConfigError listing valid keys."""
    name = msg.WhichOneof(oneof)
    if name is None or name not in table:
        problem = "is not set" if name is None else f"{name!r} is not supported"
        raise ConfigError(f"{where}: {problem}; valid choices: {', '.join(table)}")
    return name, table[name], getattr(msg, name)


# ---- optimizer, learning rate, EMA --------------------------------------------------------------

LEARNING_RATES: dict[str, Callable[..., optim.LearningRateSchedule]] = {
    "constant_learning_rate": optim.ConstantLearningRate,
    "exponential_decay_learning_rate": optim.ExponentialDecayLearningRate,
    "manual_step_learning_rate": optim.ManualStepLearningRate,
    "cosine_decay_learning_rate": optim.CosineDecayLearningRate,
}
OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "momentum_optimizer": optim.momentum_optimizer,
    "adam_optimizer": optim.adam_optimizer,
    "rms_prop_optimizer": optim.rms_prop_optimizer,
}


def build_learning_rate(msg: Message, where: str) -> optim.LearningRateSchedule:
    name, make, sub = oneof_choice(msg, "learning_rate", LEARNING_RATES, where)
    kwargs = message_kwargs(sub)
    if name == "manual_step_learning_rate":
        kwargs["schedule"] = list(sub.schedule)  # entries keep their default learning_rate
    return make(**kwargs)


def build_optimizer(
    train_config: train_pb2.TrainConfig, model: nn.Module, l2_weights: Mapping[str, float]
) -> tuple[torch.optim.Optimizer, optim.LearningRateSchedule, optim.ModelEma | None]:
    """Optimizer over the trainable parameters (weight decay per L2 map), its schedule, and EMA."""
    where = "train_config.optimizer"
    name, make, sub = oneof_choice(train_config.optimizer, "optimizer", OPTIMIZERS, where)
    params = optim.trainable_parameters(
        model, list(train_config.freeze_variables), list(train_config.update_trainable_variables)
    )
    # add_regularization_loss: false drops the L2 terms, as the TF OD API leaves them out of the loss.
    groups = optim.weight_decay_groups(params, l2_weights if train_config.add_regularization_loss else {})
    optimizer = make(groups, **message_kwargs(sub, skip=("learning_rate",)))
    schedule = build_learning_rate(sub.learning_rate, f"{where}.{name}.learning_rate")
    opt_msg = train_config.optimizer
    ema = optim.ModelEma(model, opt_msg.moving_average_decay) if opt_msg.use_moving_average else None
    return optimizer, schedule, ema


# ---- data ---------------------------------------------------------------------------------------


def build_reader(msg: input_reader_pb2.InputReader, label_map: LabelMap, where: str) -> Any:
    """The reader of an input reader message (`tf_record_input_reader`, `coco_input_reader`, ...)."""
    name = msg.WhichOneof("input_reader")
    if name is None:
        raise ConfigError(f"{where}: no input reader is set; valid choices: {', '.join(readers.READERS)}")
    return readers.build_reader(name, message_kwargs(getattr(msg, name)), label_map)


def build_augmentations(train_config: train_pb2.TrainConfig) -> list[Any]:
    """One op per `data_augmentation_options` entry, its fields passed as keyword arguments."""
    ops = []
    for i, step in enumerate(train_config.data_augmentation_options):
        name = step.WhichOneof("preprocessing_step")
        if name is None:
            raise ConfigError(f"train_config.data_augmentation_options[{i}] is empty; name one operation")
        ops.append(augment.build_augmentation(name, message_kwargs(getattr(step, name))))
    return ops


def build_resizer(ssd: ModelMessage) -> Any:
    name = ssd.image_resizer.WhichOneof("image_resizer_oneof")
    if name is None:
        kind = "faster_rcnn" if isinstance(ssd, faster_rcnn_pb2.FasterRcnn) else "ssd"
        raise ConfigError(f"model.{kind}.image_resizer is not set; "
                          f"valid choices: {', '.join(augment.RESIZERS)}")
    return augment.build_resizer(name, message_kwargs(getattr(ssd.image_resizer, name)))


def _label_map(loaded: LoadedConfig) -> LabelMap:
    if loaded.label_map is None:
        raise ConfigError(
            f"{loaded.path}: train_input_reader.label_map_path is not set or does not exist; "
            "point it at a label_map.pbtxt"
        )
    return loaded.label_map


def build_sampler(
    reader_msg: input_reader_pb2.InputReader, stats: DatasetStats, seed: int
) -> RepeatFactorSampler:
    """Repeat-factor sampler (all factors 1 without `repeat_factor_sampling`) over the whole epoch:
    every rank draws the same order and the training loop gives each rank its slice of each batch."""
    if reader_msg.HasField("repeat_factor_sampling"):
        factors = image_repeat_factors(stats.image_classes, len(stats.names),
                                       reader_msg.repeat_factor_sampling.threshold)
    else:
        factors = np.ones(stats.num_images)
    return RepeatFactorSampler(factors, seed=seed, shuffle=reader_msg.shuffle)


# ---- class weights and the loss -----------------------------------------------------------------

SIMILARITIES: dict[str, Callable[..., Any]] = {"iou_similarity": lambda: box_iou}
MATCHERS: dict[str, Callable[..., Any]] = {"argmax_matcher": ArgMaxMatcher}
BOX_CODERS: dict[str, Callable[..., Any]] = {"faster_rcnn_box_coder": FasterRcnnBoxCoder}


def explicit_class_values(refs: Sequence[Any], label_map: LabelMap, where: str) -> dict[int, float]:
    """Contiguous class index -> value for `weight { name|id value }` / `class_alpha` entries."""
    return {class_index(r, label_map, f"{where}[{i}]"): float(r.value) for i, r in enumerate(refs)}


ModelMessage = ssd_pb2.Ssd | faster_rcnn_pb2.FasterRcnn


def model_message(config: pipeline_pb2.TrainEvalPipelineConfig) -> ModelMessage:
    """The model the config chose: `model.ssd` or `model.faster_rcnn`."""
    return getattr(config.model, config.model.WhichOneof("model") or "ssd")  # type: ignore[no-any-return]


def post_processing_field(msg: ModelMessage) -> tuple[post_processing_pb2.PostProcessing, str]:
    """(the post-processing message of a model (`post_processing_of`), the field path of its
    `calibration_config`)."""
    if isinstance(msg, faster_rcnn_pb2.FasterRcnn):
        return post_processing_of(msg), "model.faster_rcnn.second_stage_post_processing.calibration_config"
    return post_processing_of(msg), CALIBRATION_WHERE


def class_weights_field(msg: ModelMessage) -> tuple[losses_pb2.ClassWeights, str, bool]:
    """(the `class_weights` message of a model, its field path, whether it is set)."""
    if isinstance(msg, faster_rcnn_pb2.FasterRcnn):
        return (msg.second_stage_class_weights, "model.faster_rcnn.second_stage_class_weights",
                msg.HasField("second_stage_class_weights"))
    return msg.loss.class_weights, "model.ssd.loss.class_weights", msg.loss.HasField("class_weights")


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
    return resolve_class_weights(
        label_map.names, label_map.ids, boxes, images, explicit,
        auto_scheme=scheme, beta=cw.auto.beta, count=_enum_name(cw.auto, "count"),
        max_weight=cw.auto.max_weight or None,
    )


def _enum_name(msg: Message, field: str) -> str:
    enum = msg.DESCRIPTOR.fields_by_name[field].enum_type
    assert enum is not None
    return enum.values_by_number[getattr(msg, field)].name


def _classification_loss(loss: losses_pb2.Loss, label_map: LabelMap) -> tuple[Callable[..., Any], dict]:
    where = "model.ssd.loss.classification_loss"
    table = {**CLASSIFICATION_LOSSES, "custom": None}
    name, fn, sub = oneof_choice(loss.classification_loss, "classification_loss", table, where)
    if name == "custom":
        return get_custom_loss("classification", sub.name, sub.module), dict(sub.params)
    params = message_kwargs(sub, skip=("class_alpha",))
    if name == "weighted_sigmoid_focal" and len(sub.class_alpha):
        values = explicit_class_values(sub.class_alpha, label_map, f"{where}.{name}.class_alpha")
        params["class_alpha"] = resolve_class_alpha(label_map.num_classes, values, label_map.names)
    return fn, params


def _localization_loss(loss: losses_pb2.Loss) -> tuple[Callable[..., Any], dict]:
    where = "model.ssd.loss.localization_loss"
    table = {**LOCALIZATION_LOSSES, "custom": None}
    name, fn, sub = oneof_choice(loss.localization_loss, "localization_loss", table, where)
    if name == "custom":
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
              "second_stage_localization_loss_weight", "second_stage_classification_loss_weight")
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


def build_loss(ssd: ModelMessage, label_map: LabelMap, class_weights: Sequence[ClassWeight]) -> Any:
    """The loss of `model.ssd` (DetectionLoss) or `model.faster_rcnn` with the resolved per-class weights."""
    if isinstance(ssd, faster_rcnn_pb2.FasterRcnn):
        return build_faster_rcnn_loss(ssd, class_weights)
    loss = ssd.loss
    _, matcher, m_sub = oneof_choice(ssd.matcher, "matcher_oneof", MATCHERS, "model.ssd.matcher")
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
        miner = HardExampleMiner(**message_kwargs(loss.hard_example_miner),
                                 cls_loss_weight=loss.classification_weight,
                                 loc_loss_weight=loss.localization_weight)
    weights = class_weight_tensor(class_weights) if loss.HasField("class_weights") else None
    return DetectionLoss(
        matcher=matcher(**message_kwargs(m_sub)), box_coder=build_box_coder(ssd), similarity=similarity(),
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


def training_stats(loaded: LoadedConfig) -> DatasetStats | None:
    """Class counts of the training set (annotations only, no image decoded); None without a reader."""
    reader_msg = loaded.pipeline.train_input_reader
    if reader_msg.WhichOneof("input_reader") is None:
        return None
    label_map = _label_map(loaded)
    return compute_stats(build_reader(reader_msg, label_map, "train_input_reader"), label_map)


def resolve_class_weight_table(loaded: LoadedConfig, stats: DatasetStats | None = None) -> list[ClassWeight]:
    """The class-weight table training would use (for `raredet config show --resolve_weights`)."""
    if stats is None:
        stats = training_stats(loaded)
    return build_class_weights(model_message(loaded.pipeline), _label_map(loaded), stats)


# ---- the model ----------------------------------------------------------------------------------


FASTER_RCNN_MODEL_FIELDS = (
    "num_classes", "feature_extractor", "first_stage_anchor_generator",
    "first_stage_box_predictor_conv_hyperparams",
    "first_stage_atrous_rate", "first_stage_box_predictor_kernel_size", "first_stage_box_predictor_depth",
    "first_stage_nms_score_threshold", "first_stage_nms_iou_threshold", "first_stage_max_proposals",
    "initial_crop_size", "maxpool_kernel_size", "maxpool_stride", "second_stage_box_predictor",
    "second_stage_post_processing", "clip_anchors_to_image", "number_of_stages", "second_stage_batch_size",
    "second_stage_balance_fraction", "use_matmul_crop_and_resize",
)


def default_weights_convention(msg: ModelMessage) -> str:
    """How a model of `msg` computes unless its weights say otherwise: "tf" for the TF OD API's Keras SSD
    feature extractors (`*_keras`, which every TF2 zoo SSD config names), built and trained as the TF OD
    API builds and trains them (docs/models.md, "Training parity"); "torchvision" for the others.
    Faster R-CNN takes TF's conventions only with TF weights: its TF-order first stage is checked at
    inference only (with it, two DDP ranks no longer train as one process on the same batch)."""
    if isinstance(msg, faster_rcnn_pb2.FasterRcnn):
        return "torchvision"
    return "tf" if msg.feature_extractor.type.endswith("_keras") else "torchvision"


def build_model(ssd: ModelMessage, class_ids: Sequence[int] | None = None,
                weights_convention: str | None = None) -> tuple[nn.Module, dict[str, float]]:
    """The model of `model.ssd` (SSD) or `model.faster_rcnn` (FasterRCNN) and its L2 map
    `{parameter name: l2 weight}` for weight decay.

    `class_ids`: the label-map ids in index order (default 1..num_classes), which the keys of a
    per-class `calibration_config` name. `weights_convention`: "tf" or "torchvision" (a checkpoint's
    record, or what the fine-tune checkpoint's weights expect); None = `default_weights_convention`.
    """
    model, l2 = _build_model(ssd, class_ids)
    apply_weights_convention(model, weights_convention or default_weights_convention(ssd))
    return model, l2


def _build_model(ssd: ModelMessage, class_ids: Sequence[int] | None) -> tuple[nn.Module, dict[str, float]]:
    post, where = post_processing_field(ssd)
    calibration = None
    if post.HasField("calibration_config"):
        calibration = build_calibration(post.calibration_config, ssd.num_classes, class_ids, where)
    if isinstance(ssd, faster_rcnn_pb2.FasterRcnn):
        from raredet.modeling.faster_rcnn import FasterRCNN

        kwargs = message_kwargs(ssd)
        kwargs.get("second_stage_post_processing", {}).pop("calibration_config", None)  # arrives built
        frcnn = FasterRCNN(**{k: kwargs[k] for k in FASTER_RCNN_MODEL_FIELDS if k in kwargs},
                           calibration=calibration)
        return frcnn, dict(frcnn.l2_weights())
    from raredet.modeling.ssd import SSD  # imported here: model code is heavy and needed only here

    kwargs = message_kwargs(ssd)
    fields = ("num_classes", "feature_extractor", "box_predictor", "anchor_generator", "post_processing",
              "box_coder", "freeze_batchnorm")
    model = SSD(**{k: kwargs[k] for k in fields if k in kwargs}, calibration=calibration)
    return model, dict(model.l2_weights())


CALIBRATION_WHERE = "model.ssd.post_processing.calibration_config"


def build_calibration(msg: calibration_pb2.CalibrationConfig, num_classes: int,
                      class_ids: Sequence[int] | None = None, where: str = CALIBRATION_WHERE) -> Calibration:
    """The `Calibration` of a `calibration_config` for `num_classes` score columns.

    Per-class keys are label-map ids: `class_ids[k]` is column k's id (default k + 1, which is also
    the TF OD API's class id: its column 0 is background). ConfigError with the field path for maps
    that cannot be applied (see `config.check_calibration`).
    """
    ids = list(class_ids) if class_ids is not None else list(range(1, num_classes + 1))
    if len(ids) != num_classes:
        raise ConfigError(f"{where}: {len(ids)} label-map ids given for {num_classes} classes")

    def fail(field: str, problem: str) -> NoReturn:
        raise ConfigError(f"{field}: {problem}")

    check_calibration(msg, where, ids, fail)
    column = {id_: k for k, id_ in enumerate(ids)}
    kind = msg.WhichOneof("calibrator")
    if kind == "temperature_scaling_calibration":
        return Calibration.temperature_scaling(num_classes, msg.temperature_scaling_calibration.scaler)
    if kind == "function_approximation":
        x, y = _xy(msg.function_approximation.x_y_pairs)
        return Calibration.piecewise_linear_all(num_classes, x, y)
    if kind == "class_id_function_approximations":
        pairs = msg.class_id_function_approximations.class_id_xy_pairs_map
        return Calibration.piecewise_linear(num_classes, {column[i]: _xy(pairs[i]) for i in pairs})
    if kind == "sigmoid_calibration":
        params = msg.sigmoid_calibration.sigmoid_parameters
        return Calibration.platt_all(num_classes, params.a, params.b)
    per_class = msg.class_id_sigmoid_calibrations.class_id_sigmoid_parameters_map
    return Calibration.platt(num_classes, {column[i]: (per_class[i].a, per_class[i].b) for i in per_class})


def _xy(pairs: calibration_pb2.XYPairs) -> tuple[list[float], list[float]]:
    return [p.x for p in pairs.x_y_pair], [p.y for p in pairs.x_y_pair]


def build_score_converter(post_processing: post_processing_pb2.PostProcessing,
                          num_classes: int | None = None,
                          class_ids: Sequence[int] | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """Logits `[B, A, K]` -> calibrated scores `[B, A, K]`, as `post_processing` says (score converter,
    `logit_scale`, `calibration_config`; TF OD API order). Column k is label-map id k + 1 unless
    `class_ids` says otherwise. Without `num_classes`, K is read from the logits at each call (and a
    per-class key beyond K is a ConfigError then)."""
    from raredet.modeling.postprocess import ScoreConverter

    converter = _enum_name(post_processing, "score_converter")
    scale = post_processing.logit_scale

    def make(k: int) -> ScoreConverter:
        calibration = (build_calibration(post_processing.calibration_config, k, class_ids,
                                         "post_processing.calibration_config")
                       if post_processing.HasField("calibration_config") else None)
        return ScoreConverter(converter, scale, calibration, k)

    if num_classes is not None:
        return make(num_classes)
    built: dict[int, ScoreConverter] = {}

    def convert(logits: torch.Tensor) -> torch.Tensor:
        k = int(logits.shape[-1])
        if k not in built:
            built[k] = make(k)
        return built[k](logits)

    return convert


def check_buildable(loaded: LoadedConfig) -> None:
    """Build every part of training that needs no data — resizer, augmentations, model, optimizer and
    schedule, loss (class weights all 1, a custom loss's module imported) — so that `raredet config
    check` refuses what `raredet train` would refuse when it starts. Raises ConfigError."""
    cfg = loaded.pipeline
    ssd = model_message(cfg)
    build_resizer(ssd)
    build_augmentations(cfg.train_config)
    model, l2_weights = build_model(ssd, loaded.label_map.ids if loaded.label_map is not None else None)
    build_operating_point_rules(cfg.eval_config, loaded.label_map)
    if cfg.train_config.HasField("optimizer"):
        build_optimizer(cfg.train_config, model, l2_weights)
    if loaded.label_map is not None:  # the loss resolves class names (class_alpha) through it
        lm = loaded.label_map
        ones = [1] * lm.num_classes  # counts only matter to auto weights, whose values are not checked
        build_loss(ssd, lm, resolve_class_weights(lm.names, lm.ids, ones, ones))


# ---- evaluation -----------------------------------------------------------------------------------

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


# ---- everything training needs ------------------------------------------------------------------


def build_train_data(
    loaded: LoadedConfig, reader: Any, stats: DatasetStats, seed: int
) -> tuple[DetectionDataset, RepeatFactorSampler]:
    """Training dataset (reader -> augmentations -> resizer) and its repeat-factor sampler."""
    cfg = loaded.pipeline
    dataset = DetectionDataset(reader, augmentations=build_augmentations(cfg.train_config),
                               resizer=build_resizer(model_message(cfg)), training=True, seed=seed)
    sampler = build_sampler(cfg.train_input_reader, stats, seed)
    return dataset, sampler


def uses_sync_batch_norm(msg: Message) -> bool:
    """Whether any conv_hyperparams inside `msg` chose `sync_batch_norm`."""
    for field, value in msg.ListFields():
        if field.name == "sync_batch_norm":
            return True
        if field.type == FieldDescriptor.TYPE_MESSAGE and not _is_map(field):
            values = value if field.is_repeated else [value]
            if any(uses_sync_batch_norm(v) for v in values):
                return True
    return False


def _num_steps(train_config: train_pb2.TrainConfig, override: int | None, path: Any) -> int:
    steps = override if override is not None else train_config.num_steps
    if steps <= 0:
        raise ConfigError(f"{path}: train_config.num_steps is 0; set it or pass --num_train_steps N")
    return int(steps)


def build_training(
    loaded: LoadedConfig,
    *,
    seed: int = 0,
    num_train_steps: int | None = None,
    num_workers: int = 0,
) -> TrainComponents:
    """Model, loss (with resolved class weights), optimizer, schedule, EMA, data: `engine.train`'s input."""
    cfg = loaded.pipeline
    label_map = _label_map(loaded)
    if cfg.train_input_reader.WhichOneof("input_reader") is None:
        raise ConfigError(f"{loaded.path}: train_input_reader has no input reader; add one")
    torch.manual_seed(seed)  # the model's initial weights depend on the seed only
    reader = build_reader(cfg.train_input_reader, label_map, "train_input_reader")
    stats = compute_stats(reader, label_map)
    class_weights = build_class_weights(model_message(cfg), label_map, stats)
    model, l2_weights = build_model(model_message(cfg), label_map.ids, fine_tune_convention(cfg.train_config))
    optimizer, schedule, ema = build_optimizer(cfg.train_config, model, l2_weights)
    dataset, sampler = build_train_data(loaded, reader, stats, seed)
    return TrainComponents(
        model=model, criterion=build_loss(model_message(cfg), label_map, class_weights), optimizer=optimizer,
        schedule=schedule, dataset=dataset, sampler=sampler, collate_fn=collate,
        batch_size=cfg.train_config.batch_size,
        num_steps=_num_steps(cfg.train_config, num_train_steps, loaded.path),
        class_names=label_map.names, ema=ema, evaluate_with_ema=cfg.eval_config.use_moving_averages,
        gradient_clipping_by_norm=cfg.train_config.gradient_clipping_by_norm, num_workers=num_workers,
        sync_batch_norm=uses_sync_batch_norm(model_message(cfg)), class_weights=class_weights,
        use_bfloat16=cfg.train_config.use_bfloat16,
        metadata={"config_text": effective_config_text(cfg), "label_map_text": label_map.to_pbtxt()},
    )


# ---- fine-tuning and evaluation during training ------------------------------------------------

def fine_tune_convention(train_config: train_pb2.TrainConfig) -> str | None:
    """"torchvision" when `fine_tune_checkpoint` names torch weights (a torchvision backbone or a raredet
    checkpoint: they expect torchvision's conventions), else None (the model's default; a TF checkpoint
    switches the model to TF's when it loads)."""
    from raredet.tfcheckpoint import is_tf_checkpoint

    path = train_config.fine_tune_checkpoint
    return "torchvision" if path and not is_tf_checkpoint(path) else None


def load_fine_tune_checkpoint(model: nn.Module, train_config: train_pb2.TrainConfig) -> str | None:
    """Load `fine_tune_checkpoint` as `fine_tune_checkpoint_type` says (a torchvision-named backbone
    state dict for "classification", a raredet checkpoint or model state dict for "detection"/"full");
    returns a one-line report, None if unset."""
    from raredet.modeling.pretrained import load_fine_tune_checkpoint as load_into

    path = train_config.fine_tune_checkpoint
    if not path:
        return None
    kind = train_config.fine_tune_checkpoint_type or "classification"
    report = load_into(model, path, kind)  # type: ignore[arg-type]
    said = report.summary()
    if getattr(model, "weights_convention", "torchvision") == "torchvision" and "conventions" not in said:
        said += "; computing with torchvision's conventions (what torch weights expect)"
    return f"fine-tuning from {path} ({kind}): {said}"


def build_eval_loader(
    loaded: LoadedConfig, sample_1_of_n: int | None = None, num_workers: int = 0
) -> torch.utils.data.DataLoader | None:
    """The eval_input_reader's data (no augmentation), every n-th example, decoded by `num_workers`
    processes; None without a reader."""
    cfg = loaded.pipeline
    if not len(cfg.eval_input_reader) or cfg.eval_input_reader[0].WhichOneof("input_reader") is None:
        return None
    msg = cfg.eval_input_reader[0]
    label_map = _label_map(loaded)
    reader = build_reader(msg, label_map, "eval_input_reader")
    dataset = DetectionDataset(reader, resizer=build_resizer(model_message(cfg)), training=False)
    every = sample_1_of_n or msg.sample_1_of_n_examples or 1
    subset = torch.utils.data.Subset(dataset, range(0, len(dataset), every))
    return torch.utils.data.DataLoader(subset, batch_size=max(cfg.eval_config.batch_size, 1),
                                       shuffle=False, collate_fn=collate, num_workers=num_workers)


def eval_options(loaded: LoadedConfig, operating_point: Rule | None = None) -> dict[str, Any]:
    """The `eval_config` fields `engine.evaluate.evaluate` takes, as keyword arguments.

    `operating_point`: a rule for every class that replaces `eval_config.operating_points`' rules
    (the `--operating_point` flag)."""
    ec = loaded.pipeline.eval_config
    rule, class_rules = build_operating_point_rules(ec, loaded.label_map, operating_point)
    return {
        "metrics_set": list(ec.metrics_set) or "coco_detection_metrics",
        "min_score_threshold": ec.min_score_threshold,
        "include_metrics_per_category": True,
        "num_visualizations": ec.num_visualizations,
        "operating_point_rule": rule,
        "class_rules": class_rules,
        "score_floor":
            post_processing_of(model_message(loaded.pipeline)).batch_non_max_suppression.score_threshold,
        "images_description": _eval_data_description(loaded),
    }


def post_processing_of(msg: ModelMessage) -> post_processing_pb2.PostProcessing:
    """`model.ssd.post_processing` or `model.faster_rcnn.second_stage_post_processing` (the TF OD API's
    own places)."""
    if isinstance(msg, faster_rcnn_pb2.FasterRcnn):
        return msg.second_stage_post_processing
    return msg.post_processing


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


def operating_points_config(loaded: LoadedConfig, content: Mapping[str, Any]) -> tuple[str | None, str]:
    """(pipeline.config text, note): `loaded`'s config whose post-processing applies the per-class
    thresholds of `content` (operating_points.json) in the TF OD API's own terms: a per-class
    `calibration_config.class_id_function_approximations` map sending each class's threshold to the
    common `batch_non_max_suppression.score_threshold`. None (and why) where that cannot be written."""
    cfg = type(loaded.pipeline)()
    cfg.CopyFrom(loaded.pipeline)  # input paths are absolute here: the file works from any folder
    post, where = post_processing_field(model_message(cfg))
    if post.HasField("calibration_config"):
        kind = post.calibration_config.WhichOneof("calibrator")
        owner = where.removesuffix(".calibration_config")
        return None, (f"not written: {owner} already has calibration_config ({kind}), and "
                      "the TF OD API takes one calibrator; apply operating_points.json with "
                      "--operating_points")
    identity = post.score_converter == post_processing_pb2.PostProcessing.IDENTITY
    if identity or not content.get("deployable", True):
        return None, ("not written: score_converter is IDENTITY, so scores are not in [0, 1] where "
                      "calibration maps work; use SIGMOID or SOFTMAX")
    post.batch_non_max_suppression.score_threshold = float(content["score_threshold"])
    maps = post.calibration_config.class_id_function_approximations.class_id_xy_pairs_map
    for class_id, xy in content["calibration"].items():
        entry = maps[int(class_id)]
        entry.training_data_type = calibration_pb2.CLASS_SPECIFIC
        xs, ys = (xy["x"], xy["y"]) if isinstance(xy, Mapping) else xy
        for x, y in zip(xs, ys, strict=True):
            entry.x_y_pair.add(x=x, y=y)
    if not maps:  # no class has a threshold: an empty map is identity (and the oneof must be set)
        post.calibration_config.class_id_function_approximations.SetInParent()
    chosen = content["chosen_on"].get("description", "")
    review = content.get("review_score_threshold")
    band = (f"; its review threshold to {review:g} (lower score_threshold to that to see the review band)"
            if review is not None else "")
    header = [f"# Written by raredet eval: per-class operating points chosen on {chosen}.",
              f"# Each class's threshold maps to score_threshold {content['score_threshold']:g}{band}.",
              "# Classes without a map keep that threshold as it is."]
    return "\n".join(header) + "\n" + text_format.MessageToString(cfg), "written"


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

