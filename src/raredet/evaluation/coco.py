"""COCO box, mask and keypoint metrics through faster-coco-eval (the same numbers as pycocotools).

Inputs are plain COCO dicts: a ground-truth dataset (`images`, `annotations`, `categories`) and a
list of detections (`image_id`, `category_id`, `bbox` xywh, `score`). `check_coco` validates both
and names the offending record, because COCOeval itself fails with bare asserts or silently drops
unknown categories.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from faster_coco_eval import COCO, COCOeval_faster

from raredet.errors import DataError

# The 12 standard numbers, in COCOeval.stats order, under the TF OD API's names.
STAT_NAMES = (
    "DetectionBoxes_Precision/mAP",
    "DetectionBoxes_Precision/mAP@.50IOU",
    "DetectionBoxes_Precision/mAP@.75IOU",
    "DetectionBoxes_Precision/mAP (small)",
    "DetectionBoxes_Precision/mAP (medium)",
    "DetectionBoxes_Precision/mAP (large)",
    "DetectionBoxes_Recall/AR@1",
    "DetectionBoxes_Recall/AR@10",
    "DetectionBoxes_Recall/AR@100",
    "DetectionBoxes_Recall/AR@100 (small)",
    "DetectionBoxes_Recall/AR@100 (medium)",
    "DetectionBoxes_Recall/AR@100 (large)",
)
# Per-category keys, and the TF OD API scalar prefix each is reported under.
CATEGORY_KEYS = {
    "AP": "DetectionBoxes_PerformanceByCategory/mAP",
    "AP50": "DetectionBoxes_PerformanceByCategory/mAP@.50IOU",
    "AP75": "DetectionBoxes_PerformanceByCategory/mAP@.75IOU",
    "AR@100": "DetectionBoxes_PerformanceByCategory/AR@100",
}
# coco_mask_metrics: the same numbers for masks, under the TF OD API's mask names.
MASK_STAT_NAMES = tuple(name.replace("DetectionBoxes_", "DetectionMasks_") for name in STAT_NAMES)
MASK_CATEGORY_KEYS = {k: v.replace("DetectionBoxes_", "DetectionMasks_") for k, v in CATEGORY_KEYS.items()}
# COCO keypoint metrics of one class, in COCOeval.stats order: the TF OD API's names
# ("Keypoints_<name> ByCategory/<class>"), whose recall names it keeps from the box metrics although
# COCOeval's keypoint recalls are AR (maxDets 20), AR@.5 and AR@.75.
KEYPOINT_STAT_NAMES = (
    "Precision/mAP", "Precision/mAP@.50IOU", "Precision/mAP@.75IOU", "Precision/mAP (medium)",
    "Precision/mAP (large)", "Recall/AR@1", "Recall/AR@10", "Recall/AR@100", "Recall/AR@100 (medium)",
    "Recall/AR@100 (large)",
)


@dataclass
class CocoResult:
    """Metrics of one COCO evaluation.

    `stats`: the 12 standard numbers by TF OD API name (-1 where COCOeval has nothing to average, as
    pycocotools prints). `per_category`: category id -> {AP, AP50, AP75, AR@100}, each None when the
    category has no ground truth. `recall_thresholds` [101] and `pr_precision` {id: [101]} are the
    COCO precision-recall curves at IoU 0.5 (area all, 100 detections), None for no ground truth.
    `det_gt_50` [D] int (with `keep_matches`, else None): the GT annotation index each detection was
    matched to at IoU 0.5 (area all, the top 100 per image and class; crowd regions included), or -1.
    """

    stats: dict[str, float]
    per_category: dict[int, dict[str, float | None]]
    recall_thresholds: np.ndarray
    pr_precision: dict[int, np.ndarray | None] = field(default_factory=dict)
    det_gt_50: np.ndarray | None = None


def load_json(path: str | Path, what: str, fix: str = "write it as COCO JSON") -> Any:
    """Read a JSON file, turning a missing or malformed file into a DataError that names it and says
    how to `fix` it."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise DataError(f"{path}: {what} file not found; check the path") from None
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: {what} is not valid JSON ({err}); {fix}") from None


def check_coco(gt: dict, detections: list, gt_name: str = "groundtruth", dt_name: str = "detections") -> None:
    """Raise DataError naming the record when GT or detections cannot be evaluated."""
    for key in ("images", "annotations", "categories"):
        if not isinstance(gt.get(key) if isinstance(gt, dict) else None, list):
            raise DataError(f"{gt_name}: missing list '{key}'; COCO ground truth needs images, "
                            "annotations and categories")
    if not isinstance(detections, list):
        raise DataError(f"{dt_name}: expected a JSON list of detections (COCO results format)")
    _check_int_ids(gt["images"], gt_name, "images")
    _check_int_ids(gt["categories"], gt_name, "categories")
    image_ids = {img["id"] for img in gt["images"]}
    cat_ids = {cat["id"] for cat in gt["categories"]}
    seen: set = set()
    for i, ann in enumerate(gt["annotations"]):
        _check_record(ann, i, gt_name, "annotations", image_ids, cat_ids, ("id", "bbox"))
        if ann["id"] in seen:
            raise DataError(f"{gt_name}: annotations[{i}] repeats id {ann['id']!r}; "
                            "annotation ids must be unique")
        seen.add(ann["id"])
    for i, det in enumerate(detections):
        _check_record(det, i, dt_name, "detection", image_ids, cat_ids, ("bbox", "score"))
    _check_numbers([a["bbox"] for a in gt["annotations"]], gt_name, "annotations", "bbox", 4)
    _check_numbers([d["bbox"] for d in detections], dt_name, "detection", "bbox", 4)
    _check_numbers([d["score"] for d in detections], dt_name, "detection", "score", 0)


def _check_int_ids(records: list, file: str, kind: str) -> None:
    """COCO ids are integers (faster-coco-eval and pycocotools' C code rely on it)."""
    for i, rec in enumerate(records):
        value = rec.get("id") if isinstance(rec, dict) else None
        if not isinstance(value, int) or isinstance(value, bool):
            raise DataError(f"{file}: {kind}[{i}] needs an integer 'id' (got {value!r})")


def _check_numbers(values: list, file: str, kind: str, field: str, width: int) -> None:
    """All `values` finite numbers (boxes: [x, y, w, h] with w, h >= 0); else name the first bad record."""
    try:
        arr = np.asarray(values, dtype=np.float64).reshape(len(values), -1)
    except (TypeError, ValueError):
        arr = None
    bad = np.ones(len(values), dtype=bool) if arr is None else ~np.isfinite(arr).all(axis=1)
    if arr is not None and width == 4 and len(values):
        bad |= (arr[:, 2:] < 0).any(axis=1)
    if bad.any():
        i = _first_bad(values, width) if arr is None else int(np.argmax(bad))
        what = "[x, y, width, height] with width, height >= 0" if width == 4 else "a finite number"
        raise DataError(f"{file}: {kind}[{i}] {field} {values[i]!r} must be {what}")


def _first_bad(values: list, width: int) -> int:
    """Index of the first value that does not convert to numbers (slow path, only after a failure)."""
    for i, v in enumerate(values):
        try:
            np.asarray(v, dtype=np.float64).reshape(width or 1)
        except (TypeError, ValueError):
            return i
    return 0


def _check_record(rec: Any, i: int, file: str, kind: str, image_ids: set, cat_ids: set,
                  needed: tuple[str, ...]) -> None:
    if not isinstance(rec, dict):
        raise DataError(f"{file}: {kind}[{i}] is not an object")
    for key in ("image_id", "category_id", *needed):
        if key not in rec:
            raise DataError(f"{file}: {kind}[{i}] has no '{key}'")
    if rec["image_id"] not in image_ids:
        raise DataError(f"{file}: {kind}[{i}] has image_id {rec['image_id']!r}, which is not among the "
                        "ground truth's images; evaluate against the matching ground truth file")
    if rec["category_id"] not in cat_ids:
        raise DataError(f"{file}: {kind}[{i}] has category_id {rec['category_id']!r}, which is not among "
                        f"the ground truth's categories {sorted(cat_ids)}")
    bbox = rec["bbox"]
    if not (isinstance(bbox, list | tuple) and len(bbox) == 4):
        raise DataError(f"{file}: {kind}[{i}] bbox must be [x, y, width, height]")


def prepare_coco(gt: dict, detections: list) -> tuple[COCO, COCO]:
    """COCO objects for GT and detections.

    Each record is copied one level deep (COCO adds keys to them in place; boxes are only read), which
    costs far less than a deep copy of half a million detections.
    """
    anns = [{"area": float(a["bbox"][2]) * float(a["bbox"][3]), "iscrowd": 0, **a} for a in gt["annotations"]]
    # pycocotools reads 'area' for the small/medium/large ranges and 'iscrowd' for crowds.
    images, cats = [dict(i) for i in gt["images"]], [dict(c) for c in gt["categories"]]
    coco_gt = COCO({"info": {}, **gt, "annotations": anns, "images": images, "categories": cats})
    coco_dt = coco_gt.loadRes([dict(d) for d in detections])
    return coco_gt, coco_dt


def subset_prepared(prepared: tuple[COCO, COCO], gt_rows: np.ndarray,
                    det_rows: np.ndarray) -> tuple[COCO, COCO]:
    """COCO objects for some GT annotations and detections, built from `prepare_coco`'s output.

    gt_rows [G'] and det_rows [D'] index the original annotation and detection lists. The records
    are already prepared (area, iscrowd, segmentation), so nothing is recomputed; detections are
    renumbered from 1 in `det_rows` order, as `loadRes` would number them.
    """
    coco_gt, coco_dt = prepared
    base = {"info": {}, "images": coco_gt.dataset["images"], "categories": coco_gt.dataset["categories"]}
    gt_anns = coco_gt.dataset["annotations"]
    dt_anns = coco_dt.dataset["annotations"]
    sub_gt = COCO({**base, "annotations": [gt_anns[i] for i in gt_rows]})
    # Copies: the prepared detections keep their own ids.
    sub_dt = COCO({**base, "annotations": [{**dt_anns[i], "id": n + 1} for n, i in enumerate(det_rows)]})
    return sub_gt, sub_dt


def silent(*_args: Any, **_kwargs: Any) -> None:
    """Swallows COCOeval's progress prints; raredet prints its own tables."""


def evaluate_coco(gt: dict, detections: list, prepared: tuple[COCO, COCO] | None = None,
                  keep_matches: bool = False) -> CocoResult:
    """The standard COCO box evaluation of `detections` against `gt` (both COCO dicts, checked).

    `prepared`: `prepare_coco(gt, detections)` when the caller already has it (it is reusable).
    `keep_matches`: also fill `det_gt_50` (for the per-class table) from this same run.
    """
    coco_gt, coco_dt = prepared or prepare_coco(gt, detections)
    # separate_eval keeps the per-image results, from which `det_gt_50` is read (same numbers).
    ev = COCOeval_faster(coco_gt, coco_dt, "bbox", print_function=silent, separate_eval=True)
    result = _summarised(ev, STAT_NAMES)
    if keep_matches:
        result.det_gt_50 = _matches_at_50(ev, gt, detections)
    return result


def evaluate_coco_masks(gt: dict, detections: list) -> CocoResult:
    """COCO mask ("segm") evaluation: every GT annotation and detection needs a ``segmentation`` (RLE or
    polygons, in the pixels of its image). Detections are scored by their masks alone, as the TF OD
    API's mask evaluator does (its detections carry no box: COCO takes area and box from the mask)."""
    _check_segmentations(gt["annotations"], "groundtruth annotations")
    _check_segmentations(detections, "detections")
    dets = [{k: d[k] for k in ("image_id", "category_id", "segmentation", "score")} for d in detections]
    coco_gt, coco_dt = prepare_coco(gt, dets)
    return _summarised(COCOeval_faster(coco_gt, coco_dt, "segm", print_function=silent), MASK_STAT_NAMES)


def evaluate_coco_keypoints(gt: dict, detections: list, category_id: int, sigmas: np.ndarray) -> list[float]:
    """COCO keypoint AP / AR of one class (COCOeval.stats, `KEYPOINT_STAT_NAMES` order), with the
    per-keypoint OKS ``sigmas`` [J]. GT annotations of the class carry ``keypoints`` [x, y, v] * J and
    ``num_keypoints`` (0: not scored, as COCO); detections ``keypoints`` [x, y, v] * J."""
    cats = [c for c in gt["categories"] if c["id"] == category_id]
    anns = [a for a in gt["annotations"] if a["category_id"] == category_id]
    dets = [d for d in detections if d["category_id"] == category_id]
    j = len(sigmas)
    for what, records in (("groundtruth annotations", anns), ("detections", dets)):
        for i, rec in enumerate(records):
            if len(rec.get("keypoints") or ()) != 3 * j:
                raise DataError(f"{what}: the record {i} of category {category_id} has "
                                f"{len(rec.get('keypoints') or ())} keypoint values; {j} sigmas need {3 * j}")
    anns = [{"num_keypoints": int(np.count_nonzero(np.asarray(a["keypoints"][2::3]) > 0)), **a} for a in anns]
    coco_gt, coco_dt = prepare_coco({**gt, "categories": cats, "annotations": anns}, dets)
    ev = COCOeval_faster(coco_gt, coco_dt, "keypoints", print_function=silent)
    ev.params.kpt_oks_sigmas = np.asarray(sigmas, dtype=np.float64)
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return [float(v) for v in ev.stats[:len(KEYPOINT_STAT_NAMES)]]


def _check_segmentations(records: list, what: str) -> None:
    for i, rec in enumerate(records):
        if not rec.get("segmentation"):
            raise DataError(f"{what}[{i}] has no 'segmentation'; coco_mask_metrics needs masks for every "
                            "ground-truth object (load_instance_masks: true in the eval input reader) and "
                            "every detection (a model that predicts masks)")


def _summarised(ev: COCOeval_faster, names: tuple[str, ...]) -> CocoResult:
    """Run `ev`; its 12 numbers under `names`, per category AP / AP50 / AP75 / AR@100 and PR curves."""
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    stats = {name: float(v) for name, v in zip(names, ev.stats[:12], strict=True)}
    precision = np.asarray(ev.eval["precision"])  # [T, R, K, A, M]
    recall = np.asarray(ev.eval["recall"])  # [T, K, A, M]
    iou_index = {round(float(t), 2): i for i, t in enumerate(ev.params.iouThrs)}
    per_cat: dict[int, dict[str, float | None]] = {}
    pr: dict[int, np.ndarray | None] = {}
    for k, cat_id in enumerate(ev.params.catIds):
        p_k = precision[:, :, k, 0, -1]  # area "all", maxDets 100
        r_k = recall[:, k, 0, -1]
        per_cat[int(cat_id)] = {
            "AP": _mean_valid(p_k),
            "AP50": _mean_valid(p_k[iou_index[0.5]]),
            "AP75": _mean_valid(p_k[iou_index[0.75]]),
            "AR@100": _mean_valid(r_k),
        }
        curve = p_k[iou_index[0.5]]
        pr[int(cat_id)] = None if (curve < 0).all() else np.clip(curve, 0, None)
    return CocoResult(stats, per_cat, np.asarray(ev.params.recThrs, dtype=np.float64), pr)


def _matches_at_50(ev: COCOeval_faster, gt: dict, detections: list) -> np.ndarray:
    """[D] GT annotation index matched to each detection at IoU 0.5 (area all, maxDets 100), or -1.

    faster-coco-eval keeps its per-image results (pycocotools' evalImgs, ordered class, area range,
    image) in C++ objects whose state starts with detection_matches [T * N] (the matched GT id per
    IoU threshold and detection, detections in stable descending score order, 0 for none) and
    ground_truth_matches, then detection_scores [N] (the N <= maxDets kept).
    """
    p = ev.params
    if not detections:
        return np.zeros(0, dtype=np.int64)
    if not (float(p.iouThrs[0]) == 0.5 and list(p.areaRng[0]) == [0, 1e10] and p.maxDets[-1] == 100):
        raise RuntimeError("COCOeval parameters changed: IoU 0.5, area all, maxDets 100 expected first")
    det_img = np.array([d["image_id"] for d in detections], dtype=np.int64)
    det_cat = np.array([d["category_id"] for d in detections], dtype=np.int64)
    score = np.array([d["score"] for d in detections], dtype=np.float64)
    order = np.lexsort((np.arange(det_img.size), -score, det_cat, det_img))  # groups, best first
    keys = np.stack([det_img[order], det_cat[order]], axis=1)
    starts = np.r_[0, np.nonzero((keys[1:] != keys[:-1]).any(axis=1))[0] + 1]
    img_pos = {int(v): i for i, v in enumerate(p.imgIds)}
    cat_pos = {int(v): k for k, v in enumerate(p.catIds)}
    stride = len(p.areaRng) * len(p.imgIds)
    rows, gt_ids = [], []
    for start in starts:  # one per (image, class) with detections
        img, cat = int(keys[start, 0]), int(keys[start, 1])
        state = ev._evalImgs_cpp[cat_pos[cat] * stride + img_pos[img]].__getstate__()
        kept = len(state[2])
        rows.append(order[start:start + kept])
        gt_ids.extend(state[0][:kept])  # IoU threshold index 0 = 0.5
    return _gt_rows(np.concatenate(rows), np.array(gt_ids, dtype=np.int64), gt, det_img.size)


def _gt_rows(rows: np.ndarray, gt_ids: np.ndarray, gt: dict, n_dets: int) -> np.ndarray:
    """[n_dets] GT annotation index per detection from (detection row, matched GT id or 0) pairs."""
    gt_index = {ann["id"]: i for i, ann in enumerate(gt["annotations"])}
    matched = np.full(n_dets, -1, dtype=np.int64)
    hit = gt_ids != 0
    matched[rows[hit]] = np.array([gt_index[int(g)] for g in gt_ids[hit]], dtype=np.int64)
    return matched


def _mean_valid(values: np.ndarray) -> float | None:
    """Mean over entries > -1 (COCOeval's 'no ground truth' marker), None when there are none."""
    valid = values[values > -1]
    return float(valid.mean()) if valid.size else None
