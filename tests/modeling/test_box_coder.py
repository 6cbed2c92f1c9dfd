"""FasterRcnnBoxCoder: a code worked out by hand, and the encode/decode round trip."""

import math

import torch

from raredet.modeling.box_coder import FasterRcnnBoxCoder


def test_encode_by_hand():
    # Anchor centred (y=10, x=20), h=4, w=8. Box centred (y=12, x=18), h=8, w=8.
    anchor = torch.tensor([[16.0, 8.0, 24.0, 12.0]])
    box = torch.tensor([[14.0, 8.0, 22.0, 16.0]])
    code = FasterRcnnBoxCoder().encode(box, anchor)
    expected = torch.tensor([[10 * 2 / 4, 10 * -2 / 8, 5 * math.log(2.0), 0.0]])
    torch.testing.assert_close(code, expected, atol=1e-5, rtol=1e-5)


def test_custom_scales_divide_out():
    anchor = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    box = torch.tensor([[1.0, 2.0, 11.0, 12.0]])
    code = FasterRcnnBoxCoder(y_scale=1, x_scale=1, height_scale=1, width_scale=1).encode(box, anchor)
    torch.testing.assert_close(code, torch.tensor([[0.2, 0.1, 0.0, 0.0]]), atol=1e-6, rtol=1e-6)


def test_round_trip_random_boxes():
    gen = torch.Generator().manual_seed(0)
    xy = torch.rand(3, 50, 2, generator=gen) * 300
    wh = torch.rand(3, 50, 2, generator=gen) * 100 + 1
    boxes = torch.cat([xy, xy + wh], dim=-1)
    # Anchors near the boxes (within the decoder's size-ratio cap of 62.5).
    shift = (torch.rand(3, 50, 2, generator=gen) - 0.5) * wh
    anchors = torch.cat([xy + shift, xy + shift + wh * (0.5 + torch.rand(3, 50, 2, generator=gen))], dim=-1)
    coder = FasterRcnnBoxCoder()
    assert coder.code_size == 4
    torch.testing.assert_close(coder.decode(coder.encode(boxes, anchors), anchors), boxes, atol=1e-3, rtol=0)


def test_decode_zero_deltas_returns_anchor_and_huge_deltas_stay_finite():
    anchors = torch.tensor([[4.0, 6.0, 20.0, 30.0]])
    coder = FasterRcnnBoxCoder()
    torch.testing.assert_close(coder.decode(torch.zeros(1, 4), anchors), anchors)
    assert torch.isfinite(coder.decode(torch.full((1, 4), 1e4), anchors)).all()
