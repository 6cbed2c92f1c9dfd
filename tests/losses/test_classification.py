"""Classification losses against hand values and independent numpy formulas (TF OD API definitions); the
pair-aware losses (seesaw, confusion-gated, equalized focal) by hand and against their papers' formulas."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from raredet.losses import (
    bootstrapped_sigmoid,
    confusion_gated_focal,
    equalized_focal,
    seesaw_sigmoid_focal,
    weighted_logits_softmax,
    weighted_sigmoid,
    weighted_sigmoid_focal,
    weighted_softmax,
)


def _np_sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _np_bce(x, t):
    p = _np_sigmoid(x)
    return -(t * np.log(p) + (1 - t) * np.log(1 - p))


def _random_case(shape, seed, weight_cols=None):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=g, dtype=torch.float64) * 3
    targets = (torch.rand(shape, generator=g) > 0.7).to(torch.float64)
    wshape = (*shape[:-1], weight_cols or shape[-1])
    weights = torch.rand(wshape, generator=g, dtype=torch.float64) * 2
    return logits, targets, weights


def test_weighted_sigmoid_hand_values():
    # logit 0 -> p = 0.5 -> CE = log 2 for either target; logit ln 3 with target 1 -> p = 3/4 -> -log(3/4).
    logits = torch.tensor([[[0.0, math.log(3.0)]]])
    targets = torch.tensor([[[1.0, 1.0]]])
    weights = torch.tensor([[[2.0, 1.0]]])
    got = weighted_sigmoid(logits, targets, weights)
    assert torch.allclose(got, torch.tensor([[[2 * math.log(2.0), -math.log(0.75)]]]))


@pytest.mark.parametrize("shape,cols", [((2, 5, 3), None), ((1, 7, 4), 1), ((3, 2, 1), None)])
def test_weighted_sigmoid_matches_numpy(shape, cols):
    logits, targets, weights = _random_case(shape, 0, cols)
    expect = _np_bce(logits.numpy(), targets.numpy()) * weights.numpy()
    np.testing.assert_allclose(weighted_sigmoid(logits, targets, weights).numpy(), expect, rtol=1e-10)


def test_focal_hand_value():
    # logit 0, target 1: p_t = 0.5, CE = log 2; gamma 2 -> (0.5)^2; alpha 0.25 on the positive.
    got = weighted_sigmoid_focal(
        torch.zeros(1, 1, 2), torch.tensor([[[1.0, 0.0]]]), torch.ones(1, 1, 1), gamma=2.0, alpha=0.25
    )
    ln2 = math.log(2.0)
    assert torch.allclose(got, torch.tensor([[[0.25 * 0.25 * ln2, 0.75 * 0.25 * ln2]]]))


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0, 4.0])
@pytest.mark.parametrize("alpha", [None, 0.25, 0.9])
@pytest.mark.parametrize("seed", [0, 1])
def test_focal_over_ce_is_alpha_t_times_modulator(gamma, alpha, seed):
    logits, targets, weights = _random_case((2, 6, 3), seed)
    focal = weighted_sigmoid_focal(logits, targets, torch.ones_like(weights), gamma=gamma, alpha=alpha)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p = torch.sigmoid(logits)
    p_t = p * targets + (1 - p) * (1 - targets)
    alpha_t = 1.0 if alpha is None else alpha * targets + (1 - alpha) * (1 - targets)
    torch.testing.assert_close(focal / ce, alpha_t * (1 - p_t) ** gamma)


def test_focal_matches_numpy_with_weights():
    logits, targets, weights = _random_case((2, 4, 3), 3, 1)
    x, t = logits.numpy(), targets.numpy()
    p = _np_sigmoid(x)
    p_t = np.where(t == 1, p, 1 - p)
    expect = np.where(t == 1, 0.3, 0.7) * (1 - p_t) ** 1.5 * _np_bce(x, t) * weights.numpy()
    got = weighted_sigmoid_focal(logits, targets, weights, gamma=1.5, alpha=0.3)
    np.testing.assert_allclose(got.numpy(), expect, rtol=1e-9)


def test_focal_gamma0_no_alpha_is_bce_with_gradients():
    logits, targets, weights = _random_case((2, 5, 3), 4)
    a = logits.clone().requires_grad_()
    b = logits.clone().requires_grad_()
    focal = weighted_sigmoid_focal(a, targets, weights, gamma=0.0, alpha=None)
    bce = F.binary_cross_entropy_with_logits(b, targets, weight=weights, reduction="none")
    torch.testing.assert_close(focal, bce)
    focal.sum().backward()
    bce.sum().backward()
    torch.testing.assert_close(a.grad, b.grad)


def test_focal_gradient_matches_finite_differences():
    logits, targets, weights = _random_case((1, 3, 2), 5)
    logits.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x: weighted_sigmoid_focal(x, targets, weights, gamma=2.0, alpha=0.25), (logits,)
    )


def test_class_alpha_per_column_and_nan_fallback():
    logits, targets, weights = _random_case((2, 4, 3), 6)
    class_alpha = torch.tensor([0.9, float("nan"), 0.1])
    got = weighted_sigmoid_focal(logits, targets, weights, gamma=2.0, alpha=0.25, class_alpha=class_alpha)
    for column, a in enumerate([0.9, 0.25, 0.1]):
        one = weighted_sigmoid_focal(
            logits[..., column : column + 1],
            targets[..., column : column + 1],
            weights[..., column : column + 1],
            gamma=2.0,
            alpha=a,
        )
        torch.testing.assert_close(got[..., column : column + 1], one)


def test_class_alpha_nan_without_alpha_means_no_alpha_term():
    logits, targets, weights = _random_case((1, 4, 2), 7)
    got = weighted_sigmoid_focal(
        logits, targets, weights, gamma=2.0, class_alpha=torch.tensor([float("nan"), 0.5])
    )
    plain = weighted_sigmoid_focal(logits, targets, weights, gamma=2.0)
    torch.testing.assert_close(got[..., 0], plain[..., 0])
    torch.testing.assert_close(got[..., 1], 0.5 * plain[..., 1])


def _np_softmax_ce(x, t, scale):
    z = x / scale
    z = z - z.max(-1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return -(t * log_p).sum(-1)


@pytest.mark.parametrize("scale", [1.0, 2.5])
@pytest.mark.parametrize("cols", [None, 1])
def test_weighted_softmax_matches_numpy_and_averages_weights(scale, cols):
    logits, _, weights = _random_case((2, 5, 4), 8, cols)
    labels = torch.randint(0, 4, (2, 5), generator=torch.Generator().manual_seed(1))
    targets = F.one_hot(labels, 4).to(torch.float64)
    expect = _np_softmax_ce(logits.numpy(), targets.numpy(), scale) * weights.numpy().mean(-1)
    got = weighted_softmax(logits, targets, weights, logit_scale=scale)
    assert got.shape == (2, 5)
    np.testing.assert_allclose(got.numpy(), expect, rtol=1e-10)


def test_weighted_softmax_hand_value():
    # Two equal logits: p = 1/2 for the target -> log 2; weights (1, 3) average to 2.
    got = weighted_softmax(torch.zeros(1, 1, 2), torch.tensor([[[0.0, 1.0]]]), torch.tensor([[[1.0, 3.0]]]))
    assert torch.allclose(got, torch.tensor([[2 * math.log(2.0)]]))


def test_weighted_logits_softmax_matches_numpy():
    logits, _, weights = _random_case((2, 3, 4), 9, 1)
    target_logits = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    scale = 2.0
    z = target_logits.numpy() / scale
    soft = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
    expect = _np_softmax_ce(logits.numpy(), soft, scale) * weights.numpy()[..., 0]
    got = weighted_logits_softmax(logits, target_logits, weights, logit_scale=scale)
    np.testing.assert_allclose(got.numpy(), expect, rtol=1e-10)


@pytest.mark.parametrize("hard", [False, True])
def test_bootstrapped_sigmoid_matches_numpy(hard):
    logits, targets, weights = _random_case((2, 4, 3), 10)
    x, t = logits.numpy(), targets.numpy()
    q = (_np_sigmoid(x) > 0.5).astype(np.float64) if hard else _np_sigmoid(x)
    boot = 0.6 * t + 0.4 * q
    expect = -(boot * np.log(_np_sigmoid(x)) + (1 - boot) * np.log(1 - _np_sigmoid(x))) * weights.numpy()
    got = bootstrapped_sigmoid(logits, targets, weights, alpha=0.6, hard_bootstrap=hard)
    np.testing.assert_allclose(got.numpy(), expect, rtol=1e-9)


def test_shape_errors_are_clear():
    with pytest.raises(ValueError, match="weights"):
        weighted_sigmoid(torch.zeros(1, 2, 3), torch.zeros(1, 2, 3), torch.zeros(1, 2, 2))
    with pytest.raises(ValueError, match="targets"):
        weighted_softmax(torch.zeros(1, 2, 3), torch.zeros(1, 2, 4), torch.zeros(1, 2, 1))


# ---- the pair-aware losses: hand-computed entries ----------------------------------------------------------
# The three pair-aware losses: hand-computed entries on a tiny case, neutral statistics = focal loss.
#
# The tiny case, 3 anchors x 3 classes (0 scratch: frequent, 1 crack: rare, 2 dent), sigmoid scores
# chosen through their logits (logit ln(s / (1 - s))):
#     anchor a, matched to scratch: s = [0.5, 0.75, 0.25]
#     anchor b, matched to crack:   s = [0.9, 0.1, 0.5]
#     anchor c, background:         s = [0.5, 0.5, 0.5]
# Focal terms (gamma 2, alpha 0.25) written out: a positive entry with score s is 0.25 (1 - s)^2 (-ln s),
# a negative one 0.75 s^2 (-ln(1 - s)).

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


# ---- the pair-aware losses: bounds of their factors --------------------------------------------------------
# The bounds of the pair-aware losses' factors (docs/config_reference.md), against plainly written formulas.
#
# Every expectation is computed entry by entry in Python floats from the papers' formulas, not from the
# functions under test:
# - seesaw: `M_ij = (N_j / N_i)^p` where `N_i > N_j`, else 1; `C_ij = (s_j / max(s_i, f))^q` where that
#   ratio exceeds 1, else 1; so `C_ij <= f^-q` (MMDetection's Seesaw clamps `s_i` at 1e-2 the same way);
# - equalized focal: `gamma_j = gamma_b + scale (1 - g_j)`, weight `gamma_j / gamma_b`, `g_j` in [0, 1];
# - confusion gate: a factor in [0, 1].

K = 4


def sigmoid(z: float) -> float:
    return 1 / (1 + math.exp(-z)) if z >= 0 else math.exp(z) / (1 + math.exp(z))


def focal_entry(z: float, target: float, gamma: float, alpha: float) -> float:
    """alpha (1 - s)^gamma (-ln s) for a target 1, (1 - alpha) s^gamma (-ln(1 - s)) for a target 0."""
    s, g = sigmoid(z), gamma
    if target:
        return alpha * (1 - s) ** g * math.log1p(math.exp(-z))  # -ln s = ln(1 + e^-z)
    return (1 - alpha) * s**g * math.log1p(math.exp(z))  # -ln(1 - s) = ln(1 + e^z)


def random_case(seed: int, extreme: bool = False):
    """logits [2, 30, K] float64 (a third of the matched anchors with their own class at -12 and another
    column at +8 when `extreme`), labels [2, 30] (-1 = background), one-hot targets, weights [2, 30, 1]."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 30, K, generator=g, dtype=torch.float64) * 3
    labels = torch.randint(-1, K, (2, 30), generator=g)
    one_hot = torch.nn.functional.one_hot(labels.clamp(min=0), K).bool() & (labels >= 0)[..., None]
    if extreme:
        rows = (torch.arange(30)[None].expand(2, -1) % 3 == 0)[..., None]
        logits = torch.where(one_hot & rows, torch.tensor(-12.0, dtype=torch.float64), logits)
        other = one_hot.roll(1, -1)  # the next column of a matched anchor
        logits = torch.where(other & rows, torch.tensor(8.0, dtype=torch.float64), logits)
    targets = one_hot.to(torch.float64)
    weights = torch.rand(2, 30, 1, generator=g, dtype=torch.float64) * 2
    return logits, labels, targets, weights


def seesaw_by_hand(logits, labels, weights, counts, gamma, alpha, p, q, floor):
    out = torch.zeros_like(logits)
    for b in range(logits.shape[0]):
        for a in range(logits.shape[1]):
            i, z = int(labels[b, a]), [float(v) for v in logits[b, a]]
            for j in range(K):
                entry = focal_entry(z[j], j == i, gamma, alpha)
                if i >= 0 and j != i:
                    m = (counts[j] / counts[i]) ** p if counts[i] > counts[j] else 1.0
                    ratio = sigmoid(z[j]) / max(sigmoid(z[i]), floor)
                    entry *= m * (ratio**q if ratio > 1 else 1.0)
                out[b, a, j] = entry * float(weights[b, a, 0])
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("floor", [None, 0.0, 0.05])
def test_seesaw_entries_equal_the_formula_with_the_floor(seed, floor):
    logits, labels, targets, weights = random_case(seed, extreme=seed > 0)
    counts = [1000.0, 3.0, 40.0, 40.0]
    kwargs = {} if floor is None else {"compensation_score_floor": floor}
    got = seesaw_sigmoid_focal(logits, targets, weights, torch.tensor(counts), **kwargs)
    expected = seesaw_by_hand(logits, labels, weights, counts, gamma=2.0, alpha=0.25, p=0.8, q=2.0,
                              floor=0.01 if floor is None else floor)  # the default floor is 0.01
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=0)


@pytest.mark.parametrize("floor,q", [(None, 2.0), (0.01, 2.0), (0.05, 1.5), (0.2, 3.0)])
def test_seesaw_compensation_is_bounded_by_floor_to_the_minus_q(floor, q):
    # Own class at -40 (s_i ~ 4e-18) and other columns up to +40: the unfloored ratio would be ~1e35.
    logits, labels, targets, weights = random_case(3, extreme=True)
    logits = logits * 5
    kwargs = {} if floor is None else {"compensation_score_floor": floor}
    equal_counts = torch.full((K,), 7.0)  # M = 1: the ratio to plain focal loss is C_ij alone
    got = seesaw_sigmoid_focal(logits, targets, weights, equal_counts, compensation_power=q, **kwargs)
    focal = weighted_sigmoid_focal(logits, targets, weights, gamma=2.0, alpha=0.25)
    negatives = (targets.sum(-1, keepdim=True) > 0) & (targets == 0) & (focal > 0)
    compensation = got[negatives] / focal[negatives]
    bound = (1 / (0.01 if floor is None else floor)) ** q
    assert compensation.min() >= 1 - 1e-12
    assert compensation.max() <= bound * (1 + 1e-9)
    assert compensation.max() >= 0.99 * bound  # the bound is reached: s_i below the floor, s_j ~ 1


def test_seesaw_floor_zero_is_the_unbounded_formula():
    # One anchor of class 0 scoring 1e-4 on its own column and 0.9 on column 1: C = (0.9 / 1e-4)^2.
    z = [math.log(1e-4 / (1 - 1e-4)), math.log(9.0), 0.0, 0.0]
    logits = torch.tensor([[z]], dtype=torch.float64)
    targets = torch.tensor([[[1.0, 0, 0, 0]]], dtype=torch.float64)
    ones, counts = torch.ones(1, 1, 1, dtype=torch.float64), torch.full((K,), 5.0)
    unbounded = seesaw_sigmoid_focal(logits, targets, ones, counts, compensation_score_floor=0.0)
    default = seesaw_sigmoid_focal(logits, targets, ones, counts)
    plain = focal_entry(z[1], 0, 2.0, 0.25)
    assert float(unbounded[0, 0, 1]) == pytest.approx(plain * (0.9 / 1e-4) ** 2, rel=1e-9)  # 8.1e7
    assert float(default[0, 0, 1]) == pytest.approx(plain * (0.9 / 0.01) ** 2, rel=1e-9)  # 8.1e3


@pytest.mark.parametrize("ratio", [[0.0, 0.3, 1.0, 0.7], [-3.0, 0.5, 7.0, 1.0]])
def test_equalized_focal_entries_and_weight_bound(ratio):
    logits, labels, targets, weights = random_case(4)
    got = equalized_focal(logits, targets, weights, torch.tensor(ratio, dtype=torch.float64))
    g = [min(max(r, 0.0), 1.0) for r in ratio]  # the paper's g_j lies in [0, 1]
    gammas = [2.0 + 4.0 * (1 - gj) for gj in g]
    expected = torch.tensor([[[focal_entry(float(logits[b, a, j]), float(targets[b, a, j]), gammas[j], 0.25)
                               * gammas[j] / 2.0 * float(weights[b, a, 0]) for j in range(K)]
                              for a in range(30)] for b in range(2)], dtype=torch.float64)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=0)
    assert max(gj / 2.0 for gj in gammas) <= 1 + 4.0 / 2.0  # weight <= 1 + scale / gamma_base = 3


def test_equalized_focal_refuses_a_negative_scale():
    logits, _, targets, weights = random_case(5)
    with pytest.raises(ValueError, match="scale"):
        equalized_focal(logits, targets, weights, torch.ones(K, dtype=torch.float64), scale=-1.0)


def test_confusion_gate_never_exceeds_plain_focal():
    logits, _, targets, weights = random_case(6, extreme=True)
    focal = weighted_sigmoid_focal(logits, targets, weights, gamma=2.0, alpha=0.25)
    for sharpness in (0.0, 10.0):
        gated = confusion_gated_focal(logits, targets, weights, gate_sharpness=sharpness)
        assert (gated <= focal).all() and (gated >= 0).all()


@pytest.mark.parametrize("which", ["seesaw", "gated", "efl"])
def test_gamma_below_one_keeps_finite_gradients_on_saturated_logits(which):
    # (1 - p_t)^0.5 has an infinite derivative at 1 - p_t = 0 (a logit of +-20 saturates fp32); the
    # guard keeps the gradient finite, and unsaturated entries keep the formula's value.
    z = torch.tensor([[[20.0, -20.0, 0.5, -1.0], [-25.0, 30.0, 1.0, 2.0]]], requires_grad=True)
    targets = torch.tensor([[[1.0, 0, 0, 0], [0, 1, 0, 0]]])
    ones = torch.ones(1, 2, 1)
    loss = {
        "seesaw": lambda: seesaw_sigmoid_focal(z, targets, ones, torch.full((K,), 3.0), gamma=0.5),
        "gated": lambda: confusion_gated_focal(z, targets, ones, gate_threshold=0.0, gamma=0.5),
        "efl": lambda: equalized_focal(z, targets, ones, torch.ones(K), gamma_base=0.5),
    }[which]()
    loss.sum().backward()
    assert torch.isfinite(z.grad).all()
    # Unsaturated entries: the gate 0 keeps every term and M = 1, g = 1 neutral; (anchor 0, column 2)
    # is a foreground negative whose C is 1 only when s_2 <= s_0: s_0 = 1 here, so C = 1 there too.
    loss = loss.detach()
    assert float(loss[0, 0, 2]) == pytest.approx(focal_entry(0.5, 0, 0.5, 0.25), rel=1e-5)
    assert float(loss[0, 1, 3]) == pytest.approx(focal_entry(2.0, 0, 0.5, 0.25), rel=1e-5)
