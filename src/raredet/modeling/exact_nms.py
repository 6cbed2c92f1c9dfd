"""Greedy NMS over every candidate, in the TF OD API's order (``multiclass_non_max_suppression``).

``BatchNonMaxSuppression`` (``modeling.postprocess``) takes the ``pre_nms_top_k`` best candidates of an
image and builds one IoU matrix over them. The TF OD API instead runs NMS over every candidate (every
anchor of Faster R-CNN's first stage: 19 200 at 640x640), per class, and only then clips the kept boxes
to the true image and drops those left without area. Here:

* ``greedy_nms`` is exact greedy NMS over all of a row's candidates without an ``N x N`` matrix: the
  candidates go through in score order, ``chunk`` at a time (one batched ``nms_mask`` per chunk, each
  candidate also suppressed by the boxes earlier chunks kept), until every row has ``max_keep``. Greedy
  NMS decides a box from the boxes ranked above it only, so this keeps exactly the boxes NMS over all
  candidates at once keeps. Ties in score rank the lower index first, as TF's kernel does.
* ``multiclass_nms_clipped`` is ``multiclass_non_max_suppression`` with a clip window at the origin:
  per-class NMS (``max_per_class`` each), the kept boxes of all classes sorted by score (ties: lower
  class, then higher rank), clipped to the image, those with no area dropped, the first ``max_total``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from raredet.modeling.box_ops import box_iou
from raredet.modeling.postprocess import clip_boxes, nms_mask

# Candidates per NMS round: one [rows, chunk, chunk] IoU matrix at a time.
NMS_CHUNK = 2000


def take(boxes: Tensor, index: Tensor) -> Tensor:
    """``boxes [G, N, 4]`` at ``index [G, M]`` -> ``[G, M, 4]``."""
    return boxes.gather(1, index[..., None].expand(-1, -1, boxes.shape[-1]))


def kept_first(keep: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """The positions of the ``keep [G, N]`` entries first (order kept), then the others, cut to
    ``min(size, N)``: ``(positions [G, M], kept [G, M])``."""
    positions = (~keep).to(torch.uint8).argsort(dim=1, stable=True)[:, :size]
    return positions, keep.gather(1, positions)


def _suppressed_by_kept(candidates: Tensor, prior: Tensor, prior_keep: Tensor, iou_threshold: float,
                        max_keep: int) -> Tensor:
    """Whether each of ``candidates [G, C, 4]`` overlaps (IoU > threshold) one of the first ``max_keep``
    kept boxes of ``prior [G, S, 4]`` (``prior_keep [G, S]``) -> ``[G, C]``."""
    positions, kept = kept_first(prior_keep, max_keep)
    overlap = box_iou(candidates, take(prior, positions)) > iou_threshold  # [G, C, M]
    return (overlap & kept[:, None, :]).any(dim=-1)


def greedy_nms(boxes: Tensor, scores: Tensor, valid: Tensor, iou_threshold: float, max_keep: int,
               chunk: int = NMS_CHUNK) -> tuple[Tensor, Tensor]:
    """Exact greedy NMS of each row (module docstring): ``boxes [G, N, 4]`` xyxy, ``scores [G, N]``,
    ``valid [G, N]`` (invalid candidates are neither kept nor suppress) -> ``order [G, N]`` (score
    descending, ties by index) and ``keep [G, N]`` in that order, at most ``max_keep`` per row."""
    order = scores.argsort(dim=1, descending=True, stable=True)
    boxes, valid = take(boxes, order), valid.gather(1, order)
    keep = torch.zeros_like(valid)
    n = boxes.shape[1]
    for start in range(0, n, chunk):  # a handful of rounds; usually one
        stop = min(start + chunk, n)
        ok = valid[:, start:stop]
        if start:
            ok = ok & ~_suppressed_by_kept(boxes[:, start:stop], boxes[:, :start], keep[:, :start],
                                           iou_threshold, max_keep)
        keep[:, start:stop] = nms_mask(boxes[:, start:stop], torch.zeros_like(ok, dtype=torch.long), ok,
                                       iou_threshold)
        if stop < n and bool((keep.sum(dim=1) >= max_keep).all()):
            break
    return order, keep & (keep.cumsum(dim=1) <= max_keep)


def has_area(boxes: Tensor) -> Tensor:
    """``boxes [..., 4]`` xyxy -> whether each has a positive area."""
    return (boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1])


def nms_then_clip(boxes: Tensor, scores: Tensor, valid: Tensor, image_sizes: Tensor, iou_threshold: float,
                  max_keep: int) -> tuple[Tensor, Tensor, Tensor]:
    """Single-class NMS of ``boxes [B, N, 4]`` by ``scores [B, N]`` over ``valid`` candidates, the first
    ``max_keep`` kept boxes clipped to ``image_sizes [B, 2]`` (h, w) and those without area dropped ->
    ``boxes [B, max_keep, 4]`` (zero padded), ``scores [B, max_keep]``, ``valid [B, max_keep]``."""
    order, keep = greedy_nms(boxes, scores, valid, iou_threshold, max_keep)
    positions, kept = kept_first(keep, max_keep)
    index = order.gather(1, positions)
    chosen = clip_boxes(take(boxes, index), image_sizes)
    positions, kept = kept_first(kept & has_area(chosen), max_keep)
    out_boxes = torch.where(kept[..., None], take(chosen, positions), 0.0)
    out_scores = torch.where(kept, scores.gather(1, index).gather(1, positions), 0.0)
    pad = max_keep - kept.shape[1]
    return F.pad(out_boxes, (0, 0, 0, pad)), F.pad(out_scores, (0, pad)), F.pad(kept, (0, pad))


def multiclass_nms_clipped(boxes: Tensor, scores: Tensor, valid: Tensor, image_sizes: Tensor, *,
                           score_threshold: float, iou_threshold: float, max_per_class: int,
                           max_total: int) -> dict[str, Tensor]:
    """``boxes [B, N, 4]`` (one box for every class) or ``[B, N, K, 4]``, ``scores [B, N, K]``, ``valid
    [B, N]`` -> padded ``detection_boxes [B, max_total, 4]`` xyxy clipped to ``image_sizes [B, 2]``,
    ``detection_scores``, ``detection_classes`` (0-based), ``num_detections [B]`` (module docstring)."""
    b, n, k = scores.shape
    per_class = (boxes[:, :, None] if boxes.dim() == 3 else boxes).expand(b, n, k, 4)
    rows_boxes = per_class.transpose(1, 2).reshape(b * k, n, 4)
    rows_scores = scores.transpose(1, 2).reshape(b * k, n)
    rows_valid = valid[:, None, :].expand(b, k, n).reshape(b * k, n) & (rows_scores > score_threshold)
    order, keep = greedy_nms(rows_boxes, rows_scores, rows_valid, iou_threshold, max_per_class)
    # class-major, each class in score order: the order TF concatenates the classes' kept boxes in
    flat_boxes = clip_boxes(take(rows_boxes, order).reshape(b, k * n, 4), image_sizes)
    flat_scores = rows_scores.gather(1, order).reshape(b, k * n)
    flat_keep = keep.reshape(b, k * n) & has_area(flat_boxes)
    classes = torch.arange(k, device=scores.device).repeat_interleave(n).expand(b, -1)
    ranked = torch.where(flat_keep, flat_scores, -torch.inf).argsort(dim=1, descending=True, stable=True)
    ranked = ranked[:, :max_total]
    kept = flat_keep.gather(1, ranked)
    pad = max_total - ranked.shape[1]
    return {
        "detection_boxes": F.pad(torch.where(kept[..., None], take(flat_boxes, ranked), 0.0), (0, 0, 0, pad)),
        "detection_scores": F.pad(torch.where(kept, flat_scores.gather(1, ranked), 0.0), (0, pad)),
        "detection_classes": F.pad(torch.where(kept, classes.gather(1, ranked), 0), (0, pad)),
        "num_detections": kept.sum(dim=1),
    }
