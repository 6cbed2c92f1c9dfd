"""Small SSD configurations (plain dicts shaped like the `ssd` message) shared by the modeling tests."""

import pytest
from tests.helpers.ssd import ssd_from_dicts

TINY_HP = {
    "activation": "RELU_6",
    "regularizer": {"l2_regularizer": {"weight": 4e-5}},
    "initializer": {"random_normal_initializer": {"stddev": 0.01}},
    "batch_norm": {"decay": 0.97, "scale": True, "epsilon": 0.001},
}


def tiny_ssd_kwargs(
    num_classes=3, extractor="ssd_resnet18_v1_fpn", max_level=7, depth=16, anchor_max_level=None
):
    return dict(
        num_classes=num_classes,
        feature_extractor={
            "type": extractor,
            "depth_multiplier": 0.125,
            "min_depth": 8,
            "conv_hyperparams": TINY_HP,
            "fpn": {"min_level": 3, "max_level": max_level, "additional_layer_depth": depth},
        },
        box_predictor={
            "weight_shared_convolutional_box_predictor": {
                "conv_hyperparams": TINY_HP,
                "depth": depth,
                "num_layers_before_predictor": 1,
                "kernel_size": 3,
                "class_prediction_bias_init": -4.6,
            }
        },
        anchor_generator={
            "multiscale_anchor_generator": {
                "min_level": 3,
                "max_level": anchor_max_level or max_level,
                "anchor_scale": 4.0,
                "aspect_ratios": [1.0, 2.0, 0.5],
                "scales_per_octave": 2,
            }
        },
        post_processing={
            "batch_non_max_suppression": {
                "score_threshold": 1e-8,
                "iou_threshold": 0.6,
                "max_detections_per_class": 100,
                "max_total_detections": 20,
            },
            "score_converter": "SIGMOID",
        },
    )


@pytest.fixture
def tiny_ssd():
    def make(**kwargs):
        return ssd_from_dicts(**tiny_ssd_kwargs(**kwargs))

    return make
