"""The BiFPN: node topology by the TF OD API's rules, output shapes, projections, the fusion methods and
TF's 'SAME' max pool by hand, refusals of bad levels and sizes."""

import math

import pytest
import torch
from tests.helpers.ssd import conv_hyperparams

from raredet.modeling.bifpn import BiFPN, Combine, bifpn_nodes, max_pool_same


def test_bifpn_node_topology_matches_the_tf_od_api_rules():
    # Written out by hand from the TF OD API's rules for levels 3..7, inputs 3..5, two iterations.
    expected = [
        ("0_up_lvl_6", ["0_up_lvl_5"]),
        ("0_up_lvl_7", ["0_up_lvl_6"]),
        ("1_dn_lvl_6", ["0_up_lvl_6", "0_up_lvl_7"]),
        ("1_dn_lvl_5", ["0_up_lvl_5", "1_dn_lvl_6"]),
        ("1_dn_lvl_4", ["0_up_lvl_4", "1_dn_lvl_5"]),
        ("1_dn_lvl_3", ["0_up_lvl_3", "1_dn_lvl_4"]),
        ("1_up_lvl_4", ["0_up_lvl_4", "1_dn_lvl_4", "1_dn_lvl_3"]),
        ("1_up_lvl_5", ["0_up_lvl_5", "1_dn_lvl_5", "1_up_lvl_4"]),
        ("1_up_lvl_6", ["0_up_lvl_6", "1_dn_lvl_6", "1_up_lvl_5"]),
        ("1_up_lvl_7", ["0_up_lvl_7", "1_up_lvl_6"]),
        ("2_dn_lvl_6", ["1_up_lvl_6", "1_up_lvl_7"]),
        ("2_dn_lvl_5", ["1_up_lvl_5", "2_dn_lvl_6"]),
        ("2_dn_lvl_4", ["1_up_lvl_4", "2_dn_lvl_5"]),
        ("2_dn_lvl_3", ["1_dn_lvl_3", "2_dn_lvl_4"]),  # the bottom level reads the last dn node
        ("2_up_lvl_4", ["1_up_lvl_4", "2_dn_lvl_4", "2_dn_lvl_3"]),
        ("2_up_lvl_5", ["1_up_lvl_5", "2_dn_lvl_5", "2_up_lvl_4"]),
        ("2_up_lvl_6", ["1_up_lvl_6", "2_dn_lvl_6", "2_up_lvl_5"]),
        ("2_up_lvl_7", ["1_up_lvl_7", "2_up_lvl_6"]),
    ]
    assert [(name, inputs) for name, _, inputs in bifpn_nodes(3, 7, 5, 2)] == expected


HP = conv_hyperparams(
    {"activation": "SWISH", "force_use_bias": True, "batch_norm": {"scale": True, "decay": 0.99}}
)


def test_bifpn_output_shapes_per_level_and_odd_sizes():
    torch.manual_seed(0)
    bifpn = BiFPN({3: 24, 4: 40, 5: 80}, HP, 3, 7, num_iterations=2, num_filters=16)
    even = {3: torch.randn(2, 24, 32, 32), 4: torch.randn(2, 40, 16, 16), 5: torch.randn(2, 80, 8, 8)}
    assert [tuple(o.shape) for o in bifpn(even)] == [(2, 16, s, s) for s in (32, 16, 8, 4, 2)]
    # 100 x 76 image: strides 8..32 give ceil(n / 2^k); the extra levels halve rounding up (TF 'SAME').
    odd = {3: torch.randn(1, 24, 13, 10), 4: torch.randn(1, 40, 7, 5), 5: torch.randn(1, 80, 4, 3)}
    assert [tuple(o.shape[-2:]) for o in bifpn(odd)] == [(13, 10), (7, 5), (4, 3), (2, 2), (1, 1)]


def test_bifpn_without_extra_levels():
    # max_level 5 = the backbone's top: no 0_up_lvl_6/7; the first top-down node reads 0_up_lvl_5.
    assert bifpn_nodes(3, 5, 5, 1)[0] == ("1_dn_lvl_4", 4, ["0_up_lvl_4", "0_up_lvl_5"])
    bifpn = BiFPN({3: 24, 4: 40, 5: 80}, HP, 3, 5, num_iterations=2, num_filters=16)
    maps = {3: torch.randn(1, 24, 8, 8), 4: torch.randn(1, 40, 4, 4), 5: torch.randn(1, 80, 2, 2)}
    assert [tuple(o.shape) for o in bifpn(maps)] == [(1, 16, 8, 8), (1, 16, 4, 4), (1, 16, 2, 2)]


def test_bifpn_projects_every_backbone_input_and_only_those():
    # A backbone map whose channels already equal num_filters still gets its 1x1 conv (TF's rule).
    bifpn = BiFPN({3: 16, 4: 16, 5: 16}, HP, 3, 7, num_iterations=1, num_filters=16)
    projected = {
        name: [r.project is not None for r in node.inputs]
        for name, node in zip(bifpn.names[3:], bifpn.nodes, strict=True)
    }
    assert projected["0_up_lvl_6"] == [True]  # from level 5 (backbone)
    assert projected["0_up_lvl_7"] == [False]  # from 0_up_lvl_6 (already 16 channels)
    assert projected["1_up_lvl_4"] == [True, False, False]
    assert projected["1_up_lvl_6"] == [False, False, False]


def test_fast_attention_fusion_by_hand():
    combine = Combine(2, "fast_attention")
    with torch.no_grad():
        combine.weight.copy_(torch.tensor([1.0, 3.0]))
    a, b = torch.full((1, 1, 2, 2), 2.0), torch.full((1, 1, 2, 2), 10.0)
    # relu(w) / (sum relu(w) + 1e-4): (1 * 2 + 3 * 10) / 4.0001
    assert torch.allclose(combine([a, b]), torch.full((1, 1, 2, 2), 32 / 4.0001))
    with torch.no_grad():
        combine.weight.copy_(torch.tensor([-1.0, 2.0]))  # a negative weight counts as 0
    assert torch.allclose(combine([a, b]), torch.full((1, 1, 2, 2), 20 / 2.0001))


def test_other_combine_methods_by_hand():
    a, b = torch.full((1, 1, 1, 1), 2.0), torch.full((1, 1, 1, 1), 10.0)
    assert Combine(2, "sum")([a, b]).item() == 12.0 and Combine(2, "sum").weight is None
    attention = Combine(2, "attention")
    with torch.no_grad():
        attention.weight.copy_(torch.tensor([0.0, math.log(3.0)]))  # softmax -> 1/4, 3/4
    assert attention([a, b]).item() == pytest.approx(0.25 * 2 + 0.75 * 10)
    weighted = Combine(2, "weighted_sum")
    with torch.no_grad():
        weighted.weight.copy_(torch.tensor([-1.0, 0.5]))
    assert weighted([a, b]).item() == pytest.approx(-2 + 5)
    with pytest.raises(ValueError, match="combine_method: unknown 'mean'"):
        Combine(2, "mean")


def test_max_pool_same_pads_bottom_right_as_tf():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    # TF 'SAME', kernel 3, stride 2, n = 4: one padded row/column at the bottom/right, windows
    # rows/cols {0, 1, 2} and {2, 3, pad}: maxima at (2, 2), (2, 3), (3, 2), (3, 3).
    assert max_pool_same(x, 3, 2).flatten().tolist() == [10.0, 11.0, 14.0, 15.0]
    assert max_pool_same(torch.arange(25.0).view(1, 1, 5, 5), 3, 2).shape[-2:] == (3, 3)


def test_bifpn_refuses_bad_levels_and_sizes():
    with pytest.raises(ValueError, match="bifpn: min_level..max_level is 2..7"):
        BiFPN({3: 8, 4: 8, 5: 8}, HP, 2, 7, 1, 8)
    with pytest.raises(ValueError, match="num_iterations \\(0\\)"):
        BiFPN({3: 8, 4: 8, 5: 8}, HP, 3, 7, 0, 8)
