"""Classification losses against hand values and independent numpy formulas (TF OD API definitions)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from raredet.losses import (
    bootstrapped_sigmoid,
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
