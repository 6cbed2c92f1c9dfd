"""Per-class table: COCO AP numbers plus counts at `min_score_threshold`, rarest classes first.

Counts come from COCO's own greedy matching at IoU 0.5 (area "all", the top 100 detections per image
and class), run by faster-coco-eval: a detection matched to a crowd region, or ranked past 100, is
neither a true nor a false positive, exactly as COCOeval treats it. Greedy matching takes detections
in score order, so matching all detections once and then applying the threshold gives the same counts
as matching only the detections above it.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from faster_coco_eval import COCO, COCOeval_faster

from raredet.evaluation.coco import CocoResult, prepare_coco, silent
from raredet.fileio import atomic_write_json, atomic_write_text

MAX_DETS = 100
COLUMNS = ("class", "id", "gt_count", "AP", "AP50", "AP75", "AR@100", "VOC_AP50",
           "precision", "recall", "F1", "TP", "missed", "FP",
           "op_threshold", "op_precision", "op_recall")  # at the class's operating point (IoU 0.5)
# With coco_mask_metrics: the class's mask AP, AP50 and AP75 (rows have them only then).
MASK_COLUMNS = ("mask_AP", "mask_AP50", "mask_AP75")


@dataclass
class Matches:
    """Match status of every detection and ground-truth box (COCO greedy matching at IoU 0.5).

    det_cat [D] int category id; det_score [D] float; det_gt [D] int index into the GT annotation
    list or -1; det_counted [D] bool: False for detections matched to a crowd region or ranked past
    100 in their image and class (COCOeval ignores them). gt_cat [G] int; gt_crowd [G] bool.
    det_image [D]: the image id of each detection (None where not known; the precision intervals of
    `operating_points` need it).
    """

    det_cat: np.ndarray
    det_score: np.ndarray
    det_gt: np.ndarray
    det_counted: np.ndarray
    gt_cat: np.ndarray
    gt_crowd: np.ndarray
    det_image: np.ndarray | None = None

    def is_tp(self, min_score: float) -> np.ndarray:
        """[D] bool: counted, above the threshold and matched to a (non-crowd) box."""
        return self.det_counted & (self.det_score >= min_score) & (self.det_gt >= 0)

    def is_fp(self, min_score: float) -> np.ndarray:
        """[D] bool: counted, above the threshold and matched to nothing."""
        return self.det_counted & (self.det_score >= min_score) & (self.det_gt < 0)


def coco_match(gt: dict, detections: list, use_cats: bool = True,
               prepared: tuple[COCO, COCO] | None = None) -> np.ndarray:
    """[D] int: the GT annotation index each detection is matched to at IoU 0.5, or -1.

    `use_cats=False` matches regardless of class (used for the confusion matrix's second stage).
    `prepared`: `prepare_coco(gt, detections)` when the caller already has it.
    """
    coco_gt, coco_dt = prepared or prepare_coco(gt, detections)
    ev = COCOeval_faster(coco_gt, coco_dt, "bbox", print_function=silent, extra_calc=True)
    ev.params.iouThrs = np.array([0.5])
    ev.params.maxDets = [MAX_DETS]
    ev.params.areaRng = [[0.0, 1e10]]
    ev.params.areaRngLbl = ["all"]
    ev.params.useCats = int(use_cats)
    ev.evaluate()
    ev.accumulate()
    gt_index = {ann["id"]: i for i, ann in enumerate(gt["annotations"])}
    matched = np.full(len(detections), -1, dtype=np.int64)
    for key in ev.eval.get("matched", {}):
        dt_id, gt_id = key.split("_", 1)
        matched[int(dt_id) - 1] = gt_index[int(gt_id)]  # loadRes numbers detections from 1
    return matched


def match_detections(gt: dict, detections: list, prepared: tuple[COCO, COCO] | None = None,
                     coco: CocoResult | None = None) -> Matches:
    """Match status of all detections (see `Matches`).

    `coco`: `evaluate_coco(gt, detections)`'s result when the caller has it; its own matching at IoU
    0.5 is reused instead of a second COCOeval run.
    """
    anns = gt["annotations"]
    gt_cat = np.array([a["category_id"] for a in anns], dtype=np.int64)
    gt_crowd = np.array([bool(a.get("iscrowd", 0)) for a in anns], dtype=bool)
    det_cat = np.array([d["category_id"] for d in detections], dtype=np.int64)
    det_score = np.array([d["score"] for d in detections], dtype=np.float64)
    det_img = np.array([d["image_id"] for d in detections])
    if coco is not None and coco.det_gt_50 is not None:
        matched = coco.det_gt_50
    elif detections:
        matched = coco_match(gt, detections, prepared=prepared)
    else:
        matched = np.zeros(0, dtype=np.int64)
    to_crowd = (matched >= 0) & gt_crowd[np.maximum(matched, 0)] if len(anns) else matched < -1
    counted = ~to_crowd & (_rank_in_group(det_img, det_cat, det_score) < MAX_DETS)
    det_gt = np.where(to_crowd, -1, matched)
    return Matches(det_cat, det_score, det_gt, counted, gt_cat, gt_crowd, det_img)


def _rank_in_group(image: np.ndarray, cat: np.ndarray, score: np.ndarray) -> np.ndarray:
    """[D] rank of each detection by descending score within its (image, class), ties in file order."""
    if image.size == 0:
        return np.zeros(0, dtype=np.int64)
    _, img_code = np.unique(image, return_inverse=True)
    order = np.lexsort((np.arange(image.size), -score, cat, img_code))
    group = np.stack([img_code[order], cat[order]], axis=1)
    starts = np.r_[True, (group[1:] != group[:-1]).any(axis=1)]
    start_pos = np.maximum.accumulate(np.where(starts, np.arange(image.size), 0))
    rank = np.empty(image.size, dtype=np.int64)
    rank[order] = np.arange(image.size) - start_pos
    return rank


def class_counts(matches: Matches, cat_ids: list[int], min_score: float) -> dict[int, dict[str, int]]:
    """Per category id: gt_count (non-crowd), TP, FP and missed at `min_score`."""
    tp, fp = matches.is_tp(min_score), matches.is_fp(min_score)
    out = {}
    for cat in cat_ids:
        n_gt = int(((matches.gt_cat == cat) & ~matches.gt_crowd).sum())
        n_tp = int((tp & (matches.det_cat == cat)).sum())
        n_fp = int((fp & (matches.det_cat == cat)).sum())
        out[cat] = {"gt_count": n_gt, "TP": n_tp, "FP": n_fp, "missed": n_gt - n_tp}
    return out


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def build_table(categories: list[dict], counts: dict[int, dict[str, int]], coco: CocoResult | None,
                voc_ap: dict[int, float | None] | None,
                masks: CocoResult | None = None) -> list[dict[str, Any]]:
    """Rows of the per-class table (None = not defined: no ground truth, or no detections), rarest first;
    with `masks` (the coco_mask_metrics result) also each class's mask AP, AP50, AP75."""
    rows = []
    for cat in categories:
        c = counts[cat["id"]]
        precision = _ratio(c["TP"], c["TP"] + c["FP"])
        recall = _ratio(c["TP"], c["gt_count"])
        f1 = None
        if precision is not None and recall is not None:
            f1 = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
        per_cat = coco.per_category[cat["id"]] if coco is not None else {}
        rows.append({
            "class": cat.get("name", str(cat["id"])), "id": cat["id"], "gt_count": c["gt_count"],
            "AP": per_cat.get("AP"), "AP50": per_cat.get("AP50"), "AP75": per_cat.get("AP75"),
            "AR@100": per_cat.get("AR@100"), "VOC_AP50": (voc_ap or {}).get(cat["id"]),
            "precision": precision, "recall": recall, "F1": f1,
            "TP": c["TP"], "missed": c["missed"], "FP": c["FP"],
            "op_threshold": None, "op_precision": None, "op_recall": None,
        })
        if masks is not None:
            per_mask = masks.per_category[cat["id"]]
            rows[-1].update({f"mask_{k}": per_mask[k] for k in ("AP", "AP50", "AP75")})
    rows.sort(key=lambda r: (r["gt_count"], str(r["class"])))
    return rows


def format_cell(value: Any, gt_count: int, column: str) -> str:
    """Text for one cell: 'no ground truth' instead of a number that COCO leaves undefined."""
    if value is None:
        if gt_count == 0 and column in ("AP", "AP50", "AP75", "AR@100", "VOC_AP50", "recall", "F1",
                                        *MASK_COLUMNS):
            return "no ground truth"
        return "n/a"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def table_columns(rows: list[dict[str, Any]]) -> tuple[str, ...]:
    """Every column of the rows: `COLUMNS`, then the mask columns where masks were evaluated."""
    return COLUMNS + (MASK_COLUMNS if any("mask_AP" in r for r in rows) else ())


def shown_columns(rows: list[dict[str, Any]]) -> list[str]:
    """Drop metric columns that the chosen metrics set did not compute."""
    return [c for c in table_columns(rows) if c in ("class", "id") or any(r.get(c) is not None for r in rows)
            or c in ("gt_count", "TP", "FP", "missed", "precision", "recall", "F1")]


def to_markdown(rows: list[dict[str, Any]]) -> str:
    cols = shown_columns(rows)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(format_cell(r[c], r["gt_count"], c) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def to_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    columns = table_columns(rows)
    writer.writerow(columns)
    for r in rows:
        writer.writerow(["" if r[c] is None else r[c] for c in columns])
    return buf.getvalue()


def write_table(rows: list[dict[str, Any]], out_dir: str | Path, meta: dict[str, Any]) -> None:
    """per_class.json (rows plus `meta`), per_class.csv and per_class.md into `out_dir`."""
    out = Path(out_dir)
    atomic_write_json(out / "per_class.json", {**meta, "classes": rows})
    atomic_write_text(out / "per_class.csv", to_csv(rows))
    atomic_write_text(out / "per_class.md", to_markdown(rows))
