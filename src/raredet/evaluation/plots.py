"""PNG plots of an evaluation (matplotlib's Agg backend: no display needed).

The confusion matrix is built in two stages so that its diagonal equals the per-class table's true
positives: first COCO's class-aware matching at IoU 0.5 (the TPs), then class-agnostic matching of what
is left over (a box of one class detected as another). Leftover detections are false alarms (the
background row), leftover ground truth is missed (the background column).
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from faster_coco_eval import COCO  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from raredet.evaluation.coco import subset_prepared  # noqa: E402
from raredet.evaluation.per_class import Matches, coco_match  # noqa: E402
from raredet.fileio import atomic_write_bytes  # noqa: E402


def save_figure(fig: Figure, path: str | Path) -> None:
    """Render `fig` to PNG and write it atomically."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def _grid(n: int) -> tuple[int, int]:
    cols = min(4, max(1, n))
    return math.ceil(max(1, n) / cols), cols


def pr_curves_figure(recall: np.ndarray, curves: dict[str, np.ndarray | None],
                     markers: dict[str, list[tuple[float, float, str]]] | None = None) -> Figure:
    """Precision-recall curves at IoU 0.5, one line per class. recall [R]; curves: name -> [R] or None.
    markers: name -> [(recall, precision, kind)], kind "operating point" (a filled circle), "review"
    (a triangle) or "global threshold" (a cross), drawn in the class's colour."""
    fig, ax = plt.subplots(figsize=(7, 5), layout="constrained")
    styles = {"operating point": "o", "review": "v", "global threshold": "x"}
    for name, precision in curves.items():
        if precision is None:
            ax.plot([], [], linestyle=":", label=f"{name} (no ground truth)")
            continue
        (line,) = ax.plot(recall, precision, label=name)
        for r, p, kind in (markers or {}).get(name, []):
            ax.plot([r], [p], marker=styles.get(kind, "o"), color=line.get_color(), markersize=8,
                    linestyle="none")
    if markers:
        for kind, style in styles.items():
            ax.plot([], [], marker=style, color="gray", linestyle="none", label=kind)
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02),
           title="Precision-recall at IoU 0.5 (COCO, 101 points)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize="small")
    return fig


def confusion_counts(gt: dict, detections: list, matches: Matches, cat_ids: list[int],
                     min_score: float, prepared: tuple[COCO, COCO] | None = None) -> np.ndarray:
    """[K+1, K+1] counts: rows ground-truth class, columns detected class; index K is background.

    `prepared`: `prepare_coco(gt, detections)` when the caller already has it; the leftovers' class-
    agnostic matching then reuses its records instead of preparing the whole ground truth again.
    """
    k = len(cat_ids)
    col = {c: i for i, c in enumerate(cat_ids)}
    to_index = np.vectorize(lambda c: col[int(c)], otypes=[np.int64])
    mat = np.zeros((k + 1, k + 1), dtype=np.int64)
    tp = matches.is_tp(min_score)
    if tp.any():
        np.add.at(mat, (to_index(matches.det_cat[tp]), to_index(matches.det_cat[tp])), 1)
    left_det = np.nonzero(matches.is_fp(min_score))[0]
    taken = np.zeros(matches.gt_cat.size, dtype=bool)
    taken[matches.det_gt[tp]] = True
    left_gt = np.nonzero(~taken & ~matches.gt_crowd)[0]
    cross = np.full(left_det.size, -1, dtype=np.int64)
    if left_det.size and left_gt.size:
        sub_gt = {**gt, "annotations": [gt["annotations"][i] for i in left_gt]}
        sub_prepared = subset_prepared(prepared, left_gt, left_det) if prepared else None
        cross = coco_match(sub_gt, [detections[i] for i in left_det], use_cats=False, prepared=sub_prepared)
    hit = cross >= 0
    det_cols = to_index(matches.det_cat[left_det]) if left_det.size else np.zeros(0, np.int64)
    gt_rows = to_index(matches.gt_cat[left_gt[cross[hit]]]) if hit.any() else np.zeros(0, np.int64)
    np.add.at(mat, (gt_rows, det_cols[hit]), 1)
    np.add.at(mat, (np.full((~hit).sum(), k), det_cols[~hit]), 1)  # false alarms
    missed = np.ones(left_gt.size, dtype=bool)
    missed[cross[hit]] = False
    if missed.any():
        np.add.at(mat, (to_index(matches.gt_cat[left_gt[missed]]), np.full(missed.sum(), k)), 1)
    return mat


def confusion_figure(mat: np.ndarray, names: list[str], min_score: float) -> Figure:
    """Heat map of `confusion_counts` with the count written in each cell."""
    labels = [*names, "background"]
    size = 2 + 0.6 * len(labels)
    fig, ax = plt.subplots(figsize=(size + 1, size), layout="constrained")
    im = ax.imshow(mat, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set(xlabel="detected as (background = missed)", ylabel="ground truth (background = false alarm)",
           title=f"Confusion at IoU 0.5, score >= {min_score:g}")
    top = mat.max() if mat.size else 0
    for (i, j), v in np.ndenumerate(mat):
        ax.text(j, i, str(v), ha="center", va="center", color="white" if v > top / 2 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    return fig


def score_histograms_figure(matches: Matches, cat_ids: list[int], names: list[str],
                            min_score: float) -> Figure:
    """Per class, histograms of detection scores: true positives vs false positives."""
    rows, cols = _grid(len(cat_ids))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False,
                             layout="constrained")
    tp, fp = matches.is_tp(-np.inf), matches.is_fp(-np.inf)
    bins = np.linspace(0, 1, 21)
    for ax, cat, name in zip(axes.flat, cat_ids, names, strict=False):
        mine = matches.det_cat == cat
        # False positives first, true positives on top as an outline: the (often few) TPs stay visible.
        ax.hist(np.clip(matches.det_score[mine & fp], 0, 1), bins=bins, color="tab:orange", alpha=0.6,
                label="false positive")
        ax.hist(np.clip(matches.det_score[mine & tp], 0, 1), bins=bins, color="tab:blue", histtype="step",
                linewidth=2, label="true positive")
        ax.axvline(min_score, color="black", linestyle="--", linewidth=1)
        ax.set_title(name, fontsize="small")
    for ax in list(axes.flat)[len(cat_ids):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize="x-small")
    fig.suptitle("Detection scores per class (dashed: min_score_threshold)")
    return fig
