"""EfficientNet backbones, the BiFPN and the EfficientDet extractor: expectations from torchvision's
documented parameter counts, the TF OD API's node rules and hand computation."""

import math

import pytest
import torch
from tests.helpers.ssd import conv_hyperparams, ssd_from_dicts

from raredet.errors import ConfigError
from raredet.modeling.bifpn import BiFPN, Combine, bifpn_nodes, max_pool_same
from raredet.modeling.efficientnet import EfficientNet, drop_connect
from raredet.modeling.pretrained import load_fine_tune_checkpoint

# torchvision.models.EfficientNet_B<N>_Weights.IMAGENET1K_V1.meta["num_params"] (classifier included).
TORCHVISION_NUM_PARAMS = {
    "b0": 5_288_548,
    "b1": 7_794_184,
    "b2": 9_109_994,
    "b3": 12_233_232,
    "b4": 19_341_616,
    "b5": 30_389_784,
    "b6": 43_040_704,
    "b7": 66_347_960,
}
# torchvision's final 1x1 conv: 4 x the last stage's width (320 * width rounded to a multiple of 8).
LAST_CONV = {"b0": 1280, "b1": 1280, "b2": 1408, "b3": 1536, "b4": 1792, "b5": 2048, "b6": 2304, "b7": 2560}


def _count(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("variant", sorted(TORCHVISION_NUM_PARAMS))
def test_full_network_has_torchvisions_parameter_count(variant):
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        net = EfficientNet(variant, full=True)
    classifier = LAST_CONV[variant] * 1000 + 1000  # Linear(last, 1000)
    assert _count(net) + classifier == TORCHVISION_NUM_PARAMS[variant]


def test_b0_detection_backbone_is_features_0_to_7():
    # b0's level taps are its stage ends: everything but features.8 (320 -> 1280 1x1 conv + BN) is used.
    with torch.device("meta"):
        net = EfficientNet("b0")
    features_8 = 320 * 1280 + 2 * 1280
    assert _count(net) == 5_288_548 - (1280 * 1000 + 1000) - features_8 == 3_595_388
    assert not any(k.startswith("features.8") for k in net.state_dict())


def test_state_dict_names_and_shapes_are_torchvisions():
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in EfficientNet("b0").state_dict().items()}
    expected = {
        "features.0.0.weight": (32, 3, 3, 3),  # stem conv
        "features.0.1.running_var": (32,),
        "features.1.0.block.0.0.weight": (32, 1, 3, 3),  # expand ratio 1: depthwise first
        "features.1.0.block.1.fc1.weight": (8, 32, 1, 1),  # squeeze-excitation 32 -> 32 // 4
        "features.1.0.block.1.fc2.bias": (32,),
        "features.1.0.block.2.0.weight": (16, 32, 1, 1),  # project
        "features.2.0.block.0.0.weight": (96, 16, 1, 1),  # expand 16 * 6
        "features.2.0.block.1.0.weight": (96, 1, 3, 3),
        "features.2.0.block.2.fc1.weight": (4, 96, 1, 1),  # squeeze 16 // 4
        "features.3.1.block.1.0.weight": (240, 1, 5, 5),  # stage 3: 5x5
        "features.7.0.block.3.1.num_batches_tracked": (),
    }
    assert {k: shapes.get(k) for k in expected} == expected


def test_deeper_variants_stop_at_the_tf_od_api_level_5_block():
    # b3: depth 1.4 gives stage 7 ceil(1.4) = 2 blocks; the TF OD API taps block 0 (stack_6/block_0).
    with torch.device("meta"):
        names = EfficientNet("b3").state_dict()
        full = EfficientNet("b3", full=True).state_dict()
    assert any(k.startswith("features.7.0.") for k in names)
    assert not any(k.startswith("features.7.1.") or k.startswith("features.8") for k in names)
    assert any(k.startswith("features.7.1.") for k in full)


def test_levels_strides_and_channels():
    torch.manual_seed(0)
    net = EfficientNet("b0").eval()
    with torch.no_grad():
        out = net(torch.randn(1, 3, 96, 64))
    assert [tuple(out[lv].shape) for lv in (3, 4, 5)] == [
        (1, c, 96 // 2**lv, 64 // 2**lv) for c, lv in zip([40, 112, 320], (3, 4, 5), strict=True)
    ]
    with torch.device("meta"):  # b3 = width 1.2: 40 -> 48, 112 -> 134.4 -> 136, 320 -> 384
        b3 = EfficientNet("b3")
    assert [b3.out_channels[lv] for lv in (3, 4, 5)] == [48, 136, 384]
    taps = ((3, 1), (5, 2), (7, 0))
    assert [b3.features[s][b].block[-1][0].out_channels for s, b in taps] == [48, 136, 384]


def test_torchvision_state_dict_loads_into_an_efficientdet_by_name(tmp_path):
    torch.manual_seed(2)
    state = {
        k: torch.randn_like(v, dtype=torch.float32) if v.is_floating_point() else v
        for k, v in EfficientNet("b0", full=True).state_dict().items()
    }
    state["classifier.1.weight"], state["classifier.1.bias"] = torch.randn(1000, 1280), torch.randn(1000)
    torch.save(state, tmp_path / "efficientnet_b0.pth")
    model = ssd_from_dicts(**efficientdet_kwargs())
    report = load_fine_tune_checkpoint(model, tmp_path / "efficientnet_b0.pth", "classification")
    assert report.missing == [] and report.shape_mismatch == []
    assert sorted(report.unexpected) == sorted(
        ["classifier.1.weight", "classifier.1.bias"] + [k for k in state if k.startswith("features.8.")]
    )
    loaded = model.backbone.state_dict()
    assert all(torch.equal(loaded[k], state[k]) for k in report.loaded)


def test_drop_connect_drops_whole_samples_and_rescales():
    torch.manual_seed(0)
    out = drop_connect(torch.ones(400, 2, 3, 3), 0.25, training=True)
    per_sample = out.flatten(1)
    assert torch.all(per_sample == per_sample[:, :1])  # one decision per sample
    assert set(per_sample[:, 0].tolist()) == {0.0, float(torch.tensor(1 / 0.75))}
    assert 0.15 < (per_sample[:, 0] == 0).float().mean() < 0.35
    assert torch.equal(drop_connect(torch.ones(4, 2), 0.25, training=False), torch.ones(4, 2))


def test_drop_connect_rates_follow_the_tf_schedule():
    # p_i = 0.2 * i / N for the i-th block, N = the variant's block count: 23 for b1 (ceil(1.1 * r) of
    # b0's repeats 1, 2, 2, 3, 3, 4, 1). TF 2.15's efficientnet-b1 has these Dropout rates:
    # stack_0/block_1/drop 0.2 / 23 = 0.0087, stack_6/block_1/drop 0.2 * 22 / 23 = 0.1913.
    with torch.device("meta"):
        blocks = [b for stage in EfficientNet("b1", full=True).features[1:8] for b in stage]
    assert len(blocks) == 23
    assert [b.drop_prob for b in blocks[:3]] == [0.0, 0.2 / 23, 0.4 / 23]
    assert blocks[-1].drop_prob == pytest.approx(0.19130434782608696)
    with torch.device("meta"):  # the detection backbone stops at stack_6/block_0 with the same rates
        detection = [b for stage in EfficientNet("b1").features[1:] for b in stage]
    assert [b.drop_prob for b in detection] == [b.drop_prob for b in blocks[:22]]


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


def test_bifpn_refusal_is_a_config_error_with_the_field_path():
    kwargs = efficientdet_kwargs()
    kwargs["feature_extractor"]["bifpn"]["combine_method"] = "mean"
    where = r"^model\.ssd\.feature_extractor\.bifpn\.combine_method"
    with pytest.raises(ConfigError, match=where + ": unknown 'mean'"):
        ssd_from_dicts(**kwargs)


EFFDET_HP = {
    "force_use_bias": True,
    "activation": "SWISH",
    "regularizer": {"l2_regularizer": {"weight": 4e-5}},
    "initializer": {"truncated_normal_initializer": {"stddev": 0.03}},
    "batch_norm": {"scale": True, "decay": 0.99, "epsilon": 0.001},
}


def efficientdet_kwargs(variant="b0", iterations=1, filters=16, depth=16, layers=1):
    head_hp = dict(EFFDET_HP, initializer={"random_normal_initializer": {"stddev": 0.01}})
    return dict(
        num_classes=3,
        feature_extractor={
            "type": f"ssd_efficientnet-{variant}_bifpn_keras",
            "conv_hyperparams": EFFDET_HP,
            "bifpn": {"min_level": 3, "max_level": 7, "num_iterations": iterations, "num_filters": filters},
        },
        box_predictor={
            "weight_shared_convolutional_box_predictor": {
                "depth": depth,
                "class_prediction_bias_init": -4.6,
                "conv_hyperparams": head_hp,
                "num_layers_before_predictor": layers,
                "kernel_size": 3,
                "use_depthwise": True,
            }
        },
        anchor_generator={
            "multiscale_anchor_generator": {
                "min_level": 3,
                "max_level": 7,
                "anchor_scale": 4.0,
                "aspect_ratios": [1.0, 2.0, 0.5],
                "scales_per_octave": 3,
            }
        },
        post_processing={"score_converter": "SIGMOID"},
    )


def test_efficientdet_forward_anchor_count_by_hand():
    torch.manual_seed(0)
    model = ssd_from_dicts(**efficientdet_kwargs()).eval()
    with torch.no_grad():
        out = model(torch.zeros(1, 3, 128, 128))
    # levels 3..7 on 128: 16, 8, 4, 2, 1 cells a side; 3 scales x 3 aspect ratios per cell.
    anchors = sum((128 // 2**lv) ** 2 for lv in range(3, 8)) * 3 * 3
    assert anchors == (256 + 64 + 16 + 4 + 1) * 9 == 3069
    assert out["anchors"].shape == (anchors, 4)
    assert out["cls_logits"].shape == (1, anchors, 3) and out["box_deltas"].shape == (1, anchors, 4)


def test_efficientdet_regularised_set_is_the_tf_od_apis():
    model = ssd_from_dicts(**efficientdet_kwargs())
    l2 = model.l2_weights()
    names = dict(model.named_parameters())
    # EfficientNet: non-depthwise conv kernels and the squeeze-excitation biases at 1e-5 (keras l2(5e-6)).
    assert l2["feature_extractor.backbone.features.0.0.weight"] == 1e-5
    assert l2["feature_extractor.backbone.features.1.0.block.1.fc1.bias"] == 1e-5
    assert "feature_extractor.backbone.features.1.0.block.0.0.weight" not in l2  # depthwise
    assert "feature_extractor.backbone.features.0.1.weight" not in l2  # batch norm
    # BiFPN: every conv kernel, the separable convs' depthwise ones included; no biases, no fusion weights.
    assert l2["feature_extractor.bifpn.nodes.2.post.1.0.weight"] == 4e-5  # depthwise 3x3
    assert l2["feature_extractor.bifpn.nodes.2.post.1.1.weight"] == 4e-5  # pointwise
    assert "feature_extractor.bifpn.nodes.2.post.1.1.bias" not in l2
    assert "feature_extractor.bifpn.nodes.2.combine.weight" not in l2
    assert all(name in names for name in l2)
    backbone_convs = [m for m in model.backbone.modules() if isinstance(m, torch.nn.Conv2d)]
    depthwise = [m for m in backbone_convs if m.groups > 1]
    se_biases = [m for m in backbone_convs if m.bias is not None]
    assert len([k for k in l2 if k.startswith("feature_extractor.backbone.")]) == (
        len(backbone_convs) - len(depthwise) + len(se_biases)
    )


def test_bifpn_on_another_extractor_is_a_config_error():
    kwargs = efficientdet_kwargs()
    kwargs["feature_extractor"]["type"] = "ssd_resnet18_v1_fpn"
    with pytest.raises(ConfigError, match="bifpn: only the EfficientDet .* not 'ssd_resnet18_v1_fpn'"):
        ssd_from_dicts(**kwargs)


def test_efficientdet_unsupported_fields_are_config_errors():
    kwargs = efficientdet_kwargs()
    kwargs["feature_extractor"] = dict(kwargs["feature_extractor"], use_depthwise=True)
    with pytest.raises(ConfigError, match="use_depthwise: not supported by ssd_efficientnet-b0_bifpn"):
        ssd_from_dicts(**kwargs)
    kwargs["feature_extractor"] = dict(efficientdet_kwargs()["feature_extractor"], depth_multiplier=0.5)
    with pytest.raises(ConfigError, match="feature_extractor.depth_multiplier"):
        ssd_from_dicts(**kwargs)


@pytest.mark.parametrize("variant", ["b0", "b3", "b7"])
def test_same_names_shapes_and_outputs_as_torchvision_when_installed(variant):
    # torchvision is not a raredet dependency; where it is installed this checks against the real thing.
    tv_efficientnet = pytest.importorskip("torchvision.models.efficientnet")
    with torch.device("meta"):
        ref = getattr(tv_efficientnet, f"efficientnet_{variant}")()
        mine = EfficientNet(variant, full=True)
    shapes = {k: tuple(t.shape) for k, t in ref.state_dict().items() if not k.startswith("classifier.")}
    assert shapes == {k: tuple(t.shape) for k, t in mine.state_dict().items()}
    if variant != "b0":
        return
    torch.manual_seed(0)
    ref, mine = tv_efficientnet.efficientnet_b0().eval(), EfficientNet("b0", levels=(5,), full=True).eval()
    with torch.no_grad():
        for k, t in ref.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.rand_like(t) + 0.5 if "running_var" in k else torch.randn_like(t) * 0.2)
    mine.load_state_dict({k: v for k, v in ref.state_dict().items() if not k.startswith("classifier.")})
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(mine(x)[5], ref.features[:8](x))
