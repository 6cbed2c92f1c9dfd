"""exact_nms: greedy NMS over every candidate in chunks, and the TF OD API's NMS-then-clip order, against
hand-worked examples."""

from __future__ import annotations

import torch

from raredet.modeling.exact_nms import greedy_nms, multiclass_nms_clipped, nms_then_clip


def _row(*boxes: tuple[float, float, float, float]) -> torch.Tensor:
    return torch.tensor([boxes], dtype=torch.float32)


# Four boxes by falling score: B overlaps A (IoU 81/119 = 0.68), C overlaps B (0.68) but not A (64/136
# = 0.47), D is apart.
# Greedy: A kept, B suppressed by A, C kept (its only overlap, B, was suppressed), D kept.
BOXES = _row((0, 0, 10, 10), (1, 1, 11, 11), (2, 2, 12, 12), (50, 50, 60, 60))
SCORES = torch.tensor([[0.9, 0.8, 0.7, 0.6]])


def test_greedy_nms_by_hand_in_one_chunk_and_in_chunks_of_one():
    valid = torch.ones(1, 4, dtype=torch.bool)
    for chunk in (4, 1, 3):  # chunk 1: every box is suppressed only by the kept boxes before it
        order, keep = greedy_nms(BOXES, SCORES, valid, 0.5, max_keep=10, chunk=chunk)
        assert order.tolist() == [[0, 1, 2, 3]]
        assert keep.tolist() == [[True, False, True, True]], chunk
    _, keep = greedy_nms(BOXES, SCORES, valid, 0.5, max_keep=2, chunk=1)
    assert keep.tolist() == [[True, False, True, False]]  # stops at max_keep


def test_greedy_nms_orders_by_score_and_ties_by_index():
    scores = torch.tensor([[0.6, 0.9, 0.6, 0.9]])
    order, keep = greedy_nms(BOXES, scores, torch.ones(1, 4, dtype=torch.bool), 0.5, max_keep=10)
    assert order.tolist() == [[1, 3, 0, 2]]
    # B first suppresses A and C (both IoU 0.68 with B); D apart
    assert keep.tolist() == [[True, True, False, False]]


def test_nms_then_clip_drops_boxes_left_without_area():
    # D lies wholly below a 40x40 image: kept by NMS (on unclipped boxes), then dropped; C is clipped
    boxes, scores, valid = nms_then_clip(BOXES, SCORES, torch.ones(1, 4, dtype=torch.bool),
                                         torch.tensor([[40, 11]]), 0.5, max_keep=3)
    assert valid.tolist() == [[True, True, False]]
    assert boxes.tolist() == [[[0, 0, 10, 10], [2, 2, 11, 12], [0, 0, 0, 0]]]
    assert torch.allclose(scores, torch.tensor([[0.9, 0.7, 0.0]]))


def test_multiclass_nms_clipped_by_hand():
    # two proposals, two classes, one shared box each; class 1 keeps both (no overlap between them)
    boxes = _row((0, 0, 10, 10), (20, 20, 30, 30))
    scores = torch.tensor([[[0.2, 0.7], [0.5, 0.5]]])  # [B, N, K]
    det = multiclass_nms_clipped(boxes, scores, torch.tensor([[True, True]]), torch.tensor([[25, 25]]),
                                 score_threshold=0.3, iou_threshold=0.5, max_per_class=5, max_total=3)
    # above 0.3: (box 0, class 1, 0.7), (box 1, class 0, 0.5), (box 1, class 1, 0.5); the tie goes to
    # class 0 (TF concatenates the classes' kept boxes class by class, then sorts)
    assert det["num_detections"].tolist() == [3]
    assert torch.allclose(det["detection_scores"], torch.tensor([[0.7, 0.5, 0.5]]))
    assert det["detection_classes"].tolist() == [[1, 0, 1]]
    assert det["detection_boxes"][0, 1].tolist() == [20, 20, 25, 25]  # clipped after NMS
    invalid = multiclass_nms_clipped(boxes, scores, torch.tensor([[True, False]]), torch.tensor([[25, 25]]),
                                     score_threshold=0.3, iou_threshold=0.5, max_per_class=5, max_total=3)
    assert invalid["num_detections"].tolist() == [1]  # a padded proposal gives nothing
