"""A user module as a config names it: registers a class-weighted sigmoid cross-entropy."""

import torch
import torch.nn.functional as F

from raredet.losses import register_classification_loss, register_localization_loss

CLASS_WEIGHTS = torch.tensor([1.0, 4.0, 0.5])


@register_classification_loss("class_weighted_sigmoid")
def class_weighted_sigmoid(logits, targets, weights):
    """Sigmoid CE where each anchor is weighted by its target class (background anchors keep 1)."""
    is_positive = targets.sum(-1, keepdim=True) > 0
    target_class = targets.argmax(-1, keepdim=True)
    per_anchor = torch.where(
        is_positive, CLASS_WEIGHTS.to(logits)[target_class], torch.ones_like(weights[..., :1])
    )
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="none") * weights * per_anchor


@register_classification_loss("plain_softmax", background_column=True)
def plain_softmax(logits, targets, weights):
    """Softmax cross-entropy written out; asks DetectionLoss for the background column."""
    return -(targets * torch.log_softmax(logits, -1)).sum(-1) * weights.mean(-1)


@register_localization_loss("center_distance", decoded_boxes=True)
def center_distance(pred, target, weights):
    """Squared distance between box centres (on decoded xyxy boxes)."""
    centre = lambda b: (b[..., :2] + b[..., 2:]) / 2  # noqa: E731
    return ((centre(pred) - centre(target)) ** 2).sum(-1) * weights
