"""The Faster R-CNN loss: both stages, the TF OD API's balanced sampler and normalisation.

First stage (class-agnostic), per image: anchors are matched to the ground truth by IoU
(``>= 0.7`` object, ``< 0.3`` background, in between ignored; every box also gets its best anchor),
then ``balanced_sample`` draws ``first_stage_minibatch_size`` anchors with at most
``first_stage_positive_balance_fraction`` of them objects. Objectness: softmax cross-entropy over
(background, object); box: Huber (delta 1) on the codes of object anchors. Each image's sums are
divided by its number of sampled anchors (at least 1) and the images averaged.

Second stage, per image: valid proposals are matched by IoU (``>= 0.5`` the box's class, else
background), ``second_stage_batch_size`` of them sampled with at most
``second_stage_balance_fraction`` positives; softmax cross-entropy over the ``K + 1`` logits
(or the Seesaw loss), Huber on the codes of the target class (of the one shared box). Normalised
the same way, by the number of sampled proposals.

raredet's levers (docs/architecture.md, "Class weighting semantics"), second stage only, since the first stage
has no classes: a proposal matched to a box of class ``c`` with data weight ``d`` weighs ``d * w_c``
in the classification loss and ``d * w_c`` (``d`` without ``apply_to_localization``) in the box
loss; background proposals weigh 1. A box with ``d = 0`` is ignored in both stages (its anchors and
proposals are not sampled), as in the TF OD API. The normalisers are counts, as in the TF OD API.
Averaging over the images of each rank and DDP's gradient averaging over ranks give the mean over
the global batch when every rank has the same batch size.

Mask R-CNN (the outputs have ``mask_logits``, the model's training forward with a mask head): the
mask loss of ``losses.mask`` on the same sampled proposals, against the batch's instance ``masks [B, N,
H, W]``, times ``second_stage_mask_prediction_loss_weight``. In evaluation mode the model predicts masks
for its detections only, and no mask loss is computed (the TF OD API computes one on the detections).

Returned terms: ``rpn_objectness_loss``, ``rpn_localization_loss``, ``box_classifier_loss``,
``box_localization_loss`` (each times its configured weight), ``mask_loss`` (Mask R-CNN in training),
``classification_loss`` (objectness + box classifier), ``localization_loss`` (both stages) and
``total_loss`` (all of them, the mask loss included).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from raredet.errors import DataError
from raredet.losses.localization import weighted_smooth_l1
from raredet.losses.mask import mask_loss
from raredet.modeling.box_coder import FasterRcnnBoxCoder
from raredet.modeling.box_ops import box_iou
from raredet.modeling.mask_head import mask_targets
from raredet.modeling.matcher import ArgMaxMatcher
from raredet.modeling.sampling import (
    FIRST_STAGE,
    PROPOSAL_MATCHER,
    SECOND_STAGE,
    GroundTruth,
    assign_proposals,
    balanced_sample,
    batch_sampling_seeds,
    ground_truth,
    random_keys,
)


def seesaw_cross_entropy(logits: Tensor, labels: Tensor, class_counts: Tensor, p: float = 0.8, q: float = 2.0,
                         eps: float = 1e-2) -> Tensor:
    """Softmax Seesaw loss (Wang et al. 2021) per row: ``logits [N, K + 1]`` (background first),
    ``labels [N]`` in ``0..K`` (0 = background), ``class_counts [K]`` cumulative positives -> ``[N]``.

    For a row of foreground class ``i`` the logit of every other foreground class ``j`` is raised by
    ``log(M_ij C_ij)``: ``M_ij = min(1, (N_j / N_i)^p)``, ``C_ij = max(1, (sigma_j / sigma_i)^q)``
    (``sigma`` the softmax, without gradient). Background rows and the background column are
    unchanged, so with all factors 1 this is the plain softmax cross-entropy."""
    k = logits.shape[-1] - 1
    fg = labels.clamp(min=1) - 1  # [N], the row's class index among the K foreground classes
    counts = class_counts.to(logits).clamp(min=1.0)
    mitigation = (counts[None, :] / counts[fg][:, None]).pow(p).clamp(max=1.0)  # [N, K]
    probs = torch.softmax(logits.detach(), dim=-1)[:, 1:]
    own = probs.gather(1, fg[:, None]).clamp(min=eps)
    compensation = (probs / own).pow(q).clamp(min=1.0)
    factor = mitigation * compensation
    factor = torch.where(F.one_hot(fg, k).bool(), torch.ones_like(factor), factor)  # the own column: 1
    factor = torch.where((labels > 0)[:, None], factor, torch.ones_like(factor))  # background rows: 1
    adjusted = torch.cat([logits[:, :1], logits[:, 1:] + factor.log()], dim=-1)
    return F.cross_entropy(adjusted, labels, reduction="none")


class SecondStageSample(NamedTuple):
    """The second stage's draw, shared by its box and mask losses; each ``[B, P]``."""

    cls_target: Tensor  # 0..K (0 background), -1 invalid proposal
    gt_boxes: Tensor  # [B, P, 4] the matched box
    data_w: Tensor  # the matched box's data weight (1 for background)
    class_w: Tensor  # w_c of the matched box's class (1 for background)
    sampled: Tensor  # float 0/1


class FasterRcnnLoss:
    """Both stages' losses (module docstring); keyword arguments as the TF OD API fields.

    ``class_weights [K]`` (None = all 1); ``seesaw`` None or ``{"p", "q", "eps"}``; ``logit_scale``
    of the second-stage softmax."""

    def __init__(
        self,
        *,
        num_classes: int,
        first_stage_minibatch_size: int = 256,
        first_stage_positive_balance_fraction: float = 0.5,
        first_stage_localization_loss_weight: float = 1.0,
        first_stage_objectness_loss_weight: float = 1.0,
        second_stage_batch_size: int = 64,
        second_stage_balance_fraction: float = 0.25,
        second_stage_localization_loss_weight: float = 1.0,
        second_stage_classification_loss_weight: float = 1.0,
        class_weights: Tensor | None = None,
        apply_to_localization: bool = True,
        logit_scale: float = 1.0,
        seesaw: Mapping[str, float] | None = None,
        second_stage_mask_prediction_loss_weight: float = 1.0,
    ) -> None:
        for name, value in (("first_stage_positive_balance_fraction", first_stage_positive_balance_fraction),
                            ("second_stage_balance_fraction", second_stage_balance_fraction)):
            if not 0.0 < value <= 1.0:
                raise ValueError(f"{name} must be in (0, 1], got {value}")
        if class_weights is not None and class_weights.shape != (num_classes,):
            raise ValueError(f"class_weights has shape {tuple(class_weights.shape)}, "
                             f"expected [{num_classes}]")
        self.num_classes = num_classes
        self.rpn_batch, self.rpn_fraction = first_stage_minibatch_size, first_stage_positive_balance_fraction
        self.rpn_loc_weight = first_stage_localization_loss_weight
        self.rpn_obj_weight = first_stage_objectness_loss_weight
        self.box_batch, self.box_fraction = second_stage_batch_size, second_stage_balance_fraction
        self.box_loc_weight = second_stage_localization_loss_weight
        self.box_cls_weight = second_stage_classification_loss_weight
        self.mask_weight = second_stage_mask_prediction_loss_weight
        self.class_weights, self.apply_to_localization = class_weights, apply_to_localization
        self.logit_scale, self.seesaw = logit_scale, dict(seesaw) if seesaw is not None else None
        self.box_coder = FasterRcnnBoxCoder()
        self.rpn_matcher = ArgMaxMatcher(0.7, 0.3, force_match_for_each_row=True)
        # Seesaw's cumulative positives per class: state training depends on, which the engine saves
        # and restores through `state_dict` / `load_state_dict`.
        self.seesaw_counts = torch.zeros(num_classes, dtype=torch.float64)

    def state_dict(self) -> dict[str, Any]:
        """The Seesaw counts (the engine saves them in each checkpoint under ``loss``); {} without Seesaw."""
        return {"seesaw_counts": self.seesaw_counts.clone()} if self.seesaw is not None else {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore ``state_dict()``'s counts; ValueError when Seesaw is on and they are missing or
        have another number of classes."""
        if self.seesaw is None:
            return
        counts = state.get("seesaw_counts")
        if counts is None:
            raise ValueError("the checkpoint has no Seesaw counts (it was trained without "
                             "model.faster_rcnn.second_stage_seesaw_loss)")
        if tuple(counts.shape) != (self.num_classes,):
            raise ValueError(f"the checkpoint's Seesaw counts are for {tuple(counts.shape)} classes, "
                             f"the model has {self.num_classes}")
        self.seesaw_counts = counts.to(torch.float64).clone()

    def __call__(self, outputs: Mapping[str, Tensor], batch: Mapping[str, Any]) -> dict[str, Tensor]:
        gt = ground_truth(batch, outputs["cls_logits"].device)
        if gt[1].numel() and int(gt[1].max()) >= self.num_classes:
            raise DataError(f"a box has class index {int(gt[1].max())} but the model has "
                            f"{self.num_classes} classes; check the label map against the records")
        seeds = batch_sampling_seeds(batch)
        rpn_obj, rpn_loc = self.first_stage(outputs, gt, seeds)
        sample = self.second_stage_sample(outputs, gt, seeds)
        box_cls, box_loc = self.second_stage(outputs, gt, seeds, sample)
        out = {
            "rpn_objectness_loss": self.rpn_obj_weight * rpn_obj,
            "rpn_localization_loss": self.rpn_loc_weight * rpn_loc,
            "box_classifier_loss": self.box_cls_weight * box_cls,
            "box_localization_loss": self.box_loc_weight * box_loc,
        }
        out["classification_loss"] = out["rpn_objectness_loss"] + out["box_classifier_loss"]
        out["localization_loss"] = out["rpn_localization_loss"] + out["box_localization_loss"]
        out["total_loss"] = out["classification_loss"] + out["localization_loss"]
        if "mask_logits" in outputs:
            out["mask_loss"] = self.mask_weight * self.mask_stage(outputs, batch, gt, sample)
            out["total_loss"] = out["total_loss"] + out["mask_loss"]
        return out

    def first_stage(self, outputs: Mapping[str, Tensor], gt: GroundTruth, seeds: Tensor | None = None
                    ) -> tuple[Tensor, Tensor]:
        """-> (objectness loss, localization loss), each normalised, before the loss weights.
        ``seeds [B]``: per-image sampling seeds (``random_keys``; None: the global generator)."""
        boxes, labels, weights = gt
        anchors = outputs["anchors"].to(boxes)
        valid_gt = labels >= 0
        match = self.rpn_matcher(box_iou(boxes, anchors[None]), valid_gt)  # [B, A]
        idx = match.clamp(min=0)
        matched = match >= 0
        data_w = torch.where(matched, weights.gather(1, idx), 1.0)
        eligible = (match != -2) & outputs["anchor_valid"][None] & (data_w > 0)
        keys = random_keys(eligible, seeds, FIRST_STAGE)
        sampled = balanced_sample(eligible, matched, self.rpn_batch, self.rpn_fraction, keys).to(boxes.dtype)
        normaliser = sampled.sum(1).clamp(min=1.0)  # [B]
        targets = F.one_hot(matched.long(), 2).to(boxes.dtype)
        obj = -(targets * F.log_softmax(outputs["rpn_objectness"].float(), dim=-1)).sum(-1)  # [B, A]
        obj = obj * sampled * data_w
        gt_boxes = boxes.gather(1, idx[..., None].expand(-1, -1, 4))
        codes = self.box_coder.encode(gt_boxes, anchors[None])
        loc = weighted_smooth_l1(outputs["rpn_box_deltas"].float(), codes, sampled * matched * data_w)
        return (obj.sum(1) / normaliser).mean(), (loc.sum(1) / normaliser).mean()

    def assign_proposals(self, proposals: Tensor, proposal_valid: Tensor, gt: GroundTruth
                         ) -> tuple[Tensor, Tensor, Tensor]:
        """``assign_proposals`` (module function)."""
        return assign_proposals(proposals, proposal_valid, gt)

    def second_stage_sample(self, outputs: Mapping[str, Tensor], gt: GroundTruth, seeds: Tensor | None = None
                            ) -> SecondStageSample:
        """The proposals' targets and the balanced draw of ``second_stage_batch_size`` of them.
        ``seeds [B]``: as ``first_stage``."""
        proposals = outputs["proposals"].to(gt[0])
        cls_target, gt_boxes, data_w = self.assign_proposals(proposals, outputs["proposal_valid"], gt)
        positive = cls_target > 0
        eligible = (cls_target >= 0) & (data_w > 0)
        keys = random_keys(eligible, seeds, SECOND_STAGE)
        sampled = balanced_sample(eligible, positive, self.box_batch, self.box_fraction, keys)
        class_w = torch.ones_like(data_w)
        if self.class_weights is not None:
            table = self.class_weights.to(data_w)
            class_w = torch.where(positive, table[(cls_target - 1).clamp(min=0)], 1.0)
        return SecondStageSample(cls_target, gt_boxes, data_w, class_w, sampled.to(proposals.dtype))

    def second_stage(self, outputs: Mapping[str, Tensor], gt: GroundTruth, seeds: Tensor | None = None,
                     sample: SecondStageSample | None = None) -> tuple[Tensor, Tensor]:
        """-> (classification loss, localization loss), each normalised, before the loss weights.
        ``seeds [B]``: as ``first_stage``; ``sample``: ``second_stage_sample``'s (drawn here if None)."""
        proposals = outputs["proposals"].to(gt[0])
        if sample is None:
            sample = self.second_stage_sample(outputs, gt, seeds)
        cls_target, gt_boxes, data_w, class_w, sampled = sample
        positive = cls_target > 0
        normaliser = sampled.sum(1).clamp(min=1.0)
        cls_w = sampled * data_w * class_w
        loc_w = sampled * positive * data_w * (class_w if self.apply_to_localization else 1.0)
        logits = outputs["cls_logits"].float() / self.logit_scale
        target = cls_target.clamp(min=0)
        if self.seesaw is not None:
            self._count_positives(target[sampled.bool()])
            b, p, c = logits.shape
            ce = seesaw_cross_entropy(logits.reshape(b * p, c), target.reshape(-1), self.seesaw_counts,
                                      **self.seesaw).reshape(b, p)
        else:
            ce = F.cross_entropy(logits.transpose(1, 2), target, reduction="none")  # [B, P]
        deltas = outputs["box_deltas"].float()  # [B, P, 1 or K, 4]
        if deltas.shape[2] > 1:  # a box per class: the target class's (TF: the positive class's)
            pick = (target - 1).clamp(min=0)[..., None, None].expand(-1, -1, 1, 4)
            deltas = deltas.gather(2, pick)
        codes = self.box_coder.encode(gt_boxes, proposals)
        loc = weighted_smooth_l1(deltas[:, :, 0], codes, loc_w)
        return ((ce * cls_w).sum(1) / normaliser).mean(), (loc.sum(1) / normaliser).mean()

    def mask_stage(self, outputs: Mapping[str, Tensor], batch: Mapping[str, Any], gt: GroundTruth,
                   sample: SecondStageSample) -> Tensor:
        """The mask loss (``losses.mask``) of the sampled positive proposals, before its loss weight:
        targets cropped from ``batch["masks"] [B, N, H, W]`` (the instances of ``boxes``, at the
        padded input's size)."""
        masks = batch.get("masks")
        proposals = outputs["proposals"].to(gt[0])
        if not isinstance(masks, Tensor):
            raise DataError("Mask R-CNN trains on instance masks but the batch has none; set "
                            "load_instance_masks: true in train_input_reader (records with masks)")
        size = tuple(int(s) for s in outputs["input_size"])
        if tuple(masks.shape[-2:]) != size or masks.shape[:2] != batch["boxes"].shape[:2]:
            raise DataError(f"the batch's instance masks are {tuple(masks.shape)}; expected [B, N, H, W] "
                            f"with the boxes' B, N = {tuple(batch['boxes'].shape[:2])} and the input's "
                            f"H, W = {size}")
        if masks.shape[1] == 0:  # no box in the batch: ground_truth's padding row has an empty mask
            masks = masks.new_zeros(masks.shape[0], 1, *size)
        boxes, labels, _ = gt
        match = PROPOSAL_MATCHER(box_iou(boxes, proposals), labels >= 0).clamp(min=0)  # assign_proposals'
        logits = outputs["mask_logits"]
        targets = mask_targets(masks.to(proposals.device), match, proposals,
                               (int(logits.shape[-2]), int(logits.shape[-1])))
        carries = sample.sampled * (sample.cls_target > 0)
        return mask_loss(logits, sample.cls_target.clamp(min=0), targets,
                         carries * sample.data_w * sample.class_w, carries * sample.data_w)

    def _count_positives(self, sampled_targets: Tensor) -> None:
        """Add this step's sampled positives per class (over all ranks) to the Seesaw counts."""
        fg = sampled_targets[sampled_targets > 0] - 1
        step = torch.bincount(fg, minlength=self.num_classes).to(torch.float64)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(step)
        self.seesaw_counts = self.seesaw_counts.to(step.device) + step
