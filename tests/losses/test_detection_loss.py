"""DetectionLoss: hand-computed totals and the proofs that the weights do what docs/architecture.md says."""

import math

import pytest
import torch
import torch.nn.functional as F

from raredet.errors import DataError
from raredet.losses import (
    DetectionLoss,
    HardExampleMiner,
    weighted_giou,
    weighted_sigmoid,
    weighted_sigmoid_focal,
    weighted_smooth_l1,
    weighted_softmax,
)
from raredet.modeling.box_coder import FasterRcnnBoxCoder
from raredet.modeling.matcher import ArgMaxMatcher

LN2, LN3 = math.log(2.0), math.log(3.0)
# anchor 0 equals the box below; anchor 1 has IoU 0.7 with it (ignore band of the matcher below);
# anchors 2 and 3 overlap nothing.
ANCHORS = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 7], [20, 20, 30, 30], [40, 40, 50, 50]])


def _loss(**kwargs):
    kwargs.setdefault("classification_loss", weighted_sigmoid)
    kwargs.setdefault("localization_loss", weighted_smooth_l1)
    return DetectionLoss(
        matcher=ArgMaxMatcher(matched_threshold=0.75, unmatched_threshold=0.5),
        box_coder=FasterRcnnBoxCoder(),
        **kwargs,
    )


def _outputs(logits, deltas, anchors=ANCHORS):
    return {"cls_logits": logits, "box_deltas": deltas, "anchors": anchors}


def _batch(boxes, labels, weights):
    return {"boxes": torch.tensor(boxes), "labels": torch.tensor(labels), "weights": torch.tensor(weights)}


ONE_BOX = _batch([[[0.0, 0, 10, 10]]], [[1]], [[1.0]])


def test_hand_computed_sigmoid_case():
    # logits 0: every entry costs log 2. Anchor 0 (class 1, weight 3) -> 2 columns * 3; anchors 2, 3
    # background (negative_class_weight 0.5) -> 2 * 2 columns * 0.5; anchor 1 ignored.
    # deltas of anchor 0: (0.5, 2, 0, 0) against target 0 -> smooth L1 0.125 + 1.5, times 3.
    deltas = torch.zeros(1, 4, 4)
    deltas[0, 0, :2] = torch.tensor([0.5, 2.0])
    loss = _loss(
        class_weights=torch.tensor([1.0, 3.0]),
        negative_class_weight=0.5,
        normalize_loss_by_num_matches=True,
        localization_weight=2.0,
    )
    out = loss(_outputs(torch.zeros(1, 4, 2), deltas), ONE_BOX)
    assert out["classification_loss"].item() == pytest.approx(6 * LN2 + 2 * LN2)
    assert out["localization_loss"].item() == pytest.approx(3 * 1.625)
    assert out["weighted_localization_loss"].item() == pytest.approx(2 * 3 * 1.625)
    assert out["total_loss"].item() == pytest.approx(8 * LN2 + 6 * 1.625)
    assert out["num_matches"].item() == 1
    assert out["matched_anchors"].tolist() == [0, 1]
    assert out["positive_cls_loss_share"].tolist() == [0, 1]


def test_hand_computed_softmax_case_adds_background_column():
    # K = 2 columns plus a zero background logit: logits 0 -> each anchor costs log 3.
    loss = _loss(classification_loss=weighted_softmax)
    out = loss(_outputs(torch.zeros(1, 4, 2), torch.zeros(1, 4, 4)), ONE_BOX)
    assert out["classification_loss"].item() == pytest.approx(3 * LN3)
    # A confident background prediction (foreground logits very low) costs ~0 on background anchors.
    logits = torch.full((1, 4, 2), -30.0)
    logits[0, 0, 1] = 30.0
    assert loss(_outputs(logits, torch.zeros(1, 4, 4)), ONE_BOX)["classification_loss"].item() < 1e-6


def _two_class_scene(seed=0):
    """Two images, boxes of classes 0 and 1, weights 1 and 0.5; anchors on a grid."""
    xs = torch.arange(0, 64, 8.0)
    grid = torch.stack(torch.meshgrid(xs, xs, indexing="xy"), -1).reshape(-1, 2)
    anchors = torch.cat([grid, grid + 16], -1)  # 64 anchors, 16x16
    batch = _batch(
        [
            [[0.0, 0, 16, 16], [24, 24, 40, 40], [0, 0, 0, 0]],
            [[8.0, 8, 24, 24], [40, 8, 56, 24], [48, 48, 64, 64]],
        ],
        [[0, 1, -1], [1, 0, 0]],
        [[1.0, 0.5, 0.0], [1.0, 1.0, 0.5]],
    )
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 64, 2, generator=g)
    deltas = torch.randn(2, 64, 4, generator=g) * 0.3
    return anchors, batch, logits, deltas


def _per_anchor_positive_terms(anchors, batch, logits, deltas, cls):
    """Independent per-anchor positive terms for class `cls`: anchors equal to a box of that class."""
    coder = FasterRcnnBoxCoder()
    cls_total, loc_total = 0.0, 0.0
    for b in range(2):
        for n in range(3):
            if batch["labels"][b, n] != cls:
                continue
            a = int((anchors == batch["boxes"][b, n]).all(1).nonzero())  # the exact-match anchor
            w = float(batch["weights"][b, n])
            onehot = F.one_hot(torch.tensor(cls), 2).float()
            cls_total += w * float(F.binary_cross_entropy_with_logits(logits[b, a], onehot, reduction="sum"))
            code = coder.encode(batch["boxes"][b, n], anchors[a])
            loc_total += w * float(F.smooth_l1_loss(deltas[b, a], code, reduction="sum", beta=1.0))
    return cls_total, loc_total


@pytest.mark.parametrize("apply_to_localization", [True, False])
def test_doubling_a_class_weight_doubles_exactly_its_positive_terms(apply_to_localization):
    anchors, batch, logits, deltas = _two_class_scene()
    # matched_threshold 0.99: only the exact-match anchor of each box is positive.
    kw = dict(normalize_loss_by_num_matches=True, apply_to_localization=apply_to_localization)
    matcher = ArgMaxMatcher(matched_threshold=0.99, unmatched_threshold=0.3)
    coder = FasterRcnnBoxCoder()

    def run(weights):
        return DetectionLoss(
            matcher=matcher,
            box_coder=coder,
            classification_loss=weighted_sigmoid,
            localization_loss=weighted_smooth_l1,
            class_weights=torch.tensor(weights),
            **kw,
        )(_outputs(logits, deltas, anchors), batch)

    base, doubled = run([1.0, 1.0]), run([1.0, 2.0])
    cls_terms, loc_terms = _per_anchor_positive_terms(anchors, batch, logits, deltas, cls=1)
    normalizer = 1.0 + 0.5 + 1.0 + 1.0 + 0.5  # data weights of the matched boxes, no class weight
    assert doubled["normalizer"].item() == base["normalizer"].item() == pytest.approx(normalizer)
    got_cls = (doubled["classification_loss"] - base["classification_loss"]).item() * normalizer
    assert got_cls == pytest.approx(cls_terms, rel=1e-5)
    got_loc = (doubled["localization_loss"] - base["localization_loss"]).item() * normalizer
    assert got_loc == pytest.approx(loc_terms if apply_to_localization else 0.0, rel=1e-5, abs=1e-6)
    assert base["matched_anchors"].tolist() == [3, 2]


def test_weight_zero_box_is_an_ignore_region():
    anchors, batch, logits, deltas = _two_class_scene(1)
    logits.requires_grad_()
    deltas.requires_grad_()
    loss = _loss(normalize_loss_by_num_matches=True)
    loss.matcher = ArgMaxMatcher(matched_threshold=0.5, unmatched_threshold=0.3)
    batch["weights"][1, 0] = 0.0  # the class-1 box of image 1 becomes an ignore region
    out = loss(_outputs(logits, deltas, anchors), batch)
    out["total_loss"].backward()
    covered = torch.tensor([bool(((anchors == torch.tensor([8.0, 8, 24, 24])).all(1))[a]) for a in range(64)])
    assert covered.any()
    assert (logits.grad[1, covered] == 0).all() and (deltas.grad[1, covered] == 0).all()
    # Changing what the model predicts there changes nothing.
    logits2, deltas2 = logits.detach().clone(), deltas.detach().clone()
    logits2[1, covered] += 5.0
    deltas2[1, covered] -= 1.0
    again = loss(_outputs(logits2, deltas2, anchors), batch)
    assert again["total_loss"].item() == pytest.approx(out["total_loss"].item())


def test_images_without_boxes():
    loss = _loss(normalize_loss_by_num_matches=True)
    empty = {
        "boxes": torch.zeros(2, 0, 4),
        "labels": torch.zeros(2, 0, dtype=torch.int64),
        "weights": torch.zeros(2, 0),
    }
    out = loss(_outputs(torch.zeros(2, 4, 2), torch.randn(2, 4, 4)), empty)
    assert out["localization_loss"].item() == 0.0
    assert out["classification_loss"].item() == pytest.approx(2 * 4 * 2 * LN2)  # normaliser clamps at 1
    # A padded batch where only the first image has a box: the second image is all background.
    padded = _batch([[[0.0, 0, 10, 10]], [[0.0, 0, 0, 0]]], [[1], [-1]], [[1.0], [0.0]])
    out = loss(_outputs(torch.zeros(2, 4, 2), torch.zeros(2, 4, 4)), padded)
    assert out["classification_loss"].item() == pytest.approx((3 * 2 + 4 * 2) * LN2)


def test_miner_with_focal_keeps_three_negatives_per_positive():
    anchors, batch, logits, deltas = _two_class_scene(2)
    miner = HardExampleMiner(
        num_hard_examples=0, iou_threshold=1.0, loss_type="CLASSIFICATION", max_negatives_per_positive=3
    )
    loss = _loss(
        classification_loss=weighted_sigmoid_focal,
        classification_loss_params={"alpha": 0.25},
        hard_example_miner=miner,
    )
    loss.matcher = ArgMaxMatcher(matched_threshold=0.99, unmatched_threshold=0.3)
    logits.requires_grad_()
    out = loss(_outputs(logits, deltas, anchors), batch)
    out["total_loss"].backward()
    # image 0: 2 positives, image 1: 3 positives; dozens of negatives each -> 6 + 9 kept.
    assert out["mined_num_positives"].item() == 5 and out["mined_num_negatives"].item() == 15
    assert int((logits.grad.abs().sum(-1) > 0).sum()) == 20
    assert torch.isfinite(logits.grad).all()


def test_random_example_sampler_keeps_ratio_of_negatives():
    anchors, batch, logits, deltas = _two_class_scene(3)
    loss = _loss(positive_sample_fraction=0.25)
    loss.matcher = ArgMaxMatcher(matched_threshold=0.99, unmatched_threshold=0.3)
    logits.requires_grad_()
    torch.manual_seed(0)
    loss(_outputs(logits, deltas, anchors), batch)["classification_loss"].backward()
    touched = logits.grad.abs().sum(-1) > 0
    assert touched.sum(1).tolist() == [2 + 6, 3 + 9]


def test_giou_path_and_gradients_are_finite():
    anchors, batch, logits, deltas = _two_class_scene(4)
    deltas = (deltas * 10).requires_grad_()
    logits.requires_grad_()
    loss = _loss(
        localization_loss=weighted_giou,
        normalize_loss_by_num_matches=True,
        normalize_loc_loss_by_codesize=True,
    )
    out = loss(_outputs(logits, deltas, anchors), batch)
    out["total_loss"].backward()
    assert out["localization_loss"].item() > 0
    assert torch.isfinite(deltas.grad).all() and torch.isfinite(logits.grad).all()


def test_positive_loss_shares_by_hand():
    # Anchor 0 class 1 (weight 1); anchor 2 gets a class-0 box. Logit 0 -> each positive costs 2 log 2.
    batch = _batch([[[0.0, 0, 10, 10], [20.0, 20, 30, 30]]], [[1, 0]], [[1.0, 1.0]])
    loss = _loss(class_weights=torch.tensor([1.0, 3.0]))
    out = loss(_outputs(torch.zeros(1, 4, 2), torch.zeros(1, 4, 4)), batch)
    assert out["positive_cls_loss_share"].tolist() == pytest.approx([0.25, 0.75])
    assert out["matched_anchors"].tolist() == [1, 1]


def test_labels_outside_the_model_are_a_data_error():
    bad = _batch([[[0.0, 0, 10, 10]]], [[2]], [[1.0]])
    with pytest.raises(DataError, match="num_classes"):
        _loss()(_outputs(torch.zeros(1, 4, 2), torch.zeros(1, 4, 4)), bad)


def _naive_reference(anchors, batch, logits, deltas, class_w, neg_w, alpha, gamma):
    """DetectionLoss recomputed one anchor at a time with plain Python math (no raredet code)."""

    def iou(a, b):
        iw, ih = max(0.0, min(a[2], b[2]) - max(a[0], b[0])), max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - iw * ih
        return iw * ih / union

    def encode(box, anchor):  # (ty, tx, th, tw) with scales 10, 10, 5, 5
        ha, wa = anchor[3] - anchor[1], anchor[2] - anchor[0]
        h, w = box[3] - box[1], box[2] - box[0]
        yc, xc = box[1] + h / 2 - (anchor[1] + ha / 2), box[0] + w / 2 - (anchor[0] + wa / 2)
        return [10 * yc / ha, 10 * xc / wa, 5 * math.log(h / ha), 5 * math.log(w / wa)]

    def focal(x, t):
        p = 1 / (1 + math.exp(-x))
        p_t = p if t else 1 - p
        return -math.log(p_t) * (1 - p_t) ** gamma * (alpha if t else 1 - alpha)

    cls_total = loc_total = normalizer = 0.0
    for b, (boxes, labels, weights) in enumerate(
        zip(batch["boxes"].tolist(), batch["labels"].tolist(), batch["weights"].tolist(), strict=True)
    ):
        real = [n for n, label in enumerate(labels) if label >= 0]
        for a, anchor in enumerate(anchors.tolist()):
            best = max(real, key=lambda n: iou(boxes[n], anchor), default=None)
            overlap = iou(boxes[best], anchor) if best is not None else 0.0
            if 0.4 <= overlap < 0.5:
                continue  # ignore band
            label = labels[best] if overlap >= 0.5 else -1
            w = weights[best] * class_w[label] if label >= 0 else neg_w
            cls_total += w * sum(focal(logits[b][a][k], k == label) for k in range(len(class_w)))
            if label >= 0:
                normalizer += weights[best]
                diff = [abs(p - t) for p, t in zip(deltas[b][a], encode(boxes[best], anchor), strict=True)]
                loc_total += w * sum(0.5 * d * d if d <= 1 else d - 0.5 for d in diff)
    normalizer = max(normalizer, 1.0)
    return cls_total / normalizer, loc_total / normalizer


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_whole_loss_matches_a_naive_per_anchor_reference(seed):
    grid, batch, _, _ = _two_class_scene(seed)
    # Shifted copies: +6 px in x puts anchors in the ignore band (IoU 0.45), +2 px matches more anchors.
    anchors = torch.cat([grid, grid + torch.tensor([6.0, 0, 6, 0]), grid + 2])
    g = torch.Generator().manual_seed(seed)
    logits, deltas = torch.randn(2, 192, 2, generator=g), torch.randn(2, 192, 4, generator=g) * 0.3
    class_w, neg_w = [1.0, 5.0], 0.7
    loss = _loss(
        classification_loss=weighted_sigmoid_focal,
        classification_loss_params={"alpha": 0.25},
        class_weights=torch.tensor(class_w),
        negative_class_weight=neg_w,
        normalize_loss_by_num_matches=True,
    )
    loss.matcher = ArgMaxMatcher(matched_threshold=0.5, unmatched_threshold=0.4)
    out = loss(_outputs(logits, deltas, anchors), batch)
    match = loss.assign(anchors, batch, torch.device("cpu")).match
    assert (match == -2).any() and (match >= 0).sum() > 5  # the scene has every kind of anchor
    cls_ref, loc_ref = _naive_reference(
        anchors, batch, logits.tolist(), deltas.tolist(), class_w, neg_w, alpha=0.25, gamma=2.0
    )
    assert out["classification_loss"].item() == pytest.approx(cls_ref, rel=1e-5)
    assert out["localization_loss"].item() == pytest.approx(loc_ref, rel=1e-5)
