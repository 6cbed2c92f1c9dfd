"""Score conversion and batched non-maximum suppression (the TF OD API's ``batch_non_max_suppression``).

NMS here is exact greedy NMS computed without a Python loop over boxes: with boxes sorted by score and
``S[i, j] = IoU(i, j) > iou_threshold and j ranks above i``, the kept set is the fixed point of
``keep[i] = not any_j(S[i, j] and keep[j])``. Iterating from ``keep = all`` settles the first ``t``
boxes after ``t`` rounds (box 0 is always kept; box ``i`` is right once every box above it is), and in
practice it settles after a handful of rounds, each one batched matrix-vector product over all images
and classes at once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from raredet.modeling.box_ops import box_iou
from raredet.modeling.calibration import Calibration


def _sigmoid(logits: Tensor) -> Tensor:
    return torch.sigmoid(logits)


def _softmax(logits: Tensor) -> Tensor:
    # The model has K columns, no background column: as with the TF OD API's
    # ``encode_background_as_zeros``, background is an implicit logit 0, dropped after the softmax.
    with_background = F.pad(logits, (1, 0))
    return torch.softmax(with_background, dim=-1)[..., 1:]


def _identity(logits: Tensor) -> Tensor:
    return logits


def _softmax_with_background(logits: Tensor) -> Tensor:
    return torch.softmax(logits, dim=-1)


SCORE_CONVERTERS = {"SIGMOID": _sigmoid, "SOFTMAX": _softmax, "IDENTITY": _identity}
# With an explicit background column (Faster R-CNN's second stage, ``[..., K + 1]``, background first):
# the converter sees all K + 1 columns, then the background column is dropped.
WITH_BACKGROUND_COLUMN = {"SIGMOID": _sigmoid, "SOFTMAX": _softmax_with_background, "IDENTITY": _identity}


def check_score_converter(score_converter: str) -> None:
    """ValueError listing the valid converters unless ``score_converter`` is one."""
    if score_converter not in SCORE_CONVERTERS:
        raise ValueError(f"score_converter: unknown value {score_converter!r}; "
                         f"valid: {sorted(SCORE_CONVERTERS)}")


def convert_scores(logits: Tensor, score_converter: str = "IDENTITY", logit_scale: float = 1.0,
                   background_column: bool = False) -> Tensor:
    """``logits [..., K]`` -> scores ``[..., K]`` (TF OD API ``score_converter``, ``logit_scale``).
    With ``background_column``: ``logits [..., K + 1]``, column 0 background, dropped after the
    converter."""
    check_score_converter(score_converter)
    if background_column:
        return WITH_BACKGROUND_COLUMN[score_converter](logits / logit_scale)[..., 1:]
    return SCORE_CONVERTERS[score_converter](logits / logit_scale)


class ScoreConverter(nn.Module):
    """Logits ``[..., K]`` -> calibrated scores ``[..., K]``, in the TF OD API's order: temperature
    scaling (if any) divides the logits, then ``logits / logit_scale`` goes through the score
    converter, then every other calibration kind maps the converted scores (before NMS).
    ``thresholds`` (identity unless set: per-class operating points given apart from the config) maps
    the calibrated scores once more. With ``background_column`` the logits are ``[..., K + 1]``,
    background first (Faster R-CNN's second stage): temperature and converter see all K + 1 columns,
    the background column is dropped before the calibration's maps (column k is then label-map id
    k + 1, as without it)."""

    def __init__(self, score_converter: str = "IDENTITY", logit_scale: float = 1.0,
                 calibration: Calibration | None = None, num_classes: int = 1,
                 background_column: bool = False) -> None:
        super().__init__()
        check_score_converter(score_converter)
        self.score_converter, self.logit_scale = score_converter, float(logit_scale)
        self.background_column = background_column
        self.calibration = calibration if calibration is not None else Calibration.identity(num_classes)
        if self.calibration.num_classes != num_classes:
            raise ValueError(f"calibration for {self.calibration.num_classes} classes, the model has "
                             f"{num_classes}")
        self.thresholds = Calibration.identity(num_classes)

    def forward(self, logits: Tensor) -> Tensor:
        scores = convert_scores(self.calibration.temperature(logits), self.score_converter, self.logit_scale,
                                self.background_column)
        return self.thresholds(self.calibration(scores))


class OperatingPoints:
    """``set_operating_points`` for a detector with ``num_classes``, a ``score_converter``
    (``ScoreConverter``), a ``non_max_suppression`` (``BatchNonMaxSuppression``) and a ``pixel_mean``
    buffer on its device: SSD and Faster R-CNN."""

    num_classes: int
    pixel_mean: Tensor
    score_converter: ScoreConverter
    non_max_suppression: BatchNonMaxSuppression

    def set_operating_points(self, thresholds: Calibration, score_threshold: float) -> None:
        """Apply per-class operating points: ``thresholds`` maps the (calibrated) scores so that every
        class's threshold lands on ``score_threshold``, which becomes NMS's score threshold."""
        if thresholds.num_classes != self.num_classes:
            raise ValueError(f"operating points for {thresholds.num_classes} classes, the model has "
                             f"{self.num_classes}")
        self.score_converter.thresholds = thresholds.to(self.pixel_mean.device)
        self.non_max_suppression.score_threshold = score_threshold


def _greedy_keep(suppresses: Tensor) -> Tensor:
    """``suppresses [..., N, N]`` bool (row i suppressed by column j ranked above it) -> keep ``[..., N]``."""
    keep = torch.ones(suppresses.shape[:-1], dtype=torch.bool, device=suppresses.device)
    for _ in range(suppresses.shape[-1]):  # bounded by N; converges in a few rounds (module docstring)
        new_keep = ~(suppresses & keep[..., None, :]).any(dim=-1)
        if torch.equal(new_keep, keep):
            break
        keep = new_keep
    return keep


def nms_mask(boxes: Tensor, groups: Tensor, valid: Tensor, iou_threshold: float) -> Tensor:
    """Greedy NMS on boxes **already sorted by descending score**, within groups; batched.

    ``boxes [..., N, 4]`` xyxy, ``groups [..., N]`` int (only equal groups suppress each other),
    ``valid [..., N]`` bool (invalid entries neither are kept nor suppress) -> keep ``[..., N]`` bool.
    """
    n = boxes.shape[-2]
    earlier = torch.ones(n, n, dtype=torch.bool, device=boxes.device).tril(diagonal=-1)
    same_group = groups[..., :, None] == groups[..., None, :]
    suppresses = (box_iou(boxes, boxes) > iou_threshold) & same_group & earlier & valid[..., None, :]
    return _greedy_keep(suppresses) & valid


def batched_nms(boxes: Tensor, scores: Tensor, groups: Tensor, iou_threshold: float) -> Tensor:
    """Per-group NMS: ``boxes [N, 4]``, ``scores [N]``, ``groups [N]`` -> kept indices, best first."""
    order = scores.argsort(descending=True, stable=True)
    valid = torch.ones_like(order, dtype=torch.bool)
    keep = nms_mask(boxes[order], groups[order], valid, iou_threshold)
    return order[keep]


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """NMS of ``boxes [N, 4]`` xyxy with ``scores [N]`` -> kept indices ``[M]`` by descending score."""
    return batched_nms(boxes, scores, torch.zeros_like(scores, dtype=torch.int64), iou_threshold)


def clip_boxes(boxes: Tensor, image_sizes: Tensor) -> Tensor:
    """Clip ``boxes [B, A, 4]`` xyxy to each image's ``image_sizes [B, 2]`` (h, w)."""
    limits = image_sizes.to(boxes.dtype).flip(-1).repeat(1, 2)[:, None, :]  # [B, 1, (w, h, w, h)]
    return torch.minimum(boxes.clamp(min=0), limits)


def _past_last_valid_dropped(boxes: Tensor, scores: Tensor, classes: Tensor,
                             valid: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The candidates ``[B, N, ...]`` cut after the last valid one of any image: an invalid candidate is
    neither kept nor suppresses, so the cut changes no output, and NMS's pairwise IoU shrinks from N^2
    to the valid candidates' (N = ``pre_nms_top_k``, 1000 by default, against tens to hundreds above a
    score threshold of a trained model). On the CPU only: elsewhere reading the count is a host sync,
    and Faster R-CNN's proposal NMS runs every training step (a GPU's IoU matrix is cheap anyway). Not
    while tracing or scripting either (an export's graph must not bake in one input's count)."""
    if (valid.device.type != "cpu" or torch.jit.is_tracing() or torch.jit.is_scripting()
            or valid.shape[-1] == 0):
        return boxes, scores, classes, valid
    positions = torch.arange(1, valid.shape[-1] + 1, device=valid.device)
    n = max(1, int((valid * positions).amax()))  # 1 + the index of the last valid candidate anywhere
    return boxes[:, :n], scores[:, :n], classes[:, :n], valid[:, :n]


class BatchNonMaxSuppression:
    """The TF OD API's ``batch_non_max_suppression`` over a batch, with no loop over images or boxes.

    ``pre_nms_top_k`` (raredet, not a TF OD API field) bounds the candidates per image: the best
    (anchor, class) pairs above ``score_threshold`` enter NMS, so its cost does not grow with
    ``A * K``. ``use_class_agnostic_nms`` keeps each anchor's best class only
    (``max_classes_per_detection: 1``, the only value supported).
    """

    def __init__(
        self,
        score_threshold: float = 0.0,
        iou_threshold: float = 0.6,
        max_detections_per_class: int = 100,
        max_total_detections: int = 100,
        use_class_agnostic_nms: bool = False,
        max_classes_per_detection: int = 1,
        soft_nms_sigma: float = 0.0,
        use_static_shapes: bool = False,
        use_partitioned_nms: bool = False,
        use_combined_nms: bool = False,
        change_coordinate_frame: bool = True,
        use_hard_nms: bool = False,
        use_cpu_nms: bool = False,
        pre_nms_top_k: int = 1000,
    ) -> None:
        # use_static_shapes .. use_cpu_nms choose among TF implementations of the same result; outputs
        # here are always padded to max_total_detections, so they change nothing.
        if soft_nms_sigma != 0.0:
            raise ValueError("soft_nms_sigma: soft NMS is unsupported; remove it")
        if not 0.0 <= iou_threshold <= 1.0:
            raise ValueError(f"iou_threshold must be in [0, 1], got {iou_threshold}")
        if use_class_agnostic_nms and max_classes_per_detection != 1:
            raise ValueError("raredet supports max_classes_per_detection: 1 only with "
                             f"use_class_agnostic_nms, got {max_classes_per_detection}")
        self.score_threshold = score_threshold
        self.iou_threshold = iou_threshold
        self.max_detections_per_class = max_detections_per_class
        self.max_total_detections = max_total_detections
        self.use_class_agnostic_nms = use_class_agnostic_nms
        self.pre_nms_top_k = pre_nms_top_k

    def __call__(self, boxes: Tensor, scores: Tensor) -> dict[str, Tensor]:
        """``boxes [B, A, 4]`` (or ``[B, A, K, 4]``, a box per class) xyxy, ``scores [B, A, K]`` ->
        padded detections (see ``SSD.postprocess``)."""
        cand_boxes, cand_scores, cand_classes = self._candidates(boxes, scores)
        valid = cand_scores > self.score_threshold
        cand_boxes, cand_scores, cand_classes, valid = _past_last_valid_dropped(
            cand_boxes, cand_scores, cand_classes, valid)
        groups = torch.zeros_like(cand_classes) if self.use_class_agnostic_nms else cand_classes
        keep = nms_mask(cand_boxes, groups, valid, self.iou_threshold)
        keep &= rank_within_group(keep, groups) < self.max_detections_per_class
        return self._pad(cand_boxes, cand_scores, cand_classes, keep)

    def _candidates(self, boxes: Tensor, scores: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Top candidates per image, sorted by score: boxes ``[B, C, 4]``, scores ``[B, C]``, classes."""
        num_classes = scores.shape[-1]
        if self.use_class_agnostic_nms:
            flat_scores, classes = scores.max(dim=-1)  # [B, A]
        else:
            flat_scores = scores.flatten(1)  # [B, A * K], anchor-major
        k = min(self.pre_nms_top_k, flat_scores.shape[1])
        top_scores, top_idx = flat_scores.topk(k, dim=1, sorted=True)
        if self.use_class_agnostic_nms:
            anchor_idx, top_classes = top_idx, classes.gather(1, top_idx)
        else:
            anchor_idx, top_classes = top_idx // num_classes, top_idx % num_classes
        if boxes.dim() == 4:  # a box per class (Faster R-CNN's second stage): [B, A, K, 4]
            flat = boxes.flatten(1, 2)
            top_boxes = flat.gather(1, (anchor_idx * num_classes + top_classes)[..., None].expand(-1, -1, 4))
        else:
            top_boxes = boxes.gather(1, anchor_idx[..., None].expand(-1, -1, 4))
        return top_boxes, top_scores, top_classes

    def _pad(self, boxes: Tensor, scores: Tensor, classes: Tensor, keep: Tensor) -> dict[str, Tensor]:
        """Move kept candidates (already in score order) first and pad to ``max_total_detections``."""
        d = self.max_total_detections
        order = (~keep).to(torch.uint8).argsort(dim=1, stable=True)[:, :d]  # kept first, order preserved
        kept = keep.gather(1, order)
        pad = d - order.shape[1]
        out_boxes = torch.where(kept[..., None], boxes.gather(1, order[..., None].expand(-1, -1, 4)), 0.0)
        out_scores = torch.where(kept, scores.gather(1, order), 0.0)
        out_classes = torch.where(kept, classes.gather(1, order), 0)
        return {
            "detection_boxes": F.pad(out_boxes, (0, 0, 0, pad)),
            "detection_scores": F.pad(out_scores, (0, pad)),
            "detection_classes": F.pad(out_classes, (0, pad)),
            "num_detections": kept.sum(dim=1),
        }


def rank_within_group(keep: Tensor, groups: Tensor) -> Tensor:
    """Kept entries of the same group ranked above each entry: ``keep, groups [B, N]`` -> ``[B, N]``."""
    n = keep.shape[-1]
    earlier = torch.ones(n, n, dtype=torch.bool, device=keep.device).tril(diagonal=-1)
    same = (groups[:, :, None] == groups[:, None, :]) & earlier & keep[:, None, :]
    return same.sum(dim=-1)
