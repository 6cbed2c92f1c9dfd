"""CenterNet's targets against hand computation of the TF OD API's formulas (target_assigner.py)."""

from __future__ import annotations

import math

import pytest
import torch

from raredet.modeling.center_net_targets import (
    box_targets,
    center_heatmap,
    gaussian_sigma,
    max_distance_for_overlap,
    valid_pixels,
)


def _tf_root(a: float, b: float, c: float) -> float:
    return (-b + math.sqrt(b * b - 4 * a * c)) / 2  # TF's _smallest_positive_root, /2 not /2a


def test_radius_of_a_10_by_10_box_at_iou_07_by_hand():
    # offset case: a=1, b=-20, c=100*0.3/1.7 -> 19.075; inside: a=4, b=-40, c=30 -> 36.733;
    # containing: a=2.8, b=28, c=-30 -> (-28 + sqrt(784 + 336)) / 2 = 2.733, the least
    expected = min(_tf_root(1, -20, 100 * 0.3 / 1.7), _tf_root(4, -40, 30), _tf_root(2.8, 28, -30))
    assert expected == pytest.approx(2.7332, abs=1e-4)
    got = max_distance_for_overlap(torch.tensor([10.0]), torch.tensor([10.0]), 0.7)
    assert float(got) == pytest.approx(expected, rel=1e-6)
    # sigma = (2 * floor(2.733) + 1) / 6 = 5 / 6
    assert float(gaussian_sigma(torch.tensor([10.0]), torch.tensor([10.0]), 0.7)) == pytest.approx(5 / 6)


def test_radius_of_a_flat_box_by_hand():
    h, w, iou = 4.0, 20.0, 0.5
    expected = min(_tf_root(1, -(h + w), w * h * (1 - iou) / (1 + iou)),
                   _tf_root(4, -2 * (h + w), (1 - iou) * w * h),
                   _tf_root(4 * iou, 2 * iou * (w + h), (iou - 1) * w * h))
    got = max_distance_for_overlap(torch.tensor([h]), torch.tensor([w]), iou)
    assert float(got) == pytest.approx(expected, rel=1e-6)


def test_one_box_heatmap_is_a_gaussian_on_its_class_channel():
    # box [2, 2, 12, 12] (feature units): center (7, 7), 10 x 10 -> sigma 5/6; class 1 of 2
    boxes = torch.tensor([[2.0, 2.0, 12.0, 12.0]])
    heat = center_heatmap(boxes, torch.tensor([0]), torch.tensor([1]), torch.tensor([1.0]), (1, 2, 16, 16),
                          0.7)
    two_sigma2 = 2 * (5 / 6) ** 2
    assert heat[0, 0].abs().max() == 0  # the other class's channel
    assert float(heat[0, 1, 7, 7]) == 1.0
    assert float(heat[0, 1, 7, 8]) == pytest.approx(math.exp(-1 / two_sigma2), rel=1e-6)  # exp(-0.72)
    assert float(heat[0, 1, 9, 6]) == pytest.approx(math.exp(-(4 + 1) / two_sigma2), rel=1e-6)


def test_two_boxes_take_the_maximum_and_the_data_weight_scales():
    # two boxes of class 0 in image 1 of 2; the second has weight 0.5 and a center off the grid (x 4.5 -> 4)
    boxes = torch.tensor([[0.0, 0.0, 4.0, 4.0], [2.0, 0.0, 7.0, 4.0]])  # centers (2, 2) and (2, 4.5)
    heat = center_heatmap(boxes, torch.tensor([1, 1]), torch.tensor([0, 0]), torch.tensor([1.0, 0.5]),
                          (2, 1, 6, 8), 0.7)
    assert heat[0].abs().max() == 0  # image 0 has no box
    s1 = float(gaussian_sigma(torch.tensor([4.0]), torch.tensor([4.0]), 0.7))
    s2 = float(gaussian_sigma(torch.tensor([4.0]), torch.tensor([5.0]), 0.7))

    def g(dy: float, dx: float, s: float) -> float:
        return math.exp(-(dy * dy + dx * dx) / (2 * s * s))

    for y, x in [(2, 2), (2, 3), (2, 4), (3, 4), (0, 7)]:
        expected = max(g(y - 2, x - 2, s1), 0.5 * g(y - 2, x - 4, s2))
        assert float(heat[1, 0, y, x]) == pytest.approx(expected, rel=1e-6), (y, x)
    assert float(heat[1, 0, 2, 4]) == pytest.approx(max(0.5, g(0, 2, s1)), rel=1e-6)


def test_box_targets_by_hand():
    # pixels [8, 10, 49, 31] / stride 4 -> [2, 2.5, 12.25, 7.75]: center y 5.125, x 7.125; h 5.25, w 10.25
    y, x, size, offset = box_targets(torch.tensor([[2.0, 2.5, 12.25, 7.75]]), 16, 16)
    assert (int(y), int(x)) == (5, 7)
    assert size.tolist() == [[5.25, 10.25]]
    assert offset.tolist() == [[0.125, 0.125]]


def test_valid_pixels_stop_at_the_image_edge():
    # input 16 x 16 (map 4 x 4): image 0 is 8 x 13 pixels -> 2 rows, ceil(13/4) = 4 columns
    valid = valid_pixels(torch.tensor([[8, 13], [16, 16]]), 4, 4, 4)
    assert valid[0].sum() == 8 and valid[0, :2].min() == 1 and valid[0, 2:].max() == 0
    assert valid[1].min() == 1
