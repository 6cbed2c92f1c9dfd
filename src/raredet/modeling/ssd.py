"""The SSD meta-architecture (RetinaNet when built with an FPN and the weight-shared predictor;
EfficientDet with an ``ssd_efficientnet-b0..b7_bifpn`` extractor: EfficientNet + BiFPN, docs/efficientdet.md).

One constructor, which builders call with sub-messages of the TF OD API ``ssd`` message as plain dicts
(``builders.message_kwargs(msg)`` gives them: the set fields, enums by name; absent keys take the
TF OD API's defaults)::

    SSD(num_classes: int,
        feature_extractor: dict,   # {"type", "depth_multiplier", "min_depth", "conv_hyperparams",
                                   #  "use_depthwise", "fpn": {"min_level", "max_level",
                                   #  "additional_layer_depth"}, "num_layers", ...}
        box_predictor: dict,       # {"weight_shared_convolutional_box_predictor": {...}} or
                                   # {"convolutional_box_predictor": {...}}
        anchor_generator: dict,    # {"multiscale_anchor_generator": {...}} or {"ssd_anchor_generator": {...}}
        post_processing: dict | None = None,  # {"batch_non_max_suppression": {...},
                                              #  "score_converter", "logit_scale"}
        box_coder: dict | None = None,        # {"faster_rcnn_box_coder": {...}}
        freeze_batchnorm: bool = False,
        calibration: Calibration | None = None)  # post_processing.calibration_config, built
                                                 # (builders.build_calibration); None = identity

``forward(images)`` takes ``[B, 3, H, W]`` uint8 or float in 0..255 and normalises inside with the
ImageNet mean and std (so torchvision ImageNet weights fit, and exported models take raw images), or
as the TF OD API's extractor does once TF weights are loaded (``use_weights_convention("tf")``);
it returns ``{"cls_logits" [B, A, K], "box_deltas" [B, A, 4], "anchors" [A, 4]}`` in every mode.
``postprocess(outputs, image_sizes)`` decodes, clips, scores (converter and calibration:
``model.score_converter``; ``set_operating_points`` adds per-class thresholds) and runs NMS.
``l2_weights()`` maps parameter names to the ``l2_regularizer.weight`` of the conv_hyperparams that
built them (for weight decay).

Feature extractors (``FEATURE_EXTRACTORS``; a ``_keras`` suffix is accepted and ignored except for
MobileNetV2's last conv width, below):

* ``ssd_resnet{18,34,50,101,152}_v1_fpn``: torchvision ResNet, FPN on C3..C5 and stride-2 levels above.
* ``ssd_mobilenet_v1_fpn``: MobileNetV1 (``backbones.MobileNetV1``) with the FPN on its blocks 5, 11
  and 13 (Conv2d_5/11/13_pointwise: strides 8, 16, 32) for levels 3..5 (block 3 for a level 2); with
  ``use_depthwise`` the last two pointwise convs narrow to 512 and 256 channels as in the TF OD API.
* ``ssd_mobilenet_v2_fpn``: MobileNetV2 with FPN on ``features.6`` (stride 8), ``features.13``
  (stride 16) and ``features.18`` (stride 32). ``features.18`` has 1280 channels for the Keras
  ``ssd_mobilenet_v2_fpn_keras`` (which defines a 256-wide FPN-lite variant but never passes it to its
  backbone) and 256 for the TF1 slim ``ssd_mobilenet_v2_fpn`` with ``use_depthwise`` (which does):
  the one place where the ``_keras`` suffix matters (``backbones.mobilenet_v2_last_depth``).
* ``ssd_mobilenet_v2``: the original SSD(Lite) layout: the 576-channel expansion output of the first
  stride-32 block (stride 16, anchor level 4), the final 1280-channel map (level 5), then
  ``num_layers - 2`` extra maps of depths 512, 256, 256, 128 (levels 6..). Its anchors are the
  zoo's ``ssd_anchor_generator`` (``num_layers`` equal) or ``multiscale_anchor_generator`` levels
  4 .. ``3 + num_layers``.

Initialisation and L2 follow the TF OD API's Keras models (docs/models.md, "Parity with the TF OD
API"): with ``override_base_feature_extractor_hyperparams`` the backbone's conv and depthwise kernels
take the feature extractor's conv_hyperparams initializer and L2 weight; without it, the TF OD API's
own backbone defaults (``BACKBONE_DEFAULTS``). The FPN width is ``max(int(additional_layer_depth *
depth_multiplier), min_depth)``. ResNet and MobileNetV2 keep torchvision's batch-norm settings
(epsilon 1e-5) and activations so ImageNet weights behave as trained; MobileNetV1, which has no
torchvision weights, takes the conv_hyperparams' batch norm under the override. ``pad_to_multiple``
and ``use_explicit_padding`` are not needed: convs pad symmetrically (what ``use_explicit_padding``
does in the TF OD API; output sizes are the same either way) and the FPN resizes to each level's size.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import Any, TypeVar, cast

import torch
from torch import Tensor, nn

from raredet.errors import ConfigError
from raredet.modeling.anchors import MultiscaleAnchorGenerator, SsdAnchorGenerator
from raredet.modeling.backbones import (
    MobileNetV1,
    MobileNetV2,
    ResNet,
    mobilenet_v2_last_depth,
    set_batch_norm_hyperparams,
)
from raredet.modeling.bifpn import BiFPN
from raredet.modeling.box_coder import FasterRcnnBoxCoder
from raredet.modeling.calibration import Calibration
from raredet.modeling.efficientnet import EFFICIENTNET_VARIANTS, LEVEL_TAPS, EfficientNet
from raredet.modeling.exact_nms import ranked_nms_clipped
from raredet.modeling.fpn import FeaturePyramid, SsdExtraLayers
from raredet.modeling.layers import ConvHyperparams, l2_weights_of, use_fast_relu6
from raredet.modeling.postprocess import BatchNonMaxSuppression, OperatingPoints, ScoreConverter, clip_boxes
from raredet.modeling.predictor import ConvolutionalBoxPredictor, WeightSharedConvolutionalBoxPredictor
from raredet.modeling.tf_compat import (
    TF_INPUT_NORMALIZATION,
    content_mask,
    switching_to_tf,
    use_tf_same_padding,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Extra map depths of the original SSD after the two backbone maps (TF OD API's layer_depth).
SSD_EXTRA_DEPTHS = (512, 256, 256, 128)

Config = Mapping[str, Any]


class _TFConventions:
    """What a feature extractor changes to compute as the TF OD API's Keras model does with TF weights
    (``SSD.use_weights_convention``): its backbone's batch norms take ``tf_batch_norm`` (epsilon,
    torch momentum) when set (torchvision's are kept otherwise), its FPN upsamples the smoothed maps."""

    tf_batch_norm: tuple[float, float] | None = None
    use_explicit_padding: bool = False

    def use_tf_conventions(self) -> None:
        backbone = cast(nn.Module, getattr(self, "backbone"))  # noqa: B009  (set by the nn.Module)
        if self.tf_batch_norm is not None:
            set_batch_norm_hyperparams(backbone, *self.tf_batch_norm)
        hook = cast(Callable[[], None] | None, getattr(backbone, "use_tf_conventions", None))
        if hook is not None:
            hook()
        fpn = getattr(self, "fpn", None)
        if isinstance(fpn, FeaturePyramid):
            fpn.tf_top_down = True


class FpnFeatureExtractor(_TFConventions, nn.Module):
    """A backbone followed by an FPN; ``forward(x) -> [map per level min_level..max_level]``."""

    def __init__(self, backbone: Backbone, fpn: FeaturePyramid, hp: ConvHyperparams) -> None:
        super().__init__()
        self.backbone, self.fpn, self.hp = backbone, fpn, hp
        self.levels = list(range(fpn.min_level, fpn.max_level + 1))
        self.out_channels = fpn.out_channels

    def forward(self, x: Tensor) -> list[Tensor]:
        return self.fpn(self.backbone(x))


class SsdMobileNetV2FeatureExtractor(_TFConventions, nn.Module):
    """MobileNetV2 maps plus the original SSD's extra layers (see the module docstring)."""

    def __init__(self, backbone: MobileNetV2, extra: SsdExtraLayers, depths: list[int], hp: ConvHyperparams):
        super().__init__()
        self.backbone, self.extra, self.hp = backbone, extra, hp
        self.out_channels = backbone.ssd_channels + depths
        self.levels = list(range(4, 4 + len(self.out_channels)))

    def forward(self, x: Tensor) -> list[Tensor]:
        maps = self.backbone.ssd_features(x)
        return maps + self.extra(maps[-1])


class EfficientDetFeatureExtractor(_TFConventions, nn.Module):
    """EfficientNet followed by a BiFPN (EfficientDet); ``forward(x) -> [map per level]``. Under TF's
    conventions its EfficientNet takes the TF EfficientNet's batch norm (its ``use_tf_conventions``)."""

    def __init__(self, backbone: EfficientNet, bifpn: BiFPN, hp: ConvHyperparams) -> None:
        super().__init__()
        self.backbone, self.bifpn, self.hp = backbone, bifpn, hp
        self.levels = list(range(bifpn.min_level, bifpn.max_level + 1))
        self.out_channels = bifpn.out_channels

    def forward(self, x: Tensor) -> list[Tensor]:
        return self.bifpn(self.backbone(x))

    def l2_weights(self, prefix: str = "") -> dict[str, float]:
        """The TF OD API's regularised set: the EfficientNet's own (its conv kernels but the depthwise
        ones, and the squeeze-excitation biases, at 1e-5) and every BiFPN conv kernel at the
        conv_hyperparams' weight."""
        dot = f"{prefix}." if prefix else ""
        weights = self.backbone.l2_weights(f"{dot}backbone")
        weights.update(self.bifpn.l2_weights(self.hp.l2_weight, f"{dot}bifpn"))
        return weights


FeatureExtractor = FpnFeatureExtractor | SsdMobileNetV2FeatureExtractor | EfficientDetFeatureExtractor
_Extractor = TypeVar("_Extractor", FpnFeatureExtractor, SsdMobileNetV2FeatureExtractor)
Backbone = ResNet | MobileNetV1 | MobileNetV2

# The TF OD API's Keras backbones' own initializer and L2 weight, used without
# override_base_feature_extractor_hyperparams. The L2 weights are written as conv_hyperparams weights
# (loss 0.5 * weight * sum(w^2)): Keras' ResNet regularizer l2(1e-4) is 1e-4 * sum(w^2), i.e. 2e-4 here;
# the MobileNets' l2(0.00004 * 0.5) is 4e-5 here.
BACKBONE_DEFAULTS: dict[str, Config] = {
    "resnet": {
        "regularizer": {"l2_regularizer": {"weight": 2e-4}},
        "initializer": {"variance_scaling_initializer": {"factor": 1.0, "mode": "FAN_IN"}},
    },
    "mobilenet": {
        "regularizer": {"l2_regularizer": {"weight": 4e-5}},
        "initializer": {"truncated_normal_initializer": {"stddev": 0.09}},
    },
}


def _backbone_hyperparams(cfg: Config, hp: ConvHyperparams, family: str) -> ConvHyperparams:
    """The hyperparams the TF OD API builds the backbone's kernels with: the feature extractor's under
    ``override_base_feature_extractor_hyperparams``, else the backbone's own defaults."""
    if bool(cfg.get("override_base_feature_extractor_hyperparams", False)):
        return hp
    return ConvHyperparams.from_dict(BACKBONE_DEFAULTS[family], "model.ssd.feature_extractor (backbone)")


def _initialize_backbone(backbone: Backbone, hp: ConvHyperparams) -> Backbone:
    """Every conv and depthwise kernel of the backbone initialised and L2-weighted by ``hp`` (the TF OD
    API's Keras MobileNets hand the hyperparams to depthwise kernels too)."""
    for module in backbone.modules():
        if isinstance(module, nn.Conv2d):
            hp.initialize(module)
    return backbone


def _depth(cfg: Config) -> Callable[[int], int]:
    """The TF OD API's depth_fn: ``max(int(d * depth_multiplier), min_depth)``."""
    multiplier, min_depth = float(cfg.get("depth_multiplier", 1.0)), int(cfg.get("min_depth", 16))
    return lambda d: max(int(d * multiplier), min_depth)


def _fpn_extractor(backbone: Backbone, cfg: Config, hp: ConvHyperparams, freeze_bn: bool
                   ) -> FpnFeatureExtractor:
    fpn_cfg = dict(cfg.get("fpn") or {})
    fpn = FeaturePyramid(
        backbone.out_channels,
        hp,
        min_level=int(fpn_cfg.get("min_level", 3)),
        max_level=int(fpn_cfg.get("max_level", 7)),
        additional_layer_depth=_depth(cfg)(int(fpn_cfg.get("additional_layer_depth", 256))),
        use_depthwise=bool(cfg.get("use_depthwise", False)),
        freeze_batchnorm=freeze_bn,
    )
    return FpnFeatureExtractor(backbone, fpn, hp)


def _resnet_fpn(depth: int, cfg: Config, hp: ConvHyperparams, freeze_bn: bool) -> FeatureExtractor:
    multiplier, min_depth = float(cfg.get("depth_multiplier", 1.0)), int(cfg.get("min_depth", 16))
    # `_keras`: the TF OD API's Keras ResNet widths (each conv max(int(c * m), min_depth)).
    backbone = ResNet(depth, multiplier, min_depth, freeze_bn, keras_widths=_is_keras(cfg))
    _initialize_backbone(backbone, _backbone_hyperparams(cfg, hp, "resnet"))
    # What TF weights need to compute as the TF OD API does (ResNet.use_tf_conventions): the
    # backbone's batch norms and activations are these hyperparams' under the override.
    override = bool(cfg.get("override_base_feature_extractor_hyperparams", False))
    backbone.keras_hyperparams = hp if override else None
    return _fpn_extractor(backbone, cfg, hp, freeze_bn)


def _is_keras(cfg: Config) -> bool:
    """Whether the config names the TF OD API's Keras (TF2) extractor rather than the TF1 slim one."""
    return str(cfg.get("type", "")).endswith("_keras")


def _mobilenet_v2(cfg: Config, freeze_bn: bool, fpn: bool) -> MobileNetV2:
    """MobileNetV2 with its last conv as the named TF OD API extractor builds it (``_keras``: 1280; TF1
    slim ``ssd_mobilenet_v2_fpn`` with ``use_depthwise``: 256; see ``mobilenet_v2_last_depth``)."""
    multiplier, min_depth = float(cfg.get("depth_multiplier", 1.0)), int(cfg.get("min_depth", 16))
    narrow = fpn and bool(cfg.get("use_depthwise", False))
    last = mobilenet_v2_last_depth(multiplier, min_depth, keras=_is_keras(cfg), narrow=narrow)
    return MobileNetV2(multiplier, min_depth, freeze_bn, last_depth=last)


def _mobilenet_v2_tf_batch_norm(backbone_hp: ConvHyperparams) -> tuple[float, float]:
    """(epsilon, torch momentum) of the TF OD API's Keras MobileNetV2 batch norms: the conv_hyperparams'
    under override_base_feature_extractor_hyperparams, else its own (epsilon 1e-3, decay 0.9997)."""
    if backbone_hp.use_batch_norm:
        return backbone_hp.bn_epsilon, 1.0 - backbone_hp.bn_decay
    return 1e-3, 1.0 - 0.9997


def _with_tf_settings(extractor: _Extractor, cfg: Config, tf_batch_norm: tuple[float, float] | None
                      ) -> _Extractor:
    extractor.tf_batch_norm = tf_batch_norm
    extractor.use_explicit_padding = bool(cfg.get("use_explicit_padding", False))
    return extractor


def _mobilenet_v2_fpn(cfg: Config, hp: ConvHyperparams, freeze_bn: bool) -> FeatureExtractor:
    backbone = _mobilenet_v2(cfg, freeze_bn, fpn=True)
    backbone_hp = _backbone_hyperparams(cfg, hp, "mobilenet")
    _initialize_backbone(backbone, backbone_hp)
    extractor = _fpn_extractor(backbone, cfg, hp, freeze_bn)
    return _with_tf_settings(extractor, cfg, _mobilenet_v2_tf_batch_norm(backbone_hp))


def _mobilenet_v1_fpn(cfg: Config, hp: ConvHyperparams, freeze_bn: bool) -> FeatureExtractor:
    multiplier, min_depth = float(cfg.get("depth_multiplier", 1.0)), int(cfg.get("min_depth", 16))
    backbone_hp = _backbone_hyperparams(cfg, hp, "mobilenet")
    # The backbone's batch norms: the conv_hyperparams' under the override, else Keras MobileNet's.
    epsilon, decay = (
        (backbone_hp.bn_epsilon, backbone_hp.bn_decay) if backbone_hp.use_batch_norm else (1e-3, 0.9997)
    )
    use_depthwise = bool(cfg.get("use_depthwise", False))
    backbone = MobileNetV1(
        multiplier,
        min_depth,
        freeze_bn or (backbone_hp.use_batch_norm and not backbone_hp.bn_train),
        top_depths=(512, 256) if use_depthwise else (1024, 1024),
        bn_epsilon=epsilon,
        bn_momentum=1.0 - decay,
        keras=_is_keras(cfg),
    )
    _initialize_backbone(backbone, backbone_hp)
    return _with_tf_settings(_fpn_extractor(backbone, cfg, hp, freeze_bn), cfg, None)


def _mobilenet_v2_ssd(cfg: Config, hp: ConvHyperparams, freeze_bn: bool) -> FeatureExtractor:
    multiplier, min_depth = float(cfg.get("depth_multiplier", 1.0)), int(cfg.get("min_depth", 16))
    num_layers = int(cfg.get("num_layers", 6))
    if not 2 <= num_layers <= 2 + len(SSD_EXTRA_DEPTHS):
        raise ConfigError(f"feature_extractor.num_layers must be 2..6 for ssd_mobilenet_v2, got {num_layers}")
    depths = [max(int(d * multiplier), min_depth) for d in SSD_EXTRA_DEPTHS[: num_layers - 2]]
    reduce_depths = [max(int(d // 2 * multiplier), min_depth) for d in SSD_EXTRA_DEPTHS[: num_layers - 2]]
    backbone = _mobilenet_v2(cfg, freeze_bn, fpn=False)
    backbone_hp = _backbone_hyperparams(cfg, hp, "mobilenet")
    _initialize_backbone(backbone, backbone_hp)
    use_depthwise = bool(cfg.get("use_depthwise", False))
    extra = SsdExtraLayers(backbone.out_channels[5], depths, hp, use_depthwise, freeze_bn, reduce_depths)
    extractor = SsdMobileNetV2FeatureExtractor(backbone, extra, depths, hp)
    return _with_tf_settings(extractor, cfg, _mobilenet_v2_tf_batch_norm(backbone_hp))


# EfficientDet-D<N>'s BiFPN when the config gives no ``bifpn`` block (the TF OD API's class defaults):
# variant -> (num_iterations, num_filters, combine_method). D7 is b6 with D6's BiFPN at a larger size.
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


def _efficientdet(variant: str, cfg: Config, hp: ConvHyperparams, freeze_bn: bool) -> FeatureExtractor:
    where = "model.ssd.feature_extractor"
    # The TF OD API refuses these for EfficientDet; so does raredet, naming the field.
    unsupported = {
        "depth_multiplier": float(cfg.get("depth_multiplier", 1.0)) != 1.0,
        "use_explicit_padding": bool(cfg.get("use_explicit_padding", False)),
        "use_depthwise": bool(cfg.get("use_depthwise", False)),
        "override_base_feature_extractor_hyperparams": bool(
            cfg.get("override_base_feature_extractor_hyperparams", False)
        ),
        "fpn": "fpn" in cfg,
    }
    for field, bad in unsupported.items():
        if bad:
            raise ConfigError(
                f"{where}.{field}: not supported by {cfg.get('type')} (EfficientDet: the BiFPN is set in "
                f"`bifpn {{ ... }}`, the EfficientNet's width is fixed by its variant); remove it"
            )
    iterations, filters, combine = EFFICIENTDET_BIFPN_DEFAULTS[variant]
    bifpn = dict(cfg.get("bifpn") or {})
    min_level, max_level = int(bifpn.get("min_level", 3)), int(bifpn.get("max_level", 7))
    levels = tuple(range(min_level, min(max_level, 5) + 1))
    if not levels or not set(levels) <= set(LEVEL_TAPS):
        raise ConfigError(
            f"{where}.bifpn.min_level: {min_level} with max_level {max_level}; EfficientNet gives levels "
            f"{sorted(LEVEL_TAPS)} (strides 2..32), so min_level must be 1..5 and at most max_level"
        )
    backbone = EfficientNet(variant, levels, freeze_batchnorm=freeze_bn)
    pyramid = BiFPN(
        backbone.out_channels,
        hp,
        min_level=min_level,
        max_level=max_level,
        num_iterations=int(bifpn.get("num_iterations", iterations)),
        # The TF OD API's floor: max(num_filters, min_depth).
        num_filters=max(int(bifpn.get("num_filters", filters)), int(cfg.get("min_depth", 16))),
        combine_method=str(bifpn.get("combine_method", combine)),
        freeze_batchnorm=freeze_bn,
    )
    return EfficientDetFeatureExtractor(backbone, pyramid, hp)


FEATURE_EXTRACTORS: dict[str, Callable[[Config, ConvHyperparams, bool], FeatureExtractor]] = {
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


def feature_extractor_key(feature_extractor: Config) -> str:
    """The ``FEATURE_EXTRACTORS`` key of ``feature_extractor["type"]`` (its ``_keras`` suffix removed)."""
    return str(feature_extractor.get("type", "")).removesuffix("_keras")


# The TF OD API's input normalisation (tf_compat.TF_INPUT_NORMALIZATION) per extractor name prefix.
TF_INPUT_FAMILIES = {"ssd_mobilenet": "mobilenet", "ssd_resnet": "resnet_v1",
                     "ssd_efficientnet": "efficientnet"}


def tf_input_family(key: str) -> str:
    """``TF_INPUT_NORMALIZATION``'s family of the extractor ``key`` (e.g. "mobilenet")."""
    for prefix, family in TF_INPUT_FAMILIES.items():
        if key.startswith(prefix):
            return family
    raise ConfigError(f"model.ssd.feature_extractor.type {key!r}: no TF input normalisation known")


def build_feature_extractor(feature_extractor: Config, freeze_batchnorm: bool = False) -> FeatureExtractor:
    """The feature extractor named by ``feature_extractor["type"]`` (``_keras`` suffix optional)."""
    name = str(feature_extractor.get("type", ""))
    key = feature_extractor_key(feature_extractor)
    if key not in FEATURE_EXTRACTORS:
        valid = ", ".join(sorted(FEATURE_EXTRACTORS))
        raise ConfigError(
            f"model.ssd.feature_extractor.type: unknown {name!r}; valid: {valid} (_keras suffix optional)"
        )
    if "bifpn" in feature_extractor and not key.startswith("ssd_efficientnet-"):
        raise ConfigError(
            f"model.ssd.feature_extractor.bifpn: only the EfficientDet extractors "
            f"(ssd_efficientnet-b0..b7_bifpn) build a BiFPN, not {name!r}; remove the bifpn block"
        )
    hp = ConvHyperparams.from_dict(
        feature_extractor.get("conv_hyperparams"), "model.ssd.feature_extractor.conv_hyperparams"
    )
    return FEATURE_EXTRACTORS[key](feature_extractor, hp, freeze_batchnorm)


def _only_choice(
    message: Config | None, field: str, valid: tuple[str, ...], default: str | None
) -> tuple[str, dict]:
    """The one sub-message set in the oneof ``message`` -> (its name, its fields); ``default`` when unset."""
    keys = list(message or {})
    if not keys and default is not None:
        return default, {}
    if len(keys) != 1 or keys[0] not in valid:
        raise ConfigError(f"model.ssd.{field}: set exactly one of {list(valid)}; got {keys}")
    return keys[0], dict((message or {})[keys[0]] or {})


BoxPredictor = WeightSharedConvolutionalBoxPredictor | ConvolutionalBoxPredictor


def build_box_predictor(
    box_predictor: Config,
    num_classes: int,
    num_anchors: int | list[int],
    in_channels: list[int],
    freeze_batchnorm: bool,
) -> BoxPredictor:
    """The predictor chosen in the ``box_predictor`` oneof."""
    valid = ("weight_shared_convolutional_box_predictor", "convolutional_box_predictor")
    name, fields = _only_choice(box_predictor, "box_predictor", valid, None)
    # Fields that only choose TF implementation details (or that raredet applies elsewhere) are dropped.
    for ignored in (
        "score_converter",
        "box_encodings_clip_range",
        "apply_sigmoid_to_scores",
        "apply_conv_hyperparams_to_heads",
    ):
        fields.pop(ignored, None)
    if name == "convolutional_box_predictor":
        fields.pop("apply_conv_hyperparams_pointwise", None)  # a weight-shared tower's setting
    if name == "weight_shared_convolutional_box_predictor":
        fields.pop("use_dropout", None)
        fields.pop("dropout_keep_probability", None)
        cls: type[BoxPredictor] = WeightSharedConvolutionalBoxPredictor
    else:
        cls = ConvolutionalBoxPredictor
    return cls(
        num_classes=num_classes,
        num_anchors_per_location=num_anchors,
        in_channels=in_channels,
        freeze_batchnorm=freeze_batchnorm,
        **fields,
    )


AnchorGenerator = MultiscaleAnchorGenerator | SsdAnchorGenerator
ANCHOR_GENERATORS: dict[str, type[AnchorGenerator]] = {
    "multiscale_anchor_generator": MultiscaleAnchorGenerator,
    "ssd_anchor_generator": SsdAnchorGenerator,
}


def build_anchor_generator(anchor_generator: Config) -> AnchorGenerator:
    name, fields = _only_choice(anchor_generator, "anchor_generator", tuple(ANCHOR_GENERATORS), None)
    fields.pop("normalize_coordinates", None)  # raredet's anchors are always in pixels
    return ANCHOR_GENERATORS[name](**fields)


def build_box_coder(box_coder: Config | None) -> FasterRcnnBoxCoder:
    _, fields = _only_choice(box_coder, "box_coder", ("faster_rcnn_box_coder",), "faster_rcnn_box_coder")
    return FasterRcnnBoxCoder(**fields)


class SSD(OperatingPoints, nn.Module):
    """Single-shot detector; see the module docstring for the constructor's arguments."""

    pixel_mean: Tensor
    pixel_std: Tensor
    feature_extractor: FeatureExtractor
    box_predictor: BoxPredictor
    anchor_generator: AnchorGenerator

    def __init__(
        self,
        num_classes: int,
        feature_extractor: Config,
        box_predictor: Config,
        anchor_generator: Config,
        post_processing: Config | None = None,
        box_coder: Config | None = None,
        freeze_batchnorm: bool = False,
        calibration: Calibration | None = None,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ConfigError(f"model.ssd.num_classes must be at least 1, got {num_classes}")
        self.num_classes = num_classes
        self.feature_extractor_type = feature_extractor_key(feature_extractor)
        self.weights_convention = "torchvision"  # "tf" once use_weights_convention("tf") has run
        self.feature_extractor = build_feature_extractor(feature_extractor, freeze_batchnorm)
        self.anchor_generator = build_anchor_generator(anchor_generator)
        self._check_levels()
        self.box_predictor = build_box_predictor(
            box_predictor,
            num_classes,
            self.anchor_generator.num_anchors_per_location,
            self.feature_extractor.out_channels,
            freeze_batchnorm,
        )
        self.box_coder = build_box_coder(box_coder)
        post = dict(post_processing or {})
        post.pop("calibration_config", None)  # arrives built, as `calibration`
        self.score_converter = ScoreConverter(str(post.get("score_converter", "IDENTITY")),
                                              float(post.get("logit_scale", 1.0)), calibration, num_classes)
        self.non_max_suppression = BatchNonMaxSuppression(**dict(post.get("batch_non_max_suppression") or {}))
        mean, std = torch.tensor(IMAGENET_MEAN) * 255, torch.tensor(IMAGENET_STD) * 255
        self.register_buffer("pixel_mean", mean.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", std.view(1, 3, 1, 1), persistent=False)
        use_fast_relu6(self)  # the backbones' in-place ReLU6 too

    def _check_levels(self) -> None:
        anchors, levels = self.anchor_generator, self.feature_extractor.levels
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

    def use_weights_convention(self, convention: str) -> None:
        """Compute as the weights' framework does: ``"tf"`` (weights the TF OD API trained) switches
        strided convs and pools to TF's 'SAME' padding (unless the config sets
        ``use_explicit_padding``, which pads symmetrically as torch does), the input normalisation to
        the TF OD API's for this extractor, the feature extractor's own TF settings (backbone batch
        norms, FPN top-down input), and ``postprocess`` to TF's order (NMS before clipping).
        ``"torchvision"`` is the default; a model switched to "tf" stays so. Records the choice as
        ``weights_convention``."""
        if not switching_to_tf(self.weights_convention, convention):
            return
        extractor = self.feature_extractor
        if not getattr(extractor, "use_explicit_padding", False):
            use_tf_same_padding(self)
        mean, std = TF_INPUT_NORMALIZATION[tf_input_family(self.feature_extractor_type)]
        self.pixel_mean.copy_(torch.tensor(mean).view(1, 3, 1, 1))
        self.pixel_std.copy_(torch.tensor(std).view(1, 3, 1, 1))
        hook = getattr(extractor, "use_tf_conventions", None)
        if hook is not None:
            hook()
        self.weights_convention = convention

    @property
    def backbone(self) -> Backbone | EfficientNet:
        """The torchvision-named backbone (where classification checkpoints load)."""
        return self.feature_extractor.backbone

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """``images [B, 3, H, W]`` uint8 or float in 0..255 -> cls_logits, box_deltas, anchors. Under TF's
        conventions the zero padding below and right of each image is 0 after the normalisation, as in
        the TF OD API's SSD (``tf_compat.content_mask``)."""
        x = (images.float() - self.pixel_mean) / self.pixel_std
        if self.weights_convention == "tf":
            x = x * content_mask(images)
        features = self.feature_extractor(x)
        cls_logits, box_deltas = self.box_predictor(features)
        sizes = [(int(f.shape[-2]), int(f.shape[-1])) for f in features]
        anchors = self.anchor_generator((int(x.shape[-2]), int(x.shape[-1])), sizes, device=x.device)
        return {"cls_logits": cls_logits, "box_deltas": box_deltas, "anchors": anchors}

    @torch.no_grad()
    def postprocess(self, outputs: Mapping[str, Tensor], image_sizes: Tensor) -> dict[str, Tensor]:
        """Decode, clip to ``image_sizes [B, 2]`` (h, w), score and NMS -> detections padded to
        ``max_total_detections``: boxes ``[B, D, 4]`` xyxy, scores ``[B, D]``, classes ``[B, D]`` int64
        (contiguous index), ``num_detections [B]``."""
        if self.weights_convention == "tf":
            return self._postprocess_as_tf(outputs, image_sizes)
        return self.non_max_suppression(*self.scored_boxes(outputs, image_sizes))

    def scored_boxes(self, outputs: Mapping[str, Tensor], image_sizes: Tensor | None
                     ) -> tuple[Tensor, Tensor]:
        """The candidates NMS chooses from: every anchor's decoded box clipped to ``image_sizes [B, 2]``
        (None: not clipped) ``[B, A, 4]`` xyxy, and its scores ``[B, A, K]`` (converted and calibrated)."""
        boxes = self.box_coder.decode(outputs["box_deltas"], outputs["anchors"][None])
        if image_sizes is not None:
            boxes = clip_boxes(boxes, image_sizes.to(boxes.device))
        return boxes, self.score_converter(outputs["cls_logits"])

    def _postprocess_as_tf(self, outputs: Mapping[str, Tensor], image_sizes: Tensor) -> dict[str, Tensor]:
        """The TF OD API's ``batch_multiclass_non_max_suppression`` with the true image as the clip
        window (``exact_nms.ranked_nms_clipped``): per-class NMS over every anchor on the unclipped
        boxes, the kept boxes sorted by score (ties: lower class, then lower anchor), clipped to
        ``image_sizes``, those left without area (wholly in the padding) dropped, then the first
        ``max_total_detections``. Boxes stay in pixels of the resized image: TF's, normalised to the
        true image, are these divided by ``image_sizes``."""
        nms = self.non_max_suppression
        return ranked_nms_clipped(
            *self.scored_boxes(outputs, None), image_sizes, score_threshold=nms.score_threshold,
            iou_threshold=nms.iou_threshold, max_per_class=nms.max_detections_per_class,
            max_total=nms.max_total_detections, class_agnostic=nms.use_class_agnostic_nms,
            chunk=nms.pre_nms_top_k)

    def l2_weights(self) -> dict[str, float]:
        """``{parameter name: l2_regularizer.weight}`` for every regularised parameter (conv kernels)."""
        extractor = self.feature_extractor
        if isinstance(extractor, EfficientDetFeatureExtractor):
            # EfficientNet's own regularised set (docs/efficientdet.md), then the predictor's kernels.
            weights = extractor.l2_weights("feature_extractor")
            weights.update(l2_weights_of(self.box_predictor, "box_predictor"))
            return weights
        # Every other kernel records the L2 weight of the hyperparams that built it (docs/models.md).
        return l2_weights_of(self)
