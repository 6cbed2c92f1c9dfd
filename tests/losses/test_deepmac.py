"""losses/deepmac.py: the dice loss by hand (the TF OD API's WeightedDiceClassificationLoss formula)."""

from __future__ import annotations

import pytest
import torch

from raredet.losses.deepmac import weighted_dice

T = torch.tensor([1.0, 1.0, 0.0, 0.0])[None, :, None]  # [N=1, P=4, C=1]
ZERO_LOGITS = torch.zeros(1, 4, 1)  # p = 0.5 everywhere


@pytest.mark.parametrize("kwargs,weights,expected", [
    ({}, [1, 1, 1, 1], 1 - 2 * 1.0 / (2 + 2)),  # sum p t = 1, sum p = 2, sum t = 2
    ({"squared_normalization": True}, [1, 1, 1, 1], 1 - 2 * 0.5 / (1 + 2)),  # p^2 = 1/4, t^2 = t
    ({}, [0, 1, 1, 1], 1 - 2 * 0.5 / (1.5 + 1)),  # pixel 0 weighs nothing
])
def test_dice_by_hand(kwargs, weights, expected):
    w = torch.tensor(weights, dtype=torch.float32)[None, :, None]
    out = weighted_dice(ZERO_LOGITS, T, w, **kwargs)
    assert out.shape == (1, 1)
    assert out.item() == pytest.approx(expected, rel=1e-6)


def test_small_areas_are_normalised_by_at_least_one():
    # probabilities 0.1 and 0.1, no foreground: 1 - 0 / max(0.2, 1) = 1; a perfect small mask: 1 - 0.2 / 1
    p = torch.tensor([0.1, 0.1])[None, :, None]
    ones = torch.ones(1, 2, 1)
    assert weighted_dice(p, torch.zeros(1, 2, 1), ones, is_prediction_probability=True).item() == 1.0
    assert weighted_dice(p, torch.tensor([0.1, 0.1])[None, :, None], ones,
                         is_prediction_probability=True).item() == pytest.approx(1 - 2 * 0.02 / 1.0)


def test_dice_gradient_flows_to_the_logits():
    logits = torch.zeros(2, 4, 1, requires_grad=True)
    weighted_dice(logits, T.expand(2, 4, 1), torch.ones(2, 4, 1)).sum().backward()
    assert logits.grad is not None and bool((logits.grad[:, :2] < 0).all() and (logits.grad[:, 2:] > 0).all())
