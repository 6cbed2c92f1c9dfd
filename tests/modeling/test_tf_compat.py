"""TF 'SAME' padding against TensorFlow's own outputs (tests/fixtures/tf_ops/same_padding.npz, written
by TF 2.15.1 with make_same_padding.py beside it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from raredet.modeling.tf_compat import TFSameConv2d, TFSameMaxPool2d, tf_same_pads, use_tf_same_padding

FIXTURE = np.load(Path(__file__).resolve().parents[1] / "fixtures" / "tf_ops" / "same_padding.npz")


def _nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()


@pytest.mark.parametrize(("size", "kernel", "stride", "dilation", "expected"), [
    (8, 3, 2, 1, (0, 1)),   # ceil(8/2)=4 outputs: (4-1)*2+3-8 = 1 -> 0 before, 1 after
    (7, 3, 2, 1, (1, 1)),   # (4-1)*2+3-7 = 2
    (9, 1, 2, 1, (0, 0)),   # (5-1)*2+1-9 = 0
    (8, 3, 1, 2, (2, 2)),   # k_eff 5: (8-1)+5-8 = 4
    (6, 5, 2, 1, (1, 2)),   # (3-1)*2+5-6 = 3
])
def test_pads_by_hand(size, kernel, stride, dilation, expected):
    assert tf_same_pads(size, kernel, stride, dilation) == expected


@pytest.mark.parametrize("case", range(6))
def test_switched_conv_equals_tf(case):
    h, w, k, s, d, depthwise = (int(v) for v in FIXTURE[f"case_{case}_meta"])
    kernel = torch.from_numpy(FIXTURE[f"case_{case}_w"])  # HWIO (depthwise: HW C 1)
    groups = 3 if depthwise else 1
    conv = nn.Conv2d(3, 3 if depthwise else 4, k, s, (k - 1) * d // 2, dilation=d, groups=groups, bias=False)
    with torch.no_grad():
        conv.weight.copy_(kernel.permute(2, 3, 0, 1) if depthwise else kernel.permute(3, 2, 0, 1))
    switched = use_tf_same_padding(conv)
    assert switched == (1 if s > 1 and k > 1 else 0)
    got = conv(_nchw(FIXTURE[f"case_{case}_x"]))
    expected = _nchw(FIXTURE[f"case_{case}_y"])
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_unswitched_strided_conv_differs_from_tf():
    """The reason for the switch: torch's symmetric padding shifts the window on an even side."""
    kernel = torch.from_numpy(FIXTURE["case_0_w"]).permute(3, 2, 0, 1)
    conv = nn.Conv2d(3, 4, 3, 2, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(kernel)
    diff = (conv(_nchw(FIXTURE["case_0_x"])) - _nchw(FIXTURE["case_0_y"])).abs().max()
    assert diff > 0.1


@pytest.mark.parametrize("case", range(2))
def test_switched_max_pool_equals_tf(case):
    pool = nn.Sequential(nn.MaxPool2d(3, 2, 1))
    assert use_tf_same_padding(pool) == 1
    assert isinstance(pool[0], TFSameMaxPool2d)
    got = pool(_nchw(FIXTURE[f"pool_{case}_x"]))
    torch.testing.assert_close(got, _nchw(FIXTURE[f"pool_{case}_y"]))


def test_switch_keeps_names_and_scripts():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, 2, 1), nn.ReLU(), nn.Conv2d(4, 4, 3, 1, 1))
    names = list(model.state_dict())
    assert use_tf_same_padding(model) == 1
    assert isinstance(model[0], TFSameConv2d) and type(model[2]) is nn.Conv2d
    assert list(model.state_dict()) == names
    x = torch.randn(1, 3, 8, 8)
    torch.testing.assert_close(torch.jit.script(model)(x), model(x))


def test_content_mask_marks_trailing_zero_rows_and_columns_as_padding():
    from raredet.modeling.tf_compat import content_mask

    images = torch.zeros(3, 3, 4, 5)
    images[0, :, :3, :4] = 7.0  # a 3x4 image padded to 4x5
    images[0, 1, 1, 1] = 0.0  # a zero pixel inside the content is content
    images[1, 2, 3, 4] = 1.0  # content reaches the corner: no padding
    # images[2]: all zero, kept whole (nothing to tell the image from padding)
    mask = content_mask(images)
    expected0 = torch.zeros(4, 5)
    expected0[:3, :4] = 1.0
    assert mask.shape == (3, 1, 4, 5)
    assert torch.equal(mask[0, 0], expected0)
    assert torch.equal(mask[1, 0], torch.ones(4, 5)) and torch.equal(mask[2, 0], torch.ones(4, 5))
