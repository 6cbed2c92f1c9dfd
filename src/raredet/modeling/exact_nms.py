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
* ``ranked_nms_clipped`` is the same for SSD, whose anchors x classes candidates (4.4 M for EfficientDet-D0
  at 512) are too many for a row of NMS per class: the candidates go through in TF's final order, a
  chunk at a time, until ``max_total`` detections with area are certain.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from raredet.modeling.box_ops import box_iou
from raredet.modeling.postprocess import clip_boxes, nms_mask, rank_within_group

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


def _descending_keys(flat_scores: Tensor) -> Tensor:
    """``flat_scores [B, M]`` float32 -> int64 keys ``[B, M]``, all distinct, whose descending order is
    the scores' descending order with ties by the lower index (float32 bits made monotone, then the
    index in the low 32 bits)."""
    bits = (flat_scores.float() + 0.0).view(torch.int32)  # + 0.0: -0.0 becomes +0.0, a tie with it
    monotone = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits).to(torch.int64)
    index = torch.arange(flat_scores.shape[1], device=flat_scores.device, dtype=torch.int64)
    return monotone * (1 << 32) + (flat_scores.shape[1] - 1 - index)


def ranked(flat_scores: Tensor, count: int) -> Tensor:
    """The positions of the first ``count`` entries of ``flat_scores [B, M]`` by descending score, ties
    by the lower position (TF's ``top_k`` and NMS order) -> ``[B, min(count, M)]``. While tracing a full
    stable sort (exportable). Otherwise no sort of all ``M``: ``topk``, whose set is the right one
    unless the ``count``-th score ties with one left out; then ``topk`` over distinct keys."""
    count = min(count, flat_scores.shape[1])
    if torch.jit.is_tracing() or torch.jit.is_scripting():
        return flat_scores.argsort(dim=1, descending=True, stable=True)[:, :count]
    values, positions = flat_scores.topk(count, dim=1, sorted=True)
    if count and bool(((flat_scores >= values[:, -1:]).sum(dim=1) > count).any()):
        return _descending_keys(flat_scores).topk(count, dim=1, sorted=True).indices
    positions = positions.sort(dim=1).values  # the same set, by position: ties then sort stably
    return positions.gather(1, flat_scores.gather(1, positions).argsort(dim=1, descending=True, stable=True))


def _suppressed_by_prior(boxes: Tensor, groups: Tensor, prior: tuple[Tensor, Tensor, Tensor],
                         iou_threshold: float) -> Tensor:
    """Whether each of ``boxes [B, C, 4]`` (``groups [B, C]``) overlaps (IoU > threshold) a kept box of
    its group in ``prior`` = (boxes ``[B, P, 4]``, groups ``[B, P]``, kept ``[B, P]``) -> ``[B, C]``."""
    prior_boxes, prior_groups, prior_kept = prior
    overlap = box_iou(boxes, prior_boxes) > iou_threshold
    same = groups[:, :, None] == prior_groups[:, None, :]
    return (overlap & same & prior_kept[:, None, :]).any(dim=-1)


def _compact(parts: list[tuple[Tensor, ...]]) -> tuple[Tensor, ...]:
    """Chunks of ``(values [B, C, ...]..., kept [B, C])`` joined, kept entries first (order kept), cut to
    the most kept in any row (a host sync: eager mode only)."""
    joined = [torch.cat(column, dim=1) for column in zip(*parts, strict=True)]
    size = max(1, int(joined[-1].sum(dim=1).max()))
    positions, kept = kept_first(joined[-1], size)
    gathered = [v.gather(1, positions) if v.dim() == 2 else take(v, positions) for v in joined[:-1]]
    return (*gathered, kept)


class _RankedNms:
    """The state of ``ranked_nms_clipped`` between chunks (its docstring)."""

    def __init__(self, boxes: Tensor, scores: Tensor, image_sizes: Tensor, class_agnostic: bool) -> None:
        b, n, k = scores.shape
        self.boxes, self.n, self.image_sizes = boxes, n, image_sizes.to(boxes.device)
        self.best: Tensor | None = None
        if class_agnostic:  # each anchor's best class, ties to the lower class (TF's argmax)
            self.flat, self.best = scores.max(dim=-1)
        else:  # class-major, the order TF concatenates the classes' NMS results in
            self.flat = scores.transpose(1, 2).reshape(b, k * n)
        self.counts = torch.zeros(b, 1 if class_agnostic else k, dtype=torch.long, device=scores.device)
        self.prior: tuple[Tensor, ...] | None = None
        self.found: list[tuple[Tensor, ...]] = []
        self.with_area = torch.zeros(b, dtype=torch.long, device=scores.device)  # kept with area so far

    def candidates(self, position: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Ranked ``position [B, C]`` -> boxes ``[B, C, 4]``, scores, classes, NMS groups ``[B, C]``."""
        anchor = position % self.n
        if self.best is None:
            classes = position // self.n
            groups = classes
        else:
            classes = self.best.gather(1, anchor)
            groups = torch.zeros_like(classes)
        return take(self.boxes, anchor), self.flat.gather(1, position), classes, groups

    def add_chunk(self, position: Tensor, score_threshold: float, iou_threshold: float, cap: int) -> Tensor:
        """NMS of the next ranked candidates given the kept ones before them; -> whether each row's
        chunk ended at a candidate at or below the score threshold (no valid one after it)."""
        boxes, scores, classes, groups = self.candidates(position)
        above = scores > score_threshold
        valid = above if self.prior is None else above & ~_suppressed_by_prior(
            boxes, groups, self.prior[:3], iou_threshold)  # type: ignore[arg-type]
        keep = nms_mask(boxes, groups, valid, iou_threshold)
        keep &= self.counts.gather(1, groups) + rank_within_group(keep, groups) < cap
        self.counts.scatter_add_(1, groups, keep.long())
        clipped = clip_boxes(boxes, self.image_sizes)
        self.found.append((clipped, scores, classes, keep & has_area(clipped)))
        self.with_area += self.found[-1][-1].sum(dim=1)
        if not (torch.jit.is_tracing() or torch.jit.is_scripting()):
            parts = [self.prior] if self.prior is not None else []
            self.prior = _compact([*parts, (boxes, groups, keep)])
        return ~above[:, -1]

    def detections(self, max_total: int) -> dict[str, Tensor]:
        """The first ``max_total`` kept boxes with area, zero padded (``multiclass_nms_clipped``'s dict)."""
        boxes, scores, classes, kept = (torch.cat(column, dim=1) for column in zip(*self.found, strict=True))
        positions, kept = kept_first(kept, max_total)
        pad = max_total - kept.shape[1]
        chosen = torch.where(kept[..., None], take(boxes, positions), 0.0)
        return {
            "detection_boxes": F.pad(chosen, (0, 0, 0, pad)),
            "detection_scores": F.pad(torch.where(kept, scores.gather(1, positions), 0.0), (0, pad)),
            "detection_classes": F.pad(torch.where(kept, classes.gather(1, positions), 0), (0, pad)),
            "num_detections": kept.sum(dim=1),
        }


def ranked_nms_clipped(boxes: Tensor, scores: Tensor, image_sizes: Tensor, *, score_threshold: float,
                       iou_threshold: float, max_per_class: int, max_total: int, class_agnostic: bool = False,
                       chunk: int = NMS_CHUNK) -> dict[str, Tensor]:
    """``multiclass_nms_clipped`` for a box per anchor, over many anchors (SSD): ``boxes [B, N, 4]`` xyxy,
    ``scores [B, N, K]``, ``image_sizes [B, 2]`` (h, w) -> the same padded detections dict. With
    ``class_agnostic``, TF's ``class_agnostic_non_max_suppression`` (each anchor's best class, one NMS,
    at most ``max_total`` kept) instead of per-class NMS (at most ``max_per_class`` per class).

    The (anchor, class) candidates go through in TF's final order (score descending, ties by the lower
    class, then the lower anchor: ``ranked``), ``chunk`` at a time. A candidate's fate (kept by its
    class's NMS, under its class's cap, with area once clipped) depends only on the candidates of its
    class ranked above it, so each chunk is decided exactly given the kept boxes of the chunks before
    it; once a row has ``max_total`` kept boxes with area, or its candidates fall to the score
    threshold, no later candidate can enter its first ``max_total``. While tracing (export), one chunk
    only: exact when it holds ``max_total`` detections or every valid candidate."""
    state = _RankedNms(boxes, scores, image_sizes, class_agnostic)
    cap = max_total if class_agnostic else max_per_class
    total, start = state.flat.shape[1], 0
    while start < total:
        stop = min(start + chunk, total)
        exhausted = state.add_chunk(ranked(state.flat, stop)[:, start:], score_threshold, iou_threshold, cap)
        if torch.jit.is_tracing() or torch.jit.is_scripting():
            break
        if bool((exhausted | (state.with_area >= max_total)).all()):
            break
        start = stop
    return state.detections(max_total)
