"""CenterNet's model: heads, normalisation, peak extraction and boxes, calibration and operating points,
checked on hand-made heatmaps (the TF OD API's post-processing written out by hand)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from raredet.modeling.calibration import Calibration
from raredet.modeling.center_net import (
    BOX_OFFSET,
    BOX_SCALE,
    OBJECT_CENTER,
    CenterNet,
    ObjectDetectionTask,
    peak_mask,
    prediction_head,
    top_k_peaks,
)
from raredet.modeling.center_net_resnet_fpn import CenterNetResnetV1Fpn
from raredet.modeling.postprocess import BatchNonMaxSuppression, ScoreConverter


class Identity(nn.Module):
    """A stand-in extractor: the normalised image itself, stride 1 (``out_channels`` 3)."""

    out_channels, num_outputs = 3, 1

    def forward(self, x: Tensor) -> list[Tensor]:
        self.seen = x
        return [x]


def _model(num_classes: int = 2, **kwargs) -> CenterNet:
    task = ObjectDetectionTask(3, num_classes, 1, center_head=((3,), (4,)), scale_head=((3,), (4,)),
                               offset_head=((3,), (4,)))
    converter = ScoreConverter("SIGMOID", 1.0, None, num_classes)
    return CenterNet(num_classes, Identity(), task, converter, **kwargs)


def test_prediction_head_layout_and_bias():
    head = prediction_head(8, 5, bias_fill=-2.19, kernel_sizes=(3, 1), num_filters=(16, 12))
    convs = [m for m in head if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [
        (8, 16, (3, 3)), (16, 12, (1, 1)), (12, 5, (1, 1))]
    assert sum(isinstance(m, nn.ReLU) for m in head) == 2
    assert torch.allclose(convs[-1].bias, torch.full((5,), -2.19))
    assert head(torch.zeros(1, 8, 7, 9)).shape == (1, 5, 7, 9)
    separable = prediction_head(8, 2, use_depthwise=True)
    assert separable[0].groups == 8 and separable[1].kernel_size == (1, 1)
    with pytest.raises(ValueError, match="kernel_sizes"):
        prediction_head(8, 2, kernel_sizes=(3, 3), num_filters=(4,))


def test_initial_heatmap_is_sigmoid_of_the_bias_init():
    model = _model(num_classes=3)
    out = model(torch.zeros(1, 3, 8, 8))
    assert out[OBJECT_CENTER].shape == (1, 1, 3, 8, 8)
    assert out[BOX_SCALE].shape == out[BOX_OFFSET].shape == (1, 1, 2, 8, 8)
    # all-zero input: the ReLU'd features are 0, so the heatmap logit is the bias, -2.19 (p = 0.1)
    assert torch.allclose(out[OBJECT_CENTER], torch.full_like(out[OBJECT_CENTER], -2.19))
    assert float(torch.sigmoid(torch.tensor(-2.19))) == pytest.approx(0.1, abs=1e-3)


def test_input_normalisation_with_bgr_ordering():
    model = _model(channel_means=(10.0, 20.0, 30.0), channel_stds=(2.0, 4.0, 5.0), bgr_ordering=True)
    image = torch.tensor([100.0, 50.0, 0.0]).view(1, 3, 1, 1)  # R G B
    model(image)
    # BGR order first (0, 50, 100), then (x - mean) / std per position
    assert model.feature_extractor.seen.flatten().tolist() == [(0 - 10) / 2, (50 - 20) / 4, (100 - 30) / 5]


def test_peaks_are_local_maxima_per_channel():
    probs = torch.zeros(1, 2, 5, 5)
    probs[0, 0, 1, 1], probs[0, 0, 1, 2] = 0.9, 0.8  # 0.8 is next to 0.9: not a peak
    probs[0, 0, 4, 4] = 0.3
    probs[0, 1, 1, 2] = 0.7  # same pixel as the suppressed 0.8, other channel: a peak
    peaks = peak_mask(probs, 3)
    assert peaks[0, 0, 1, 1] and not peaks[0, 0, 1, 2] and peaks[0, 0, 4, 4] and peaks[0, 1, 1, 2]
    scores, y, x, classes = top_k_peaks(probs * peaks, 3)
    assert scores[0].tolist() == pytest.approx([0.9, 0.7, 0.3])
    found = list(zip(y[0].tolist(), x[0].tolist(), classes[0].tolist(), strict=True))
    assert found == [(1, 1, 0), (1, 2, 1), (4, 4, 0)]


def _outputs(k: int = 2, h: int = 8, w: int = 8) -> dict[str, Tensor]:
    """Hand-made predictions (stride 4, a 32 x 32 input): two strong peaks, the rest far below."""
    heat = torch.full((1, 1, k, h, w), -10.0)
    heat[0, 0, 1, 2, 3] = 2.0
    heat[0, 0, 0, 5, 5] = 1.0
    heat[0, 0, 0, 5, 6] = 0.5  # beside the class-0 peak: suppressed
    scale, offset = torch.zeros(1, 1, 2, h, w), torch.zeros(1, 1, 2, h, w)
    scale[0, 0, :, 2, 3] = torch.tensor([4.0, 6.0])  # height, width in map pixels
    offset[0, 0, :, 2, 3] = torch.tensor([0.5, 0.25])  # dy, dx
    scale[0, 0, :, 5, 5] = torch.tensor([2.0, 20.0])  # 80 pixels wide: clipped
    return {OBJECT_CENTER: heat, BOX_SCALE: scale, BOX_OFFSET: offset}


def test_postprocess_boxes_scores_and_classes_by_hand():
    model = _model(max_box_predictions=4)
    det = model.postprocess(_outputs(), torch.tensor([[32, 30]]))
    s2, s1 = 1 / (1 + math.exp(-2.0)), 1 / (1 + math.exp(-1.0))
    assert det["detection_scores"][0, :2].tolist() == pytest.approx([s2, s1])
    assert det["detection_classes"][0, :2].tolist() == [1, 0]
    # peak (2, 3) + offset (0.5, 0.25) -> center (2.5, 3.25) map = (10, 13) pixels; 16 x 24 pixels
    assert det["detection_boxes"][0, 0].tolist() == pytest.approx([1.0, 2.0, 25.0, 18.0])
    # peak (5, 5): center (20, 20) pixels, 8 x 80 -> x clipped to the map (0..32) then to the image (30)
    assert det["detection_boxes"][0, 1].tolist() == pytest.approx([0.0, 16.0, 30.0, 24.0])
    # every plateau pixel of logit -10 is a peak too (TF's rule): the top 4 are all positive scores
    assert int(det["num_detections"][0]) == 4
    assert det["detection_scores"].shape == (1, 4) and "detection_centers" not in det


def test_calibration_reorders_classes_before_the_top_k():
    cal = Calibration.piecewise_linear(2, {1: ([0.0, 1.0], [0.0, 0.5])})  # class 1's scores halved
    task = ObjectDetectionTask(3, 2, 1)
    model = CenterNet(2, Identity(), task, ScoreConverter("SIGMOID", 1.0, cal, 2), max_box_predictions=2)
    det = model.postprocess(_outputs(), torch.tensor([[32, 32]]))
    s2, s1 = 1 / (1 + math.exp(-2.0)), 1 / (1 + math.exp(-1.0))
    assert det["detection_classes"][0].tolist() == [0, 1]
    assert det["detection_scores"][0].tolist() == pytest.approx([s1, s2 / 2])


def test_operating_points_drop_detections_at_or_below_the_threshold():
    model = _model(max_box_predictions=4)
    # class 0's threshold 0.7 and class 1's 0.9 both mapped onto 0.5: class 0's peak (0.731) stays
    thresholds = Calibration.piecewise_linear(2, {0: ([0.0, 0.7, 1.0], [0.0, 0.5, 1.0]),
                                                  1: ([0.0, 0.9, 1.0], [0.0, 0.5, 1.0])})
    model.set_operating_points(thresholds, 0.5)
    det = model.postprocess(_outputs(), torch.tensor([[32, 32]]))
    assert int(det["num_detections"][0]) == 1
    assert det["detection_classes"][0, 0] == 0
    assert det["detection_scores"][0, 1:].abs().max() == 0 and det["detection_boxes"][0, 1:].abs().max() == 0
    with pytest.raises(ValueError, match="3 classes"):
        model.set_operating_points(Calibration.identity(3), 0.5)


def test_optional_nms_removes_an_overlapping_peak():
    outputs = _outputs()
    outputs[OBJECT_CENTER][0, 0, 1, 6, 3] = 1.5  # a second class-1 peak, 4 map pixels lower
    outputs[BOX_SCALE][0, 0, :, 6, 3] = torch.tensor([10.0, 6.0])  # overlaps the first box
    plain = _model(max_box_predictions=3).postprocess(outputs, torch.tensor([[32, 32]]))
    assert plain["detection_classes"][0].tolist() == [1, 1, 0]
    nms = BatchNonMaxSuppression(score_threshold=0.0, iou_threshold=0.1)
    with_nms = _model(max_box_predictions=3, non_max_suppression=nms)
    kept = with_nms.postprocess(outputs, torch.tensor([[32, 32]]))
    assert kept["detection_classes"][0, :2].tolist() == [1, 0] and int(kept["num_detections"][0]) == 2


def test_resnet_fpn_extractor_is_stride_4_with_64_channels():
    torch.manual_seed(0)
    extractor = CenterNetResnetV1Fpn(50, depth_multiplier=0.25)
    (out,) = extractor(torch.rand(2, 3, 64, 96) * 255)
    assert out.shape == (2, 64, 16, 24) and extractor.out_channels == 64 and extractor.num_outputs == 1
    assert [m.out_channels for m in extractor.lateral] == [256, 128, 64]
    assert [s[0].out_channels for s in extractor.smooth] == [128, 64, 64]
    assert CenterNetResnetV1Fpn(101, depth_multiplier=0.25).backbone.layer3.__len__() == 23


def test_scored_boxes_are_the_candidates_of_the_top_k():
    model = _model(max_box_predictions=2)
    boxes, scores = model.scored_boxes(_outputs(), torch.tensor([[32, 30]]))
    assert boxes.shape == (1, 64, 4) and scores.shape == (1, 64, 2)
    det = model.postprocess(_outputs(), torch.tensor([[32, 30]]))
    pixel = 2 * 8 + 3  # the class-1 peak at (2, 3)
    assert float(scores[0, pixel, 1]) == pytest.approx(float(det["detection_scores"][0, 0]))
    assert boxes[0, pixel].tolist() == pytest.approx(det["detection_boxes"][0, 0].tolist())
    assert float(scores[0, 5 * 8 + 6, 0]) == 0.0  # not a peak
