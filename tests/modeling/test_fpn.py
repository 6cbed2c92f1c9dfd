"""The FPN: levels and shapes, the top-down path, FPN-lite's separable convs; SSD's extra layers."""


import torch
from tests.helpers.ssd import conv_hyperparams
from torch import nn

from raredet.modeling.fpn import FeaturePyramid, SsdExtraLayers

HP = conv_hyperparams({"batch_norm": {"scale": True}, "activation": "RELU_6"})


def _backbone_maps(size=64):
    return {lv: torch.randn(1, 4 * lv, size // 2**lv, size // 2**lv) for lv in (2, 3, 4, 5)}


def test_fpn_levels_3_to_7_shapes():
    fpn = FeaturePyramid({2: 8, 3: 12, 4: 16, 5: 20}, HP, 3, 7, 24)
    out = fpn.eval()(_backbone_maps(64))
    assert [tuple(t.shape) for t in out] == [
        (1, 24, 8, 8),
        (1, 24, 4, 4),
        (1, 24, 2, 2),
        (1, 24, 1, 1),
        (1, 24, 1, 1),
    ]
    assert fpn.out_channels == [24] * 5
    assert len(fpn.extra) == 2 and len(fpn.smoothing) == 2


def test_fpn_top_down_reaches_the_finest_level_and_handles_odd_sizes():
    fpn = FeaturePyramid({3: 4, 4: 4, 5: 4}, HP, 3, 5, 8).eval()
    maps = {
        3: torch.zeros(1, 4, 13, 13),
        4: torch.zeros(1, 4, 7, 7),
        5: torch.randn(1, 4, 4, 4, requires_grad=True),
    }
    out = fpn(maps)
    assert [t.shape[-1] for t in out] == [13, 7, 4]
    out[0].sum().backward()
    assert maps[5].grad.abs().sum() > 0  # P3 depends on C5 through the top-down path


def test_fpn_lite_uses_depthwise_convs():
    fpn = FeaturePyramid({3: 8, 4: 8, 5: 8}, HP, 3, 6, 16, use_depthwise=True)
    # levels 3..5 from the backbone, 6 an extra layer: 2 smoothing convs (levels 3, 4) and 1 extra
    assert (len(fpn.smoothing), len(fpn.extra)) == (2, 1)
    for block in [*fpn.smoothing, *fpn.extra]:  # each: depthwise 3x3 (16 groups), then pointwise 1x1
        convs = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
        assert [(c.kernel_size, c.groups, c.in_channels, c.out_channels) for c in convs] == [
            ((3, 3), 16, 16, 16), ((1, 1), 1, 16, 16)]
    for proj in fpn.projections:  # the 1x1 laterals stay plain convs
        convs = [m for m in proj.modules() if isinstance(m, nn.Conv2d)]
        assert [(c.kernel_size, c.groups) for c in convs] == [((1, 1), 1)]
    # so every 3x3 conv of the FPN is depthwise, and there are exactly 3
    spatial = [m for m in fpn.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(spatial) == 3 and all(c.groups == c.in_channels for c in spatial)


def test_ssd_extra_layers_halve_each_time():
    extra = SsdExtraLayers(32, [24, 16], HP).eval()
    out = extra(torch.zeros(1, 32, 10, 10))
    assert [tuple(t.shape) for t in out] == [(1, 24, 5, 5), (1, 16, 3, 3)]
