"""Box geometry against areas worked out by hand."""

import torch

from raredet.modeling.box_ops import box_area, box_iou


def test_box_area_by_hand():
    boxes = torch.tensor([[0.0, 0.0, 2.0, 3.0], [1.0, 1.0, 1.0, 5.0], [3.0, 3.0, 1.0, 1.0]])
    assert box_area(boxes).tolist() == [6.0, 0.0, 0.0]


def test_box_iou_written_matrix():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 3.0, 3.0]])
    b = torch.tensor([[0.0, 0.0, 2.0, 2.0], [1.0, 0.0, 3.0, 2.0], [5.0, 5.0, 6.0, 6.0]])
    # a0 & b1: overlap 1x2 = 2, union 4 + 4 - 2 = 6.  a1 & b0: overlap 1, union 7.  a1 & b1: overlap 2x1.
    expected = torch.tensor([[1.0, 2 / 6, 0.0], [1 / 7, 2 / 6, 0.0]])
    torch.testing.assert_close(box_iou(a, b), expected)


def test_box_iou_broadcasts_batch_and_handles_zero_area():
    a = torch.zeros(2, 1, 4)
    b = torch.zeros(2, 3, 4)
    iou = box_iou(a, b)
    assert iou.shape == (2, 1, 3)
    assert torch.equal(iou, torch.zeros(2, 1, 3))
