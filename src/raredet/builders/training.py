"""Everything training needs, the fine-tune checkpoint, and the build-everything check of
`raredet config check`."""

from __future__ import annotations

import warnings
from typing import Any

import torch
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from torch import nn

from raredet.builders.data import (
    _label_map,
    build_augmentations,
    build_reader,
    build_resizer,
    build_train_data,
)
from raredet.builders.evaluation import build_operating_point_rules
from raredet.builders.losses import build_class_weights, build_loss
from raredet.builders.messages import _is_map, model_message, refused_as_config_error
from raredet.builders.model import build_model
from raredet.builders.optim import build_optimizer
from raredet.config import ConfigWarning, LoadedConfig, effective_config_text
from raredet.config.load import keypoint_label_map_missing
from raredet.data.dataset import collate
from raredet.data.stats import compute_stats
from raredet.engine.components import TrainComponents
from raredet.errors import ConfigError
from raredet.losses import resolve_class_weights
from raredet.modeling.box_coder import FasterRcnnBoxCoder
from raredet.protos import center_net_pb2, pipeline_pb2, train_pb2


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
    warn_frozen_batch_norm_from_scratch(cfg)
    optimizer, schedule, ema = build_optimizer(cfg.train_config, model, l2_weights)
    dataset, sampler = build_train_data(loaded, reader, stats, seed)
    return TrainComponents(
        model=model,
        criterion=build_loss(model_message(cfg), label_map, class_weights, _box_coder(model), model=model),
        optimizer=optimizer,
        schedule=schedule, dataset=dataset, sampler=sampler, collate_fn=collate,
        batch_size=cfg.train_config.batch_size,
        num_steps=_num_steps(cfg.train_config, num_train_steps, loaded.path),
        class_names=label_map.names, ema=ema, evaluate_with_ema=cfg.eval_config.use_moving_averages,
        gradient_clipping_by_norm=cfg.train_config.gradient_clipping_by_norm, num_workers=num_workers,
        sync_batch_norm=uses_sync_batch_norm(model_message(cfg)), class_weights=class_weights,
        use_bfloat16=cfg.train_config.use_bfloat16,
        config_text=effective_config_text(cfg), label_map_text=label_map.to_pbtxt(),
    )


def warn_frozen_batch_norm_from_scratch(cfg: pipeline_pb2.TrainEvalPipelineConfig) -> None:
    """A ConfigWarning when a Faster R-CNN / Mask R-CNN config keeps its feature extractor's batch norms
    frozen (`batch_norm_trainable` false, as in the zoo's GPU configs) and sets no fine_tune_checkpoint:
    frozen batch norms use their stored statistics, which from random weights are the initial ones
    (mean 0, variance 1), so nothing normalises the activations and they can grow layer by layer. The
    TF OD API trains such a config the same way, without a word."""
    if cfg.model.WhichOneof("model") != "faster_rcnn" or cfg.train_config.fine_tune_checkpoint:
        return
    if cfg.model.faster_rcnn.feature_extractor.batch_norm_trainable:
        return
    warnings.warn(
        "model.faster_rcnn.feature_extractor.batch_norm_trainable is false and "
        "train_config.fine_tune_checkpoint is not set: the frozen batch norms keep their initial statistics "
        "(mean 0, variance 1), so from random weights nothing normalises the feature extractor's activations "
        "(the zoo's 800x1333 ResNet-101 and ResNet-152 configs start at losses of about 3e4 and 1e7); set "
        "fine_tune_checkpoint to the zoo's checkpoint, or batch_norm_trainable: true to train from scratch",
        ConfigWarning, stacklevel=2)


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


def _box_coder(model: nn.Module) -> FasterRcnnBoxCoder | None:
    """An SSD's box coder, which its loss shares (Faster R-CNN's loss codes its own)."""
    coder = getattr(model, "box_coder", None)
    return coder if isinstance(coder, FasterRcnnBoxCoder) else None


def _num_steps(train_config: train_pb2.TrainConfig, override: int | None, path: Any) -> int:
    steps = override if override is not None else train_config.num_steps
    if steps <= 0:
        raise ConfigError(f"{path}: train_config.num_steps is 0; set it or pass --num_train_steps N")
    return int(steps)


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
    from raredet.modeling.pretrained import check_checkpoint_type
    from raredet.modeling.pretrained import load_checkpoint_weights as load_into

    path = train_config.fine_tune_checkpoint
    if not path:
        return None
    kind = train_config.fine_tune_checkpoint_type or "classification"
    with refused_as_config_error("train_config.fine_tune_checkpoint_type", fields=()):
        check_checkpoint_type(kind)
    report = load_into(model, path, kind)  # type: ignore[arg-type]
    said = report.summary()
    if getattr(model, "weights_convention", "torchvision") == "torchvision" and "conventions" not in said:
        said += "; computing with torchvision's conventions (what torch weights expect)"
    return f"fine-tuning from {path} ({kind}): {said}"


def check_buildable(loaded: LoadedConfig) -> None:
    """Build every part of training that needs no data — resizer, augmentations, model, optimizer and
    schedule, loss (class weights all 1, a custom loss's module imported) — so that `raredet config
    check` refuses what `raredet train` would refuse when it starts. Raises ConfigError."""
    cfg = loaded.pipeline
    ssd = model_message(cfg)
    if keypoint_label_map_missing(cfg):  # checked without the keypoint task, as load's note says
        unchecked = center_net_pb2.CenterNet()
        unchecked.CopyFrom(cfg.model.center_net)
        del unchecked.keypoint_estimation_task[:]
        ssd = unchecked
    build_resizer(ssd)
    build_augmentations(cfg.train_config)
    model, l2_weights = build_model(ssd, loaded.label_map.ids if loaded.label_map is not None else None)
    build_operating_point_rules(cfg.eval_config, loaded.label_map)
    warn_frozen_batch_norm_from_scratch(cfg)
    if cfg.train_config.HasField("optimizer"):
        build_optimizer(cfg.train_config, model, l2_weights)
    if loaded.label_map is not None:  # the loss resolves class names (class_alpha) through it
        lm = loaded.label_map
        ones = [1] * lm.num_classes  # counts only matter to auto weights, whose values are not checked
        build_loss(ssd, lm, resolve_class_weights(lm.names, lm.ids, ones, ones), _box_coder(model), model)
