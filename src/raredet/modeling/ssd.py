"""The SSD meta-architecture (RetinaNet when built with an FPN and the weight-shared predictor;
EfficientDet with an ``ssd_efficientnet-b0..b7_bifpn`` extractor: EfficientNet + BiFPN, docs/efficientdet.md).

The model takes built parts, as torchvision's ``RetinaNet(backbone, num_classes, anchor_generator=...,
head=...)`` does; ``builders.build_ssd`` builds them from the ``model.ssd`` message::

    SSD(num_classes: int,
        feature_extractor: FeatureExtractor,  # forward(x) -> [map per level]; .levels, .out_channels
        box_predictor: BoxPredictor,          # [map per level] -> cls_logits, box_deltas
        anchor_generator: AnchorGenerator,    # (image size, map sizes) -> anchors [A, 4]
        box_coder: FasterRcnnBoxCoder,        # the loss's coder too
        score_converter: ScoreConverter,      # logits -> scores (converter, logit_scale, calibration)
        non_max_suppression: BatchNonMaxSuppression,
        feature_extractor_type: str = "",     # its config name without _keras (TF weight loading)
        tf_input_family: str | None = None)   # its TF input normalisation (tf_compat)

``forward(images)`` takes ``[B, 3, H, W]`` uint8 or float in 0..255 and normalises inside with the
ImageNet mean and std (so torchvision ImageNet weights fit, and exported models take raw images), or
as the TF OD API's extractor does once TF weights are loaded (``use_weights_convention("tf")``);
it returns ``{"cls_logits" [B, A, K], "box_deltas" [B, A, 4], "anchors" [A, 4]}`` in every mode.
``postprocess(outputs, image_sizes)`` decodes, clips, scores (converter and calibration:
``model.score_converter``; ``set_operating_points`` adds per-class thresholds) and runs NMS.
``l2_weights()`` maps parameter names to the ``l2_regularizer.weight`` of the conv_hyperparams that
built them (for weight decay).

Feature extractors (``builders.ssd.FEATURE_EXTRACTORS``; a ``_keras`` suffix is accepted and ignored
except for MobileNetV2's last conv width, below):

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
own backbone defaults (``builders.ssd.BACKBONE_DEFAULTS``). The FPN width is
``max(int(additional_layer_depth * depth_multiplier), min_depth)``. ResNet and MobileNetV2 keep
torchvision's batch-norm settings (epsilon 1e-5) and activations so ImageNet weights behave as trained;
MobileNetV1, which has no torchvision weights, takes the conv_hyperparams' batch norm under the
override. ``pad_to_multiple`` and ``use_explicit_padding`` are not needed: convs pad symmetrically
(what ``use_explicit_padding`` does in the TF OD API; output sizes are the same either way) and the FPN
resizes to each level's size.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import cast

import torch
from torch import Tensor, nn

from raredet.modeling.anchors import MultiscaleAnchorGenerator, SsdAnchorGenerator
from raredet.modeling.backbones import (
    MobileNetV1,
    MobileNetV2,
    ResNet,
    set_batch_norm_hyperparams,
)
from raredet.modeling.bifpn import BiFPN
from raredet.modeling.box_coder import FasterRcnnBoxCoder
from raredet.modeling.efficientnet import EfficientNet
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
Backbone = ResNet | MobileNetV1 | MobileNetV2
BoxPredictor = WeightSharedConvolutionalBoxPredictor | ConvolutionalBoxPredictor
AnchorGenerator = MultiscaleAnchorGenerator | SsdAnchorGenerator


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
        feature_extractor: FeatureExtractor,
        box_predictor: BoxPredictor,
        anchor_generator: AnchorGenerator,
        box_coder: FasterRcnnBoxCoder,
        score_converter: ScoreConverter,
        non_max_suppression: BatchNonMaxSuppression,
        feature_extractor_type: str = "",
        tf_input_family: str | None = None,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.feature_extractor_type = feature_extractor_type
        self.tf_input_family = tf_input_family
        self.weights_convention = "torchvision"  # "tf" once use_weights_convention("tf") has run
        self.feature_extractor = feature_extractor
        self.anchor_generator = anchor_generator
        self.box_predictor = box_predictor
        self.box_coder = box_coder
        self.score_converter = score_converter
        self.non_max_suppression = non_max_suppression
        mean, std = torch.tensor(IMAGENET_MEAN) * 255, torch.tensor(IMAGENET_STD) * 255
        self.register_buffer("pixel_mean", mean.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", std.view(1, 3, 1, 1), persistent=False)
        use_fast_relu6(self)  # the backbones' in-place ReLU6 too

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
        if self.tf_input_family is None:
            raise ValueError(f"{self.feature_extractor_type!r}: no TF input normalisation known")
        mean, std = TF_INPUT_NORMALIZATION[self.tf_input_family]
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
