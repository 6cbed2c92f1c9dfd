"""Mask and keypoint evaluation: pasting box-relative masks (against the TF OD API's own reframing),
RLE encoding, COCO mask AP and keypoint AP on hand-made cases (worked out by hand, and checked against
pycocotools directly), the per-class mask columns, and the Collector's COCO records."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools import mask as pycoco_mask
from pycocotools.coco import COCO as PyCOCO
from pycocotools.cocoeval import COCOeval as PyCOCOeval

from raredet.config import LabelMap
from raredet.engine.evaluate import Collector
from raredet.errors import ConfigError, DataError
from raredet.evaluation.coco import evaluate_coco_keypoints, evaluate_coco_masks
from raredet.evaluation.masks import box_masks_to_rle, coco_keypoints, encode_rle, paste_box_masks
from raredet.evaluation.options import EvalOptions, KeypointMetric
from raredet.evaluation.pipeline import evaluate_detections, keypoint_metrics

# pycocotools' decode warns about numpy 2's copy keyword on every call; its output is what is checked.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "masks" / "reframe.json"


def _square(x0: int, y0: int, size: int = 4, shape: tuple[int, int] = (10, 10)) -> np.ndarray:
    mask = np.zeros(shape, dtype=np.uint8)
    mask[y0:y0 + size, x0:x0 + size] = 1
    return mask


def test_paste_matches_the_tf_od_api_reframing() -> None:
    ref = json.loads(FIXTURE.read_text())  # tests/fixtures/masks/make_reframe.py, TF 2.15.1
    pasted = paste_box_masks(np.array(ref["masks"], dtype=np.float32), np.array(ref["boxes"]),
                             ref["height"], ref["width"])
    np.testing.assert_array_equal(pasted, np.array(ref["pasted"], dtype=np.uint8))
    assert pasted.sum() > 0


def test_an_all_ones_mask_fills_its_box() -> None:
    # Box x 1..5, y 2..6 of an 8x8 image; TF samples pixel i at i/7 of the image: rows 2..5 (2/7 .. 5/7
    # lie in [2/8, 6/8]) and columns 1..4 (1/7 .. 4/7 lie in [1/8, 5/8]).
    pasted = paste_box_masks(np.ones((1, 3, 3)), np.array([[1.0, 2.0, 5.0, 6.0]]), 8, 8)
    np.testing.assert_array_equal(pasted[0], _square(1, 2, shape=(8, 8)))


def test_rle_straight_from_box_masks_equals_the_pasted_arrays_encoded() -> None:
    # Boxes inside, across the edges, covering the image, thinner than a pixel; masks of ones and random.
    rng = np.random.default_rng(1)
    for trial in range(100):
        d, h, w = int(rng.integers(1, 6)), int(rng.integers(1, 30)), int(rng.integers(1, 30))
        masks = rng.random((d, int(rng.integers(1, 6)), int(rng.integers(1, 6))))
        if trial % 3 == 0:
            masks = np.ones_like(masks)
        x0, y0 = rng.uniform(-10, w, d), rng.uniform(-10, h, d)
        boxes = np.stack([x0, y0, x0 + rng.uniform(0, 2 * w, d), y0 + rng.uniform(0, 2 * h, d)], axis=1)
        expected = paste_box_masks(masks, boxes, h, w)
        rles = box_masks_to_rle(masks, boxes, h, w)
        decoded = pycoco_mask.decode([{"size": r["size"], "counts": r["counts"].encode()} for r in rles])
        np.testing.assert_array_equal(decoded.transpose(2, 0, 1), expected)


def test_rle_decodes_with_pycocotools() -> None:
    masks = np.stack([_square(1, 2), _square(5, 5, 3)])
    rles = encode_rle(masks)
    assert [r["size"] for r in rles] == [[10, 10], [10, 10]] and isinstance(rles[0]["counts"], str)
    decoded = pycoco_mask.decode([{"size": r["size"], "counts": r["counts"].encode()} for r in rles])
    np.testing.assert_array_equal(decoded.transpose(2, 0, 1), masks)


def test_coco_keypoints_records() -> None:
    kp = np.array([[[1.5, 2.0], [np.nan, np.nan], [3.0, 4.0]]])
    values, counts = coco_keypoints(kp, np.array([[True, False, False]]))
    assert values == [[1.5, 2.0, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]] and counts == [1]


# ---- mask AP by hand ------------------------------------------------------------------------------

# Class 1: the detection is the GT square moved one column right: 12 pixels shared of 20 -> IoU 0.6,
# a match at IoU thresholds 0.50, 0.55, 0.60 of the ten (0.50 .. 0.95): AP 3/10, AP50 1, AP75 0.
# Class 2: the detection is exactly its GT: AP 1. Mean over the classes: 0.65.
GT_MASKS = [_square(1, 2), _square(5, 5, 3)]
DET_MASKS = [_square(2, 2), _square(5, 5, 3)]


def _bbox(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1 - xs.min()), float(ys.max() + 1 - ys.min())]


def _mask_case() -> tuple[dict, list]:
    gt = {"images": [{"id": 1, "height": 10, "width": 10}],
          "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
          "annotations": [{"id": k + 1, "image_id": 1, "category_id": k + 1, "bbox": _bbox(m),
                           "area": float(m.sum()), "iscrowd": 0, "segmentation": rle}
                          for k, (m, rle) in enumerate(zip(GT_MASKS, encode_rle(np.stack(GT_MASKS)),
                                                           strict=True))]}
    dets = [{"image_id": 1, "category_id": k + 1, "bbox": _bbox(m), "score": 0.9, "segmentation": rle}
            for k, (m, rle) in enumerate(zip(DET_MASKS, encode_rle(np.stack(DET_MASKS)), strict=True))]
    return gt, dets


def test_mask_ap_by_hand_and_as_pycocotools() -> None:
    gt, dets = _mask_case()
    result = evaluate_coco_masks(gt, dets)
    assert result.per_category[1]["AP"] == pytest.approx(0.3)
    assert result.per_category[1]["AP50"] == pytest.approx(1.0)
    assert result.per_category[1]["AP75"] == pytest.approx(0.0)
    assert result.per_category[2]["AP"] == pytest.approx(1.0)
    assert result.stats["DetectionMasks_Precision/mAP"] == pytest.approx(0.65)
    # pycocotools, run directly on the same records (its RLE wants bytes counts).
    py_gt = PyCOCO()
    py_gt.dataset = json.loads(json.dumps(gt))
    py_gt.createIndex()
    py_dt = py_gt.loadRes([{k: d[k] for k in ("image_id", "category_id", "segmentation", "score")}
                           for d in json.loads(json.dumps(dets))])
    ev = PyCOCOeval(py_gt, py_dt, "segm")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    ours = list(result.stats.values())
    np.testing.assert_allclose(ours, ev.stats[:12])


def test_mask_metrics_and_per_class_columns(tmp_path) -> None:
    gt, dets = _mask_case()
    options = EvalOptions(metrics_set=("coco_detection_metrics", "coco_mask_metrics"))
    out = evaluate_detections(gt, dets, out_dir=tmp_path, options=options)
    metrics = out["metrics"]
    assert metrics["DetectionMasks_Precision/mAP"] == pytest.approx(0.65)
    assert metrics["DetectionMasks_PerformanceByCategory/mAP/a"] == pytest.approx(0.3)
    rows = {r["class"]: r for r in out["per_class"]}
    assert rows["a"]["mask_AP"] == pytest.approx(0.3) and rows["a"]["mask_AP75"] == pytest.approx(0.0)
    assert rows["b"]["mask_AP50"] == pytest.approx(1.0)
    header = (tmp_path / "per_class.csv").read_text().splitlines()[0]
    assert header.endswith("mask_AP,mask_AP50,mask_AP75")
    assert "mask_AP" in (tmp_path / "per_class.md").read_text()
    assert "<th>mask_AP</th>" in (tmp_path / "report.html").read_text()


def test_no_mask_set_no_mask_columns(tmp_path) -> None:
    gt, dets = _mask_case()
    out = evaluate_detections(gt, dets, out_dir=tmp_path)
    assert "mask_AP" not in out["per_class"][0]
    assert "mask_AP" not in (tmp_path / "per_class.csv").read_text()


def test_mask_set_without_masks_is_a_data_error() -> None:
    gt, dets = _mask_case()
    for det in dets:
        del det["segmentation"]
    with pytest.raises(DataError, match=r"detections\[0\] has no 'segmentation'; coco_mask_metrics needs"):
        evaluate_coco_masks(gt, dets)


# ---- keypoint AP by hand --------------------------------------------------------------------------

# One GT person, box 10 x 10 (area 100), keypoints (2, 2) and (6, 6); the detection's are (2, 2) and
# (7, 6): distances 0 and 1. COCO's OKS: mean over labelled keypoints of exp(-d^2 / (2 area (2 sigma)^2)).
# Sigmas (0.1, 0.05): exp(0) = 1 and exp(-1 / (200 * 0.01)) = exp(-0.5) = 0.6065 -> OKS 0.803: matches at
# thresholds 0.50 .. 0.80 (7 of 10): AP 0.7, AP75 1. Sigmas (0.05, 0.1): 1 and exp(-1 / (200 * 0.04)) =
# exp(-0.125) = 0.8825 -> OKS 0.941: 9 of 10 thresholds, AP 0.9.
KP_GT = {"images": [{"id": 1, "height": 20, "width": 20}], "categories": [{"id": 1, "name": "person"}],
         "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "area": 100.0,
                          "iscrowd": 0, "keypoints": [2, 2, 2, 6, 6, 2]}]}
KP_DETS = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.8,
            "keypoints": [2, 2, 2, 7, 6, 2]}]


@pytest.mark.parametrize(("sigmas", "ap"), [((0.1, 0.05), 0.7), ((0.05, 0.1), 0.9)])
def test_keypoint_ap_by_hand_and_as_pycocotools(sigmas, ap) -> None:
    stats = evaluate_coco_keypoints(KP_GT, KP_DETS, 1, np.array(sigmas))
    assert stats[0] == pytest.approx(ap) and stats[1] == pytest.approx(1.0)
    py_gt = PyCOCO()
    py_gt.dataset = json.loads(json.dumps({**KP_GT, "annotations": [{**KP_GT["annotations"][0],
                                                                     "num_keypoints": 2}]}))
    py_gt.createIndex()
    ev = PyCOCOeval(py_gt, py_gt.loadRes(json.loads(json.dumps(KP_DETS))), "keypoints")
    ev.params.kpt_oks_sigmas = np.array(sigmas)
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    np.testing.assert_allclose(stats, ev.stats[:10])


def test_keypoint_metrics_pick_the_label_maps_keypoints() -> None:
    # A third keypoint (index 0) is not scored: keypoint_indices (1, 2) pick the two above.
    gt = {**KP_GT, "annotations": [{**KP_GT["annotations"][0], "keypoints": [9, 9, 2, 2, 2, 2, 6, 6, 2]}]}
    dets = [{**KP_DETS[0], "keypoints": [0, 0, 2, 2, 2, 2, 7, 6, 2]}]
    metric = KeypointMetric(1, "person", (0.1, 0.05), (1, 2))
    out = keypoint_metrics(gt, dets, [metric])
    assert out["Keypoints_Precision/mAP ByCategory/person"] == pytest.approx(0.7)
    assert out["Keypoints_Precision/mAP@.75IOU ByCategory/person"] == pytest.approx(1.0)


# ---- the Collector's records ----------------------------------------------------------------------


def test_collector_writes_segmentations_and_keypoints() -> None:
    # One 8x8 image shown to the model at 16x16 (scale 2): GT mask and keypoints come back to 8x8.
    big = np.kron(_square(1, 2, shape=(8, 8)), np.ones((2, 2), dtype=np.uint8))
    batch = {
        "images": torch.zeros(1, 3, 16, 16, dtype=torch.uint8), "boxes": torch.tensor([[[2.0, 4, 10, 12]]]),
        "labels": torch.tensor([[0]]), "is_crowd": torch.tensor([[False]]),
        "difficult": torch.tensor([[False]]),
        "num_boxes": torch.tensor([1]), "image_sizes": torch.tensor([[16, 16]]),
        "original_sizes": torch.tensor([[8, 8]]), "scales": torch.tensor([[2.0, 2.0]]), "source_ids": ["a"],
        "masks": torch.from_numpy(big[None, None]),
        "keypoints": torch.tensor([[[[2.0, 4.0], [float("nan"), float("nan")]]]]),
        "keypoint_visibilities": torch.tensor([[[True, False]]]),
        "areas": torch.tensor([[12.5]]),
    }
    det = {"num_detections": torch.tensor([1]), "detection_boxes": torch.tensor([[[2.0, 4, 10, 12]]]),
           "detection_classes": torch.tensor([[0]]), "detection_scores": torch.tensor([[0.9]]),
           "detection_masks": torch.ones(1, 1, 3, 3), "detection_keypoints": torch.tensor([[[[4.0, 6.0],
                                                                                             [8.0, 8.0]]]])}
    collector = Collector(LabelMap.from_names(["person"]), num_visualizations=0)
    collector.add(batch, det)
    ann, dt = collector.annotations[0], collector.detections[0]
    for record in (ann, dt):  # the box x 1..5, y 2..6 of the 8x8 image, either way
        rle = {"size": record["segmentation"]["size"], "counts": record["segmentation"]["counts"].encode()}
        np.testing.assert_array_equal(pycoco_mask.decode(rle), _square(1, 2, shape=(8, 8)))
    assert ann["keypoints"] == [1.0, 2.0, 2.0, 0.0, 0.0, 0.0] and ann["num_keypoints"] == 1
    assert ann["area"] == 12.5  # the annotated area (the box's, 4 x 4 = 16, where it is 0)
    batch["areas"] = torch.tensor([[0.0]])
    collector.add(batch, det)
    assert collector.annotations[1]["area"] == 16.0
    assert dt["keypoints"] == [2.0, 3.0, 2.0, 4.0, 4.0, 2.0]


def test_keypoint_set_without_sigmas_is_refused(tmp_path) -> None:
    with pytest.raises(ConfigError, match="metrics set coco_keypoint_metrics needs the class and the sigma"):
        evaluate_detections(KP_GT, KP_DETS, out_dir=tmp_path,
                            options=EvalOptions(metrics_set=("coco_keypoint_metrics",)))


def test_keypoint_metrics_reach_metrics_json(tmp_path) -> None:
    options = EvalOptions(keypoint_metrics=(KeypointMetric(1, "person", (0.1, 0.05), (0, 1)),))
    metrics = evaluate_detections(KP_GT, KP_DETS, out_dir=tmp_path, options=options)["metrics"]
    assert metrics["Keypoints_Precision/mAP ByCategory/person"] == pytest.approx(0.7)
    assert json.loads((tmp_path / "metrics.json").read_text())["Keypoints_Precision/mAP ByCategory/person"] \
        == pytest.approx(0.7)


def test_super_categories_average_their_classes(tmp_path) -> None:
    # Boxes and masks alike: class a AP 0.3 (IoU 0.6), class b AP 1 (see _mask_case); "zzz" is no class.
    gt, dets = _mask_case()
    options = EvalOptions(metrics_set=("coco_detection_metrics", "coco_mask_metrics"),
                          super_categories={"both": ("a", "b"), "only_a": ("a", "zzz")})
    metrics = evaluate_detections(gt, dets, out_dir=tmp_path, options=options)["metrics"]
    for prefix in ("DetectionBoxes", "DetectionMasks"):
        assert metrics[f"{prefix}_PerformanceBySuperCategory/both"] == pytest.approx(0.65)
        assert metrics[f"{prefix}_PerformanceBySuperCategory/only_a"] == pytest.approx(0.3)
