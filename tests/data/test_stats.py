"""Dataset statistics (box and image counts per class, crowd boxes ignored, median box size) by hand."""

from __future__ import annotations

import numpy as np
from tests.helpers.stats import BY_HAND_IMAGES, BoxesOnly

from raredet.config import LabelMap
from raredet.data.stats import compute_stats


def test_stats_by_hand():
    reader = BoxesOnly(BY_HAND_IMAGES)
    lm = LabelMap.from_names(["a", "b"])
    stats = compute_stats(reader, lm)
    assert stats.box_counts.tolist() == [3, 1] and stats.image_counts.tolist() == [2, 1]
    assert stats.ignored_boxes == 1 and stats.num_images == 3 and stats.imbalance_ratio == 3.0
    np.testing.assert_allclose(stats.median_box_size, [4.0, 6.0])
