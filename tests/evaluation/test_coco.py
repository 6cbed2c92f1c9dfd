"""COCO metrics equal pycocotools' on the same data (crowd boxes, empty images, missing classes)."""

from __future__ import annotations

import numpy as np
import pytest
from tests.helpers.coco import make_data, reference

from raredet.errors import DataError
from raredet.evaluation.coco import STAT_NAMES, check_coco, evaluate_coco


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_stats_equal_pycocotools(seed: int) -> None:
    gt, dets = make_data(seed)
    ours = evaluate_coco(gt, dets)
    ref = reference(gt, dets)
    np.testing.assert_allclose([ours.stats[n] for n in STAT_NAMES], ref.stats[:12], atol=1e-9)


def test_per_category_equal_pycocotools_and_no_gt_is_none() -> None:
    gt, dets = make_data(0)
    ours = evaluate_coco(gt, dets)
    ref = reference(gt, dets)
    precision, recall = ref.eval["precision"], ref.eval["recall"]
    for k, cat in enumerate(ref.params.catIds):
        p = precision[:, :, k, 0, 2]
        if cat == 4:  # no ground truth: pycocotools marks -1; we say None, never 0
            assert (p == -1).all()
            assert ours.per_category[cat] == {"AP": None, "AP50": None, "AP75": None, "AR@100": None}
            assert ours.pr_precision[cat] is None
            continue
        assert ours.per_category[cat]["AP"] == pytest.approx(p[p > -1].mean())
        assert ours.per_category[cat]["AP50"] == pytest.approx(p[0][p[0] > -1].mean())
        assert ours.per_category[cat]["AP75"] == pytest.approx(p[5][p[5] > -1].mean())
        assert ours.per_category[cat]["AR@100"] == pytest.approx(recall[:, k, 0, 2].mean())
        np.testing.assert_allclose(ours.pr_precision[cat], p[0])
    assert ours.per_category[3]["AP"] == 0.0  # GT but no detections: a real zero


def test_unknown_category_or_image_names_the_record() -> None:
    gt, dets = make_data(0)
    bad = [*dets, {"image_id": 1, "category_id": 99, "bbox": [0, 0, 1, 1], "score": 0.5}]
    with pytest.raises(DataError, match=rf"detection\[{len(dets)}\].*category_id 99"):
        check_coco(gt, bad)
    bad = [{"image_id": 777, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5}]
    with pytest.raises(DataError, match=r"detection\[0\].*image_id 777"):
        check_coco(gt, bad)
    with pytest.raises(DataError, match="missing list 'categories'"):
        check_coco({"images": [], "annotations": []}, [])


@pytest.mark.parametrize(("change", "message"), [
    ({"bbox": [0, 0, -2, 5]}, r"detection\[0\] bbox \[0, 0, -2, 5\] must be \[x, y, width, height\]"),
    ({"bbox": [0, 0, "wide", 5]}, r"detection\[0\] bbox .* must be"),
    ({"score": float("nan")}, r"detection\[0\] score nan must be a finite number"),
])
def test_bad_numbers_name_the_record(change: dict, message: str) -> None:
    gt, _ = make_data(0)
    det = {"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5, **change}
    with pytest.raises(DataError, match=message):
        check_coco(gt, [det])


def test_string_image_ids_are_refused_clearly() -> None:
    gt = {"images": [{"id": "a.jpg"}], "categories": [{"id": 1}], "annotations": []}
    with pytest.raises(DataError, match=r"images\[0\] needs an integer 'id' \(got 'a.jpg'\)"):
        check_coco(gt, [])
