"""Anchor positions and counts worked out by hand."""

import math

import pytest
import torch

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
    with pytest.raises(ValueError, match="max_level"):
        MultiscaleAnchorGenerator(5, 4)
    with pytest.raises(ValueError, match="aspect_ratios"):
        MultiscaleAnchorGenerator(aspect_ratios=[])


def test_ssd_anchor_generator_by_hand():
    from raredet.modeling.anchors import SsdAnchorGenerator

    gen = SsdAnchorGenerator(num_layers=2, min_scale=0.2, max_scale=0.6, aspect_ratios=[1.0, 4.0])
    assert gen.num_anchors_per_location == [3, 3]
    anchors = gen((100, 200), [(2, 4), (1, 2)])
    assert anchors.shape == ((8 + 2) * 3, 4)
    # Layer 0 (reduced): (0.1, 1), (0.2, 2), (0.2, 0.5) of min side 100, cell (0, 0) centred at (25, 25).
    r2 = math.sqrt(2)
    expected0 = torch.tensor(
        [
            [25 - 5, 25 - 5, 25 + 5, 25 + 5],
            [25 - 10 * r2, 25 - 10 / r2, 25 + 10 * r2, 25 + 10 / r2],
            [25 - 10 / r2, 25 - 10 * r2, 25 + 10 / r2, 25 + 10 * r2],
        ]
    )
    torch.testing.assert_close(anchors[:3], expected0)
    # Layer 1: scale 0.6 with ratios 1 and 4, then sqrt(0.6 * 1.0) at ratio 1; cell (0, 1) centred (150, 50).
    s = math.sqrt(0.6) * 100 / 2
    expected1 = torch.tensor(
        [
            [150 - 30, 50 - 30, 150 + 30, 50 + 30],
            [150 - 60, 50 - 15, 150 + 60, 50 + 15],
            [150 - s, 50 - s, 150 + s, 50 + s],
        ]
    )
    torch.testing.assert_close(anchors[-3:], expected1)


def test_ssd_anchor_generator_zoo_count_1917_at_300():
    from raredet.modeling.anchors import SsdAnchorGenerator

    gen = SsdAnchorGenerator()  # zoo defaults: 6 layers, ratios 1, 2, 0.5, 3, 1/3 + interpolated
    sizes = [(19, 19), (10, 10), (5, 5), (3, 3), (2, 2), (1, 1)]
    assert gen((300, 300), sizes).shape == (19 * 19 * 3 + (100 + 25 + 9 + 4 + 1) * 6, 4) == (1917, 4)


def test_ssd_anchor_generator_bad_lengths():
    from raredet.modeling.anchors import SsdAnchorGenerator

    with pytest.raises(ValueError, match="height_stride"):
        SsdAnchorGenerator(num_layers=3, height_stride=[8, 16])
