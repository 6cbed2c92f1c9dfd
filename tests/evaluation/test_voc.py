"""Pascal VOC AP@0.5 (all-point interpolation) against hand-worked examples."""

from __future__ import annotations

import pytest

from raredet.evaluation.voc import voc_ap_per_class


def ann(i: int, img: int, cat: int, box: list[float], difficult: bool = False) -> dict:
    return {"id": i, "image_id": img, "category_id": cat, "bbox": box, "difficult": difficult}


def det(img: int, cat: int, box: list[float], score: float) -> dict:
    return {"image_id": img, "category_id": cat, "bbox": box, "score": score}


GT = {
    "images": [{"id": 1}, {"id": 2}],
    "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}, {"id": 3, "name": "c"}],
    "annotations": [
        ann(1, 1, 1, [0, 0, 10, 10]),
        ann(2, 1, 1, [20, 20, 10, 10], difficult=True),
        ann(3, 2, 1, [0, 0, 10, 10]),
        ann(4, 2, 3, [0, 0, 10, 10]),
    ],
}


def test_hand_worked_example() -> None:
    dets = [
        det(1, 1, [0, 0, 10, 10], 0.9),  # TP (box 1)
        det(1, 1, [20, 20, 10, 10], 0.8),  # on a difficult box: ignored
        det(1, 1, [1, 0, 10, 10], 0.7),  # IoU 90/110 with box 1, already taken: FP
        det(2, 1, [0, 0, 10, 10], 0.6),  # TP (box 3)
        det(2, 1, [50, 50, 5, 5], 0.5),  # no overlap: FP
        det(1, 2, [0, 0, 10, 10], 0.9),  # class without ground truth
    ]
    ap = voc_ap_per_class(GT, dets)
    # Hits in score order TP, FP, TP, FP with 2 positives: precision 1, 1/2, 2/3, 1/2 at recall
    # 1/2, 1/2, 1, 1. Envelope: 1 on (0, 1/2], 2/3 on (1/2, 1] -> AP = 0.5 * 1 + 0.5 * 2/3.
    assert ap[1] == pytest.approx(0.5 + 1 / 3)
    assert ap[2] is None
    assert ap[3] == 0.0


def test_iou_exactly_half_is_a_match_and_order_is_by_score() -> None:
    # [0, 0, 10, 5] covers half of [0, 0, 10, 10]: IoU 0.5 matches (TF OD API: >= threshold).
    dets = [det(2, 1, [0, 0, 10, 5], 0.3), det(1, 1, [0, 0, 10, 10], 0.4)]
    ap = voc_ap_per_class(GT, dets)
    assert ap[1] == pytest.approx(1.0)
    # The highest score now on a miss: FP, TP, TP -> precision 0, 1/2, 2/3 at recall 0, 1/2, 1.
    # The envelope lifts the precision at recall 1/2 to the later 2/3, so AP = 2/3 (not 7/12).
    dets = [det(2, 1, [60, 60, 5, 5], 0.9), det(2, 1, [0, 0, 10, 10], 0.5), det(1, 1, [0, 0, 10, 10], 0.4)]
    assert voc_ap_per_class(GT, dets)[1] == pytest.approx(2 / 3)
