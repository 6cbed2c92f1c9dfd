"""crop_and_resize (TF semantics, and the TF OD API's matmul variant) against hand bilinear values."""

from __future__ import annotations

import pytest
import torch

from raredet.modeling.roi_ops import crop_and_resize


def _ramp() -> torch.Tensor:
    """A 1-channel 3 x 4 map with value 10 y + x: bilinear interpolation of it is exactly 10 y + x."""
    y, x = torch.meshgrid(torch.arange(3.0), torch.arange(4.0), indexing="ij")
    return (10 * y + x)[None, None]


def test_crop_and_resize_matches_hand_bilinear():
    # box (y1, x1, y2, x2) = (0.25, 0, 0.75, 1/3), crop 3 on H=3, W=4:
    # y = 0.25*2 + i * 0.5*2/2 = 0.5, 1.0, 1.5 ; x = 0 + j * (1/3)*3/2 = 0, 0.5, 1.0
    boxes = torch.tensor([[[0.25, 0.0, 0.75, 1 / 3]]])
    crop = crop_and_resize(_ramp(), boxes, 3)[0, 0]
    ys, xs = torch.tensor([0.5, 1.0, 1.5]), torch.tensor([0.0, 0.5, 1.0])
    assert torch.allclose(crop, 10 * ys[:, None] + xs[None, :], atol=1e-5)


def test_crop_and_resize_non_linear_cell_and_extrapolation():
    fmap = torch.tensor([[[[0.0, 1.0], [2.0, 4.0]]]])
    # crop 1: the centre (0.5, 0.5) of the whole map: (0 + 1 + 2 + 4) / 4
    centre = crop_and_resize(fmap, torch.tensor([[[0.0, 0.0, 1.0, 1.0]]]), 1)
    assert centre.item() == pytest.approx(1.75)
    # a box reaching above the map: y = -1, 0, 1 (H=2 -> scale 1): the row at y = -1 is 0, not blended
    crop = crop_and_resize(fmap, torch.tensor([[[-1.0, 0.0, 1.0, 1.0]]]), 3)[0, 0]
    assert torch.equal(crop[0], torch.zeros(3))
    assert torch.allclose(crop[1], torch.tensor([0.0, 0.5, 1.0]))
    assert torch.allclose(crop[2], torch.tensor([2.0, 3.0, 4.0]))


def test_crop_and_resize_batches_boxes_per_image():
    fmaps = torch.cat([_ramp(), 100 + _ramp()])  # image 1 is image 0 plus 100
    boxes = torch.tensor([[[0.0, 0.0, 1.0, 1.0]], [[0.0, 0.0, 1.0, 1.0]]])
    crops = crop_and_resize(fmaps, boxes, 2)  # corners: 0, 3, 20, 23
    assert torch.equal(crops[0, 0], torch.tensor([[0.0, 3.0], [20.0, 23.0]]))
    assert torch.equal(crops[1, 0], torch.tensor([[100.0, 103.0], [120.0, 123.0]]))


def test_matmul_crop_and_resize_blends_the_edge_with_zeros():
    # the TF OD API's matmul_crop_and_resize (multilevel_roi_align, align_corners): a neighbour outside
    # the map is 0 and the others keep their weights; tf.image.crop_and_resize zeroes the whole sample
    fmap = torch.tensor([[[[0.0, 1.0], [2.0, 4.0]]]])
    boxes = torch.tensor([[[-0.5, 0.0, 1.0, 1.0]]])  # y = -0.5, 0.25, 1 (H=2, crop 3); x = 0, 0.5, 1
    crop = crop_and_resize(fmap, boxes, 3, matmul=True)[0, 0]
    # y = -0.5: half of row 0 (0, 0.5, 1) and half of the zero row above it
    assert torch.allclose(crop[0], torch.tensor([0.0, 0.25, 0.5]))
    # y = 0.25: 0.75 row 0 + 0.25 row 1 = (0.5, 1.125, 1.75)
    assert torch.allclose(crop[1], torch.tensor([0.5, 1.125, 1.75]))
    assert torch.allclose(crop[2], torch.tensor([2.0, 3.0, 4.0]))
    assert torch.equal(crop_and_resize(fmap, boxes, 3)[0, 0, 0], torch.zeros(3))
    # a box ending a rounding error past the last row: its last sample is that row, not 0
    past = torch.tensor([[[0.0, 0.0, 1.0 + 1e-6, 1.0]]])
    assert torch.allclose(crop_and_resize(fmap, past, 2, matmul=True)[0, 0, 1], torch.tensor([2.0, 4.0]),
                          atol=1e-5)
    assert torch.equal(crop_and_resize(fmap, past, 2)[0, 0, 1], torch.zeros(2))
