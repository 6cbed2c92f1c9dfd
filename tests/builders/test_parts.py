"""builders/parts.py and the builders that pass config values to the library's parts: a part's
ValueError reaches the user as a ConfigError naming the field, with the whole message as written here."""

from __future__ import annotations

import pytest
import torch
from google.protobuf import text_format
from torch import nn

from raredet import builders
from raredet.builders import parts
from raredet.builders.faster_rcnn import build_faster_rcnn
from raredet.builders.ssd import build_anchor_generator
from raredet.config import LabelMap
from raredet.errors import ConfigError
from raredet.modeling.layers import ConvHyperparams
from raredet.protos import anchor_generator_pb2, faster_rcnn_pb2, post_processing_pb2, ssd_pb2, train_pb2


def _nms(text: str) -> post_processing_pb2.PostProcessing:
    return text_format.Parse(f"batch_non_max_suppression {{ {text} }}", post_processing_pb2.PostProcessing())


@pytest.mark.parametrize(("text", "message"), [
    ("soft_nms_sigma: 0.5", "batch_non_max_suppression.soft_nms_sigma: soft NMS is unsupported; remove it"),
    ("iou_threshold: 1.5", "batch_non_max_suppression.iou_threshold must be in [0, 1], got 1.5"),
    ("use_class_agnostic_nms: true max_classes_per_detection: 2",
     "batch_non_max_suppression: raredet supports max_classes_per_detection: 1 only with "
     "use_class_agnostic_nms, got 2"),
])
def test_nms_refusals_name_the_field(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parts.build_non_max_suppression(_nms(text))
    assert str(caught.value) == message


def test_nms_and_score_converter_are_built_from_the_message() -> None:
    post = _nms("score_threshold: 0.25 iou_threshold: 0.5")
    post.score_converter = post_processing_pb2.PostProcessing.SIGMOID
    nms = parts.build_non_max_suppression(post)
    assert (nms.score_threshold, nms.iou_threshold) == (0.25, 0.5)
    converter = parts.build_score_converter(post, 2, None)
    # sigmoid(0) = 0.5, sigmoid(log 3) = 3/4
    torch.testing.assert_close(converter(torch.tensor([[0.0, torch.log(torch.tensor(3.0))]])),
                               torch.tensor([[0.5, 0.75]]))


# What Faster R-CNN needs before it reaches its anchors.
FRCNN_SIZES = ("num_classes: 2 initial_crop_size: 14 maxpool_kernel_size: 2 maxpool_stride: 2 "
               "first_stage_max_proposals: 8")


def _multiscale(text: str) -> anchor_generator_pb2.AnchorGenerator:
    return text_format.Parse(f"multiscale_anchor_generator {{ {text} }}",
                             anchor_generator_pb2.AnchorGenerator())


@pytest.mark.parametrize(("text", "message"), [
    ("min_level: 5 max_level: 4", "multiscale_anchor_generator: max_level (4) < min_level (5)"),
    ("aspect_ratios: 1.0 aspect_ratios: -2.0",
     "multiscale_anchor_generator: aspect_ratios must be positive and non-empty, got [1.0, -2.0]"),
    ("scales_per_octave: 0", "multiscale_anchor_generator: scales_per_octave must be at least 1"),
])
def test_multiscale_anchor_refusals_read_the_same_in_both_models(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build_anchor_generator(_multiscale(text))  # SSD's anchor_generator
    assert str(caught.value) == message
    frcnn = text_format.Parse(f"""{FRCNN_SIZES} feature_extractor {{ type: "faster_rcnn_resnet50_fpn"
        fpn {{ min_level: 2 max_level: 6 }} }}
        first_stage_anchor_generator {{ multiscale_anchor_generator {{ {text} }} }}""",
                              faster_rcnn_pb2.FasterRcnn())
    with pytest.raises(ConfigError) as caught:
        build_faster_rcnn(frcnn)
    assert str(caught.value) == message


@pytest.mark.parametrize(("text", "message"), [
    ("scales: 0.0", "grid_anchor_generator: scales and aspect_ratios must be > 0"),
    ("aspect_ratios: -1.0", "grid_anchor_generator: scales and aspect_ratios must be > 0"),
    ("height_stride: 0", "grid_anchor_generator: height_stride and width_stride must be > 0"),
])
def test_grid_anchor_refusals_name_the_message(text: str, message: str) -> None:
    frcnn = text_format.Parse(f"""{FRCNN_SIZES} feature_extractor {{ type: "faster_rcnn_resnet50" }}
        first_stage_anchor_generator {{ grid_anchor_generator {{ {text} }} }}""",
                              faster_rcnn_pb2.FasterRcnn())
    with pytest.raises(ConfigError) as caught:
        build_faster_rcnn(frcnn)
    assert str(caught.value) == message


def test_fpn_refusal_names_the_fpn_block() -> None:
    with pytest.raises(ConfigError) as caught:
        parts.build_feature_pyramid({2: 8, 3: 16, 4: 32, 5: 64}, ConvHyperparams(), min_level=1, max_level=6)
    assert str(caught.value) == ("feature_extractor.fpn: min_level must be one of the backbone's levels "
                                 "[2, 3, 4, 5] and max_level >= min_level; got 1..6")


@pytest.mark.parametrize(("text", "message"), [
    ("matched_threshold: 0.4 unmatched_threshold: 0.5",
     "argmax_matcher: unmatched_threshold (0.5) must not exceed matched_threshold (0.4); lower it or raise "
     "matched_threshold"),
    ("matched_threshold: 0.5 unmatched_threshold: 0.5 negatives_lower_than_unmatched: false",
     "argmax_matcher: with negatives_lower_than_unmatched false the band between unmatched_threshold and "
     "matched_threshold holds the negatives, so the two thresholds must differ (both are 0.5)"),
])
def test_matcher_refusals_name_the_matcher(text: str, message: str) -> None:
    ssd = text_format.Parse(f"""matcher {{ argmax_matcher {{ {text} }} }}
        similarity_calculator {{ iou_similarity {{ }} }} box_coder {{ faster_rcnn_box_coder {{ }} }}
        loss {{ classification_loss {{ weighted_sigmoid {{ }} }}
               localization_loss {{ weighted_smooth_l1 {{ }} }} }}""", ssd_pb2.Ssd())
    with pytest.raises(ConfigError) as caught:
        builders.build_loss(ssd, LabelMap.from_names(["a", "b"]), [])
    assert str(caught.value) == message


def test_unknown_fine_tune_checkpoint_type_names_the_field(tmp_path) -> None:
    tc = train_pb2.TrainConfig(fine_tune_checkpoint=str(tmp_path / "ckpt-1.pt"),
                               fine_tune_checkpoint_type="everything")
    with pytest.raises(ConfigError) as caught:
        builders.load_fine_tune_checkpoint(nn.Linear(1, 1), tc)
    assert str(caught.value) == ("train_config.fine_tune_checkpoint_type: unknown 'everything'; "
                                 "valid: ['classification', 'detection', 'full']")
