"""Localization losses against hand-computed values and a numpy Huber formula."""

import numpy as np
import pytest
import torch

from raredet.losses import l1_localization_loss, weighted_giou, weighted_iou, weighted_l2, weighted_smooth_l1


def test_smooth_l1_hand_values():
    # diffs 0.5 (quadratic: 0.125), 2 (linear: 1 * (2 - 0.5) = 1.5), -1 (boundary: 0.5), 0 -> sum 2.125.
    pred = torch.tensor([[[0.5, 2.0, -1.0, 0.0]]])
    got = weighted_smooth_l1(pred, torch.zeros_like(pred), torch.tensor([[2.0]]))
    assert torch.allclose(got, torch.tensor([[4.25]]))


def test_smooth_l1_delta_is_tf_huber_not_divided():
    # delta 2, diff 3: 2 * (3 - 1) = 4 (torch's smooth_l1 with beta=2 would give 2.5).
    pred = torch.tensor([[[3.0, 1.0, 0.0, 0.0]]])
    got = weighted_smooth_l1(pred, torch.zeros_like(pred), torch.ones(1, 1), delta=2.0)
    assert torch.allclose(got, torch.tensor([[4.0 + 0.5]]))


@pytest.mark.parametrize("delta", [0.1, 1.0, 3.0])
def test_smooth_l1_matches_numpy(delta):
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(2, 6, 4, generator=g) * 3, torch.randn(2, 6, 4, generator=g)
    weights = torch.rand(2, 6, generator=g)
    d = np.abs(pred.numpy() - target.numpy()).astype(np.float64)
    huber = np.where(d <= delta, 0.5 * d**2, delta * d - 0.5 * delta**2)
    expect = huber.sum(-1) * weights.numpy()
    np.testing.assert_allclose(
        weighted_smooth_l1(pred, target, weights, delta=delta).numpy(), expect, rtol=1e-5
    )


def test_l2_weight_inside_square():
    pred = torch.tensor([[[1.0, 2.0, 0.0, 0.0]]])
    got = weighted_l2(pred, torch.zeros_like(pred), torch.tensor([[3.0]]))
    assert torch.allclose(got, torch.tensor([[0.5 * (9.0 + 36.0)]]))


def test_l1_sums_coordinates():
    pred = torch.tensor([[[1.0, -2.0, 0.5, 0.0]]])
    got = l1_localization_loss(pred, torch.zeros_like(pred), torch.tensor([[2.0]]))
    assert torch.allclose(got, torch.tensor([[7.0]]))


def test_iou_and_giou_hand_values():
    # a = [0,0,2,2], b = [1,1,3,3]: inter 1, union 7, enclosing 9 -> IoU 1/7, GIoU 1/7 - 2/9.
    # c = [0,0,1,1], d = [2,0,3,1]: disjoint, union 2, enclosing 3 -> IoU 0, GIoU -1/3.
    pred = torch.tensor([[[0.0, 0, 2, 2], [0, 0, 1, 1], [5, 5, 6, 7]]])
    target = torch.tensor([[[1.0, 1, 3, 3], [2, 0, 3, 1], [5, 5, 6, 7]]])
    weights = torch.tensor([[1.0, 2.0, 1.0]])
    iou = weighted_iou(pred, target, weights)
    giou = weighted_giou(pred, target, weights)
    assert torch.allclose(iou, torch.tensor([[1 - 1 / 7, 2.0, 0.0]]))
    assert torch.allclose(giou, torch.tensor([[1 - (1 / 7 - 2 / 9), 2 * (1 + 1 / 3), 0.0]]))


def test_giou_degenerate_boxes_are_finite():
    zeros = torch.zeros(1, 2, 4, requires_grad=True)
    loss = weighted_giou(zeros, torch.zeros(1, 2, 4), torch.ones(1, 2))
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(zeros.grad).all()


def test_shape_errors():
    with pytest.raises(ValueError, match="weights"):
        weighted_smooth_l1(torch.zeros(1, 2, 4), torch.zeros(1, 2, 4), torch.zeros(1, 3))
