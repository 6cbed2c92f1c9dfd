"""Repeat factors against hand-computed values; the sampler's rounding and rank split."""

from __future__ import annotations

import math

import numpy as np
import pytest

from raredet.data.sampling import RepeatFactorSampler, class_repeat_factors, image_repeat_factors


def test_repeat_factors_by_hand():
    # 4 images; class 0 in 3 of them (one image has it twice), class 1 in 1, class 2 in 1; t = 0.5
    image_classes = [np.array([0]), np.array([0, 1, 0]), np.array([0]), np.array([2])]
    # f = (3/4, 1/4, 1/4) -> r = (max(1, sqrt(0.5 / 0.75)), sqrt(2), sqrt(2)) = (1, 1.414.., 1.414..)
    np.testing.assert_allclose(
        class_repeat_factors(np.array([3, 1, 1]), 4, 0.5), [1, math.sqrt(2), math.sqrt(2)]
    )
    np.testing.assert_allclose(
        image_repeat_factors(image_classes, 3, 0.5), [1, math.sqrt(2), 1, math.sqrt(2)]
    )


def test_empty_images_and_absent_classes_get_one():
    r = image_repeat_factors([np.array([], dtype=np.int64), np.array([1])], 3, 2.0)
    # class 1 in 1 of 2 images: sqrt(2 / 0.5) = 2
    np.testing.assert_allclose(r, [1.0, 2.0])
    with pytest.raises(ValueError, match="threshold"):
        image_repeat_factors([np.array([0])], 1, -1.0)


def test_stochastic_rounding_counts():
    factors = np.array([1.0, 2.5, 1.2])
    for epoch in range(10):
        sampler = RepeatFactorSampler(factors, seed=3)
        sampler.set_epoch(epoch)
        counts = np.bincount(list(sampler), minlength=3)
        assert counts[0] == 1 and counts[1] in (2, 3) and counts[2] in (1, 2)


def test_mean_count_over_epochs_matches_factor():
    sampler = RepeatFactorSampler(np.array([1.0, 1.5]), seed=0)
    total = np.zeros(2)
    for epoch in range(400):
        sampler.set_epoch(epoch)
        total += np.bincount(list(sampler), minlength=2)
    # Binomial(400, 0.5) extra draws for image 1: 1.5 +- ~0.075 (3 sigma)
    assert total[0] == 400 and abs(total[1] / 400 - 1.5) < 0.08


def test_ranks_are_disjoint_shares_of_the_same_epoch():
    factors = np.array([1.0, 3.0, 1.7, 1.0, 2.2])
    single = RepeatFactorSampler(factors, seed=5)
    single.set_epoch(2)
    shares = []
    for rank in range(3):
        s = RepeatFactorSampler(factors, seed=5, rank=rank, world_size=3)
        s.set_epoch(2)
        shares.append(list(s))
    assert len({len(x) for x in shares}) == 1
    merged = [shares[r][i] for i in range(len(shares[0])) for r in range(3)]
    n = len(single)
    assert merged[:n] == list(single)  # interleaved ranks rebuild the epoch, plus wrap-around padding
    assert merged[n:] == list(single)[: len(merged) - n]


def test_same_seed_same_order_and_state_dict():
    a = RepeatFactorSampler(np.ones(20), seed=1)
    b = RepeatFactorSampler(np.ones(20), seed=1)
    a.set_epoch(4)
    b.load_state_dict(a.state_dict())
    assert list(a) == list(b) and sorted(a) == list(range(20))
    b.set_epoch(5)
    assert list(a) != list(b)
