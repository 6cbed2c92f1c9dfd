"""Hard example miner against hand cases and a naive per-image loop (the TF OD API's algorithm)."""

import numpy as np
import pytest
import torch

import raredet.losses.hard_example_miner as hem
from raredet.losses import HardExampleMiner


def _iou(a, b):
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _naive_mine(loc, cls, boxes, match, k, iou_thr, ratio, min_neg, loss_type="BOTH", cw=0.05, lw=0.06):
    """One image at a time, one box at a time: the algorithm as the TF OD API describes it."""
    selected_all = np.zeros(match.shape, dtype=bool)
    for b in range(match.shape[0]):
        score = {"BOTH": cw * cls[b] + lw * loc[b], "CLASSIFICATION": cls[b], "LOCALIZATION": loc[b]}[
            loss_type
        ]
        order = [i for i in np.argsort(-score, kind="stable") if match[b, i] != -2]
        kept = []
        for i in order:
            if len(kept) == (k or len(order)):
                break
            if all(_iou(boxes[b, i], boxes[b, j]) <= iou_thr for j in kept):
                kept.append(i)
        if ratio:
            num_pos = sum(match[b, i] >= 0 for i in kept)
            cap, negs, final = max(min_neg, ratio * num_pos), 0, []
            for i in kept:
                if match[b, i] >= 0:
                    final.append(i)
                elif negs < cap:
                    negs += 1
                    final.append(i)
            kept = final
        selected_all[b, kept] = True
    return selected_all


def _random_case(batch, anchors, seed):
    g = np.random.default_rng(seed)
    xy = g.uniform(0, 60, size=(batch, anchors, 2))
    wh = g.uniform(4, 20, size=(batch, anchors, 2))
    boxes = np.concatenate([xy, xy + wh], -1)
    loc = g.uniform(0, 1, size=(batch, anchors))
    cls = g.uniform(0, 3, size=(batch, anchors))  # distinct values: no ties in the ranking
    match = g.choice([-2, -1, -1, -1, 0, 1], size=(batch, anchors))
    return loc, cls, boxes, match


def _run(miner, loc, cls, boxes, match):
    t = [torch.tensor(x, dtype=torch.float64) for x in (loc, cls, boxes)]
    return miner(t[0], t[1], t[2], torch.tensor(match))


@pytest.mark.parametrize(
    "k,iou,ratio,min_neg,loss_type",
    [
        (8, 0.3, 3, 0, "BOTH"),
        (8, 0.5, 0, 0, "CLASSIFICATION"),
        (0, 0.2, 1, 2, "LOCALIZATION"),
        (20, 0.7, 2, 0, "BOTH"),
        (5, 0.01, 3, 5, "CLASSIFICATION"),
    ],
)
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_naive_loop(k, iou, ratio, min_neg, loss_type, seed):
    loc, cls, boxes, match = _random_case(3, 40, seed)
    miner = HardExampleMiner(
        num_hard_examples=k,
        iou_threshold=iou,
        loss_type=loss_type,
        max_negatives_per_positive=ratio,
        min_negatives_per_image=min_neg,
    )
    mined = _run(miner, loc, cls, boxes, match)
    expect = _naive_mine(loc, cls, boxes, match, k, iou, ratio, min_neg, loss_type)
    np.testing.assert_array_equal(mined.selected.numpy(), expect)
    assert mined.localization_loss.item() == pytest.approx(loc[expect].sum())
    assert mined.classification_loss.item() == pytest.approx(cls[expect].sum())
    np.testing.assert_array_equal(mined.num_positives.numpy(), (expect & (match >= 0)).sum(1))
    np.testing.assert_array_equal(mined.num_negatives.numpy(), (expect & (match == -1)).sum(1))


@pytest.mark.parametrize("k", [60, 0])
def test_blocks_of_candidates_give_the_same_selection(monkeypatch, k):
    # 600 anchors in blocks of 32: later blocks are suppressed by the survivors of earlier ones.
    monkeypatch.setattr(hem, "NMS_BLOCK", 32)
    loc, cls, boxes, match = _random_case(2, 600, 3)
    miner = HardExampleMiner(num_hard_examples=k, iou_threshold=0.1, max_negatives_per_positive=0)
    expect = _naive_mine(loc, cls, boxes, match, k, 0.1, 0, 0)
    np.testing.assert_array_equal(_run(miner, loc, cls, boxes, match).selected.numpy(), expect)


def test_ratio_three_keeps_min_of_three_pos_and_neg():
    # Disjoint boxes (nothing suppressed): image 0 has 2 positives and 10 negatives -> 6 negatives kept,
    # the 6 with the highest loss; image 1 has 4 positives and 5 negatives -> all 5.
    boxes = torch.tensor([[i * 10.0, 0.0, i * 10.0 + 5, 5.0] for i in range(12)]).expand(2, -1, -1)
    match = torch.tensor([[0, 1] + [-1] * 10, [0, 0, 0, 0] + [-1] * 5 + [-2] * 3])
    cls = torch.arange(12, dtype=torch.float32).expand(2, -1)
    miner = HardExampleMiner(
        num_hard_examples=0, iou_threshold=0.5, loss_type="CLASSIFICATION", max_negatives_per_positive=3
    )
    mined = miner(torch.zeros(2, 12), cls, boxes, match)
    assert mined.num_positives.tolist() == [2, 4]
    assert mined.num_negatives.tolist() == [6, 5]
    assert mined.selected[0].tolist() == [True, True] + [False] * 4 + [True] * 6
    assert not mined.selected[1, 9:].any()  # ignored anchors are never mined
    assert mined.classification_loss.item() == (0 + 1 + sum(range(6, 12))) + sum(range(9))


def test_nms_suppresses_overlapping_lower_loss_box():
    # Boxes 0 and 1 overlap with IoU 0.81; box 1 has the higher loss, so box 0 is suppressed.
    boxes = torch.tensor([[[0.0, 0, 10, 10], [0, 0, 10, 9], [20, 20, 30, 30]]])
    miner = HardExampleMiner(num_hard_examples=3, iou_threshold=0.7, loss_type="CLASSIFICATION")
    mined = miner(torch.zeros(1, 3), torch.tensor([[1.0, 2.0, 0.5]]), boxes, torch.tensor([[-1, -1, 0]]))
    assert mined.selected.tolist() == [[False, True, True]]
    assert mined.classification_loss.item() == 2.5


def test_gradients_flow_only_through_selected():
    loc, cls, boxes, match = _random_case(2, 30, 5)
    cls_t = torch.tensor(cls, requires_grad=True)
    miner = HardExampleMiner(num_hard_examples=6, iou_threshold=0.5, max_negatives_per_positive=3)
    mined = miner(torch.tensor(loc), cls_t, torch.tensor(boxes), torch.tensor(match))
    mined.classification_loss.backward()
    assert torch.equal(cls_t.grad, mined.selected.to(cls_t.grad.dtype))


def test_without_match_no_ratio_and_per_class_losses_are_summed():
    loc, cls, boxes, _ = _random_case(2, 30, 6)
    miner = HardExampleMiner(num_hard_examples=5, iou_threshold=0.5, max_negatives_per_positive=3)
    cls3 = torch.tensor(cls)[..., None].expand(-1, -1, 3) / 3  # three columns summing to cls
    mined = miner(torch.tensor(loc), cls3, torch.tensor(boxes))
    expect = _naive_mine(loc, cls, boxes, np.full(loc.shape, -1), 5, 0.5, 0, 0)
    np.testing.assert_array_equal(mined.selected.numpy(), expect)
    assert mined.num_negatives.tolist() == [5, 5] and mined.num_positives.tolist() == [0, 0]


def test_loss_type_is_the_proto_enum_name():
    assert HardExampleMiner(loss_type="CLASSIFICATION").loss_type == "CLASSIFICATION"


@pytest.mark.parametrize("spelling", ["CLASS", "cls", "classification"])
def test_bad_loss_type(spelling):
    with pytest.raises(ValueError, match="CLASSIFICATION"):
        HardExampleMiner(loss_type=spelling)
