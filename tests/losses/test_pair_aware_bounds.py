"""The bounds of the pair-aware losses' factors (docs/config_reference.md), against plainly written formulas.

Every expectation is computed entry by entry in Python floats from the papers' formulas, not from the
functions under test:
- seesaw: `M_ij = (N_j / N_i)^p` where `N_i > N_j`, else 1; `C_ij = (s_j / max(s_i, f))^q` where that
  ratio exceeds 1, else 1; so `C_ij <= f^-q` (MMDetection's Seesaw clamps `s_i` at 1e-2 the same way);
- equalized focal: `gamma_j = gamma_b + scale (1 - g_j)`, weight `gamma_j / gamma_b`, `g_j` in [0, 1];
- confusion gate: a factor in [0, 1].
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
