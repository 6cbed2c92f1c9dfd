"""The SSD module: zoo settings build, anchor counts by the TF OD API's formula, outputs, postprocess."""

import math

import pytest
import torch
from tests.helpers.ssd import ssd_from_dicts, tiny_ssd_kwargs

from raredet.builders import build_box_coder
from raredet.builders.ssd import build_anchor_generator
from raredet.errors import ConfigError
from raredet.modeling.anchors import MultiscaleAnchorGenerator
from raredet.protos import anchor_generator_pb2, box_coder_pb2, ssd_pb2

# Settings of the TF2 model zoo's ssd_mobilenet_v2_fpnlite_320x320 and ssd_resnet50_v1_fpn_640x640
# (num_classes changed), written as dicts shaped like the ssd message.
ZOO_ANCHORS = {
    "multiscale_anchor_generator": {
        "min_level": 3,
        "max_level": 7,
        "anchor_scale": 4.0,
        "aspect_ratios": [1.0, 2.0, 0.5],
        "scales_per_octave": 2,
    }
}
ZOO_POST = {
    "batch_non_max_suppression": {
        "score_threshold": 1e-8,
        "iou_threshold": 0.6,
        "max_detections_per_class": 100,
        "max_total_detections": 100,
        "use_static_shapes": False,
    },
    "score_converter": "SIGMOID",
}


def _hp(l2, initializer, decay):
    return {
        "regularizer": {"l2_regularizer": {"weight": l2}},
        "initializer": initializer,
        "activation": "RELU_6",
        "batch_norm": {"decay": decay, "scale": True, "epsilon": 0.001},
    }


def mobilenet_fpnlite_320(num_classes=5):
    hp = _hp(4e-5, {"random_normal_initializer": {"mean": 0.0, "stddev": 0.01}}, 0.97)
    return dict(
        num_classes=num_classes,
        feature_extractor={
            "type": "ssd_mobilenet_v2_fpn_keras",
            "depth_multiplier": 1.0,
            "min_depth": 16,
            "conv_hyperparams": hp,
            "use_depthwise": True,
            "override_base_feature_extractor_hyperparams": True,
            "fpn": {"min_level": 3, "max_level": 7, "additional_layer_depth": 128},
        },
        box_predictor={
            "weight_shared_convolutional_box_predictor": {
                "conv_hyperparams": hp,
                "depth": 128,
                "num_layers_before_predictor": 4,
                "kernel_size": 3,
                "class_prediction_bias_init": -4.6,
                "share_prediction_tower": True,
                "use_depthwise": True,
            }
        },
        anchor_generator=ZOO_ANCHORS,
        post_processing=ZOO_POST,
        box_coder={
            "faster_rcnn_box_coder": {
                "y_scale": 10.0,
                "x_scale": 10.0,
                "height_scale": 5.0,
                "width_scale": 5.0,
            }
        },
    )


def resnet50_fpn_640(num_classes=5, depth_multiplier=1.0, depth=256):
    fe_hp = _hp(4e-4, {"truncated_normal_initializer": {"mean": 0.0, "stddev": 0.03}}, 0.997)
    bp_hp = _hp(4e-4, {"random_normal_initializer": {"mean": 0.0, "stddev": 0.01}}, 0.997)
    return dict(
        num_classes=num_classes,
        feature_extractor={
            "type": "ssd_resnet50_v1_fpn_keras",
            "depth_multiplier": depth_multiplier,
            "min_depth": 16,
            "conv_hyperparams": fe_hp,
            "override_base_feature_extractor_hyperparams": True,
            "fpn": {"min_level": 3, "max_level": 7, "additional_layer_depth": depth},
        },
        box_predictor={
            "weight_shared_convolutional_box_predictor": {
                "conv_hyperparams": bp_hp,
                "depth": depth,
                "num_layers_before_predictor": 4,
                "kernel_size": 3,
                "class_prediction_bias_init": -4.6,
            }
        },
        anchor_generator=ZOO_ANCHORS,
        post_processing=ZOO_POST,
        box_coder={"faster_rcnn_box_coder": {}},
    )


def _tf_anchor_count(size, levels=range(3, 8), per_cell=6):
    # TF OD API: sum over levels of ceil(H / 2^l) * ceil(W / 2^l) * (ratios x scales).
    return sum(math.ceil(size / 2**lv) ** 2 * per_cell for lv in levels)


def test_mobilenet_fpnlite_320_anchor_count_and_outputs():
    model = ssd_from_dicts(**mobilenet_fpnlite_320()).eval()
    with torch.no_grad():
        out = model(torch.zeros(1, 3, 320, 320, dtype=torch.uint8))
    assert _tf_anchor_count(320) == 12804
    assert out["cls_logits"].shape == (1, 12804, 5)
    assert out["box_deltas"].shape == (1, 12804, 4)
    sizes = [(40, 40), (20, 20), (10, 10), (5, 5), (3, 3)]
    torch.testing.assert_close(
        out["anchors"], MultiscaleAnchorGenerator(3, 7, 4.0, [1, 2, 0.5], 2)((320, 320), sizes)
    )


def test_resnet50_fpn_640_builds_and_counts():
    # On the meta device shapes propagate without arithmetic, so the full-size model runs at 640x640.
    with torch.device("meta"):
        model = ssd_from_dicts(**resnet50_fpn_640()).eval()
    assert model.backbone.layer4[2].conv3.weight.shape == (2048, 512, 1, 1)
    out = model(torch.zeros(1, 3, 640, 640, device="meta"))
    assert _tf_anchor_count(640) == 51150
    assert out["cls_logits"].shape == (1, 51150, 5) and out["anchors"].shape == (51150, 4)


def test_non_fpn_mobilenet_ssd_levels_4_to_9():
    kwargs = mobilenet_fpnlite_320()
    kwargs["feature_extractor"] = {
        "type": "ssd_mobilenet_v2",
        "depth_multiplier": 0.35,
        "min_depth": 16,
        "use_depthwise": True,
        "num_layers": 6,
    }
    kwargs["box_predictor"] = {"convolutional_box_predictor": {"kernel_size": 3, "use_depthwise": True}}
    kwargs["anchor_generator"] = {
        "multiscale_anchor_generator": {"min_level": 4, "max_level": 9, "aspect_ratios": [1.0, 2.0, 0.5]}
    }
    model = ssd_from_dicts(**kwargs).eval()
    with torch.no_grad():
        out = model(torch.zeros(1, 3, 320, 320))
    # Maps 20, 10, 5, 3, 2, 1 (strides 16 .. 512), 6 anchors per cell.
    assert out["cls_logits"].shape[1] == (400 + 100 + 25 + 9 + 4 + 1) * 6


def test_zoo_ssd_mobilenet_v2_300_has_1917_anchors():
    kwargs = mobilenet_fpnlite_320()
    kwargs["feature_extractor"] = {
        "type": "ssd_mobilenet_v2_keras",
        "depth_multiplier": 0.35,
        "min_depth": 16,
    }
    kwargs["box_predictor"] = {"convolutional_box_predictor": {"kernel_size": 1, "use_dropout": False}}
    kwargs["anchor_generator"] = {
        "ssd_anchor_generator": {
            "num_layers": 6,
            "min_scale": 0.2,
            "max_scale": 0.95,
            "aspect_ratios": [1.0, 2.0, 0.5, 3.0, 0.3333],
        }
    }
    with torch.device("meta"):  # shapes only: no arithmetic needed
        model = ssd_from_dicts(**kwargs).eval()
    out = model(torch.zeros(1, 3, 300, 300, device="meta"))
    assert out["cls_logits"].shape == (1, 1917, 5) and out["anchors"].shape == (1917, 4)


def test_unknown_type_lists_valid_ones(tiny_ssd):
    with pytest.raises(ConfigError, match=r"ssd_resnet7_v1_fpn.*ssd_mobilenet_v2_fpn.*ssd_resnet18_v1_fpn"):
        tiny_ssd(extractor="ssd_resnet7_v1_fpn")


def test_anchor_levels_must_match_the_fpn(tiny_ssd):
    with pytest.raises(ConfigError, match=r"3\.\.6 but the feature extractor gives levels 3\.\.7"):
        tiny_ssd(anchor_max_level=6)


def tiny_ssd_kwargs_for_ssd_anchors():
    kwargs = mobilenet_fpnlite_320()
    kwargs["anchor_generator"] = {"ssd_anchor_generator": {"num_layers": 5}}
    return kwargs


def test_unsupported_choices_are_config_errors(tiny_ssd):
    with pytest.raises(ConfigError, match="multiscale_anchor_generator"):
        grid = anchor_generator_pb2.GridAnchorGenerator()
        build_anchor_generator(anchor_generator_pb2.AnchorGenerator(grid_anchor_generator=grid))
    with pytest.raises(ConfigError, match="same number of anchors per cell"):
        kwargs = tiny_ssd_kwargs_for_ssd_anchors()
        ssd_from_dicts(**kwargs)
    with pytest.raises(ConfigError, match="faster_rcnn_box_coder"):
        coder = box_coder_pb2.BoxCoder(mean_stddev_box_coder=box_coder_pb2.MeanStddevBoxCoder())
        build_box_coder(ssd_pb2.Ssd(box_coder=coder))


def test_a_part_refusing_its_fields_is_a_config_error_with_the_field_path():
    kwargs = tiny_ssd_kwargs()
    del kwargs["box_predictor"]["weight_shared_convolutional_box_predictor"]["depth"]
    where = r"^model\.ssd\.box_predictor\.weight_shared_convolutional_box_predictor"
    with pytest.raises(ConfigError, match=where + ": num_layers_before_predictor is 1, so depth must be"):
        ssd_from_dicts(**kwargs)


def test_uint8_and_float_inputs_agree_and_gradients_flow(tiny_ssd):
    model = tiny_ssd().eval()
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    a = model(images)
    b = model(images.float())
    torch.testing.assert_close(a["cls_logits"], b["cls_logits"])
    (a["cls_logits"].sum() + a["box_deltas"].sum()).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_postprocess_hand_made_outputs(tiny_ssd):
    model = tiny_ssd()
    anchors = torch.tensor([[10.0, 10, 30, 30], [-4.0, 50, 20, 80], [40.0, 40, 50, 50]])
    logits = torch.full((1, 3, 3), -20.0)
    logits[0, 1, 2] = 3.0  # anchor 1, class 2
    logits[0, 0, 0] = 1.0  # anchor 0, class 0
    outputs = {"cls_logits": logits, "box_deltas": torch.zeros(1, 3, 4), "anchors": anchors}
    det = model.postprocess(outputs, torch.tensor([[64, 60]]))
    assert det["detection_boxes"].shape == (1, 20, 4)
    scores = det["detection_scores"][0]
    torch.testing.assert_close(scores[:2], torch.sigmoid(torch.tensor([3.0, 1.0])))
    assert det["detection_classes"][0, :2].tolist() == [2, 0]
    # Anchor 1 is clipped to the 60-wide, 64-high image.
    assert det["detection_boxes"][0, 0].tolist() == [0, 50, 20, 64]
    assert det["detection_boxes"][0, 1].tolist() == [10, 10, 30, 30]


def test_l2_weights_name_real_parameters(tiny_ssd):
    model = tiny_ssd()
    weights = model.l2_weights()
    params = dict(model.named_parameters())
    assert weights and set(weights) <= set(params)
    assert all(params[n].dim() == 4 for n in weights) and not any(n.endswith("bias") for n in weights)
    # No override_base_feature_extractor_hyperparams: the backbone keeps the TF OD API Keras ResNet's
    # own l2(1e-4), i.e. 2e-4 as a conv_hyperparams weight; the rest has the config's 4e-5.
    backbone = {w for n, w in weights.items() if n.startswith("feature_extractor.backbone.")}
    rest = {w for n, w in weights.items() if not n.startswith("feature_extractor.backbone.")}
    assert backbone == {2e-4} and rest == {4e-5}
    assert "feature_extractor.backbone.conv1.weight" in weights
    kwargs = tiny_ssd_kwargs()
    kwargs["feature_extractor"]["override_base_feature_extractor_hyperparams"] = True
    assert set(ssd_from_dicts(**kwargs).l2_weights().values()) == {4e-5}


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.trace's own deprecation notice
def test_traces_with_anchors_as_an_output(tiny_ssd):
    model = tiny_ssd().eval()
    images = torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8)
    model(images)  # fills the anchor cache first: the trace must still build its own anchors
    with pytest.warns(torch.jit.TracerWarning):
        traced = torch.jit.trace(model, images, strict=False)
    expected, got = model(images), traced(images)
    for key in ("cls_logits", "box_deltas", "anchors"):
        torch.testing.assert_close(got[key], expected[key])


def test_backbone_initialisation_follows_the_override():
    torch.manual_seed(0)
    kwargs = tiny_ssd_kwargs(extractor="ssd_resnet50_v1_fpn")
    kwargs["feature_extractor"]["depth_multiplier"] = 1.0
    layer = ssd_from_dicts(**kwargs).backbone.layer3[0].conv2.weight  # 256 x 256 x 3 x 3
    # No override: the TF OD API Keras ResNet's own variance scaling, factor 1, fan in 256 * 9
    # (truncated normal, rescaled so the std is the target).
    assert layer.std().item() == pytest.approx(math.sqrt(1 / 2304), rel=0.03)
    kwargs["feature_extractor"]["override_base_feature_extractor_hyperparams"] = True
    layer = ssd_from_dicts(**kwargs).backbone.layer3[0].conv2.weight
    assert layer.std().item() == pytest.approx(0.01, rel=0.03)  # the config's random_normal(0.01)


def test_mobilenet_v1_fpn_depthwise_narrows_the_top_and_scales_the_fpn():
    kwargs = tiny_ssd_kwargs(extractor="ssd_mobilenet_v1_fpn_keras", depth=64)
    kwargs["feature_extractor"].update(depth_multiplier=0.5, min_depth=8, use_depthwise=True)
    model = ssd_from_dicts(**kwargs)
    # The Keras MobileNetV1 of the TF OD API scales a width twice (int(int(c * 0.5) * 0.5): the Keras
    # application, then the OD API's layer override; its checkpoints, tests/fixtures/tf_models/
    # ssd_mobilenet_v1_fpn, have these shapes), except the widths its conv_defs set: with use_depthwise
    # the last two pointwise convs are 512 and 256, scaled once, as the TF OD API's FPN-lite.
    assert model.backbone.out_channels == {2: 32, 3: 64, 4: 128, 5: 128}
    # FPN depth: max(int(64 * 0.5), 8) = 32; separable smoothing (depthwise + pointwise).
    assert model.feature_extractor.out_channels == [32] * 5
    smoothing = model.feature_extractor.fpn.smoothing[0]
    assert smoothing[0].groups == 32 and smoothing[1].kernel_size == (1, 1)
    with torch.no_grad():
        out = model.eval()(torch.zeros(1, 3, 128, 128))
    assert out["cls_logits"].shape == (1, 6 * (16 * 16 + 8 * 8 + 4 * 4 + 2 * 2 + 1), 3)
