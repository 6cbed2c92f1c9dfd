"""Mask R-CNN's mask loss, as the TF OD API's Faster R-CNN computes it (``_loss_box_classifier``'s mask
part), with raredet's class weights.

Per pixel: sigmoid cross-entropy (``WeightedSigmoidClassificationLoss``) between the mask logit of the
proposal's ground-truth class (the one channel with ``masks_are_class_agnostic``) and the target, the
proposal's matched instance mask cropped at the proposal (``modeling.mask_head.mask_targets``; fractions
at the instance's edges). Only the sampled proposals matched to a box carry a loss.

Weights (docs/architecture.md, "Class weighting semantics"): a proposal matched to a box of class ``c``
with data weight ``d`` weighs ``d * w_c`` (``w_c`` the second stage's class weight; 1 without
``second_stage_class_weights``): the mask loss is a per-pixel classification of class ``c``'s instance,
so the class weight acts on it as on the box classifier, whatever ``apply_to_localization`` says.

Normaliser: the TF OD API's, ``max(sum of d over those proposals * mask_h * mask_w, 1)`` over the
whole batch (class weights are not in it); under torch.distributed summed over the ranks and divided by
the world size, so DDP's gradient average equals one process on the global batch. The loss is then
multiplied by ``second_stage_mask_prediction_loss_weight``.
"""

from __future__ import annotations

import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor


def sigmoid_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Elementwise ``-t log sigmoid(x) - (1 - t) log(1 - sigmoid(x))``, no reduction."""
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="none")


def class_mask_logits(mask_logits: Tensor, cls_target: Tensor) -> Tensor:
    """``mask_logits [B, P, K or 1, h, w]``, ``cls_target [B, P]`` in ``0..K`` (0 background) -> the
    logits of each proposal's class ``[B, P, h, w]`` (the only channel when there is one; background
    proposals take class 1's, which their zero weight ignores)."""
    if mask_logits.shape[2] == 1:
        return mask_logits[:, :, 0]
    index = (cls_target - 1).clamp(min=0)[:, :, None, None, None]
    index = index.expand(-1, -1, 1, *mask_logits.shape[-2:])
    return mask_logits.gather(2, index)[:, :, 0]


def mask_loss(mask_logits: Tensor, cls_target: Tensor, targets: Tensor, weights: Tensor,
              normaliser_weights: Tensor) -> Tensor:
    """The normalised mask loss (module docstring), before the loss weight.

    ``mask_logits [B, P, K or 1, h, w]``; ``cls_target [B, P]`` in ``0..K``; ``targets [B, P, h, w]`` in
    [0, 1]; ``weights [B, P]`` each proposal's loss weight (``d * w_c``, 0 for proposals without a
    loss); ``normaliser_weights [B, P]`` what the normaliser sums (``d``, 0 likewise)."""
    h, w = mask_logits.shape[-2:]
    ce = sigmoid_cross_entropy(class_mask_logits(mask_logits.float(), cls_target), targets.float())
    total = (ce * weights[:, :, None, None]).sum()
    return total / _global_normaliser(normaliser_weights.sum() * (h * w))


def _global_normaliser(local: Tensor) -> Tensor:
    """The batch's normaliser, at least 1; across DDP ranks the mean of the ranks' sums."""
    if dist.is_available() and dist.is_initialized():
        total = local.detach().clone()
        dist.all_reduce(total)
        return total.clamp(min=1.0) / dist.get_world_size()
    return local.detach().clamp(min=1.0)

