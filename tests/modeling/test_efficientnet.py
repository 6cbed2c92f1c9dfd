"""The EfficientNet backbones: torchvision's documented parameter counts, names and shapes, the TF OD
API's levels, and drop connect by hand."""


import pytest
import torch

from raredet.modeling.efficientnet import EfficientNet, drop_connect

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
