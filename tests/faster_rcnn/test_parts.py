"""Faster R-CNN parts against hand-computed values: grid anchors, crop_and_resize (TF semantics),
the balanced sampler's counts, second-stage assignment and the losses' normalisation."""

from __future__ import annotations

import math

import pytest
import torch

from raredet.losses.faster_rcnn import FasterRcnnLoss, seesaw_cross_entropy
from raredet.modeling.faster_rcnn import fpn_levels_of_boxes
from raredet.modeling.grid_anchors import GridAnchorGenerator
from raredet.modeling.roi_ops import crop_and_resize
from raredet.modeling.sampling import balanced_sample


def test_grid_anchors_by_hand():
    gen = GridAnchorGenerator(height=256, width=256, height_stride=16, width_stride=16,
                              scales=[0.5], aspect_ratios=[1.0, 4.0])
    anchors = gen((1, 2))
    # cell (0, 0) centred at (0, 0): ratio 1 -> 128 x 128; ratio 4 -> h 128/2 = 64, w 128*2 = 256
    expected = torch.tensor([[-64, -64, 64, 64], [-128, -32, 128, 32],
                             [-48, -64, 80, 64], [-112, -32, 144, 32]], dtype=torch.float32)
    assert torch.equal(anchors, expected)


def _ramp() -> torch.Tensor:
    """A 1-channel 3 x 4 map with value 10 y + x: bilinear interpolation of it is exactly 10 y + x."""
    y, x = torch.meshgrid(torch.arange(3.0), torch.arange(4.0), indexing="ij")
    return (10 * y + x)[None, None]


def test_crop_and_resize_matches_hand_bilinear():
    # box (y1, x1, y2, x2) = (0.25, 0, 0.75, 1/3), crop 3 on H=3, W=4:
    # y = 0.25*2 + i * 0.5*2/2 = 0.5, 1.0, 1.5 ; x = 0 + j * (1/3)*3/2 = 0, 0.5, 1.0
    boxes = torch.tensor([[[0.25, 0.0, 0.75, 1 / 3]]])
    crop = crop_and_resize(_ramp(), boxes, 3)[0, 0]
    ys, xs = torch.tensor([0.5, 1.0, 1.5]), torch.tensor([0.0, 0.5, 1.0])
    assert torch.allclose(crop, 10 * ys[:, None] + xs[None, :], atol=1e-5)


def test_crop_and_resize_non_linear_cell_and_extrapolation():
    fmap = torch.tensor([[[[0.0, 1.0], [2.0, 4.0]]]])
    # crop 1: the centre (0.5, 0.5) of the whole map: (0 + 1 + 2 + 4) / 4
    centre = crop_and_resize(fmap, torch.tensor([[[0.0, 0.0, 1.0, 1.0]]]), 1)
    assert centre.item() == pytest.approx(1.75)
    # a box reaching above the map: y = -1, 0, 1 (H=2 -> scale 1): the row at y = -1 is 0, not blended
    crop = crop_and_resize(fmap, torch.tensor([[[-1.0, 0.0, 1.0, 1.0]]]), 3)[0, 0]
    assert torch.equal(crop[0], torch.zeros(3))
    assert torch.allclose(crop[1], torch.tensor([0.0, 0.5, 1.0]))
    assert torch.allclose(crop[2], torch.tensor([2.0, 3.0, 4.0]))


def test_crop_and_resize_batches_boxes_per_image():
    fmaps = torch.cat([_ramp(), 100 + _ramp()])  # image 1 is image 0 plus 100
    boxes = torch.tensor([[[0.0, 0.0, 1.0, 1.0]], [[0.0, 0.0, 1.0, 1.0]]])
    crops = crop_and_resize(fmaps, boxes, 2)  # corners: 0, 3, 20, 23
    assert torch.equal(crops[0, 0], torch.tensor([[0.0, 3.0], [20.0, 23.0]]))
    assert torch.equal(crops[1, 0], torch.tensor([[100.0, 103.0], [120.0, 123.0]]))


@pytest.mark.parametrize(("positives", "negatives", "want_pos", "want_neg"),
                         [(10, 100, 4, 12), (2, 100, 2, 14), (1, 5, 1, 5), (0, 100, 0, 16)])
def test_balanced_sample_counts(positives, negatives, want_pos, want_neg):
    torch.manual_seed(0)
    n = positives + negatives + 7  # 7 ineligible entries, never sampled
    positive = torch.zeros(1, n, dtype=torch.bool)
    positive[0, :positives] = True
    eligible = torch.ones(1, n, dtype=torch.bool)
    eligible[0, -7:] = False
    positive[0, -3:] = True  # ineligible positives stay out too
    sampled = balanced_sample(eligible, positive, batch_size=16, positive_fraction=0.25)
    assert int((sampled & positive).sum()) == want_pos
    assert int((sampled & ~positive).sum()) == want_neg
    assert not sampled[0, -7:].any()


def _loss(**kwargs) -> FasterRcnnLoss:
    base = dict(num_classes=2, first_stage_minibatch_size=1000, second_stage_batch_size=1000,
                second_stage_balance_fraction=1.0, first_stage_positive_balance_fraction=1.0)
    return FasterRcnnLoss(**{**base, **kwargs})


GT = (torch.tensor([[[0.0, 0.0, 10.0, 12.0]]]), torch.tensor([[1]]), torch.tensor([[1.0]]))


def test_second_stage_assignment_by_hand():
    proposals = torch.tensor([[[0, 0, 10, 12], [0, 0, 10, 10], [0, 0, 10, 24], [0, 0, 10, 25.2],
                               [50, 50, 60, 60]]], dtype=torch.float32)
    valid = torch.tensor([[True, True, True, True, False]])
    target, _, data_w = _loss().assign_proposals(proposals, valid, GT)
    # IoUs with the box: 1, 100/120, 120/240 = 0.5 (matched: >= 0.5), 120/252 < 0.5, invalid
    assert target.tolist() == [[2, 2, 2, 0, -1]]  # class index 1 -> column 2 (background is 0)
    assert data_w.tolist() == [[1.0, 1.0, 1.0, 1.0, 1.0]]


def _second_stage_outputs(num_neg: int) -> dict[str, torch.Tensor]:
    """One positive proposal [0, 0, 10, 10] (IoU 100/120 with the box) and `num_neg` far negatives;
    zero logits and zero box codes."""
    props = torch.tensor([[0.0, 0.0, 10.0, 10.0]] + [[50.0, 50.0, 60.0, 60.0]] * num_neg)[None]
    p = props.shape[1]
    return {"proposals": props, "proposal_valid": torch.ones(1, p, dtype=torch.bool),
            "cls_logits": torch.zeros(1, p, 3), "box_deltas": torch.zeros(1, p, 2, 4)}


def test_second_stage_loss_normalisation_and_class_weight():
    out = _second_stage_outputs(num_neg=3)
    cls, loc = _loss(class_weights=torch.tensor([1.0, 3.0])).second_stage(out, GT)
    # zero logits: cross-entropy log 3 per proposal; the positive weighs 3; normaliser 4 sampled
    assert cls.item() == pytest.approx((3 + 3) * math.log(3) / 4, rel=1e-6)
    # codes of [0,0,10,12] from [0,0,10,10]: ty 0, tx 10*(6-5)/10 = 1, th 0, tw 5 log(1.2);
    # Huber(1) = 0.5, Huber(0.9116) = 0.5 * 0.9116^2; times class weight 3, over 4 sampled
    tw = 5 * math.log(1.2)
    assert loc.item() == pytest.approx(3 * (0.5 + 0.5 * tw**2) / 4, rel=1e-5)
    # apply_to_localization false: the box loss carries no class weight
    plain = _loss(class_weights=torch.tensor([1.0, 3.0]), apply_to_localization=False)
    _, loc_plain = plain.second_stage(out, GT)
    assert loc_plain.item() == pytest.approx((0.5 + 0.5 * tw**2) / 4, rel=1e-5)


def test_second_stage_data_weight_zero_ignores_the_box():
    out = _second_stage_outputs(num_neg=3)
    gt = (GT[0], GT[1], torch.tensor([[0.0]]))
    cls, loc = _loss().second_stage(out, gt)
    # the positive is not sampled: 3 negatives, log 3 each, over 3
    assert cls.item() == pytest.approx(math.log(3), rel=1e-6)
    assert loc.item() == 0.0


def test_first_stage_normalisation_by_sampled_anchors():
    anchors = torch.tensor([[0.0, 0.0, 10.0, 12.0], [0.0, 0.0, 10.0, 10.0], [100, 100, 110, 110],
                            [200, 200, 210, 210], [0, 0, 10, 11]])
    out = {"anchors": anchors, "anchor_valid": torch.tensor([True, True, True, True, False]),
           "rpn_objectness": torch.zeros(1, 5, 2), "rpn_box_deltas": torch.zeros(1, 5, 4)}
    obj, loc = _loss().first_stage(out, GT)
    # anchor 0: IoU 1 (object); anchor 1: 100/120 >= 0.7 (object); anchors 2, 3 background;
    # anchor 4 invalid. Zero logits: log 2 each, 4 sampled -> mean log 2.
    assert obj.item() == pytest.approx(math.log(2), rel=1e-6)
    tw = 5 * math.log(1.2)
    assert loc.item() == pytest.approx((0.5 + 0.5 * tw**2) / 4, rel=1e-5)


def test_seesaw_reduces_to_softmax_with_equal_counts_and_mitigates_rare_negatives():
    torch.manual_seed(0)
    logits = torch.randn(4, 4)
    labels = torch.tensor([0, 1, 2, 3])
    plain = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    # equal counts and logits where the own class dominates: every factor is 1
    dominant = logits.clone()
    dominant[torch.arange(4), labels] += 20
    same = seesaw_cross_entropy(dominant, labels, torch.tensor([5.0, 5.0, 5.0]))
    assert torch.allclose(same, torch.nn.functional.cross_entropy(dominant, labels, reduction="none"))
    # class 1 frequent (N=100), class 2 rare (N=1): for a class-1 row, column 2's logit drops by
    # p * log(100) (mitigation), q = 0 to leave compensation out
    row = torch.zeros(1, 4)
    got = seesaw_cross_entropy(row, torch.tensor([2]), torch.tensor([100.0, 1.0, 100.0]), p=0.8, q=0.0)
    # labels 2 = class index 1 (rare): mitigation on rows of rare classes is min(1, (N_j/N_i)^p) = 1
    assert got.item() == pytest.approx(math.log(4), rel=1e-6)
    got = seesaw_cross_entropy(row, torch.tensor([1]), torch.tensor([100.0, 1.0, 100.0]), p=0.8, q=0.0)
    m = (1 / 100) ** 0.8  # column of the rare class for a frequent-class row
    assert got.item() == pytest.approx(-math.log(1 / (1 + 1 + m + 1)), rel=1e-6)
    assert plain.shape == (4,)


def test_fpn_crop_levels_by_hand():
    # floor(log2(side / 224)) + num_levels - 2 with 4 maps: 111 -> -2 + 2 = 0, 113 -> -1 + 2 = 1,
    # 223 -> 1, 225 -> 0 + 2 = 2, 449 -> 1 + 2 = 3, 2000 -> clamped to 3, 10 -> clamped to 0
    sides = torch.tensor([111.0, 113.0, 223.0, 225.0, 449.0, 2000.0, 10.0])
    boxes = torch.stack([torch.zeros(7), torch.zeros(7), sides, sides], dim=-1)[None]
    assert fpn_levels_of_boxes(boxes, (640, 640), 4).tolist() == [[0, 1, 1, 2, 3, 3, 0]]


def test_fpn_levels_equal_tensorflows_at_the_boundaries():
    # TF 2.15.1's object_detection.utils.ops.fpn_feature_levels(5, 3, sqrt(640 * 480) / 224, boxes) on
    # square s x s px boxes normalised to a 640 x 480 image (run 2026-12-07): the levels printed below
    sides = [16, 55.9, 56, 56.1, 100, 111.9, 112, 112.1, 224, 300, 447, 448, 449, 600]
    tf_levels = [0, 0, 1, 1, 1, 1, 2, 2, 3, 3, 3, 4, 4, 4]
    boxes = torch.tensor([[[0.0, 0.0, s, s] for s in sides]])
    assert fpn_levels_of_boxes(boxes, (640, 480), 5).tolist() == [tf_levels]


def test_second_stage_minibatch_is_sampled_before_the_crops():
    from raredet.modeling.sampling import sample_proposals

    torch.manual_seed(0)
    positives = torch.tensor([[0.0, 0.0, 10.0, 12.0]]).repeat(10, 1)  # IoU 1 with the box
    negatives = torch.tensor([[50.0, 50.0, 60.0, 60.0]]).repeat(50, 1)
    invalid = torch.zeros(3, 4)
    proposals = torch.cat([positives, negatives, invalid])[None]
    valid = torch.tensor([[True] * 60 + [False] * 3])
    sampled, sampled_valid = sample_proposals(proposals, valid, GT, batch_size=16, positive_fraction=0.25)
    assert sampled.shape == (1, 16, 4) and sampled_valid.all()
    # int(0.25 * 16) = 4 positives, 12 negatives, none of the invalid ones
    assert int((sampled[0, :, 2] == 10).sum()) == 4 and int((sampled[0, :, 2] == 60).sum()) == 12
    # the loss samples the sampled set again and keeps all of it: normaliser 16
    out = {"proposals": sampled, "proposal_valid": sampled_valid, "cls_logits": torch.zeros(1, 16, 3),
           "box_deltas": torch.zeros(1, 16, 1, 4)}
    cls, _ = _loss(second_stage_batch_size=16, second_stage_balance_fraction=0.25).second_stage(out, GT)
    assert cls.item() == pytest.approx(math.log(3), rel=1e-6)
    # fewer proposals than the batch size: all of them, padding marked invalid
    few, few_valid = sample_proposals(proposals[:, 58:], valid[:, 58:], GT, batch_size=16,
                                      positive_fraction=0.25)
    assert few.shape == (1, 5, 4) and few_valid.tolist() == [[True, True, False, False, False]]


def test_sampling_draws_per_image_whatever_the_split():
    """The engine's per-image seeds (seed, step, index in the global batch) give each image the same
    keys whether one process holds the batch of 4 or two processes 2 images each; the sites differ."""
    from raredet.engine.train import sampling_seeds
    from raredet.modeling.sampling import FIRST_STAGE, PROPOSALS, random_keys

    whole = sampling_seeds(7, 3, rank=0, count=4)
    halves = torch.cat([sampling_seeds(7, 3, rank=r, count=2) for r in (0, 1)])
    assert torch.equal(whole, halves) and len(set(whole.tolist())) == 4
    assert not torch.equal(whole, sampling_seeds(7, 4, rank=0, count=4))  # the next step draws anew
    keys = random_keys(torch.zeros(4, 50), whole, FIRST_STAGE)
    split = torch.cat([random_keys(torch.zeros(2, 50), whole[:2], FIRST_STAGE),
                       random_keys(torch.zeros(2, 50), whole[2:], FIRST_STAGE)])
    assert torch.equal(keys, split)
    torch.rand(10)  # the global generator plays no part
    assert torch.equal(keys, random_keys(torch.zeros(4, 50), whole, FIRST_STAGE))
    assert not torch.equal(keys, random_keys(torch.zeros(4, 50), whole, PROPOSALS))
    eligible, positive = torch.ones(4, 50, dtype=torch.bool), torch.arange(50).expand(4, 50) < 10
    sampled = balanced_sample(eligible, positive, 8, 0.5, keys)
    assert sampled.sum(1).tolist() == [8] * 4 and (sampled & positive).sum(1).tolist() == [4] * 4
    # keys order the draw: the 4 positives and 4 negatives with the lowest keys
    for row in range(4):
        want_pos = keys[row, :10].argsort()[:4]
        want_neg = keys[row, 10:].argsort()[:4] + 10
        assert set(sampled[row].nonzero().flatten().tolist()) == set(want_pos.tolist() + want_neg.tolist())


def test_matmul_crop_and_resize_blends_the_edge_with_zeros():
    # the TF OD API's matmul_crop_and_resize (multilevel_roi_align, align_corners): a neighbour outside
    # the map is 0 and the others keep their weights; tf.image.crop_and_resize zeroes the whole sample
    fmap = torch.tensor([[[[0.0, 1.0], [2.0, 4.0]]]])
    boxes = torch.tensor([[[-0.5, 0.0, 1.0, 1.0]]])  # y = -0.5, 0.25, 1 (H=2, crop 3); x = 0, 0.5, 1
    crop = crop_and_resize(fmap, boxes, 3, matmul=True)[0, 0]
    # y = -0.5: half of row 0 (0, 0.5, 1) and half of the zero row above it
    assert torch.allclose(crop[0], torch.tensor([0.0, 0.25, 0.5]))
    # y = 0.25: 0.75 row 0 + 0.25 row 1 = (0.5, 1.125, 1.75)
    assert torch.allclose(crop[1], torch.tensor([0.5, 1.125, 1.75]))
    assert torch.allclose(crop[2], torch.tensor([2.0, 3.0, 4.0]))
    assert torch.equal(crop_and_resize(fmap, boxes, 3)[0, 0, 0], torch.zeros(3))
    # a box ending a rounding error past the last row: its last sample is that row, not 0
    past = torch.tensor([[[0.0, 0.0, 1.0 + 1e-6, 1.0]]])
    assert torch.allclose(crop_and_resize(fmap, past, 2, matmul=True)[0, 0, 1], torch.tensor([2.0, 4.0]),
                          atol=1e-5)
    assert torch.equal(crop_and_resize(fmap, past, 2)[0, 0, 1], torch.zeros(2))
