"""`model.ssd` -> `modeling.ssd.SSD` and its parts: feature extractor, box predictor, anchor generator,
box coder, score converter and NMS, each chosen and filled from its message (an unset field takes the
message's default). The model's docstring describes the extractors (``FEATURE_EXTRACTORS``)."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TypeVar

from torch import nn

from raredet.builders.hyperparams import build_conv_hyperparams
from raredet.builders.losses import build_box_coder
from raredet.builders.messages import field_value, message_kwargs, oneof_choice, refused_as_config_error
from raredet.builders.parts import (
    build_feature_pyramid,
    build_multiscale_anchor_generator,
    build_non_max_suppression,
    build_score_converter,
)
from raredet.errors import ConfigError
from raredet.modeling.anchors import MultiscaleAnchorGenerator, SsdAnchorGenerator
from raredet.modeling.backbones import MobileNetV1, MobileNetV2, ResNet, mobilenet_v2_last_depth
from raredet.modeling.bifpn import BiFPN
from raredet.modeling.box_coder import FasterRcnnBoxCoder
from raredet.modeling.calibration import Calibration
from raredet.modeling.efficientnet import EFFICIENTNET_VARIANTS, LEVEL_TAPS, EfficientNet
from raredet.modeling.fpn import SsdExtraLayers
from raredet.modeling.layers import ConvHyperparams
from raredet.modeling.predictor import ConvolutionalBoxPredictor, WeightSharedConvolutionalBoxPredictor
from raredet.modeling.ssd import (
    SSD,
    AnchorGenerator,
    Backbone,
    BoxPredictor,
    EfficientDetFeatureExtractor,
    FeatureExtractor,
    FpnFeatureExtractor,
    SsdMobileNetV2FeatureExtractor,
)
from raredet.protos import anchor_generator_pb2, box_predictor_pb2, ssd_pb2

Extractor = ssd_pb2.SsdFeatureExtractor
_Extractor = TypeVar("_Extractor", FpnFeatureExtractor, SsdMobileNetV2FeatureExtractor)
WHERE = "model.ssd.feature_extractor"

# Extra map depths of the original SSD after the two backbone maps (TF OD API's layer_depth).
SSD_EXTRA_DEPTHS = (512, 256, 256, 128)

# The TF OD API's Keras backbones' own initializer and L2 weight, used without
# override_base_feature_extractor_hyperparams. The L2 weights are written as conv_hyperparams weights
# (loss 0.5 * weight * sum(w^2)): Keras' ResNet regularizer l2(1e-4) is 1e-4 * sum(w^2), i.e. 2e-4 here;
# the MobileNets' l2(0.00004 * 0.5) is 4e-5 here.
BACKBONE_DEFAULTS: dict[str, ConvHyperparams] = {
    "resnet": ConvHyperparams(l2_weight=2e-4, initializer="variance_scaling_initializer",
                              initializer_args={"factor": 1.0, "mode": "FAN_IN"}),
    "mobilenet": ConvHyperparams(l2_weight=4e-5, initializer="truncated_normal_initializer",
                                 initializer_args={"stddev": 0.09}),
}


def _backbone_hyperparams(msg: Extractor, hp: ConvHyperparams, family: str) -> ConvHyperparams:
    """The hyperparams the TF OD API builds the backbone's kernels with: the feature extractor's under
    ``override_base_feature_extractor_hyperparams``, else the backbone's own defaults."""
    return hp if msg.override_base_feature_extractor_hyperparams else BACKBONE_DEFAULTS[family]


def _initialize_backbone(backbone: Backbone, hp: ConvHyperparams) -> Backbone:
    """Every conv and depthwise kernel of the backbone initialised and L2-weighted by ``hp`` (the TF OD
    API's Keras MobileNets hand the hyperparams to depthwise kernels too)."""
    for module in backbone.modules():
        if isinstance(module, nn.Conv2d):
            hp.initialize(module)
    return backbone


def _multiplier(msg: Extractor) -> tuple[float, int]:
    """(depth_multiplier, min_depth)."""
    return field_value(msg, "depth_multiplier"), msg.min_depth


def _depth(msg: Extractor) -> Callable[[int], int]:
    """The TF OD API's depth_fn: ``max(int(d * depth_multiplier), min_depth)``."""
    multiplier, min_depth = _multiplier(msg)
    return lambda d: max(int(d * multiplier), min_depth)


def _fpn_extractor(backbone: Backbone, msg: Extractor, hp: ConvHyperparams, freeze_bn: bool
                   ) -> FpnFeatureExtractor:
    fpn = build_feature_pyramid(
        backbone.out_channels,
        hp,
        min_level=msg.fpn.min_level,
        max_level=msg.fpn.max_level,
        additional_layer_depth=_depth(msg)(msg.fpn.additional_layer_depth),
        use_depthwise=msg.use_depthwise,
        freeze_batchnorm=freeze_bn,
    )
    return FpnFeatureExtractor(backbone, fpn, hp)


def _is_keras(msg: Extractor) -> bool:
    """Whether the config names the TF OD API's Keras (TF2) extractor rather than the TF1 slim one."""
    return msg.type.endswith("_keras")


def _resnet_fpn(depth: int, msg: Extractor, hp: ConvHyperparams, freeze_bn: bool) -> FeatureExtractor:
    multiplier, min_depth = _multiplier(msg)
    # `_keras`: the TF OD API's Keras ResNet widths (each conv max(int(c * m), min_depth)).
    backbone = ResNet(depth, multiplier, min_depth, freeze_bn, keras_widths=_is_keras(msg))
    _initialize_backbone(backbone, _backbone_hyperparams(msg, hp, "resnet"))
    # What TF weights need to compute as the TF OD API does (ResNet.use_tf_conventions): the
    # backbone's batch norms and activations are these hyperparams' under the override.
    backbone.keras_hyperparams = hp if msg.override_base_feature_extractor_hyperparams else None
    return _fpn_extractor(backbone, msg, hp, freeze_bn)


def _mobilenet_v2(msg: Extractor, freeze_bn: bool, fpn: bool) -> MobileNetV2:
    """MobileNetV2 with its last conv as the named TF OD API extractor builds it (``_keras``: 1280; TF1
    slim ``ssd_mobilenet_v2_fpn`` with ``use_depthwise``: 256; see ``mobilenet_v2_last_depth``)."""
    multiplier, min_depth = _multiplier(msg)
    narrow = fpn and msg.use_depthwise
    last = mobilenet_v2_last_depth(multiplier, min_depth, keras=_is_keras(msg), narrow=narrow)
    return MobileNetV2(multiplier, min_depth, freeze_bn, last_depth=last)


def _mobilenet_v2_tf_batch_norm(backbone_hp: ConvHyperparams) -> tuple[float, float]:
    """(epsilon, torch momentum) of the TF OD API's Keras MobileNetV2 batch norms: the conv_hyperparams'
    under override_base_feature_extractor_hyperparams, else its own (epsilon 1e-3, decay 0.9997)."""
    if backbone_hp.use_batch_norm:
        return backbone_hp.bn_epsilon, 1.0 - backbone_hp.bn_decay
    return 1e-3, 1.0 - 0.9997


def _with_tf_settings(extractor: _Extractor, msg: Extractor, tf_batch_norm: tuple[float, float] | None
                      ) -> _Extractor:
    extractor.tf_batch_norm = tf_batch_norm
    extractor.use_explicit_padding = msg.use_explicit_padding
    return extractor


def _mobilenet_v2_fpn(msg: Extractor, hp: ConvHyperparams, freeze_bn: bool) -> FeatureExtractor:
    backbone = _mobilenet_v2(msg, freeze_bn, fpn=True)
    backbone_hp = _backbone_hyperparams(msg, hp, "mobilenet")
    _initialize_backbone(backbone, backbone_hp)
    extractor = _fpn_extractor(backbone, msg, hp, freeze_bn)
    return _with_tf_settings(extractor, msg, _mobilenet_v2_tf_batch_norm(backbone_hp))


def _mobilenet_v1_fpn(msg: Extractor, hp: ConvHyperparams, freeze_bn: bool) -> FeatureExtractor:
    multiplier, min_depth = _multiplier(msg)
    backbone_hp = _backbone_hyperparams(msg, hp, "mobilenet")
    # The backbone's batch norms: the conv_hyperparams' under the override, else Keras MobileNet's.
    epsilon, decay = (
        (backbone_hp.bn_epsilon, backbone_hp.bn_decay) if backbone_hp.use_batch_norm else (1e-3, 0.9997)
    )
    backbone = MobileNetV1(
        multiplier,
        min_depth,
        freeze_bn or (backbone_hp.use_batch_norm and not backbone_hp.bn_train),
        top_depths=(512, 256) if msg.use_depthwise else (1024, 1024),
        bn_epsilon=epsilon,
        bn_momentum=1.0 - decay,
        keras=_is_keras(msg),
    )
    _initialize_backbone(backbone, backbone_hp)
    return _with_tf_settings(_fpn_extractor(backbone, msg, hp, freeze_bn), msg, None)


def _mobilenet_v2_ssd(msg: Extractor, hp: ConvHyperparams, freeze_bn: bool) -> FeatureExtractor:
    multiplier, min_depth = _multiplier(msg)
    num_layers = msg.num_layers
    if not 2 <= num_layers <= 2 + len(SSD_EXTRA_DEPTHS):
        raise ConfigError(f"feature_extractor.num_layers must be 2..6 for ssd_mobilenet_v2, got {num_layers}")
    depths = [max(int(d * multiplier), min_depth) for d in SSD_EXTRA_DEPTHS[: num_layers - 2]]
    reduce_depths = [max(int(d // 2 * multiplier), min_depth) for d in SSD_EXTRA_DEPTHS[: num_layers - 2]]
    backbone = _mobilenet_v2(msg, freeze_bn, fpn=False)
    backbone_hp = _backbone_hyperparams(msg, hp, "mobilenet")
    _initialize_backbone(backbone, backbone_hp)
    extra = SsdExtraLayers(backbone.out_channels[5], depths, hp, msg.use_depthwise, freeze_bn, reduce_depths)
    extractor = SsdMobileNetV2FeatureExtractor(backbone, extra, depths, hp)
    return _with_tf_settings(extractor, msg, _mobilenet_v2_tf_batch_norm(backbone_hp))


# EfficientDet-D<N>'s BiFPN when the config's ``bifpn`` block leaves a field unset (the TF OD API's
# per-variant class defaults, not proto defaults): variant -> (num_iterations, num_filters,
# combine_method). D7 is b6 with D6's BiFPN at a larger size.
EFFICIENTDET_BIFPN_DEFAULTS: dict[str, tuple[int, int, str]] = {
    "b0": (3, 64, "fast_attention"),
    "b1": (4, 88, "fast_attention"),
    "b2": (5, 112, "fast_attention"),
    "b3": (6, 160, "fast_attention"),
    "b4": (7, 224, "fast_attention"),
    "b5": (7, 288, "fast_attention"),
    "b6": (8, 384, "sum"),
    "b7": (8, 384, "sum"),
}


def _check_efficientdet_fields(msg: Extractor) -> None:
    """The TF OD API refuses these for EfficientDet; so does raredet, naming the field."""
    unsupported = {
        "depth_multiplier": field_value(msg, "depth_multiplier") != 1.0,
        "use_explicit_padding": msg.use_explicit_padding,
        "use_depthwise": msg.use_depthwise,
        "override_base_feature_extractor_hyperparams": msg.override_base_feature_extractor_hyperparams,
        "fpn": msg.HasField("fpn"),
    }
    for field, bad in unsupported.items():
        if bad:
            raise ConfigError(
                f"{WHERE}.{field}: not supported by {msg.type} (EfficientDet: the BiFPN is set in "
                f"`bifpn {{ ... }}`, the EfficientNet's width is fixed by its variant); remove it"
            )


def _efficientdet(variant: str, msg: Extractor, hp: ConvHyperparams, freeze_bn: bool) -> FeatureExtractor:
    _check_efficientdet_fields(msg)
    iterations, filters, combine = EFFICIENTDET_BIFPN_DEFAULTS[variant]
    bifpn = msg.bifpn
    min_level, max_level = bifpn.min_level, bifpn.max_level
    levels = tuple(range(min_level, min(max_level, 5) + 1))
    if not levels or not set(levels) <= set(LEVEL_TAPS):
        raise ConfigError(
            f"{WHERE}.bifpn.min_level: {min_level} with max_level {max_level}; EfficientNet gives levels "
            f"{sorted(LEVEL_TAPS)} (strides 2..32), so min_level must be 1..5 and at most max_level"
        )
    backbone = EfficientNet(variant, levels, freeze_batchnorm=freeze_bn)
    pyramid = BiFPN(
        backbone.out_channels,
        hp,
        min_level=min_level,
        max_level=max_level,
        num_iterations=bifpn.num_iterations if bifpn.HasField("num_iterations") else iterations,
        # The TF OD API's floor: max(num_filters, min_depth).
        num_filters=max(bifpn.num_filters if bifpn.HasField("num_filters") else filters, msg.min_depth),
        combine_method=bifpn.combine_method if bifpn.HasField("combine_method") else combine,
        freeze_batchnorm=freeze_bn,
    )
    return EfficientDetFeatureExtractor(backbone, pyramid, hp)


FEATURE_EXTRACTORS: dict[str, Callable[[Extractor, ConvHyperparams, bool], FeatureExtractor]] = {
    **{f"ssd_efficientnet-{v}_bifpn": partial(_efficientdet, v) for v in EFFICIENTNET_VARIANTS},
    "ssd_resnet18_v1_fpn": partial(_resnet_fpn, 18),
    "ssd_resnet34_v1_fpn": partial(_resnet_fpn, 34),
    "ssd_resnet50_v1_fpn": partial(_resnet_fpn, 50),
    "ssd_resnet101_v1_fpn": partial(_resnet_fpn, 101),
    "ssd_resnet152_v1_fpn": partial(_resnet_fpn, 152),
    "ssd_mobilenet_v1_fpn": _mobilenet_v1_fpn,
    "ssd_mobilenet_v2_fpn": _mobilenet_v2_fpn,
    "ssd_mobilenet_v2": _mobilenet_v2_ssd,
}

# The TF OD API's input normalisation (tf_compat.TF_INPUT_NORMALIZATION) per extractor name prefix.
TF_INPUT_FAMILIES = {"ssd_mobilenet": "mobilenet", "ssd_resnet": "resnet_v1",
                     "ssd_efficientnet": "efficientnet"}


def feature_extractor_key(msg: Extractor) -> str:
    """The ``FEATURE_EXTRACTORS`` key of ``msg.type`` (its ``_keras`` suffix removed)."""
    return msg.type.removesuffix("_keras")


def tf_input_family(key: str) -> str:
    """``TF_INPUT_NORMALIZATION``'s family of the extractor ``key`` (e.g. "mobilenet")."""
    for prefix, family in TF_INPUT_FAMILIES.items():
        if key.startswith(prefix):
            return family
    raise ConfigError(f"{WHERE}.type {key!r}: no TF input normalisation known")


def build_feature_extractor(msg: Extractor, freeze_batchnorm: bool = False) -> FeatureExtractor:
    """The feature extractor named by ``msg.type`` (``_keras`` suffix optional)."""
    key = feature_extractor_key(msg)
    if key not in FEATURE_EXTRACTORS:
        valid = ", ".join(sorted(FEATURE_EXTRACTORS))
        raise ConfigError(f"{WHERE}.type: unknown {msg.type!r}; valid: {valid} (_keras suffix optional)")
    if msg.HasField("bifpn") and not key.startswith("ssd_efficientnet-"):
        raise ConfigError(
            f"{WHERE}.bifpn: only the EfficientDet extractors "
            f"(ssd_efficientnet-b0..b7_bifpn) build a BiFPN, not {msg.type!r}; remove the bifpn block"
        )
    hp = build_conv_hyperparams(msg.conv_hyperparams, f"{WHERE}.conv_hyperparams")
    with refused_as_config_error(WHERE):
        return FEATURE_EXTRACTORS[key](msg, hp, freeze_batchnorm)


BOX_PREDICTORS: dict[str, type[BoxPredictor]] = {
    "weight_shared_convolutional_box_predictor": WeightSharedConvolutionalBoxPredictor,
    "convolutional_box_predictor": ConvolutionalBoxPredictor,
}
# Fields that only choose TF implementation details (or that raredet applies elsewhere).
_IGNORED_PREDICTOR_FIELDS = {
    "weight_shared_convolutional_box_predictor": (
        "score_converter", "box_encodings_clip_range", "apply_sigmoid_to_scores",
        "apply_conv_hyperparams_to_heads", "use_dropout", "dropout_keep_probability"),
    "convolutional_box_predictor": (
        "score_converter", "box_encodings_clip_range", "apply_sigmoid_to_scores",
        "apply_conv_hyperparams_to_heads", "apply_conv_hyperparams_pointwise"),
}


def build_box_predictor(msg: box_predictor_pb2.BoxPredictor, num_classes: int, num_anchors: int | list[int],
                        in_channels: list[int], freeze_batchnorm: bool) -> BoxPredictor:
    """The predictor chosen in the ``box_predictor`` oneof."""
    where = "model.ssd.box_predictor"
    name, cls, sub = oneof_choice(msg, "box_predictor_oneof", BOX_PREDICTORS, where)
    hp = build_conv_hyperparams(sub.conv_hyperparams, f"{where}.{name}.conv_hyperparams")
    with refused_as_config_error(where):
        return cls(  # type: ignore[no-any-return]
            num_classes=num_classes, num_anchors_per_location=num_anchors, in_channels=in_channels,
            freeze_batchnorm=freeze_batchnorm, conv_hyperparams=hp,
            **message_kwargs(sub, skip=("conv_hyperparams", *_IGNORED_PREDICTOR_FIELDS[name])),
        )


ANCHOR_GENERATORS: dict[str, type[AnchorGenerator]] = {
    "multiscale_anchor_generator": MultiscaleAnchorGenerator,
    "ssd_anchor_generator": SsdAnchorGenerator,
}


def build_anchor_generator(msg: anchor_generator_pb2.AnchorGenerator) -> AnchorGenerator:
    where = "model.ssd.anchor_generator"
    _, make, sub = oneof_choice(msg, "anchor_generator_oneof", ANCHOR_GENERATORS, where)
    kwargs = message_kwargs(sub, skip=("normalize_coordinates",))  # raredet's anchors are always in pixels
    if make is MultiscaleAnchorGenerator:  # shared with Faster R-CNN, its errors worded there
        return build_multiscale_anchor_generator(**kwargs)
    with refused_as_config_error(where):
        return make(**kwargs)  # type: ignore[no-any-return]


def _check_levels(anchors: AnchorGenerator, levels: list[int]) -> None:
    if isinstance(anchors, SsdAnchorGenerator):
        if anchors.num_layers != len(levels):
            raise ConfigError(
                f"model.ssd.anchor_generator.ssd_anchor_generator.num_layers is {anchors.num_layers} but "
                f"the feature extractor gives {len(levels)} feature maps; make them equal"
            )
        return
    if [anchors.min_level, anchors.max_level] != [levels[0], levels[-1]]:
        raise ConfigError(
            f"model.ssd.anchor_generator.multiscale_anchor_generator: min_level..max_level is "
            f"{anchors.min_level}..{anchors.max_level} but the feature extractor gives levels "
            f"{levels[0]}..{levels[-1]}; make them equal (fpn.min_level/max_level, or 4..3+num_layers)"
        )


def build_ssd(msg: ssd_pb2.Ssd, calibration: Calibration | None = None) -> SSD:
    """The SSD of `model.ssd`; `calibration`: its post_processing.calibration_config, built
    (`builders.build_calibration`), None = identity."""
    if msg.num_classes < 1:
        raise ConfigError(f"model.ssd.num_classes must be at least 1, got {msg.num_classes}")
    freeze = msg.freeze_batchnorm
    extractor = build_feature_extractor(msg.feature_extractor, freeze)
    anchors = build_anchor_generator(msg.anchor_generator)
    _check_levels(anchors, extractor.levels)
    predictor = build_box_predictor(msg.box_predictor, msg.num_classes, anchors.num_anchors_per_location,
                                    extractor.out_channels, freeze)
    # A model without box_coder decodes with the default coder (the loss's builder asks for one).
    unset = msg.box_coder.WhichOneof("box_coder_oneof") is None
    key, post = feature_extractor_key(msg.feature_extractor), msg.post_processing
    return SSD(
        msg.num_classes, extractor, predictor, anchors,
        box_coder=FasterRcnnBoxCoder() if unset else build_box_coder(msg),
        score_converter=build_score_converter(post, msg.num_classes, calibration),
        non_max_suppression=build_non_max_suppression(post),
        feature_extractor_type=key, tf_input_family=tf_input_family(key),
    )
