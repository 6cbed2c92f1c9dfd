"""raredet.data: readers (TFRecord, COCO, VOC), augmentation, resizers, dataset, sampling, stats, synth.

See docs/internals.md "Data" for the example and batch structures and the functions builders call.
"""

from raredet.data.augment import AUGMENTATIONS, build_augmentation
from raredet.data.coco import CocoReader
from raredet.data.dataset import DetectionDataset, collate
from raredet.data.readers import READERS, make_reader
from raredet.data.resize import RESIZERS, make_resizer
from raredet.data.sampling import RepeatFactorSampler, class_repeat_factors, image_repeat_factors
from raredet.data.stats import DatasetStats, compute_stats
from raredet.data.tfrecord import TFRecordReader, expand_input_paths
from raredet.data.voc import VocReader

__all__ = [
    "AUGMENTATIONS",
    "READERS",
    "RESIZERS",
    "CocoReader",
    "DatasetStats",
    "DetectionDataset",
    "RepeatFactorSampler",
    "TFRecordReader",
    "VocReader",
    "build_augmentation",
    "make_reader",
    "make_resizer",
    "class_repeat_factors",
    "collate",
    "compute_stats",
    "expand_input_paths",
    "image_repeat_factors",
]
