"""The side-by-side verdict's statistics (bench/tf_side_by_side.py), on values worked by hand."""

from __future__ import annotations

import pytest
from bench.tf_side_by_side import own_seeds_within, permutation_p, within


def test_within_widens_the_range_by_half() -> None:
    # reference 1..3: range 2, widened by 1 on each side -> [0, 4]
    assert within([0.0, 4.0, -0.01, 4.01, 2.0], [1.0, 3.0, 2.0]) == 3


def test_own_seeds_within_leaves_each_out() -> None:
    # leave 1 out: [2, 3] -> [1.5, 3.5], 1 outside; leave 2 out: [1, 3] -> [0, 4], inside;
    # leave 3 out: [1, 2] -> [0.5, 2.5], outside
    assert own_seeds_within([1.0, 2.0, 3.0]) == 1
    # with 10: leaving 1, 2 or 3 out keeps a range of 8 or 9 (widened to about -2..14), all inside;
    # leaving 10 out: [1, 2, 3] -> [0, 4], outside
    assert own_seeds_within([1.0, 2.0, 3.0, 10.0]) == 3


def test_permutation_p_by_hand() -> None:
    # [1, 2, 3] against [4, 5, 6]: of the C(6, 3) = 20 splits only this one and its mirror have means
    # 3 apart, so p = 2 / 20
    assert permutation_p([1.0, 2.0, 3.0], [4.0, 5.0, 6.0]) == pytest.approx(0.1)
    # identical groups: every split is at least as extreme as a difference of 0
    assert permutation_p([1.0, 1.0], [1.0, 1.0]) == 1.0
    # [0, 3] against [1, 2]: splits {0,3}|{1,2} and mirror differ by 0; {0,1}|{2,3} and mirror by 2;
    # {0,2}|{1,3} and mirror by 1 -> all 6 at least 0 -> p = 1; and [0, 1] against [2, 3]: 2 of 6
    assert permutation_p([0.0, 3.0], [1.0, 2.0]) == 1.0
    assert permutation_p([0.0, 1.0], [2.0, 3.0]) == pytest.approx(2 / 6)
