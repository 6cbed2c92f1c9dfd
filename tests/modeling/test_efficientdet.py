"""The EfficientDet extractor (EfficientNet + BiFPN in an SSD): a torchvision checkpoint loads by name,
the anchor count and the regularised set by hand, config errors with the field path (the backbone and
the BiFPN alone: test_efficientnet.py, test_bifpn.py)."""


import pytest
import torch
from tests.helpers.ssd import ssd_from_dicts

from raredet.errors import ConfigError
from raredet.modeling.efficientnet import EfficientNet
from raredet.modeling.pretrained import load_checkpoint_weights


def test_torchvision_state_dict_loads_into_an_efficientdet_by_name(tmp_path):
    torch.manual_seed(2)
    state = {
        k: torch.randn_like(v, dtype=torch.float32) if v.is_floating_point() else v
        for k, v in EfficientNet("b0", full=True).state_dict().items()
    }
    state["classifier.1.weight"], state["classifier.1.bias"] = torch.randn(1000, 1280), torch.randn(1000)
    torch.save(state, tmp_path / "efficientnet_b0.pth")
    model = ssd_from_dicts(**efficientdet_kwargs())
    report = load_checkpoint_weights(model, tmp_path / "efficientnet_b0.pth", "classification")
    assert report.missing == [] and report.shape_mismatch == []
    assert sorted(report.unexpected) == sorted(
        ["classifier.1.weight", "classifier.1.bias"] + [k for k in state if k.startswith("features.8.")]
    )
    loaded = model.backbone.state_dict()
    assert all(torch.equal(loaded[k], state[k]) for k in report.loaded)


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
