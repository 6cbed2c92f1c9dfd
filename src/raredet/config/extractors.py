"""The feature-extractor types raredet builds, by meta-architecture: names only, no model code.

The config parser names them when a config asks for a meta-architecture raredet does not build
(`text.unsupported_model_message`). That error is raised while the text is parsed:
`experimental_model { }` is not a field of raredet's `DetectionModel`, so the message never reaches
`validate`, where builders could have supplied the names. The names are therefore kept here as data,
and config/ imports nothing of the model code above it. tests/config/test_extractors.py checks that
they are exactly the keys of the model builders' registries. SSD and Faster R-CNN names may also be
written with a `_keras` suffix.
"""

from __future__ import annotations

# `model { ssd { feature_extractor { type: ... } } }`
SSD_FEATURE_EXTRACTORS: tuple[str, ...] = (
    "ssd_efficientnet-b0_bifpn",
    "ssd_efficientnet-b1_bifpn",
    "ssd_efficientnet-b2_bifpn",
    "ssd_efficientnet-b3_bifpn",
    "ssd_efficientnet-b4_bifpn",
    "ssd_efficientnet-b5_bifpn",
    "ssd_efficientnet-b6_bifpn",
    "ssd_efficientnet-b7_bifpn",
    "ssd_mobilenet_v1_fpn",
    "ssd_mobilenet_v2",
    "ssd_mobilenet_v2_fpn",
    "ssd_resnet18_v1_fpn",
    "ssd_resnet34_v1_fpn",
    "ssd_resnet50_v1_fpn",
    "ssd_resnet101_v1_fpn",
    "ssd_resnet152_v1_fpn",
)

# `model { faster_rcnn { feature_extractor { type: ... } } }`
FASTER_RCNN_FEATURE_EXTRACTORS: tuple[str, ...] = (
    "faster_rcnn_resnet50",
    "faster_rcnn_resnet101",
    "faster_rcnn_resnet152",
    "faster_rcnn_resnet50_fpn",
    "faster_rcnn_resnet101_fpn",
    "faster_rcnn_resnet152_fpn",
    "faster_rcnn_inception_resnet_v2",
)

# `model { center_net { feature_extractor { type: ... } } }` (no `_keras` suffix: TF names them so)
CENTER_NET_FEATURE_EXTRACTORS: tuple[str, ...] = (
    "resnet_v1_50_fpn",
    "resnet_v1_101_fpn",
    "resnet_v2_50",
    "resnet_v2_101",
    "hourglass_10",
    "hourglass_20",
    "hourglass_32",
    "hourglass_52",
    "hourglass_104",
)
