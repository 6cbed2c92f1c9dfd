"""exact_nms: greedy NMS over every candidate in chunks, the TF OD API's NMS-then-clip order, and
ranked_nms_clipped (SSD's post-processing under TF's conventions), against hand-worked examples and a
plain-Python transcription of TF's steps."""

from __future__ import annotations

import pytest
import torch

from raredet.modeling.box_ops import box_iou
from raredet.modeling.exact_nms import (
    greedy_nms,
    multiclass_nms_clipped,
    nms_then_clip,
    ranked,
    ranked_nms_clipped,
)


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


# ---- ranked_nms_clipped ------------------------------------------------------------------------------------
# exact_nms.ranked_nms_clipped, SSD's post-processing under TF's conventions (the TF OD API's
# ``multiclass_non_max_suppression`` with a clip window), against hand-worked cases and a plain-Python
# transcription of the steps TF's documentation and source describe.


def run(boxes, scores, image_size, *, max_per_class=10, max_total=10, class_agnostic=False, chunk=1000,
        score_threshold=0.0, iou_threshold=0.5):
    """One image: ``boxes [N, 4]``, ``scores [N, K]``, ``image_size (h, w)`` -> the detections dict."""
    return ranked_nms_clipped(
        torch.tensor([boxes], dtype=torch.float32), torch.tensor([scores], dtype=torch.float32),
        torch.tensor([image_size]), score_threshold=score_threshold, iou_threshold=iou_threshold,
        max_per_class=max_per_class, max_total=max_total, class_agnostic=class_agnostic, chunk=chunk)


def rows(det):
    """The valid detections of image 0 as ``[(box, score, class)]``."""
    n = int(det["num_detections"][0])
    return [(det["detection_boxes"][0, i].tolist(), round(float(det["detection_scores"][0, i]), 6),
             int(det["detection_classes"][0, i])) for i in range(n)]


def test_ranked_orders_by_score_then_lower_position():
    scores = torch.tensor([[0.5, -1.0, 0.5, -0.0, 0.0, -2.0, 0.9]])
    expected = [[6, 0, 2, 3, 4, 1, 5]]  # -0.0 and 0.0 tie, as TF compares them
    assert ranked(scores, 7).tolist() == expected
    for count in (2, 3, 4):  # 2: the last one ties with one left out
        assert ranked(scores, count).tolist() == [expected[0][:count]]
    traced = torch.jit.trace(lambda s: ranked(s, 7), scores)  # the export's path: a stable sort
    assert traced(scores).tolist() == expected


@pytest.mark.parametrize("chunk", [1, 2, 1000])
def test_boxes_wholly_in_the_padding_are_dropped_before_the_cut(chunk):
    # A 10x20 (h x w) image padded to 20x20. The best box lies wholly below the image (y from 12):
    # TF drops it after clipping and then keeps the best two of the rest, the third clipped at y = 10.
    boxes = [(0, 12, 5, 18), (0, 0, 5, 5), (10, 8, 15, 14), (15, 0, 19, 4)]
    scores = [[0.9], [0.8], [0.7], [0.6]]
    det = run(boxes, scores, (10, 20), max_total=2, chunk=chunk)
    assert rows(det) == [([0, 0, 5, 5], 0.8, 0), ([10, 8, 15, 10], 0.7, 0)]
    assert det["detection_boxes"].shape == (1, 2, 4)


def test_ties_rank_the_lower_class_then_the_lower_anchor():
    apart = [(0, 0, 5, 5), (10, 10, 15, 15)]
    det = run(apart, [[0.5, 0.5], [0.5, 0.5]], (20, 20))
    assert [(box, cls) for box, _, cls in rows(det)] == [
        ([0, 0, 5, 5], 0), ([10, 10, 15, 15], 0), ([0, 0, 5, 5], 1), ([10, 10, 15, 15], 1)]
    # IoU 81/119 = 0.68: of two tied overlapping boxes NMS keeps the lower anchor, whichever it is
    for overlapping in ([(0, 0, 10, 10), (1, 1, 11, 11)], [(1, 1, 11, 11), (0, 0, 10, 10)]):
        kept = rows(run(overlapping, [[0.5], [0.5]], (20, 20)))
        assert [box for box, _, _ in kept] == [list(overlapping[0])]


def test_per_class_cap_then_score_order_across_classes():
    apart = [(0, 0, 5, 5), (10, 0, 15, 5), (0, 10, 5, 15)]
    scores = [[0.9, 0.6], [0.8, 0.85], [0.7, 0.1]]
    det = run(apart, scores, (20, 20), max_per_class=2)
    # class 0 keeps anchors 0, 1 (0.7 over its cap), class 1 anchors 1, 0 (0.1 over its cap)
    assert [(s, c) for _, s, c in rows(det)] == [(0.9, 0), (0.85, 1), (0.8, 0), (0.6, 1)]


def test_class_agnostic_keeps_each_anchors_best_class_and_suppresses_across_classes():
    boxes = [(0, 0, 10, 10), (1, 1, 11, 11), (0, 12, 5, 17)]  # anchors 0 and 1 overlap (IoU 0.68)
    scores = [[0.3, 0.7], [0.8, 0.2], [0.4, 0.4]]
    det = run(boxes, scores, (20, 20), class_agnostic=True)
    # anchor 1 (0.8, class 0) suppresses anchor 0 (0.7, class 1); anchor 2's tie goes to class 0
    assert rows(det) == [([1, 1, 11, 11], 0.8, 0), ([0, 12, 5, 17], 0.4, 0)]


def tf_reference(boxes, scores, size, *, score_threshold, iou_threshold, max_per_class, max_total):
    """``multiclass_non_max_suppression`` step by step for one image: per class, greedy NMS in score
    order (ties: lower index) up to ``max_per_class``; the classes' results concatenated in class order
    and stably sorted by score; clipped to ``size``; those without area dropped; the first
    ``max_total``. -> ``[(box, score, class)]``."""
    iou = box_iou(boxes, boxes)
    selected = []
    for cls in range(scores.shape[1]):
        kept: list[int] = []
        for i in sorted(range(len(boxes)), key=lambda i: (-float(scores[i, cls]), i)):
            if float(scores[i, cls]) > score_threshold and len(kept) < max_per_class and all(
                    float(iou[i, j]) <= iou_threshold for j in kept):
                kept.append(i)
        selected += [(float(scores[i, cls]), cls, i) for i in kept]
    selected.sort(key=lambda item: -item[0])
    limits = [size[1], size[0]] * 2  # w, h, w, h
    out = []
    for score, cls, i in selected:
        box = [min(max(float(v), 0.0), limit) for v, limit in zip(boxes[i], limits, strict=True)]
        if box[2] > box[0] and box[3] > box[1]:
            out.append((box, round(score, 6), cls))
    return out[:max_total]


@pytest.mark.parametrize("chunk", [1, 5, 1000])
def test_equals_tfs_steps_on_random_boxes_with_tied_scores(chunk):
    generator = torch.Generator().manual_seed(0)
    sizes = [(30, 40), (40, 25)]
    boxes = torch.randint(-4, 40, (2, 60, 2), generator=generator).float()
    boxes = torch.cat([boxes, boxes + torch.randint(2, 12, (2, 60, 2), generator=generator)], dim=-1)
    scores = torch.randint(0, 10, (2, 60, 3), generator=generator).float() / 10  # many ties
    settings = {"score_threshold": 0.15, "iou_threshold": 0.3, "max_per_class": 10, "max_total": 15}
    det = ranked_nms_clipped(boxes, scores, torch.tensor(sizes), chunk=chunk, **settings)
    for image in range(2):
        want = tf_reference(boxes[image], scores[image], sizes[image], **settings)
        assert len(want) == settings["max_total"]  # enough detections for the cut to matter
        one = {k: v[image:image + 1] for k, v in det.items()}
        assert rows(one) == want
