"""The parts SSD and Faster R-CNN both build: anchor generators, the FPN, the score converter and NMS.

The library classes refuse a bad argument with a ValueError that does not know the config; each builder
here turns it into the ConfigError users see, naming the field it came from."""

from __future__ import annotations

from typing import Any

from raredet.builders.messages import field_value, message_kwargs, refused_as_config_error
from raredet.modeling.anchors import MultiscaleAnchorGenerator
from raredet.modeling.calibration import Calibration
from raredet.modeling.fpn import FeaturePyramid
from raredet.modeling.grid_anchors import GridAnchorGenerator
from raredet.modeling.postprocess import BatchNonMaxSuppression, ScoreConverter, check_score_converter
from raredet.protos import post_processing_pb2

NMS_FIELDS = frozenset(post_processing_pb2.BatchNonMaxSuppression.DESCRIPTOR.fields_by_name)


def build_multiscale_anchor_generator(**kwargs: Any) -> MultiscaleAnchorGenerator:
    """`multiscale_anchor_generator`'s fields (anchors always in pixels: no normalize_coordinates)."""
    with refused_as_config_error("multiscale_anchor_generator", fields=()):
        return MultiscaleAnchorGenerator(**kwargs)


def build_grid_anchor_generator(**kwargs: Any) -> GridAnchorGenerator:
    """`grid_anchor_generator`'s fields."""
    with refused_as_config_error("grid_anchor_generator", fields=()):
        return GridAnchorGenerator(**kwargs)


def build_feature_pyramid(in_channels: dict[int, int], *args: Any, **kwargs: Any) -> FeaturePyramid:
    """`FeaturePyramid(in_channels, ...)` from a `feature_extractor.fpn` block."""
    with refused_as_config_error("feature_extractor.fpn", fields=()):
        return FeaturePyramid(in_channels, *args, **kwargs)


def build_score_converter(msg: post_processing_pb2.PostProcessing, num_classes: int,
                          calibration: Calibration | None, background_column: bool = False) -> ScoreConverter:
    """Logits -> calibrated scores as `post_processing` says (`calibration`: its calibration_config,
    built; `background_column`: Faster R-CNN's second stage, background first)."""
    name = field_value(msg, "score_converter")
    with refused_as_config_error("post_processing"):
        check_score_converter(name)
    return ScoreConverter(name, field_value(msg, "logit_scale"), calibration, num_classes,
                          background_column=background_column)


def build_non_max_suppression(msg: post_processing_pb2.PostProcessing) -> BatchNonMaxSuppression:
    """`post_processing.batch_non_max_suppression` (either model's)."""
    with refused_as_config_error("batch_non_max_suppression", NMS_FIELDS):
        return BatchNonMaxSuppression(**message_kwargs(msg.batch_non_max_suppression))
