"""The SSD detection loss: assignment -> per-anchor weights -> losses -> miner -> normalisation.

Per-anchor weights (docs/architecture.md, "Class weighting semantics"), `w_c` the class weight,
`d` the matched box's data weight:
    matched to a box of class c   classification d * w_c, localization d * w_c (d if not
                                  `apply_to_localization`)
    background                    classification `negative_class_weight`, localization 0
    ignore band                   0, 0
The normaliser is the TF OD API's: the sum of `d` over matched anchors, at least 1, with no class
weight in it. Under torch.distributed it is summed over ranks and divided by the world size, so
gradient averaging over DDP ranks equals one process on the global batch.

Softmax losses see `K + 1` columns, background first: a constant zero logit is prepended (the
post-processing's SOFTMAX converter does the same) and unmatched anchors target that column.

Order, as the TF OD API's SSD: weights -> optional `random_example_sampler` (every positive, random
negatives up to `(1 - f) / f` per positive, per image) -> losses -> optional hard example miner on
the per-anchor losses -> sums / normaliser -> `classification_weight`, `localization_weight`.
Logged per class (detached, local to the rank): matched anchors, and the share of the positive
classification loss (over the miner's selection when there is one).

A pair-aware classification loss (`seesaw_sigmoid_focal`, `confusion_gated_focal`, `equalized_focal`)
takes its running statistics from `classification_statistics` (`raredet.losses.pair_aware`), which this
object owns: updated on training calls only (gradients enabled and the logits require them; the
evaluation runs under no_grad), logged per class as `class_balance/<name>` `[K]` entries of the result
(identical on every rank), saved and restored through `state_dict` / `load_state_dict`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from raredet.errors import DataError
from raredet.losses.classification import weighted_logits_softmax, weighted_softmax
from raredet.losses.hard_example_miner import HardExampleMiner
from raredet.losses.localization import weighted_giou, weighted_iou
from raredet.losses.pair_aware import LossStatistics, statistics_for
from raredet.modeling.box_ops import box_iou

# Losses that need the background column, and losses computed on decoded boxes instead of codes.
SOFTMAX_LOSSES: frozenset[Callable[..., Tensor]] = frozenset({weighted_softmax, weighted_logits_softmax})
DECODED_BOX_LOSSES: frozenset[Callable[..., Tensor]] = frozenset({weighted_iou, weighted_giou})


class Targets(NamedTuple):
    """Per-anchor assignment, all `[B, A]` except `boxes [B, A, 4]`."""

    match: Tensor  # >= 0 matched box, -1 background, -2 ignored
    labels: Tensor  # class index of the matched box, -1 when not matched
    boxes: Tensor  # matched ground-truth box (xyxy); the anchor itself when not matched
    data_weights: Tensor  # matched box's data weight, 0 when not matched


class DetectionLoss:
    """SSD/RetinaNet loss with raredet's class weighting; keyword arguments as the TF OD API fields.

    `class_weights [K]` (None = all 1), `positive_sample_fraction` is `random_example_sampler`'s
    field (None = no sampling), `hard_example_miner` a `HardExampleMiner` or None.
    `classification_statistics`: the state of a pair-aware classification loss (required with one;
    `raredet.losses.pair_aware.statistics_for(loss, num_classes, ...)` makes it).
    """

    def __init__(
        self,
        *,
        matcher: Callable[[Tensor, Tensor], Tensor],
        box_coder: Any,
        classification_loss: Callable[..., Tensor],
        localization_loss: Callable[..., Tensor],
        similarity: Callable[[Tensor, Tensor], Tensor] = box_iou,
        classification_loss_params: Mapping[str, Any] | None = None,
        localization_loss_params: Mapping[str, Any] | None = None,
        class_weights: Tensor | None = None,
        apply_to_localization: bool = True,
        negative_class_weight: float = 1.0,
        hard_example_miner: HardExampleMiner | None = None,
        positive_sample_fraction: float | None = None,
        normalize_loss_by_num_matches: bool = False,
        normalize_loc_loss_by_codesize: bool = False,
        classification_weight: float = 1.0,
        localization_weight: float = 1.0,
        classification_statistics: LossStatistics | None = None,
    ) -> None:
        if positive_sample_fraction is not None and not 0 < positive_sample_fraction <= 1:
            raise ValueError(f"positive_sample_fraction must be in (0, 1], got {positive_sample_fraction}")
        self.matcher, self.box_coder, self.similarity = matcher, box_coder, similarity
        self.classification_loss, self.localization_loss = classification_loss, localization_loss
        self.classification_loss_params = dict(classification_loss_params or {})
        self.localization_loss_params = dict(localization_loss_params or {})
        self.class_weights = class_weights
        self.apply_to_localization = apply_to_localization
        self.negative_class_weight = negative_class_weight
        self.hard_example_miner = hard_example_miner
        self.positive_sample_fraction = positive_sample_fraction
        self.normalize_loss_by_num_matches = normalize_loss_by_num_matches
        self.normalize_loc_loss_by_codesize = normalize_loc_loss_by_codesize
        self.classification_weight = classification_weight
        self.localization_weight = localization_weight
        if classification_statistics is None and statistics_for(classification_loss, 1) is not None:
            raise ValueError(f"{classification_loss.__name__} keeps running statistics: pass "
                             "classification_statistics=raredet.losses.pair_aware.statistics_for(...)")
        self.classification_statistics = classification_statistics

    def __call__(self, outputs: Mapping[str, Tensor], batch: Mapping[str, Any]) -> dict[str, Tensor]:
        """`outputs`: the SSD forward dict; `batch`: the collated batch (`boxes`, `labels`, `weights`)."""
        logits, deltas, anchors = outputs["cls_logits"], outputs["box_deltas"], outputs["anchors"]
        _check_labels(batch["labels"], logits.shape[-1])
        targets = self.assign(anchors, batch, logits.device)
        cls_w, loc_w = self.anchor_weights(targets, logits.shape[-1], logits.dtype)
        if self.positive_sample_fraction is not None:
            sampled = self._random_sample(cls_w > 0, targets.match >= 0)
            cls_w, loc_w = cls_w * sampled[..., None], loc_w * sampled
            targets = targets._replace(data_weights=targets.data_weights * sampled)
        cls_losses = self._classification_losses(logits, targets.labels, cls_w)  # [B, A]
        decoded = self.box_coder.decode(deltas, anchors)  # [B, A, 4], for IoU losses and the miner
        loc_losses = self._localization_losses(deltas, decoded, anchors, targets.boxes, loc_w)  # [B, A]
        loc_sum, cls_sum, selected, mined_counts = self._reduce(
            loc_losses, cls_losses, decoded, targets.match
        )
        result = self._normalise(loc_sum, cls_sum, targets.data_weights)
        result.update(self._per_class(cls_losses, targets.labels, selected, logits.shape[-1]))
        result.update({k: v.to(logits.dtype) for k, v in mined_counts.items()})
        if self.classification_statistics is not None:
            logged = self.classification_statistics.logged(self.classification_loss_params)
            result.update({f"class_balance/{k}": v.detach() for k, v in logged.items()})
        return result

    def state_dict(self) -> dict[str, Any]:
        """The running statistics of the classification loss (empty without them), for checkpoints."""
        if self.classification_statistics is None:
            return {}
        return {"classification_statistics": self.classification_statistics.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore `state_dict()`'s output; ValueError when it belongs to another loss setup."""
        stats = self.classification_statistics
        saved = state.get("classification_statistics")
        if stats is None and saved is None:
            return
        if stats is None or saved is None:
            has, hasnt = ("has", "has not") if saved is not None else ("has not", "has")
            raise ValueError(f"the saved loss state {has} running statistics but this classification "
                             f"loss {hasnt}: the classification loss changed since the checkpoint")
        stats.load_state_dict(saved)

    def _reduce(
        self, loc_losses: Tensor, cls_losses: Tensor, decoded: Tensor, match: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, dict[str, Tensor]]:
        """Sum the per-anchor losses `[B, A]`, over the miner's selection when there is a miner.

        Returns (localization sum, classification sum, selection mask `[B, A]`, mined counts)."""
        if self.hard_example_miner is None:
            return loc_losses.sum(), cls_losses.sum(), torch.ones_like(match, dtype=torch.bool), {}
        mined = self.hard_example_miner(loc_losses, cls_losses, decoded, match)
        counts = {
            "mined_num_positives": mined.num_positives.sum(),
            "mined_num_negatives": mined.num_negatives.sum(),
        }
        return mined.localization_loss, mined.classification_loss, mined.selected, counts

    def assign(self, anchors: Tensor, batch: Mapping[str, Any], device: torch.device) -> Targets:
        """Match each anchor `[A, 4]` to the padded ground truth `boxes [B, N, 4]`, `labels [B, N]`."""
        boxes = batch["boxes"].to(device, torch.float32)
        labels = batch["labels"].to(device)
        weights = batch["weights"].to(device, torch.float32)
        if boxes.shape[1] == 0:  # no image has a box: one padding row keeps the gathers below valid
            boxes, labels, weights = (
                boxes.new_zeros(boxes.shape[0], 1, 4),
                labels.new_full((labels.shape[0], 1), -1),
                weights.new_zeros(weights.shape[0], 1),
            )
        valid = labels >= 0
        match = self.matcher(self.similarity(boxes, anchors.to(boxes)[None]), valid)  # [B, A]
        matched = match >= 0
        idx = match.clamp(min=0)
        gt_boxes = boxes.gather(1, idx[..., None].expand(-1, -1, 4))
        return Targets(
            match=match,
            labels=torch.where(matched, labels.gather(1, idx), -1),
            boxes=torch.where(matched[..., None], gt_boxes, anchors.to(boxes)[None]),
            data_weights=torch.where(matched, weights.gather(1, idx), 0.0),
        )

    def anchor_weights(self, targets: Targets, num_classes: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """Classification weights `[B, A, 1]` and localization weights `[B, A]` (module docstring)."""
        matched = targets.match >= 0
        class_w = torch.ones_like(targets.data_weights, dtype=dtype)
        if self.class_weights is not None:
            if self.class_weights.shape != (num_classes,):
                raise ValueError(
                    f"class_weights has shape {tuple(self.class_weights.shape)}, expected [{num_classes}]"
                )
            table = self.class_weights.to(class_w)
            class_w = torch.where(matched, table[targets.labels.clamp(min=0)], 1.0)
        positive_w = targets.data_weights * class_w
        background = targets.match == -1
        cls_w = torch.where(matched, positive_w, torch.where(background, self.negative_class_weight, 0.0))
        loc_w = positive_w if self.apply_to_localization else targets.data_weights
        return cls_w[..., None].to(dtype), loc_w.to(dtype)

    def _random_sample(self, eligible: Tensor, positive: Tensor) -> Tensor:
        """TF OD API `random_example_sampler`: every eligible positive, then random negatives up to
        `(1 - f) / f` per positive, per image. `eligible`, `positive` `[B, A]` bool -> float `[B, A]`."""
        eligible = eligible.squeeze(-1)
        positive = positive & eligible
        negative = eligible & ~positive
        fraction = self.positive_sample_fraction
        assert fraction is not None
        max_neg = ((1 - fraction) / fraction * positive.sum(1).to(torch.float32)).floor()  # [B]
        keys = torch.rand(negative.shape, device=negative.device).masked_fill(~negative, 2.0)
        rank = keys.argsort(1).argsort(1)  # rank of each anchor's random key within its image
        return (positive | (negative & (rank < max_neg[:, None]))).to(torch.float32)

    def _classification_losses(self, logits: Tensor, labels: Tensor, weights: Tensor) -> Tensor:
        """Per-anchor classification loss `[B, A]`, summed over the class columns."""
        num_classes = logits.shape[-1]
        onehot = F.one_hot(labels.clamp(min=0), num_classes).to(logits) * (labels >= 0)[..., None]
        if self.classification_loss in SOFTMAX_LOSSES or getattr(
            self.classification_loss, "background_column", False
        ):
            background = (labels < 0).to(logits)[..., None]
            logits = F.pad(logits, (1, 0))  # constant zero background logit, column 0
            onehot = torch.cat([background, onehot], dim=-1)
        params = self.classification_loss_params
        if self.classification_statistics is not None:
            training = torch.is_grad_enabled() and logits.requires_grad
            extra = self.classification_statistics.loss_arguments(logits, onehot, weights, params, training)
            params = {**params, **extra}
        losses = self.classification_loss(logits, onehot, weights, **params)
        return losses.sum(-1) if losses.dim() == 3 else losses

    def _localization_losses(
        self, deltas: Tensor, decoded: Tensor, anchors: Tensor, gt_boxes: Tensor, weights: Tensor
    ) -> Tensor:
        """Per-anchor localization loss `[B, A]` on codes, or on decoded boxes for IoU losses."""
        if self.localization_loss in DECODED_BOX_LOSSES or getattr(
            self.localization_loss, "decoded_boxes", False
        ):
            return self.localization_loss(decoded, gt_boxes, weights, **self.localization_loss_params)
        codes = self.box_coder.encode(gt_boxes, anchors[None].to(gt_boxes))
        return self.localization_loss(deltas, codes.to(deltas), weights, **self.localization_loss_params)

    def _normalise(self, loc_sum: Tensor, cls_sum: Tensor, data_weights: Tensor) -> dict[str, Tensor]:
        num_matches = (data_weights > 0).sum().to(cls_sum.dtype)
        normalizer = torch.ones((), dtype=cls_sum.dtype, device=cls_sum.device)
        if self.normalize_loss_by_num_matches:
            normalizer = _global_normalizer(data_weights.sum().to(cls_sum.dtype).detach())
        loc_normalizer = normalizer * (self.box_coder.code_size if self.normalize_loc_loss_by_codesize else 1)
        cls_loss, loc_loss = cls_sum / normalizer, loc_sum / loc_normalizer
        weighted_cls, weighted_loc = (
            self.classification_weight * cls_loss,
            self.localization_weight * loc_loss,
        )
        return {
            "classification_loss": cls_loss,
            "localization_loss": loc_loss,
            "weighted_classification_loss": weighted_cls,
            "weighted_localization_loss": weighted_loc,
            "total_loss": weighted_cls + weighted_loc,
            "num_matches": num_matches,
            "normalizer": normalizer,
        }

    @staticmethod
    def _per_class(
        cls_losses: Tensor, labels: Tensor, selected: Tensor, num_classes: int
    ) -> dict[str, Tensor]:
        """Matched-anchor count `[K]` and share of the positive classification loss `[K]`, detached."""
        matched = labels >= 0
        index = labels.clamp(min=0).flatten()
        counts = torch.zeros(num_classes, device=labels.device).index_add_(
            0, index, matched.flatten().to(torch.float32)
        )
        positive_loss = (cls_losses.detach() * (matched & selected)).flatten().to(torch.float32)
        per_class = torch.zeros(num_classes, device=labels.device).index_add_(0, index, positive_loss)
        total = per_class.sum()
        share = per_class / total if total > 0 else torch.zeros_like(per_class)
        return {"matched_anchors": counts, "positive_cls_loss_share": share}


def _check_labels(labels: Tensor, num_classes: int) -> None:
    """Labels are contiguous indices 0..K-1 (-1 = padding); anything else is a data/config mismatch."""
    if labels.numel() and (int(labels.max()) >= num_classes or int(labels.min()) < -1):
        raise DataError(
            f"batch labels span {int(labels.min())}..{int(labels.max())} but the model predicts "
            f"{num_classes} classes (indices 0..{num_classes - 1}, -1 = padding); make the label map "
            "and model.ssd.num_classes agree"
        )


def _global_normalizer(local: Tensor) -> Tensor:
    """Local sum of matched data weights -> normaliser (DETR style across DDP ranks), at least 1."""
    if dist.is_available() and dist.is_initialized():
        total = local.clone()
        dist.all_reduce(total)
        return total.clamp(min=1.0) / dist.get_world_size()
    return local.clamp(min=1.0)
