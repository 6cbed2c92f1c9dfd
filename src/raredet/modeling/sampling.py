"""Faster R-CNN's sampling: the TF OD API's balanced sampler, the second-stage target assigner and
minibatch, each image's random stream, and the ground truth of a collated batch.

The model (``modeling.faster_rcnn``: the second stage runs on a sampled minibatch in training) and
the loss (``losses.faster_rcnn``) both draw with these, so they live here, below both.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from raredet.modeling.box_ops import box_iou
from raredet.modeling.matcher import ArgMaxMatcher

# Sampling sites, each with its own random stream per image (`random_keys`).
FIRST_STAGE, PROPOSALS, SECOND_STAGE = 0, 1, 2


def random_keys(like: Tensor, seeds: Tensor | None, site: int) -> Tensor:
    """Uniform keys shaped as ``like [B, N]`` (on its device) for one sampling site. With ``seeds [B]``
    (the engine's ``sampling_seeds``: one per image of the global batch, from (seed, step, image
    index)), row ``b`` comes from its own generator seeded by ``(seeds[b], site)``, so it does not
    depend on which rank holds the image or on what else was drawn; without them, from the global
    generator."""
    b, n = like.shape
    if seeds is None:
        return torch.rand((b, n), device=like.device)
    if seeds.shape != (b,):
        raise ValueError(f"sampling_seeds has shape {tuple(seeds.shape)}, expected [{b}]")
    # One generator per image (a handful per step), each drawing all of its row at once.
    rows = [torch.rand(n, generator=torch.Generator().manual_seed(int(s) * 4 + site)) for s in seeds.tolist()]
    return torch.stack(rows).to(like.device) if rows else torch.zeros((b, n), device=like.device)


def balanced_sample(eligible: Tensor, positive: Tensor, batch_size: int, positive_fraction: float,
                    keys: Tensor | None = None) -> Tensor:
    """The TF OD API's ``BalancedPositiveNegativeSampler``, per row: at most
    ``int(positive_fraction * batch_size)`` random eligible positives, then random eligible negatives
    up to ``batch_size`` in all. ``eligible, positive [B, N]`` bool -> sampled ``[B, N]`` bool.
    ``keys [B, N]`` in [0, 1) order the draw (the lowest first; default: the global generator)."""
    pos = eligible & positive
    neg = eligible & ~positive
    if keys is None:
        keys = torch.rand(eligible.shape, device=eligible.device)
    pos_rank = keys.masked_fill(~pos, 2.0).argsort(1).argsort(1)
    take_pos = pos & (pos_rank < int(positive_fraction * batch_size))
    num_neg = batch_size - take_pos.sum(1, keepdim=True)
    neg_rank = keys.masked_fill(~neg, 2.0).argsort(1).argsort(1)
    return take_pos | (neg & (neg_rank < num_neg))


# The TF OD API's second-stage target assigner: IoU >= 0.5 matches, everything else is background.
PROPOSAL_MATCHER = ArgMaxMatcher(0.5, 0.5)

GroundTruth = tuple[Tensor, Tensor, Tensor]  # boxes [B, N, 4], labels [B, N] (-1 padding), weights [B, N]


def assign_proposals(
    proposals: Tensor, proposal_valid: Tensor, gt: GroundTruth
) -> tuple[Tensor, Tensor, Tensor]:
    """Second-stage targets: ``proposals [B, P, 4]`` -> class target ``[B, P]`` in ``0..K`` (0 =
    background, ``-1`` = invalid proposal), matched box ``[B, P, 4]``, data weight ``[B, P]`` (1 for
    background)."""
    boxes, labels, weights = gt
    match = PROPOSAL_MATCHER(box_iou(boxes, proposals), labels >= 0)  # [B, P]
    idx = match.clamp(min=0)
    matched = match >= 0
    cls_target = torch.where(matched, labels.gather(1, idx) + 1, 0)
    cls_target = torch.where(proposal_valid, cls_target, -1)
    data_w = torch.where(matched, weights.gather(1, idx), 1.0)
    return cls_target, boxes.gather(1, idx[..., None].expand(-1, -1, 4)), data_w


def sample_proposals(proposals: Tensor, proposal_valid: Tensor, gt: GroundTruth, batch_size: int,
                     positive_fraction: float, seeds: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The TF OD API's second-stage minibatch: ``balanced_sample`` of the valid proposals, moved to the
    front -> ``[B, S, 4]`` proposals and ``[B, S]`` validity, ``S = min(batch_size, P)``. Sampling it
    again (the loss does) keeps every proposal: it has at most the positives and the size allowed.
    ``seeds [B]``: per-image sampling seeds (``random_keys``)."""
    target, _, data_w = assign_proposals(proposals, proposal_valid, gt)
    keys = random_keys(target, seeds, PROPOSALS)
    sampled = balanced_sample((target >= 0) & (data_w > 0), target > 0, batch_size, positive_fraction, keys)
    size = min(batch_size, proposals.shape[1])
    order = (~sampled).to(torch.uint8).argsort(dim=1, stable=True)[:, :size]  # sampled first, in order
    return proposals.gather(1, order[..., None].expand(-1, -1, 4)), sampled.gather(1, order)


def batch_sampling_seeds(batch: Mapping[str, Any]) -> Tensor | None:
    """The batch's per-image ``sampling_seeds [B]`` (the training loop adds them), else None."""
    seeds = batch.get("sampling_seeds")
    return seeds if isinstance(seeds, Tensor) else None


def ground_truth(batch: Mapping[str, Any], device: torch.device) -> GroundTruth:
    """``boxes``, ``labels``, ``weights`` of a collated batch on ``device`` (one padding row when no
    image has a box, so that gathers stay valid)."""
    boxes = batch["boxes"].to(device, torch.float32)
    labels = batch["labels"].to(device)
    weights = batch["weights"].to(device, torch.float32)
    if boxes.shape[1] == 0:
        boxes = boxes.new_zeros(boxes.shape[0], 1, 4)
        labels = labels.new_full((labels.shape[0], 1), -1)
        weights = weights.new_zeros(weights.shape[0], 1)
    return boxes, labels, weights
