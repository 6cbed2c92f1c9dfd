"""The three pair-aware losses: hand-computed entries on a tiny case, neutral statistics = focal loss.

The tiny case, 3 anchors x 3 classes (0 scratch: frequent, 1 crack: rare, 2 dent), sigmoid scores
chosen through their logits (logit ln(s / (1 - s))):
    anchor a, matched to scratch: s = [0.5, 0.75, 0.25]
    anchor b, matched to crack:   s = [0.9, 0.1, 0.5]
    anchor c, background:         s = [0.5, 0.5, 0.5]
Focal terms (gamma 2, alpha 0.25) written out: a positive entry with score s is 0.25 (1 - s)^2 (-ln s),
a negative one 0.75 s^2 (-ln(1 - s)).
"""

import math

import pytest
import torch

from raredet.losses import (
    confusion_gated_focal,
    equalized_focal,
    seesaw_sigmoid_focal,
    weighted_sigmoid_focal,
)

SCORES = [[0.5, 0.75, 0.25], [0.9, 0.1, 0.5], [0.5, 0.5, 0.5]]
TARGETS = torch.tensor([[[1.0, 0, 0], [0, 1, 0], [0, 0, 0]]], dtype=torch.float64)
LOGITS = torch.tensor([[[math.log(s / (1 - s)) for s in row] for row in SCORES]], dtype=torch.float64)
ONES = torch.ones(1, 3, 1, dtype=torch.float64)


def pos(s, gamma=2.0, w=1.0):
    return 0.25 * w * (1 - s) ** gamma * -math.log(s)


def neg(s, gamma=2.0, w=1.0):
    return 0.75 * w * s**gamma * -math.log(1 - s)


def plain():
    """The focal loss of every entry, [3][3]."""
    return [[pos(s) if TARGETS[0, a, k] else neg(s) for k, s in enumerate(row)]
            for a, row in enumerate(SCORES)]


def test_seesaw_hand_values():
    counts = torch.tensor([100, 4, 25])
    got = seesaw_sigmoid_focal(LOGITS, TARGETS, ONES, counts, gamma=2.0, alpha=0.25,
                               mitigation_power=0.8, compensation_power=2.0)
    e = plain()
    # anchor a (scratch, N 100): crack column M = (4/100)^0.8, C = (0.75/0.5)^2; dent M = (25/100)^0.8,
    # C = 1 (0.25 < 0.5).
    e[0][1] *= (4 / 100) ** 0.8 * (0.75 / 0.5) ** 2
    e[0][2] *= (25 / 100) ** 0.8
    # anchor b (crack, N 4 < both others): M = 1; C = (0.9/0.1)^2 and (0.5/0.1)^2.
    e[1][0] *= (0.9 / 0.1) ** 2
    e[1][2] *= (0.5 / 0.1) ** 2
    # anchor c (background) and the positive entries: unchanged.
    torch.testing.assert_close(got, torch.tensor([e], dtype=torch.float64), rtol=1e-12, atol=0)


def test_seesaw_zero_count_and_equal_counts():
    # N_crack 0 < N_scratch: M = 0 for scratch anchors on the crack column (crack never seen yet);
    # equal counts (scratch vs dent): M = 1.
    got = seesaw_sigmoid_focal(LOGITS, TARGETS, ONES, torch.tensor([7.0, 0.0, 7.0]), compensation_power=0.0)
    e = plain()
    e[0][1] = 0.0
    torch.testing.assert_close(got, torch.tensor([e], dtype=torch.float64), rtol=1e-12, atol=0)


def test_gated_hand_values_hard_and_soft():
    got = confusion_gated_focal(LOGITS, TARGETS, ONES, gate_threshold=0.7, gamma=2.0, alpha=0.25)
    e = plain()
    e[0][2] = 0.0  # scratch anchor, dent 0.25 < 0.7: dropped; crack 0.75 >= 0.7: kept
    e[1][2] = 0.0  # crack anchor, dent 0.5 < 0.7: dropped; scratch 0.9: kept
    torch.testing.assert_close(got, torch.tensor([e], dtype=torch.float64), rtol=1e-12, atol=0)

    soft = confusion_gated_focal(LOGITS, TARGETS, ONES, gate_threshold=0.7, gate_sharpness=10.0)
    e = plain()
    for a, k in ((0, 1), (0, 2), (1, 0), (1, 2)):
        e[a][k] *= 1 / (1 + math.exp(-10 * (SCORES[a][k] - 0.7)))
    torch.testing.assert_close(soft, torch.tensor([e], dtype=torch.float64), rtol=1e-12, atol=0)


def test_equalized_focal_hand_values():
    ratio = torch.tensor([1.0, 0.25, 0.5])
    got = equalized_focal(LOGITS, TARGETS, ONES, ratio, gamma_base=2.0, scale=4.0, alpha=0.25)
    # gamma_j = 2 + 4 (1 - g_j) = [2, 5, 4]; weight gamma_j / 2 = [1, 2.5, 2], on both signs.
    gammas, ws = [2.0, 5.0, 4.0], [1.0, 2.5, 2.0]
    e = [[(pos if TARGETS[0, a, k] else neg)(s, gammas[k], ws[k]) for k, s in enumerate(row)]
         for a, row in enumerate(SCORES)]
    torch.testing.assert_close(got, torch.tensor([e], dtype=torch.float64), rtol=1e-12, atol=0)


def _random(seed, dtype=torch.float32, weight_cols=3):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(2, 50, 3, generator=g) * 4).to(dtype)
    labels = torch.randint(-1, 3, (2, 50), generator=g)
    targets = torch.nn.functional.one_hot(labels.clamp(min=0), 3).to(dtype) * (labels >= 0)[..., None]
    weights = (torch.rand(2, 50, weight_cols, generator=g) * 2).to(dtype)
    return logits, targets, weights


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("weight_cols", [1, 3])
@pytest.mark.parametrize("alpha", [0.25, None])
def test_neutral_statistics_equal_focal_exactly(dtype, weight_cols, alpha):
    logits, targets, weights = _random(0, dtype, weight_cols)
    focal = weighted_sigmoid_focal(logits, targets, weights, gamma=2.0, alpha=alpha)
    # Seesaw: equal counts (M = 1) and no compensation; or both powers 0 whatever the counts.
    seesaw = seesaw_sigmoid_focal(logits, targets, weights, torch.tensor([5, 5, 5]), alpha=alpha,
                                  compensation_power=0.0)
    seesaw_powers0 = seesaw_sigmoid_focal(logits, targets, weights, torch.tensor([900, 3, 40]), alpha=alpha,
                                          mitigation_power=0.0, compensation_power=0.0)
    gated = confusion_gated_focal(logits, targets, weights, gate_threshold=0.0, alpha=alpha)
    efl = equalized_focal(logits, targets, weights, torch.ones(3), gamma_base=2.0, alpha=alpha)
    for got in (seesaw, seesaw_powers0, gated, efl):
        assert torch.equal(got, focal)


def test_background_and_positive_entries_are_plain_focal():
    logits, targets, weights = _random(1)
    focal = weighted_sigmoid_focal(logits, targets, weights, gamma=2.0, alpha=0.25)
    untouched = (targets.sum(-1, keepdim=True) == 0) | (targets == 1)
    untouched = untouched.expand_as(focal)
    for got in (
        seesaw_sigmoid_focal(logits, targets, weights, torch.tensor([1000, 2, 30])),
        confusion_gated_focal(logits, targets, weights, gate_threshold=0.9),
    ):
        assert torch.equal(got[untouched], focal[untouched])
        assert not torch.equal(got, focal)  # the case does exercise the foreground negatives


@pytest.mark.parametrize("which", ["seesaw", "gated", "soft", "efl"])
def test_gradients_finite_even_for_saturated_logits(which):
    logits, targets, weights = _random(2)
    logits = torch.cat([logits, torch.tensor([[[-120.0, 90.0, 30.0]] * 50, [[60.0, -60.0, 0.0]] * 50])], 1)
    targets = torch.cat([targets, torch.zeros(2, 50, 3)], 1)
    targets[:, 50:, 0] = 1.0
    weights = torch.cat([weights, torch.ones(2, 50, 3)], 1)
    logits.requires_grad_(True)
    fn = {
        "seesaw": lambda: seesaw_sigmoid_focal(logits, targets, weights, torch.tensor([10, 200, 3]),
                                               compensation_score_floor=0.01),
        "gated": lambda: confusion_gated_focal(logits, targets, weights),
        "soft": lambda: confusion_gated_focal(logits, targets, weights, gate_sharpness=20.0),
        "efl": lambda: equalized_focal(logits, targets, weights, torch.tensor([0.0, 0.3, 1.0]), scale=8.0),
    }[which]
    loss = fn()
    assert torch.isfinite(loss).all()
    loss.sum().backward()
    assert torch.isfinite(logits.grad).all()


def test_seesaw_compensation_floor_bounds_the_factor():
    # Crack anchor b: s_crack 0.1 raised to the floor 0.3: C = (0.9/0.3)^2 and (0.5/0.3)^2.
    got = seesaw_sigmoid_focal(LOGITS, TARGETS, ONES, torch.tensor([100, 4, 25]),
                               compensation_score_floor=0.3)
    e = plain()
    e[0][1] *= (4 / 100) ** 0.8 * (0.75 / 0.5) ** 2  # s_scratch 0.5 is above the floor: unchanged
    e[0][2] *= (25 / 100) ** 0.8
    e[1][0] *= (0.9 / 0.3) ** 2
    e[1][2] *= (0.5 / 0.3) ** 2
    torch.testing.assert_close(got, torch.tensor([e], dtype=torch.float64), rtol=1e-12, atol=0)


def test_statistics_may_be_plain_sequences():
    counts, ratio = [100, 4, 25], [1.0, 0.25, 0.5]
    assert torch.equal(seesaw_sigmoid_focal(LOGITS, TARGETS, ONES, counts),
                       seesaw_sigmoid_focal(LOGITS, TARGETS, ONES, torch.tensor(counts)))
    assert torch.equal(equalized_focal(LOGITS, TARGETS, ONES, ratio),
                       equalized_focal(LOGITS, TARGETS, ONES, torch.tensor(ratio)))


def test_shape_errors_name_the_argument():
    logits, targets, weights = _random(3)
    with pytest.raises(ValueError, match="class_counts"):
        seesaw_sigmoid_focal(logits, targets, weights, torch.ones(4))
    with pytest.raises(ValueError, match="gradient_ratio"):
        equalized_focal(logits, targets, weights, torch.ones(2))
    with pytest.raises(ValueError, match="gamma_base"):
        equalized_focal(logits, targets, weights, torch.ones(3), gamma_base=0.0)
