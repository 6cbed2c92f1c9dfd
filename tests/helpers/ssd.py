"""An SSD (or its conv_hyperparams) built from plain dicts shaped like the `model.ssd` message (field
names as in a pipeline.config, enums by name) through the builders: the modeling tests' small
configurations."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format

from raredet.builders.hyperparams import build_conv_hyperparams
from raredet.builders.ssd import build_ssd
from raredet.modeling.calibration import Calibration
from raredet.modeling.layers import ConvHyperparams
from raredet.modeling.ssd import SSD
from raredet.protos import hyperparams_pb2, ssd_pb2


def ssd_message(**fields: Any) -> ssd_pb2.Ssd:
    """`fields` as an `ssd` message (unknown names are a ParseError)."""
    return json_format.ParseDict(fields, ssd_pb2.Ssd())


def ssd_from_dicts(calibration: Calibration | None = None, **fields: Any) -> SSD:
    """The SSD of the `ssd` message `fields` spell out, as `raredet train` builds it."""
    return build_ssd(ssd_message(**fields), calibration)


def conv_hyperparams(fields: dict[str, Any], where: str = "conv_hyperparams") -> ConvHyperparams:
    """The ConvHyperparams of the `conv_hyperparams` block `fields` spell out (`builders.hyperparams`)."""
    return build_conv_hyperparams(json_format.ParseDict(fields, hyperparams_pb2.Hyperparams()), where)


# The modeling tests' small SSD: ResNet-18 FPN at depth multiplier 0.125, 16 channels, levels 3..7.
TINY_HP = {
    "activation": "RELU_6",
    "regularizer": {"l2_regularizer": {"weight": 4e-5}},
    "initializer": {"random_normal_initializer": {"stddev": 0.01}},
    "batch_norm": {"decay": 0.97, "scale": True, "epsilon": 0.001},
}


def tiny_ssd_kwargs(
    num_classes=3, extractor="ssd_resnet18_v1_fpn", max_level=7, depth=16, anchor_max_level=None
):
    return dict(
        num_classes=num_classes,
        feature_extractor={
            "type": extractor,
            "depth_multiplier": 0.125,
            "min_depth": 8,
            "conv_hyperparams": TINY_HP,
            "fpn": {"min_level": 3, "max_level": max_level, "additional_layer_depth": depth},
        },
        box_predictor={
            "weight_shared_convolutional_box_predictor": {
                "conv_hyperparams": TINY_HP,
                "depth": depth,
                "num_layers_before_predictor": 1,
                "kernel_size": 3,
                "class_prediction_bias_init": -4.6,
            }
        },
        anchor_generator={
            "multiscale_anchor_generator": {
                "min_level": 3,
                "max_level": anchor_max_level or max_level,
                "anchor_scale": 4.0,
                "aspect_ratios": [1.0, 2.0, 0.5],
                "scales_per_octave": 2,
            }
        },
        post_processing={
            "batch_non_max_suppression": {
                "score_threshold": 1e-8,
                "iou_threshold": 0.6,
                "max_detections_per_class": 100,
                "max_total_detections": 20,
            },
            "score_converter": "SIGMOID",
        },
    )
