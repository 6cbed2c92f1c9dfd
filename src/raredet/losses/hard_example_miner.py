"""Online hard example mining with the TF OD API's algorithm (SSD, Liu et al. 2016; OHEM).

Per image: rank the anchors by loss (`loss_type` BOTH: `cls_loss_weight * cls + loc_loss_weight * loc`),
run non-maximum suppression on their decoded predicted boxes with those losses as scores, keep at most
`num_hard_examples`; then, if `max_negatives_per_positive > 0`, keep every positive of that selection
and its highest-loss negatives, at most `max(min_negatives_per_image,
max_negatives_per_positive * num_positives)` of them. Anchors in the matcher's ignore band are never
mined (they take no part in the NMS). Unlike the TF OD API, raredet lets this run with focal loss:
it then ranks focal losses.

All images are mined at once with the batched greedy NMS of `modeling.postprocess`, over blocks of
candidates in loss order that stop once every image has `num_hard_examples` survivors.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import torch
from torch import Tensor

from raredet.modeling.box_ops import box_iou
from raredet.modeling.matcher import IGNORE
from raredet.modeling.postprocess import nms_mask

LOSS_TYPES = ("BOTH", "CLASSIFICATION", "LOCALIZATION")  # the proto enum names, as builders pass them
# Candidates per NMS block (see `_nms_select`); a block costs B * NMS_BLOCK² IoU entries.
NMS_BLOCK = 512


class MinedLosses(NamedTuple):
    """What the miner kept: summed losses (scalars), counts `[B]` and the selection mask `[B, A]`."""

    localization_loss: Tensor
    classification_loss: Tensor
    num_positives: Tensor
    num_negatives: Tensor
    selected: Tensor


class HardExampleMiner:
    """TF OD API hard example miner; keyword arguments named as its proto fields (0 = unlimited)."""

    def __init__(
        self,
        num_hard_examples: int | None = 64,
        iou_threshold: float = 0.7,
        loss_type: str = "BOTH",
        cls_loss_weight: float = 0.05,
        loc_loss_weight: float = 0.06,
        max_negatives_per_positive: int | None = 0,
        min_negatives_per_image: int = 0,
    ) -> None:
        if loss_type not in LOSS_TYPES:
            raise ValueError(
                f"loss_type: unknown {loss_type!r}; valid: {', '.join(LOSS_TYPES)}"
            )
        if min_negatives_per_image < 0:
            raise ValueError(
                f"min_negatives_per_image must be >= 0, got {min_negatives_per_image}"
            )
        self.num_hard_examples = num_hard_examples or None  # 0 / None: every anchor may be kept
        self.iou_threshold = iou_threshold
        self.loss_type = loss_type
        self.cls_loss_weight = cls_loss_weight
        self.loc_loss_weight = loc_loss_weight
        self.max_negatives_per_positive = max_negatives_per_positive or None
        self.min_negatives_per_image = min_negatives_per_image

    def __call__(
        self, location_losses: Tensor, cls_losses: Tensor, boxes: Tensor, match: Tensor | None = None
    ) -> MinedLosses:
        """Mine per image.

        `location_losses [B, A]`, `cls_losses [B, A]` (or `[B, A, K]`, summed over classes; already
        weighted per anchor), `boxes [B, A, 4]` decoded predictions (xyxy), `match [B, A]` (>= 0
        matched, -1 background, -2 ignored). Without `match` (as the TF OD API allows) every anchor
        counts as a negative candidate and no ratio is enforced.
        """
        if cls_losses.dim() == 3:
            cls_losses = cls_losses.sum(-1)
        enforce_ratio = self.max_negatives_per_positive is not None and match is not None
        if match is None:
            match = torch.full_like(location_losses, -1, dtype=torch.int64)
        scores = self._ranking_losses(location_losses, cls_losses).detach()
        selected = self._nms_select(boxes.detach(), scores, match != IGNORE)
        positives = selected & (match >= 0)
        negatives = selected & (match < 0)
        if enforce_ratio:
            negatives = self._cap_negatives(negatives, scores, positives.sum(1))
        selected = positives | negatives
        return MinedLosses(
            localization_loss=(location_losses * selected).sum(),
            classification_loss=(cls_losses * selected).sum(),
            num_positives=positives.sum(1),
            num_negatives=negatives.sum(1),
            selected=selected,
        )

    def _ranking_losses(self, location_losses: Tensor, cls_losses: Tensor) -> Tensor:
        if self.loss_type == "CLASSIFICATION":
            return cls_losses
        if self.loss_type == "LOCALIZATION":
            return location_losses
        return self.cls_loss_weight * cls_losses + self.loc_loss_weight * location_losses

    def _nms_select(self, boxes: Tensor, scores: Tensor, eligible: Tensor) -> Tensor:
        """Greedy NMS per image, up to `num_hard_examples` survivors -> mask `[B, A]`.

        Candidates go through in blocks in descending loss order: a block's boxes are first
        suppressed by the survivors of earlier blocks, then by each other (batched greedy NMS). This
        is exactly greedy NMS, stops as soon as every image has its survivors, and keeps memory at
        `B * block * survivors` even when `num_hard_examples` is 0 (all anchors).
        """
        limit = self.num_hard_examples or scores.shape[1]
        scores = scores.masked_fill(~eligible, float("-inf"))
        selected = torch.zeros_like(eligible)
        kept_boxes = boxes.new_zeros(boxes.shape[0], 0, 4)
        kept_valid = eligible.new_zeros(boxes.shape[0], 0)
        num_kept = torch.zeros(boxes.shape[0], dtype=torch.int64, device=boxes.device)
        for block, finite in _blocks_by_score(scores, min(NMS_BLOCK, max(2 * limit, 64))):  # not anchors
            block_boxes = boxes.gather(1, block[..., None].expand(-1, -1, 4))
            alive = finite & (num_kept < limit)[:, None]
            if not bool(alive.any()):
                break
            earlier = (box_iou(block_boxes, kept_boxes) > self.iou_threshold) & kept_valid[:, None, :]
            keep = nms_mask(
                block_boxes, torch.zeros_like(block), alive & ~earlier.any(-1), self.iou_threshold
            )
            keep &= num_kept[:, None] + keep.cumsum(1) <= limit  # columns are in descending loss order
            selected |= torch.zeros_like(selected).scatter(1, block, keep)  # a masked repeat adds nothing
            kept_boxes, kept_valid = _append_survivors(kept_boxes, kept_valid, block_boxes, keep)
            num_kept += keep.sum(1)
        return selected

    def _cap_negatives(self, negatives: Tensor, scores: Tensor, num_positives: Tensor) -> Tensor:
        """Keep the highest-loss negatives, at most max(min_neg, ratio * num_pos) per image."""
        assert self.max_negatives_per_positive is not None
        cap = torch.clamp(self.max_negatives_per_positive * num_positives, min=self.min_negatives_per_image)
        # Only the (few) selected negatives need ranking: top-n of the masked scores, n the largest count.
        n = int(negatives.sum(1).max())
        _, order = scores.masked_fill(~negatives, float("-inf")).topk(n, dim=1)
        in_order = negatives.gather(1, order)
        keep_in_order = in_order & (in_order.cumsum(1) <= cap[:, None])
        return torch.zeros_like(negatives).scatter(1, order, keep_in_order)


def _blocks_by_score(scores: Tensor, size: int) -> Iterator[tuple[Tensor, Tensor]]:
    """(anchor indices `[B, size]`, finite-score mask `[B, size]`) in descending score order, block
    after block.

    The first block comes from `topk`; the full sort runs only if a second block is needed, with the
    first block's anchors masked to -inf: one may come again, but then marked not finite.
    """
    first = scores.topk(min(size, scores.shape[1]), dim=1).indices
    yield first, torch.isfinite(scores.gather(1, first))
    if scores.shape[1] > size:
        rest_scores = scores.scatter(1, first, float("-inf"))
        rest = rest_scores.argsort(dim=1, descending=True, stable=True)[:, : scores.shape[1] - size]
        for block in rest.split(size, dim=1):
            yield block, torch.isfinite(rest_scores.gather(1, block))


def _append_survivors(
    kept_boxes: Tensor, kept_valid: Tensor, block_boxes: Tensor, keep: Tensor
) -> tuple[Tensor, Tensor]:
    """Add a block's survivors (`keep [B, S]`) to `kept_boxes [B, M, 4]`, padded to the longest image."""
    front = keep.to(torch.int8).argsort(dim=1, descending=True, stable=True)[:, : int(keep.sum(1).max())]
    new_boxes = block_boxes.gather(1, front[..., None].expand(-1, -1, 4))
    return torch.cat([kept_boxes, new_boxes], 1), torch.cat([kept_valid, keep.gather(1, front)], 1)
