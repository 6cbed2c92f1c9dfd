"""Anchor positions and counts worked out by hand."""

import math

import pytest
import torch

from raredet.errors import ConfigError
from raredet.modeling.anchors import MultiscaleAnchorGenerator


def _retinanet_sizes(image: int, levels=range(3, 8)):
    return [(math.ceil(image / 2**lv), math.ceil(image / 2**lv)) for lv in levels]


def test_count_320_levels_3_to_7():
    gen = MultiscaleAnchorGenerator(3, 7, 4.0, [1.0, 2.0, 0.5], 2)
    sizes = _retinanet_sizes(320)
    assert sizes == [(40, 40), (20, 20), (10, 10), (5, 5), (3, 3)]
    # (1600 + 400 + 100 + 25 + 9) cells x 6 anchors
    assert gen((320, 320), sizes).shape == (12804, 4)


def test_count_640_levels_3_to_7():
    gen = MultiscaleAnchorGenerator(3, 7, 4.0, [1.0, 2.0, 0.5], 2)
    # (6400 + 1600 + 400 + 100 + 25) x 6
    assert gen((640, 640), _retinanet_sizes(640)).shape == (51150, 4)


def test_first_cell_positions_by_hand():
    gen = MultiscaleAnchorGenerator(3, 3, 4.0, [1.0, 2.0], 2)
    anchors = gen((16, 16), [(2, 2)])
    # Level 3: stride 8, centre of cell (0, 0) at (4, 4); base 32; scales 1, sqrt(2).
    s2 = math.sqrt(2)
    h_r2, w_r2 = 32 / s2, 32 * s2
    expected_first_cell = torch.tensor(
        [
            [4 - 16, 4 - 16, 4 + 16, 4 + 16],  # ratio 1, scale 1
            [4 - 16 * s2, 4 - 16 * s2, 4 + 16 * s2, 4 + 16 * s2],  # ratio 1, scale sqrt 2
            [4 - w_r2 / 2, 4 - h_r2 / 2, 4 + w_r2 / 2, 4 + h_r2 / 2],  # ratio 2, scale 1
            [4 - w_r2 * s2 / 2, 4 - h_r2 * s2 / 2, 4 + w_r2 * s2 / 2, 4 + h_r2 * s2 / 2],
        ]
    )
    torch.testing.assert_close(anchors[:4], expected_first_cell)
    # Next cell along the row (x + 8), then the next row (y + 8).
    torch.testing.assert_close(anchors[4:8], expected_first_cell + torch.tensor([8.0, 0, 8, 0]))
    torch.testing.assert_close(anchors[8:12], expected_first_cell + torch.tensor([0.0, 8, 0, 8]))


def test_offset_zero_when_stride_does_not_divide_side():
    gen = MultiscaleAnchorGenerator(3, 3, 1.0, [1.0], 1)
    anchors = gen((20, 16), [(3, 2)])
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    # 20 % 8 != 0: rows centred at 0, 8, 16; 16 % 8 == 0: columns at 4, 12.
    assert centres[:, 1].tolist() == [0, 0, 8, 8, 16, 16]
    assert centres[:, 0].tolist() == [4, 12, 4, 12, 4, 12]


def test_cached_per_size():
    gen = MultiscaleAnchorGenerator(3, 4, 4.0, [1.0], 1)
    a = gen((64, 64), [(8, 8), (4, 4)])
    assert gen((64, 64), [(8, 8), (4, 4)]) is a
    assert gen((32, 32), [(4, 4), (2, 2)]) is not a


def test_bad_settings_are_config_errors():
    with pytest.raises(ConfigError, match="max_level"):
        MultiscaleAnchorGenerator(5, 4)
    with pytest.raises(ConfigError, match="aspect_ratios"):
        MultiscaleAnchorGenerator(aspect_ratios=[])
