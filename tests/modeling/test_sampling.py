"""Faster R-CNN's balanced sampler: its counts by hand, and per-image keys that make the draw the same
whatever the split of a batch across processes."""

from __future__ import annotations

import pytest
import torch

from raredet.modeling.sampling import balanced_sample


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


def test_sampling_draws_per_image_whatever_the_split():
    """The engine's per-image seeds (seed, step, index in the global batch) give each image the same
    keys whether one process holds the batch of 4 or two processes 2 images each; the sites differ."""
    from raredet.engine.resume import sampling_seeds
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
