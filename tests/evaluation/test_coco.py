"""COCO metrics equal pycocotools' on the same data (crowd boxes, empty images, missing classes)."""

from __future__ import annotations

import contextlib
import copy
import io

import numpy as np
import pytest
from pycocotools.coco import COCO as RefCOCO
from pycocotools.cocoeval import COCOeval as RefEval

from raredet.errors import DataError
from raredet.evaluation.coco import STAT_NAMES, check_coco, evaluate_coco


def make_data(seed: int = 0) -> tuple[dict, list]:
    """Classes: 1 common, 2 rare, 3 with GT but no detections, 4 with detections but no GT.
    Images 1..12 have GT; 13 has no GT but detections; 14 has neither; crowd boxes in 1 and 5."""
    rng = np.random.default_rng(seed)
    images = [{"id": i, "width": 200, "height": 200, "file_name": f"{i}.png"} for i in range(1, 15)]
    cats = [{"id": c, "name": n} for c, n in ((1, "common"), (2, "rare"), (3, "undetected"), (4, "ghost"))]
    anns, dets = [], []
    for img in range(1, 13):
        for _ in range(int(rng.integers(1, 5))):
            cat = 2 if rng.random() < 0.15 else (3 if rng.random() < 0.1 else 1)
            x, y = rng.uniform(0, 150, 2)
            w, h = rng.uniform(5, 120, 2)  # spans small, medium and large
            box = [float(x), float(y), float(w), float(h)]
            anns.append({"id": len(anns) + 1, "image_id": img, "category_id": cat, "bbox": box,
                         "area": box[2] * box[3], "iscrowd": 0})
            if cat != 3 and rng.random() < 0.8:
                jitter = rng.normal(0, 4, 4)
                dets.append({"image_id": img, "category_id": cat, "score": float(rng.uniform(0.05, 1)),
                             "bbox": [box[0] + jitter[0], box[1] + jitter[1], max(1.0, box[2] + jitter[2]),
                                      max(1.0, box[3] + jitter[3])]})
    for img in (1, 5):
        anns.append({"id": len(anns) + 1, "image_id": img, "category_id": 1,
                     "bbox": [100.0, 100.0, 90.0, 90.0], "area": 8100.0, "iscrowd": 1})
        dets.append({"image_id": img, "category_id": 1, "score": 0.7, "bbox": [110.0, 110.0, 50.0, 50.0]})
    for img in (2, 13):
        for _ in range(3):
            x, y = rng.uniform(0, 150, 2)
            dets.append({"image_id": img, "category_id": int(rng.choice([1, 4])),
                         "score": float(rng.uniform(0, 1)), "bbox": [float(x), float(y), 30.0, 25.0]})
    return {"images": images, "annotations": anns, "categories": cats}, dets


def reference(gt: dict, dets: list) -> RefEval:
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = RefCOCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        ev = RefEval(coco_gt, coco_gt.loadRes(copy.deepcopy(dets)), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


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
