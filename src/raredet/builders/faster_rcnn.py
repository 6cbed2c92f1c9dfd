"""`model.faster_rcnn` -> `modeling.faster_rcnn.FasterRCNN`: the backbone, FPN, anchors, RPN, box
classifier and head, Mask R-CNN's mask head, score converter and NMS, each chosen and filled from its
message (an unset field takes the message's default), and the checks of what raredet cannot build,
naming the field."""

from __future__ import annotations

from raredet.builders.hyperparams import build_conv_hyperparams
from raredet.builders.messages import field_value, message_kwargs
from raredet.builders.parts import (
    build_feature_pyramid,
    build_grid_anchor_generator,
    build_multiscale_anchor_generator,
    build_non_max_suppression,
    build_score_converter,
)
from raredet.errors import ConfigError
from raredet.modeling.backbones import ResNet
from raredet.modeling.box_coder import FasterRcnnBoxCoder
from raredet.modeling.calibration import Calibration
from raredet.modeling.faster_rcnn import (
    AnchorGenerator,
    FasterRCNN,
    FpnBoxClassifier,
    MaskRcnnBoxHead,
    RpnHead,
)
from raredet.modeling.fpn import FeaturePyramid
from raredet.modeling.inception_resnet_v2 import InceptionResnetV2
from raredet.modeling.layers import ConvHyperparams
from raredet.modeling.mask_head import MaskHead
from raredet.protos import anchor_generator_pb2, box_predictor_pb2, faster_rcnn_pb2

WHERE = "model.faster_rcnn"

# feature_extractor.type (without `_keras`) -> (ResNet depth, with an FPN); depth 0: Inception-ResNet v2
FEATURE_EXTRACTORS: dict[str, tuple[int, bool]] = {
    "faster_rcnn_resnet50": (50, False),
    "faster_rcnn_resnet101": (101, False),
    "faster_rcnn_resnet152": (152, False),
    "faster_rcnn_resnet50_fpn": (50, True),
    "faster_rcnn_resnet101_fpn": (101, True),
    "faster_rcnn_resnet152_fpn": (152, True),
    "faster_rcnn_inception_resnet_v2": (0, False),
}
Backbone = ResNet | InceptionResnetV2

# The faster_rcnn fields FasterRCNN takes as they are.
MODEL_FIELDS = ("num_classes", "initial_crop_size", "maxpool_kernel_size", "maxpool_stride",
                "first_stage_nms_score_threshold", "first_stage_nms_iou_threshold",
                "first_stage_max_proposals", "clip_anchors_to_image", "use_matmul_crop_and_resize",
                "second_stage_batch_size", "second_stage_balance_fraction")


def build_faster_rcnn(msg: faster_rcnn_pb2.FasterRcnn, calibration: Calibration | None = None) -> FasterRCNN:
    """The model of `model.faster_rcnn`; `calibration`: its second_stage_post_processing.calibration_config,
    built. Parts are built in the order their weights are initialised (backbone, FPN, RPN, box
    classifier, box head, mask head), so a seed gives the same weights as it always did."""
    _check_sizes(msg)
    extractor = msg.feature_extractor
    depth, use_fpn = _feature_extractor_kind(extractor)
    if use_fpn and msg.number_of_stages == 3:
        raise ConfigError(f"{WHERE}.second_stage_box_predictor.mask_rcnn_box_predictor."
                          "predict_instance_masks: masks are built on the single-map feature extractors "
                          "(ResNet, Inception-ResNet v2), whose second stage gives maps; the FPN variants' "
                          "box classifier gives vectors")
    frozen = not extractor.batch_norm_trainable
    backbone: Backbone = ResNet(depth, freeze_batchnorm=frozen) if depth else InceptionResnetV2(frozen)
    hp = build_conv_hyperparams(extractor.conv_hyperparams, f"{WHERE}.feature_extractor.conv_hyperparams")
    fpn = None
    if use_fpn and not isinstance(backbone, InceptionResnetV2):  # the FPN variants are ResNets
        # under TF's conventions the FPN extractor's Keras ResNet takes conv_hyperparams' batch norms and
        # activations with override_base_feature_extractor_hyperparams (the plain one ignores the field)
        if extractor.override_base_feature_extractor_hyperparams:
            backbone.keras_hyperparams = hp
        fpn = _fpn(extractor, backbone, hp, frozen)
    anchors = _anchor_generator(msg.first_stage_anchor_generator, fpn)
    rpn = _rpn(msg, backbone, fpn, anchors)
    box_classifier, head_in = None, backbone.out_channels[5]
    if fpn is not None:
        pooled = (msg.initial_crop_size - msg.maxpool_kernel_size) // msg.maxpool_stride + 1
        box_classifier = FpnBoxClassifier(fpn.out_channels[0] * pooled * pooled, hp, frozen)
        head_in = box_classifier.out_features
    box_head = _box_head(msg.second_stage_box_predictor, head_in, msg.num_classes)
    mask_head = _mask_head(msg, head_in) if msg.number_of_stages == 3 else None
    post = msg.second_stage_post_processing
    converter = build_score_converter(post, msg.num_classes, calibration, background_column=True)
    nms = build_non_max_suppression(post)
    return FasterRCNN(backbone=backbone, fpn=fpn, anchor_generator=anchors, rpn=rpn,
                      box_classifier=box_classifier, box_head=box_head, box_coder=FasterRcnnBoxCoder(),
                      score_converter=converter, non_max_suppression=nms, mask_head=mask_head,
                      **{f: field_value(msg, f) for f in MODEL_FIELDS})


def _check_sizes(msg: faster_rcnn_pb2.FasterRcnn) -> None:
    if msg.num_classes < 1:
        raise ConfigError(f"{WHERE}.num_classes must be at least 1, got {msg.num_classes}")
    masks = msg.second_stage_box_predictor.mask_rcnn_box_predictor.predict_instance_masks
    if msg.number_of_stages not in (2, 3) or (msg.number_of_stages == 3) != masks:
        raise ConfigError(f"{WHERE}.number_of_stages is {msg.number_of_stages} with "
                          f"mask_rcnn_box_predictor.predict_instance_masks {str(masks).lower()}; raredet "
                          "builds Faster R-CNN (2 stages, no masks) and Mask R-CNN (3 stages, "
                          "predict_instance_masks: true): make the two agree")
    for name in ("initial_crop_size", "maxpool_kernel_size", "maxpool_stride", "first_stage_max_proposals"):
        value = getattr(msg, name)
        if value < 1:
            raise ConfigError(f"{WHERE}.{name} is {value}; set it to a positive value (the zoo uses "
                              "initial_crop_size 14, maxpool_kernel_size 2, maxpool_stride 2)")


def _feature_extractor_kind(msg: faster_rcnn_pb2.FasterRcnnFeatureExtractor) -> tuple[int, bool]:
    """(ResNet depth or 0 for Inception-ResNet v2, with an FPN) of `feature_extractor.type`."""
    key = msg.type.removesuffix("_keras")
    if key not in FEATURE_EXTRACTORS:
        valid = ", ".join(f"{k}_keras" for k in FEATURE_EXTRACTORS)
        raise ConfigError(f"{WHERE}.feature_extractor.type: {msg.type!r} is not supported; "
                          f"valid: {valid} (_keras suffix optional)")
    depth, fpn = FEATURE_EXTRACTORS[key]
    stride = msg.first_stage_features_stride
    if stride != 16 and not fpn:
        raise ConfigError(f"{WHERE}.feature_extractor.first_stage_features_stride is {stride}; the ResNet "
                          "and Inception-ResNet v2 feature extractors have stride 16 (conv4, block17), as "
                          "in the TF OD API's Keras models (its atrous stride 8 is not built)")
    return depth, fpn


def _fpn(msg: faster_rcnn_pb2.FasterRcnnFeatureExtractor, backbone: ResNet, hp: ConvHyperparams,
         frozen: bool) -> FeaturePyramid:
    """`feature_extractor.fpn` on the ResNet's C2..C5."""
    fpn = msg.fpn
    return build_feature_pyramid(backbone.out_channels, hp, min_level=fpn.min_level, max_level=fpn.max_level,
                          additional_layer_depth=fpn.additional_layer_depth, freeze_batchnorm=frozen)


def _anchor_generator(msg: anchor_generator_pb2.AnchorGenerator, fpn: FeaturePyramid | None
                      ) -> AnchorGenerator:
    """A grid on conv4, or multiscale anchors on the FPN's levels (which they must equal)."""
    where = f"{WHERE}.first_stage_anchor_generator"
    want = "multiscale_anchor_generator" if fpn is not None else "grid_anchor_generator"
    chosen = msg.WhichOneof("anchor_generator_oneof")
    if chosen != want:
        kind = "the FPN feature extractors" if fpn is not None else "the single-map ResNet feature extractors"
        raise ConfigError(f"{where}: {kind} take {want} (got {[chosen] if chosen else 'none'})")
    if fpn is None:
        return build_grid_anchor_generator(**message_kwargs(msg.grid_anchor_generator))
    # anchors are always in pixels here
    anchors = build_multiscale_anchor_generator(**message_kwargs(msg.multiscale_anchor_generator,
                                                                 skip=("normalize_coordinates",)))
    if (anchors.min_level, anchors.max_level) != (fpn.min_level, fpn.max_level):
        raise ConfigError(f"{where}.multiscale_anchor_generator: levels "
                          f"{anchors.min_level}..{anchors.max_level} differ from feature_extractor.fpn "
                          f"levels {fpn.min_level}..{fpn.max_level}; make them equal")
    return anchors


def _rpn(msg: faster_rcnn_pb2.FasterRcnn, backbone: Backbone, fpn: FeaturePyramid | None,
         anchors: AnchorGenerator) -> RpnHead:
    """The first stage's box predictor: on conv4, or shared by the FPN levels."""
    hp = build_conv_hyperparams(msg.first_stage_box_predictor_conv_hyperparams,
                                f"{WHERE}.first_stage_box_predictor_conv_hyperparams")
    channels = fpn.out_channels[0] if fpn is not None else backbone.out_channels[4]
    return RpnHead(channels, anchors.num_anchors_per_location, hp, msg.first_stage_box_predictor_kernel_size,
                   msg.first_stage_box_predictor_depth, msg.first_stage_atrous_rate,
                   len(fpn.out_channels) if fpn is not None else 1)


def _box_head(msg: box_predictor_pb2.BoxPredictor, in_features: int, num_classes: int) -> MaskRcnnBoxHead:
    """`second_stage_box_predictor.mask_rcnn_box_predictor` (boxes and classes only)."""
    chosen = msg.WhichOneof("box_predictor_oneof")
    if chosen != "mask_rcnn_box_predictor":
        raise ConfigError(f"{WHERE}.second_stage_box_predictor: set mask_rcnn_box_predictor (got "
                          f"{[chosen] if chosen else 'none'}); rfcn_box_predictor is not supported")
    head = msg.mask_rcnn_box_predictor
    where = f"{WHERE}.second_stage_box_predictor.mask_rcnn_box_predictor"
    if head.predict_keypoints:
        raise ConfigError(f"{where}.predict_keypoints: Mask R-CNN's keypoint head is not supported (the "
                          "TF OD API's Keras box predictor does not build it either); set it false. For "
                          "keypoints use a CenterNet config with a keypoint_estimation_task")
    if head.box_code_size != 4:
        raise ConfigError(f"{where}.box_code_size is {head.box_code_size}; the faster_rcnn_box_coder has 4")
    hp = build_conv_hyperparams(head.fc_hyperparams, f"{where}.fc_hyperparams")
    return MaskRcnnBoxHead(in_features, num_classes, hp, head.share_box_across_classes, head.use_dropout,
                           field_value(head, "dropout_keep_probability"))


def _mask_head(msg: faster_rcnn_pb2.FasterRcnn, in_channels: int) -> MaskHead:
    """Mask R-CNN's mask head from `mask_rcnn_box_predictor`'s mask fields, on the second stage's
    features (the single-map extractors: their second half's maps, 1/2 the pooled crop's size)."""
    head = msg.second_stage_box_predictor.mask_rcnn_box_predictor
    where = f"{WHERE}.second_stage_box_predictor.mask_rcnn_box_predictor"
    if not head.HasField("conv_hyperparams"):
        raise ConfigError(f"{where}.conv_hyperparams: the mask head's convolutions need it (as in the TF "
                          "OD API); add conv_hyperparams { op: CONV initializer { ... } }")
    for name in ("mask_height", "mask_width", "mask_prediction_num_conv_layers"):
        if getattr(head, name) < 1:
            raise ConfigError(f"{where}.{name} is {getattr(head, name)}; it must be at least 1")
    if head.mask_prediction_conv_depth < 0:
        raise ConfigError(f"{where}.mask_prediction_conv_depth is {head.mask_prediction_conv_depth}; set a "
                          "depth, or 0 for the automatic one")
    pooled = (msg.initial_crop_size - msg.maxpool_kernel_size) // msg.maxpool_stride + 1
    features = (pooled + 1) // 2  # the second half's stride-2 'SAME' layers
    if head.convolve_then_upsample_masks and (head.mask_height % features or head.mask_width % features):
        raise ConfigError(f"{where}.convolve_then_upsample_masks: mask_height and mask_width "
                          f"({head.mask_height}, {head.mask_width}) must be multiples of the second stage's "
                          f"feature size {features} (the features are upsampled by an integer factor)")
    hp = build_conv_hyperparams(head.conv_hyperparams, f"{where}.conv_hyperparams")
    return MaskHead(in_channels, msg.num_classes, hp, mask_height=head.mask_height,
                    mask_width=head.mask_width,
                    mask_prediction_num_conv_layers=head.mask_prediction_num_conv_layers,
                    mask_prediction_conv_depth=head.mask_prediction_conv_depth,
                    masks_are_class_agnostic=head.masks_are_class_agnostic,
                    convolve_then_upsample_masks=head.convolve_then_upsample_masks)
