"""Mask R-CNN's mask loss by hand: sigmoid cross-entropy on the ground-truth class's channel, weighted
d * w_c per proposal, normalised by the sum of d times the mask's pixels (the TF OD API's); and through
FasterRcnnLoss with the second stage's class weights and second_stage_mask_prediction_loss_weight."""

from __future__ import annotations

import math

import pytest
import torch

from raredet.errors import DataError
from raredet.losses.faster_rcnn import FasterRcnnLoss
from raredet.losses.mask import mask_loss, sigmoid_cross_entropy

LN2, LN3 = math.log(2.0), math.log(3.0)


def test_sigmoid_cross_entropy_by_hand():
    logits = torch.tensor([0.0, LN3, -LN3])
    targets = torch.tensor([1.0, 0.5, 1.0])
    # sigmoid(ln 3) = 3/4: -0.5 ln(3/4) - 0.5 ln(1/4); sigmoid(-ln 3) = 1/4: -ln(1/4)
    expected = [LN2, 0.5 * math.log(16 / 3), math.log(4.0)]
    assert sigmoid_cross_entropy(logits, targets).tolist() == pytest.approx(expected)


def _two_by_two_case() -> tuple[torch.Tensor, ...]:
    """B = 1, three proposals, K = 2 classes, 2x2 masks. Proposal 0: class 2 (target 2), proposal 1:
    class 1, proposal 2: background. The channels a proposal must not read hold 50 (a wrong pick shows)."""
    logits = torch.full((1, 3, 2, 2, 2), 50.0)
    logits[0, 0, 1] = torch.tensor([[0.0, 0.0], [LN3, -LN3]])  # class 2's channel
    logits[0, 1, 0] = 0.0  # class 1's channel
    targets = torch.zeros(1, 3, 2, 2)
    targets[0, 0] = torch.tensor([[1.0, 0.0], [0.5, 1.0]])
    targets[0, 1] = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    cls_target = torch.tensor([[2, 1, 0]])
    return logits, cls_target, targets


def test_mask_loss_2x2_with_class_weights_by_hand():
    logits, cls_target, targets = _two_by_two_case()
    # proposal 0: d = 1, w_2 = 3; proposal 1: d = 0.5, w_1 = 1; proposal 2 (background): no loss
    weights = torch.tensor([[1.0 * 3.0, 0.5 * 1.0, 0.0]])
    normaliser_weights = torch.tensor([[1.0, 0.5, 0.0]])
    loss = mask_loss(logits, cls_target, targets, weights, normaliser_weights)
    ce0 = LN2 + LN2 + 0.5 * math.log(16 / 3) + math.log(4.0)  # the 4 pixels of proposal 0
    ce1 = 4 * LN2  # logit 0 on every pixel: ln 2 whatever the target
    # normaliser: (1 + 0.5) * 2 * 2 pixels; class weights not in it
    assert loss.item() == pytest.approx((3.0 * ce0 + 0.5 * ce1) / (1.5 * 4))


def test_mask_loss_class_agnostic_reads_the_one_channel_and_normaliser_is_at_least_1():
    logits = torch.zeros(1, 1, 1, 2, 2)
    targets = torch.ones(1, 1, 2, 2)
    # 0.1 * 4 pixels = 0.4 < 1: the normaliser is 1
    loss = mask_loss(logits, torch.tensor([[3]]), targets, torch.tensor([[0.1]]), torch.tensor([[0.1]]))
    assert loss.item() == pytest.approx(0.1 * 4 * LN2 / 1.0)


def _outputs(mask_logits: torch.Tensor) -> dict[str, torch.Tensor]:
    """Hand-made Faster R-CNN outputs on a 2x2 image: one anchor, proposals (0) the whole image and (1)
    a sliver (IoU 0.0025 with it: background)."""
    return {
        "anchors": torch.tensor([[0.0, 0.0, 2.0, 2.0]]), "anchor_valid": torch.tensor([True]),
        "rpn_objectness": torch.zeros(1, 1, 2), "rpn_box_deltas": torch.zeros(1, 1, 4),
        "proposals": torch.tensor([[[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 0.1, 0.1]]]),
        "proposal_valid": torch.tensor([[True, True]]), "cls_logits": torch.zeros(1, 2, 3),
        "box_deltas": torch.zeros(1, 2, 1, 4), "mask_logits": mask_logits, "input_size": torch.tensor([2, 2]),
    }


def test_faster_rcnn_loss_mask_term_with_class_weights_and_loss_weight():
    # one box of class index 1 (w = 3), data weight 0.5, covering the 2x2 image; its mask [[1, 0], [0, 1]].
    # The whole-image proposal crops the mask at y, x = 0, 1 (pixel centres): the target is the mask.
    batch = {"boxes": torch.tensor([[[0.0, 0.0, 2.0, 2.0]]]), "labels": torch.tensor([[1]]),
             "weights": torch.tensor([[0.5]]), "masks": torch.tensor([[[[1, 0], [0, 1]]]], dtype=torch.uint8)}
    mask_logits = torch.full((1, 2, 2, 2, 2), 50.0)
    mask_logits[0, 0, 1] = torch.tensor([[LN3, LN3], [0.0, -LN3]])  # class index 1's channel
    loss = FasterRcnnLoss(num_classes=2, second_stage_batch_size=2, second_stage_balance_fraction=1.0,
                          class_weights=torch.tensor([1.0, 3.0]),
                          second_stage_mask_prediction_loss_weight=4.0)
    out = loss(_outputs(mask_logits), batch)
    # pixels: t=1, x=ln3 -> -ln(3/4); t=0, x=ln3 -> -ln(1/4); t=0, x=0 -> ln2; t=1, x=-ln3 -> -ln(1/4)
    ce = -math.log(0.75) + math.log(4.0) + LN2 + math.log(4.0)
    expected = 4.0 * (0.5 * 3.0 * ce) / (0.5 * 4)  # weight d w_c; normaliser d * 4 pixels
    assert out["mask_loss"].item() == pytest.approx(expected, rel=1e-5)
    others = ("classification_loss", "localization_loss", "mask_loss")
    assert out["total_loss"].item() == pytest.approx(sum(out[k].item() for k in others))


def test_faster_rcnn_loss_without_masks_in_the_batch_names_the_reader_field():
    batch = {"boxes": torch.tensor([[[0.0, 0.0, 2.0, 2.0]]]), "labels": torch.tensor([[1]]),
             "weights": torch.tensor([[1.0]])}
    loss = FasterRcnnLoss(num_classes=2)
    with pytest.raises(DataError, match="load_instance_masks: true"):
        loss(_outputs(torch.zeros(1, 2, 2, 2, 2)), batch)
