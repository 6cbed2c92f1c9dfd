"""CenterNet's loss: the penalty-reduced focal loss on the center heatmap, L1 on the box scale and offset
at each box's center pixel, and the further tasks' own losses; raredet's class weights on the heatmap.

As the TF OD API computes them (``CenterNetMetaArch.loss``), over the whole batch:

- ``object_center = object_center_loss_weight · Σ_outputs Σ_pixels Σ_k v_p ω_p FL(p, k) / (S · n)``,
  ``FL`` the elementwise ``penalty_reduced_logistic_focal``, ``v_p`` 1 inside the image (not in the
  batch's padding), ``S`` the number of feature outputs and ``n`` the number of boxes with a nonzero
  data weight in the batch (at least 1). ``ω_p`` is raredet's class weight (below), 1 without one.
- ``box/scale = task_loss_weight · scale_loss_weight · Σ_outputs Σ_boxes u_b (|Δh| + |Δw|) / (S · n)``,
  ``box/offset`` the same with the offset and ``offset_loss_weight``; ``u_b = d_b · w_c`` (``d_b`` the
  box's data weight, ``w_c`` its class weight; ``d_b`` alone with ``apply_to_localization: false``).

**Class weights on a heatmap** (docs/center_net.md): the pixel at the center of a box (``⌊center /
stride⌋``, the pixel whose target is 1 on its class channel, CenterNet's "positive") is the heatmap's
matched anchor. Its terms on all K channels weigh ``w_c`` (the largest when boxes of several classes
share the pixel; 0 when every box there has data weight 0: an ignore region). Every other pixel weighs
1. That is SSD's table (docs/architecture.md, "Class weighting semantics") with center pixels as the
matched anchors; the normaliser ``n`` does not contain the weights, so a weight moves its class's
scores (about ``log w_c`` on the logit, as for SSD) instead of cancelling out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import torch
from torch import Tensor

from raredet.modeling.center_net import BOX_OFFSET, BOX_SCALE, OBJECT_CENTER, unstack
from raredet.modeling.center_net_targets import box_targets, center_heatmap, center_pixels, valid_pixels

SIGMOID_CLIP = 1e-4  # the TF OD API's PenaltyReducedLogisticFocalLoss(sigmoid_clip_value=1e-4)


def penalty_reduced_logistic_focal(logits: Tensor, target: Tensor, alpha: float = 2.0,
                                   beta: float = 4.0) -> Tensor:
    """Equation (1) of Objects as Points, elementwise on any shape, never reduced:
    ``p = clip(sigmoid(logits), 1e-4, 1 - 1e-4)``; where ``target == 1``: ``-(1 - p)^alpha log p``;
    elsewhere ``-(1 - target)^beta p^alpha log(1 - p)``."""
    if alpha < 0 or beta < 0:
        raise ValueError(f"alpha and beta must be >= 0, got alpha={alpha}, beta={beta}")
    p = torch.sigmoid(logits).clamp(SIGMOID_CLIP, 1 - SIGMOID_CLIP)
    positive = (1 - p).pow(alpha) * torch.log(p)
    negative = (1 - target).pow(beta) * p.pow(alpha) * torch.log(1 - p)
    return -torch.where(target == 1.0, positive, negative)


def batch_targets(batch: Mapping[str, Any], device: torch.device) -> list[dict[str, Tensor]]:
    """The padded batch's ground truth as one dict per image (``CenterNetTask.loss``'s ``targets``):
    ``boxes``, ``labels``, ``weights``, ``image_size``, and per-instance ``masks`` / ``keypoints`` /
    ``keypoint_visibilities`` when the batch has them, cut to the image's boxes."""
    counts = batch["num_boxes"].tolist() if "num_boxes" in batch else None
    out = []
    for i in range(len(batch["boxes"])):
        n = counts[i] if counts is not None else int((batch["labels"][i] >= 0).sum())
        target = {"image_size": batch["image_sizes"][i].to(device)}
        for key in ("boxes", "labels", "weights", "masks", "keypoints", "keypoint_visibilities"):
            if key in batch:
                target[key] = batch[key][i][:n].to(device)
        out.append(target)
    return out


class TaskLoss(Protocol):
    """A further CenterNet task's loss (``CenterNetTask.loss``)."""

    def loss(self, predictions: dict[str, list[Tensor]], targets: Sequence[dict[str, Tensor]], stride: int
             ) -> dict[str, Tensor]: ...


class ObjectDetectionLoss:
    """The object-detection task's losses (module docstring). ``class_weights [K]`` or None (all 1)."""

    def __init__(self, num_classes: int, alpha: float = 2.0, beta: float = 4.0,
                 min_box_overlap_iou: float = 0.7, object_center_loss_weight: float = 1.0,
                 task_loss_weight: float = 1.0, scale_loss_weight: float = 0.1,
                 offset_loss_weight: float = 1.0, class_weights: Tensor | None = None,
                 apply_to_localization: bool = True) -> None:
        if class_weights is not None and class_weights.shape != (num_classes,):
            raise ValueError(f"class_weights: {tuple(class_weights.shape)} values for {num_classes} classes")
        self.num_classes = num_classes
        self.alpha, self.beta, self.min_iou = alpha, beta, min_box_overlap_iou
        self.center_weight, self.task_weight = object_center_loss_weight, task_loss_weight
        self.scale_weight, self.offset_weight = scale_loss_weight, offset_loss_weight
        self.class_weights = class_weights
        self.apply_to_localization = apply_to_localization

    def __call__(self, predictions: dict[str, list[Tensor]], targets: Sequence[dict[str, Tensor]],
                 stride: int) -> dict[str, Tensor]:
        heatmaps = predictions[OBJECT_CENTER]
        b, k, h, w = heatmaps[0].shape
        gt = _flatten(targets, heatmaps[0].device, stride)
        n = (gt["weights"] > 0).sum().clamp(min=1).to(heatmaps[0].dtype)
        class_w = self._class_weights(gt["labels"])
        target = center_heatmap(gt["boxes"], gt["image"], gt["labels"], gt["weights"], (b, k, h, w),
                                self.min_iou)
        pixel_w = self.pixel_weights(gt, class_w, (b, h, w))
        pixel_w = pixel_w * valid_pixels(torch.stack([t["image_size"] for t in targets]), stride, h, w)
        focal = [penalty_reduced_logistic_focal(m.float(), target, self.alpha, self.beta) for m in heatmaps]
        center = torch.stack([(f * pixel_w[:, None]).sum() for f in focal]).sum()
        y, x, size, offset = box_targets(gt["boxes"], h, w)
        box_w = gt["weights"] * (class_w if self.apply_to_localization else 1.0)
        flat = gt["image"] * h * w + y * w + x

        def l1(maps: list[Tensor], goal: Tensor) -> Tensor:
            at = [m.float().permute(0, 2, 3, 1).reshape(-1, 2)[flat] for m in maps]  # [N, 2] each
            return torch.stack([((p - goal).abs().sum(-1) * box_w).sum() for p in at]).sum()

        s = len(heatmaps)
        out = {
            OBJECT_CENTER: self.center_weight * center / (s * n),
            BOX_SCALE: self.task_weight * self.scale_weight * l1(predictions[BOX_SCALE], size) / (s * n),
            BOX_OFFSET: self.task_weight * self.offset_weight * l1(predictions[BOX_OFFSET], offset) / (s * n),
        }
        out.update(self._balance(heatmaps[-1].float(), target, pixel_w, gt["labels"]))
        return out

    def _class_weights(self, labels: Tensor) -> Tensor:
        if self.class_weights is None:
            return torch.ones(labels.shape, device=labels.device)
        return self.class_weights.to(labels.device)[labels]

    def pixel_weights(self, gt: Mapping[str, Tensor], class_w: Tensor, shape: tuple[int, int, int]) -> Tensor:
        """``ω [B, h, w]``: at each box's center pixel the largest ``w_c`` of the boxes there with a
        nonzero data weight (0 if none has one), elsewhere 1."""
        b, h, w = shape
        y, x = center_pixels(gt["boxes"], h, w)
        flat = gt["image"] * h * w + y * w + x
        at_center = torch.zeros(b * h * w, device=class_w.device)
        at_center.scatter_reduce_(0, flat, torch.where(gt["weights"] > 0, class_w, 0.0), reduce="amax")
        is_center = torch.zeros(b * h * w, dtype=torch.bool, device=class_w.device)
        is_center[flat] = True
        return torch.where(is_center, at_center, 1.0).view(b, h, w)

    def _balance(self, logits: Tensor, target: Tensor, pixel_w: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """Per class: the boxes (``matched_anchors``) and the share of the positive heatmap loss."""
        with torch.no_grad():
            positive = (penalty_reduced_logistic_focal(logits, target, self.alpha, self.beta)
                        * (target == 1.0) * pixel_w[:, None]).sum(dim=(0, 2, 3))
            counts = torch.bincount(labels, minlength=self.num_classes).to(logits.dtype)
        share = positive / positive.sum().clamp(min=1e-12)
        return {"matched_anchors": counts, "positive_cls_loss_share": share}


def _flatten(targets: Sequence[dict[str, Tensor]], device: torch.device, stride: int) -> dict[str, Tensor]:
    """Every image's boxes in one list: ``boxes [N, 4]`` in feature-map units, ``labels``, ``weights``
    (1 where the data gives none) and ``image`` (the image index) ``[N]``."""
    boxes = [t["boxes"].to(device, torch.float32).reshape(-1, 4) for t in targets]
    weights = [t["weights"].to(device, torch.float32) if "weights" in t else boxes[i].new_ones(len(boxes[i]))
               for i, t in enumerate(targets)]
    image = [torch.full((len(b),), i, dtype=torch.long, device=device) for i, b in enumerate(boxes)]
    labels = [t["labels"].to(device, torch.long) for t in targets]
    return {"boxes": torch.cat(boxes) / stride, "labels": torch.cat(labels), "weights": torch.cat(weights),
            "image": torch.cat(image)}


class CenterNetLoss:
    """The criterion: ``(outputs, batch) -> losses``. ``outputs`` are ``CenterNet.forward``'s; returns the
    object-detection terms (``object_center``, ``box/scale``, ``box/offset``), each further task's named
    terms, ``classification_loss`` (the heatmap), ``localization_loss`` (scale + offset), ``total_loss``
    (all of them) and the per-class ``matched_anchors`` and ``positive_cls_loss_share``."""

    def __init__(self, object_detection: ObjectDetectionLoss, tasks: Sequence[TaskLoss] = (),
                 stride: int = 4) -> None:
        self.object_detection = object_detection
        self.tasks = list(tasks)
        self.stride = stride

    def __call__(self, outputs: Mapping[str, Tensor], batch: Mapping[str, Any]) -> dict[str, Tensor]:
        predictions = unstack(outputs)
        targets = batch_targets(batch, outputs[OBJECT_CENTER].device)
        out = self.object_detection(predictions, targets, self.stride)
        terms = [out[OBJECT_CENTER], out[BOX_SCALE], out[BOX_OFFSET]]
        for task in self.tasks:
            extra = task.loss(predictions, targets, self.stride)
            out.update(extra)
            terms += list(extra.values())
        out["classification_loss"] = out[OBJECT_CENTER]
        out["localization_loss"] = out[BOX_SCALE] + out[BOX_OFFSET]
        out["total_loss"] = torch.stack(terms).sum()
        return out
