"""Pascal VOC AP at IoU 0.5 per class, all-point interpolation (VOC2010 onward).

Each detection, in descending score order, looks at the ground-truth box of its class that it
overlaps most in its image. IoU >= 0.5 (the TF OD API's test) with a box that is difficult or crowd:
the detection is ignored. With a box not taken yet: true positive. Otherwise: false positive. Because a
detection only ever considers its best box, "not taken yet" means "no higher-scoring detection chose the
same box", which we find with one `np.unique` instead of a loop over detections.
"""

from __future__ import annotations

import numpy as np

IOU_THRESHOLD = 0.5


def iou_xywh(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes a [N, 4] and b [M, 4], both COCO xywh -> [N, M]."""
    a_max, b_max = a[:, None, :2] + a[:, None, 2:], b[None, :, :2] + b[None, :, 2:]
    wh = np.clip(np.minimum(a_max, b_max) - np.maximum(a[:, None, :2], b[None, :, :2]), 0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = (a[:, 2] * a[:, 3])[:, None] + (b[:, 2] * b[:, 3])[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def average_precision(tp: np.ndarray, n_pos: int) -> float:
    """All-point interpolated AP of score-ordered hits tp [D] (1 = TP, 0 = FP) with n_pos GT boxes."""
    tp_cum = np.cumsum(tp)
    recall = np.r_[0.0, tp_cum / n_pos, 1.0]
    precision = np.r_[0.0, tp_cum / np.arange(1, tp.size + 1), 0.0]
    precision = np.maximum.accumulate(precision[::-1])[::-1]  # the precision envelope
    steps = np.nonzero(recall[1:] != recall[:-1])[0]
    return float(np.sum((recall[steps + 1] - recall[steps]) * precision[steps + 1]))


def _best_gt(gt_boxes: np.ndarray, gt_img: np.ndarray, det_boxes: np.ndarray,
             det_img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For detections [D] of one class: index of the best-overlapping GT in the same image, and its IoU."""
    best = np.full(det_img.size, -1, dtype=np.int64)
    best_iou = np.zeros(det_img.size)
    for image in np.intersect1d(np.unique(det_img), gt_img):  # one IoU matrix per image
        d_idx, g_idx = np.nonzero(det_img == image)[0], np.nonzero(gt_img == image)[0]
        iou = iou_xywh(det_boxes[d_idx], gt_boxes[g_idx])
        best[d_idx] = g_idx[iou.argmax(axis=1)]
        best_iou[d_idx] = iou.max(axis=1)
    return best, best_iou


def voc_ap_per_class(gt: dict, detections: list) -> dict[int, float | None]:
    """VOC AP@0.5 for each category id of `gt` (None when it has no non-difficult ground truth).

    Annotations flagged `difficult` or `iscrowd` are ignored regions (not counted, not penalised).
    """
    anns = gt["annotations"]
    g_cat = np.array([a["category_id"] for a in anns], dtype=np.int64)
    g_box = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
    g_img = np.array([a["image_id"] for a in anns])
    g_skip = np.array([bool(a.get("difficult", 0)) or bool(a.get("iscrowd", 0)) for a in anns], dtype=bool)
    d_cat = np.array([d["category_id"] for d in detections], dtype=np.int64)
    d_box = np.array([d["bbox"] for d in detections], dtype=np.float64).reshape(-1, 4)
    d_img = np.array([d["image_id"] for d in detections])
    d_score = np.array([d["score"] for d in detections], dtype=np.float64)
    out: dict[int, float | None] = {}
    for cat in sorted(c["id"] for c in gt["categories"]):
        gm, dm = g_cat == cat, np.nonzero(d_cat == cat)[0]
        n_pos = int((gm & ~g_skip).sum())
        if n_pos == 0:
            out[cat] = None
            continue
        dm = dm[np.argsort(-d_score[dm], kind="stable")]
        g_idx = np.nonzero(gm)[0]
        best, best_iou = _best_gt(g_box[g_idx], g_img[g_idx], d_box[dm], d_img[dm])
        hit = best_iou >= IOU_THRESHOLD
        ignored = hit & g_skip[g_idx[np.maximum(best, 0)]]
        first = np.zeros(dm.size, dtype=bool)
        candidates = np.nonzero(hit & ~ignored)[0]
        _, first_pos = np.unique(best[candidates], return_index=True)  # earliest = highest score
        first[candidates[first_pos]] = True
        out[cat] = average_precision(first[~ignored].astype(np.float64), n_pos)
    return out
