"""GridAnchorGenerator (Faster R-CNN's first-stage anchors) against hand-computed corners."""

from __future__ import annotations

import torch

from raredet.modeling.grid_anchors import GridAnchorGenerator


def test_grid_anchors_by_hand():
    gen = GridAnchorGenerator(height=256, width=256, height_stride=16, width_stride=16,
                              scales=[0.5], aspect_ratios=[1.0, 4.0])
    anchors = gen((1, 2))
    # cell (0, 0) centred at (0, 0): ratio 1 -> 128 x 128; ratio 4 -> h 128/2 = 64, w 128*2 = 256
    expected = torch.tensor([[-64, -64, 64, 64], [-128, -32, 128, 32],
                             [-48, -64, 80, 64], [-112, -32, 144, 32]], dtype=torch.float32)
    assert torch.equal(anchors, expected)
