"""Readers, augmentations, resizer, repeat-factor sampler, training and eval data."""

from __future__ import annotations

import numpy as np
import torch
from google.protobuf.message import Message

from raredet.builders.messages import ModelMessage, message_kwargs, model_message, refused_as_config_error
from raredet.config import LabelMap, LoadedConfig
from raredet.data import augment, readers, resize
from raredet.data.augment import AugmentOp
from raredet.data.dataset import DetectionDataset, collate
from raredet.data.readers import Reader
from raredet.data.resize import Resizer
from raredet.data.sampling import RepeatFactorSampler, image_repeat_factors
from raredet.data.stats import DatasetStats, compute_stats
from raredet.errors import ConfigError
from raredet.protos import faster_rcnn_pb2, input_reader_pb2, train_pb2


def _fields(msg: Message) -> frozenset[str]:
    return frozenset(msg.DESCRIPTOR.fields_by_name)


def instance_fields(msg: input_reader_pb2.InputReader) -> dict[str, object]:
    """The reader's `load_instance_masks`, `mask_type`, `num_keypoints`, where masks or keypoints are
    asked for (empty otherwise: the readers then read boxes only, as before)."""
    if not (msg.load_instance_masks or msg.num_keypoints):
        return {}
    mask_type = input_reader_pb2.InstanceMaskType.Name(msg.mask_type)
    return {"load_instance_masks": msg.load_instance_masks, "mask_type": mask_type,
            "num_keypoints": int(msg.num_keypoints)}


def build_reader(msg: input_reader_pb2.InputReader, label_map: LabelMap, where: str) -> Reader:
    """The reader of an input reader message (`tf_record_input_reader`, `coco_input_reader`, ...),
    reading instance masks / keypoints where `load_instance_masks` / `num_keypoints` ask for them."""
    name = msg.WhichOneof("input_reader")
    if name is None:
        raise ConfigError(f"{where}: no input reader is set; valid choices: {', '.join(readers.READERS)}")
    sub = getattr(msg, name)
    with refused_as_config_error(name, _fields(sub)):
        return readers.make_reader(name, message_kwargs(sub), label_map, instance_fields(msg) or None)


def _augmentation(name: str, sub: Message) -> AugmentOp:
    """The op of one `data_augmentation_options` entry: an op or a field raredet does not know is named
    under data_augmentation_options, a bad value under the op's name."""
    if name not in augment.AUGMENTATIONS:
        with refused_as_config_error("data_augmentation_options"):
            augment.build_augmentation(name)  # refuses, listing the supported ops
    try:
        with refused_as_config_error(name, _fields(sub)):
            return augment.AUGMENTATIONS[name](**message_kwargs(sub))
    except TypeError as err:
        raise ConfigError(f"data_augmentation_options.{name}: {err}") from err


def build_augmentations(train_config: train_pb2.TrainConfig, num_keypoints: int = 0) -> list[AugmentOp]:
    """One op per `data_augmentation_options` entry, its fields passed as keyword arguments.
    `num_keypoints` (the train input reader's): a keypoint permutation must permute that many."""
    ops = []
    for i, step in enumerate(train_config.data_augmentation_options):
        name = step.WhichOneof("preprocessing_step")
        if name is None:
            raise ConfigError(f"train_config.data_augmentation_options[{i}] is empty; name one operation")
        sub = getattr(step, name)
        _check_permutations(sub, name, num_keypoints)
        ops.append(_augmentation(name, sub))
    return ops


def _check_permutations(sub: Message, name: str, num_keypoints: int) -> None:
    for field in ("keypoint_flip_permutation", "keypoint_rot_permutation"):
        perm = list(getattr(sub, field, ()))
        if perm and num_keypoints and sorted(perm) != list(range(num_keypoints)):
            raise ConfigError(
                f"data_augmentation_options.{name}.{field}: {perm} is not a permutation of the "
                f"{num_keypoints} keypoints (train_input_reader.num_keypoints); give each of "
                f"0..{num_keypoints - 1} once")


def build_resizer(ssd: ModelMessage) -> Resizer:
    name = ssd.image_resizer.WhichOneof("image_resizer_oneof")
    if name is None:
        kind = "faster_rcnn" if isinstance(ssd, faster_rcnn_pb2.FasterRcnn) else "ssd"
        raise ConfigError(f"model.{kind}.image_resizer is not set; "
                          f"valid choices: {', '.join(resize.RESIZERS)}")
    with refused_as_config_error("image_resizer"):
        return resize.make_resizer(name, message_kwargs(getattr(ssd.image_resizer, name)))


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
        with refused_as_config_error("repeat_factor_sampling"):
            factors = image_repeat_factors(stats.image_classes, len(stats.names),
                                           reader_msg.repeat_factor_sampling.threshold)
    else:
        factors = np.ones(stats.num_images)
    return RepeatFactorSampler(factors, seed=seed, shuffle=reader_msg.shuffle)


def training_stats(loaded: LoadedConfig) -> DatasetStats | None:
    """Class counts of the training set (annotations only, no image decoded); None without a reader."""
    reader_msg = loaded.pipeline.train_input_reader
    if reader_msg.WhichOneof("input_reader") is None:
        return None
    label_map = _label_map(loaded)
    return compute_stats(build_reader(reader_msg, label_map, "train_input_reader"), label_map)


def build_train_data(
    loaded: LoadedConfig, reader: Reader, stats: DatasetStats, seed: int
) -> tuple[DetectionDataset, RepeatFactorSampler]:
    """Training dataset (reader -> augmentations -> resizer) and its repeat-factor sampler."""
    cfg = loaded.pipeline
    augmentations = build_augmentations(cfg.train_config, cfg.train_input_reader.num_keypoints)
    dataset = DetectionDataset(reader, augmentations=augmentations,
                               resizer=build_resizer(model_message(cfg)), training=True, seed=seed)
    sampler = build_sampler(cfg.train_input_reader, stats, seed)
    return dataset, sampler


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
