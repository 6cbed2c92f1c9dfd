"""ArgMaxMatcher on similarity matrices written by hand."""

import pytest
import torch

from raredet.modeling.matcher import BACKGROUND, IGNORE, ArgMaxMatcher

# Rows: 2 ground-truth boxes, columns: 5 anchors.
SIM = torch.tensor(
    [
        [0.7, 0.45, 0.2, 0.1, 0.35],
        [0.6, 0.30, 0.8, 0.05, 0.38],
    ]
)[None]
ALL_VALID = torch.ones(1, 2, dtype=torch.bool)


def test_thresholds_with_ignore_band():
    matcher = ArgMaxMatcher(matched_threshold=0.5, unmatched_threshold=0.4)
    # a0 -> box 0 (0.7); a1 best 0.45 in [0.4, 0.5) -> ignore; a2 -> box 1; a3 0.1 -> bg; a4 0.38 -> bg.
    assert matcher(SIM, ALL_VALID).tolist() == [[0, IGNORE, 1, BACKGROUND, BACKGROUND]]


def test_negatives_between_thresholds():
    matcher = ArgMaxMatcher(0.5, 0.4, negatives_lower_than_unmatched=False)
    assert matcher(SIM, ALL_VALID).tolist() == [[0, BACKGROUND, 1, IGNORE, IGNORE]]


def test_force_match_each_row():
    sim = torch.tensor([[[0.3, 0.1, 0.2], [0.1, 0.05, 0.9]]])
    plain = ArgMaxMatcher(0.5, 0.5)(sim, ALL_VALID)
    forced = ArgMaxMatcher(0.5, 0.5, force_match_for_each_row=True)(sim, ALL_VALID)
    assert plain.tolist() == [[BACKGROUND, BACKGROUND, 1]]
    assert forced.tolist() == [[0, BACKGROUND, 1]]


def test_contested_forced_anchor_goes_to_lower_row():
    sim = torch.tensor([[[0.3, 0.1], [0.2, 0.1]]])
    forced = ArgMaxMatcher(0.5, 0.5, force_match_for_each_row=True)(sim, ALL_VALID)
    assert forced.tolist() == [[0, BACKGROUND]]


def test_ignore_thresholds_matches_every_anchor():
    match = ArgMaxMatcher(ignore_thresholds=True)(SIM, ALL_VALID)
    assert match.tolist() == [[0, 0, 1, 0, 1]]


def test_padding_rows_never_match_and_empty_image_is_background():
    sim = torch.cat([SIM, SIM])
    valid = torch.tensor([[False, True], [False, False]])
    match = ArgMaxMatcher(0.5, 0.4, force_match_for_each_row=True)(sim, valid)
    # Image 0 only has box 1: a0 0.6 -> 1, a1 0.30 -> bg, a2 -> 1, a3 bg, a4 0.38 -> bg.
    assert match.tolist() == [[1, BACKGROUND, 1, BACKGROUND, BACKGROUND], [BACKGROUND] * 5]


def test_no_rows_at_all():
    match = ArgMaxMatcher()(torch.zeros(2, 0, 4), torch.zeros(2, 0, dtype=torch.bool))
    assert match.tolist() == [[BACKGROUND] * 4] * 2


def test_bad_thresholds_are_config_errors():
    with pytest.raises(ValueError, match="unmatched_threshold"):
        ArgMaxMatcher(matched_threshold=0.4, unmatched_threshold=0.5)
    with pytest.raises(ValueError, match="must differ"):
        ArgMaxMatcher(0.5, 0.5, negatives_lower_than_unmatched=False)
