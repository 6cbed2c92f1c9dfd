"""The TF OD API's Keras Faster R-CNN ResNet v1 (``faster_rcnn_resnet{50,101,152}_keras``): which TF
variable feeds which raredet tensor.

Object paths under the detection model's root (``model`` in the zoo's ``ckpt-0``):

* **Backbone to conv4** (``_feature_extractor_for_proposal_features``): the Keras ResNet cut after
  ``conv4_blockN_out``, a functional model whose ``layer_with_weights-N`` run as in ``resnet`` (stem,
  then torchvision's ``layer1..layer3``).
* **conv5** (``_feature_extractor_for_box_classifier_features``): the rest of the same Keras ResNet
  (``layer4``), extracted as its own functional model, counting from 0 at ``conv5_block1_1_conv``. TF
  runs it on the cropped, max-pooled proposals (``_compute_second_stage_input_feature_maps``), as
  raredet does.
* **RPN** (part ``rpn``): the ``k x k`` conv ``_first_stage_box_predictor_first_conv/layer_with_weights-0``
  and the 1x1 heads ``_first_stage_box_predictor/_prediction_heads/{box_encodings |
  class_predictions_with_background}/0/{_box_encoder_layers | _class_predictor_layers}/0``. TF's
  objectness head has 2 outputs per anchor (background, object) in anchor-major order, raredet's
  too; the box head 4 per anchor (ty, tx, th, tw), raredet's too.
* **Second stage** (part ``second_stage``): ``_mask_rcnn_box_predictor/_class_prediction_head/
  _class_predictor_layers/d`` (Dense, ``K + 1`` columns, background first -- kept: raredet's head has
  it too) and ``_box_prediction_head/_box_encoder_layers/d`` (Dense, 4 per box, one box shared or one
  per class, class-major), ``d`` 1 after the Flatten, 2 with dropout.

The FPN variant (``faster_rcnn_resnet{50,101,152}_fpn_keras``):

* **Backbone and FPN** (``_feature_extractor_for_proposal_features``, the extractor's ``_ResnetFPN``
  layer): the whole Keras ResNet at ``classification_backbone/layer_with_weights-N``; the FPN at
  ``fpn_features_generator`` and the stride-2 levels above it at ``coarse_feature_layers``, laid out as
  the SSD FPN's (``ssd_parts.fpn_maps``) under those names.
* **Box classifier** (part ``box_classifier``, ``_feature_extractor_for_box_classifier_features``, a
  Sequential): ``layer_with_weights-0`` Dense (fc1), ``-1`` batch norm, ``-2`` Dense (fc2). Keras
  flattens the NHWC crops (y, x, channel), so under TF's conventions raredet flattens channels-last.
* **RPN**: the shared ``k x k`` conv, then per level ``l`` the 1x1 heads ``.../box_encodings/l/...`` and
  ``.../class_predictions_with_background/l/...``.
* **Second stage**: as above; the zoo's FPN config predicts one box per class (``K x 4`` columns).

Inception-ResNet v2 (``faster_rcnn_inception_resnet_v2_keras``, Mask R-CNN's zoo extractor): the Keras
application's two functional models at the same two roots (``tf_weights.inception_resnet_v2``: their
layer order), the RPN and the second stage as above. Mask R-CNN's mask head (part ``mask_head``):
``_mask_rcnn_box_predictor/_third_stage_heads/mask_predictions/_mask_predictor_layers/i``
(``mask_head_maps``).

``restore_from_objects``: ``classification`` restores the feature extractor's
``classification_backbone`` (the whole Keras ResNet, root ``feature_extractor`` in a classification
checkpoint); ``detection`` the two feature-extractor models above (the backbone, all of ``layer1..4``;
with the FPN also the FPN and the box classifier's fc layers); ``full`` everything. What raredet
changes to compute as TF does is ``FasterRCNN.use_weights_convention("tf")``.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from torch import nn

from raredet.errors import CheckpointError
from raredet.modeling.backbones import ResNet
from raredet.modeling.fpn import FeaturePyramid
from raredet.modeling.inception_resnet_v2 import InceptionResnetV2
from raredet.modeling.mask_head import MaskHead
from raredet.modeling.tf_weights import inception_resnet_v2
from raredet.modeling.tf_weights.common import TensorMap
from raredet.modeling.tf_weights.keras_layers import Shapes, batch_norm_maps, conv_maps
from raredet.modeling.tf_weights.resnet import backbone_maps
from raredet.modeling.tf_weights.ssd_parts import COARSE_ROOT, FPN_ROOT, fpn_maps

if TYPE_CHECKING:
    from raredet.modeling.faster_rcnn import FasterRCNN

PROPOSAL_ROOT = "_feature_extractor_for_proposal_features"
BOX_CLASSIFIER_ROOT = "_feature_extractor_for_box_classifier_features"
RPN_CONV = "_first_stage_box_predictor_first_conv/layer_with_weights-0"
RPN_HEADS = "_first_stage_box_predictor/_prediction_heads"
SECOND_STAGE = "_mask_rcnn_box_predictor"
MASK_HEAD = "_third_stage_heads/mask_predictions/_mask_predictor_layers"
MASK_PART = "mask_head"
BOX_CLASSIFIER = "box_classifier"  # the FPN variant's fc layers (a part of their own)
# The FPN extractor's _ResnetFPN layer: its attributes' names (the SSD extractor's differ)
FPN_BACKBONE = f"{PROPOSAL_ROOT}/classification_backbone"
FPN_NAMES = ((FPN_ROOT, f"{PROPOSAL_ROOT}/fpn_features_generator"),
             (COARSE_ROOT, f"{PROPOSAL_ROOT}/coarse_feature_layers"))


def _resnet(model: FasterRCNN) -> ResNet:
    """The model's ResNet; a CheckpointError for a backbone whose TF variables are not mapped."""
    if not isinstance(model.backbone, ResNet):
        raise CheckpointError(f"no TF variable mapping for a Faster R-CNN {type(model.backbone).__name__}; "
                              "use a raredet checkpoint, or train from scratch")
    return model.backbone


def backbone_tensor_maps(model: FasterRCNN, shapes: Shapes, root: str) -> list[TensorMap]:
    """The ResNet: stem and ``layer1..3`` from the proposal model, ``layer4`` from the box classifier's;
    Inception-ResNet v2: its two halves (``tf_weights.inception_resnet_v2``)."""
    if isinstance(model.backbone, InceptionResnetV2):
        return inception_resnet_v2.detection_backbone_maps(model.backbone, "backbone", root, PROPOSAL_ROOT,
                                                           BOX_CLASSIFIER_ROOT)
    maps = backbone_maps(_resnet(model), "backbone", f"{root}/{PROPOSAL_ROOT}", shapes, stages=(1, 2, 3))
    return maps + backbone_maps(_resnet(model), "backbone", f"{root}/{BOX_CLASSIFIER_ROOT}", shapes,
                                stages=(4,), stem=False)


def rpn_maps(model: FasterRCNN, root: str) -> list[TensorMap]:
    """The shared RPN conv and each level's 1x1 objectness and box heads."""
    rpn, heads = model.rpn, f"{root}/{RPN_HEADS}"
    maps = conv_maps(rpn.conv, "rpn.conv", f"{root}/{RPN_CONV}", "rpn")
    for level in range(len(rpn.objectness)):
        objectness = f"{heads}/class_predictions_with_background/{level}/_class_predictor_layers/0"
        maps += conv_maps(_conv(rpn.objectness[level]), f"rpn.objectness.{level}", objectness, "rpn")
        maps += conv_maps(_conv(rpn.box[level]), f"rpn.box.{level}",
                          f"{heads}/box_encodings/{level}/_box_encoder_layers/0", "rpn")
    return maps


def _conv(module: nn.Module) -> nn.Conv2d:
    assert isinstance(module, nn.Conv2d)
    return module


def second_stage_maps(root: str, shapes: Shapes) -> list[TensorMap]:
    """The mask_rcnn_box_predictor's two dense layers (after a Flatten, and a Dropout when used)."""
    maps = []
    for ours, head, layers in (("box_head.cls", "_class_prediction_head", "_class_predictor_layers"),
                               ("box_head.box", "_box_prediction_head", "_box_encoder_layers")):
        base = f"{root}/{SECOND_STAGE}/{head}/{layers}"
        index = next((d for d in (1, 2) if f"{base}/{d}/kernel" in shapes), 1)
        maps += [TensorMap(f"{ours}.weight", f"{base}/{index}/kernel", "dense", "second_stage"),
                 TensorMap(f"{ours}.bias", f"{base}/{index}/bias", "vector", "second_stage")]
    return maps


def mask_head_maps(head: MaskHead, root: str, shapes: Shapes) -> list[TensorMap]:
    """The Keras ``MaskRCNNMaskHead`` at ``{root}/_mask_rcnn_box_predictor/_third_stage_heads/
    mask_predictions``: its ``_mask_predictor_layers`` are, per conv before the last, the conv, its batch
    norm (a layer without variables when ``conv_hyperparams`` has none) and the activation; with
    ``convolve_then_upsample`` then the upsampling Lambda and one more conv, batch norm, activation;
    then the last conv (with a bias). raredet's ``convs``, ``upsample_conv`` and ``last`` in that order."""
    base = f"{root}/{SECOND_STAGE}/{MASK_HEAD}"
    maps: list[TensorMap] = []
    index = 0
    for name, block in (("convs", head.convs), ("upsample_conv", head.upsample_conv)):
        if name == "upsample_conv" and head.convolve_then_upsample:
            index += 1  # the Lambda upsampling
        for position in range(0, len(block), 3):  # conv, norm, activation
            conv, norm = block[position], block[position + 1]
            assert isinstance(conv, nn.Conv2d)
            maps += conv_maps(conv, f"mask_head.{name}.{position}", f"{base}/{index}", MASK_PART)
            if isinstance(norm, nn.BatchNorm2d):
                maps += batch_norm_maps(f"mask_head.{name}.{position + 1}", f"{base}/{index + 1}", MASK_PART,
                                        shapes)
            index += 3
    return maps + conv_maps(head.last, "mask_head.last", f"{base}/{index}", MASK_PART)


def fpn_extractor_maps(model: FasterRCNN, shapes: Shapes, root: str) -> list[TensorMap]:
    """The FPN variant's ResNet, FPN and box classifier (module docstring)."""
    maps = backbone_maps(_resnet(model), "backbone", f"{root}/{FPN_BACKBONE}", shapes)
    assert isinstance(model.fpn, FeaturePyramid)
    for item in fpn_maps(model.fpn, "fpn", root, shapes):
        source = item.source
        for ssd_name, ours in FPN_NAMES:
            source = source.replace(f"{root}/{ssd_name}/", f"{root}/{ours}/")
        maps.append(dataclasses.replace(item, source=source))
    fc = f"{root}/{BOX_CLASSIFIER_ROOT}/layer_with_weights"
    for index, layer in ((0, "fc1"), (2, "fc2")):
        maps += [TensorMap(f"box_classifier.{layer}.weight", f"{fc}-{index}/kernel", "dense", BOX_CLASSIFIER),
                 TensorMap(f"box_classifier.{layer}.bias", f"{fc}-{index}/bias", "vector", BOX_CLASSIFIER)]
    return maps + batch_norm_maps("box_classifier.norm", f"{fc}-1", BOX_CLASSIFIER, shapes)


def tensor_maps(model: FasterRCNN, shapes: Shapes, root: str = "model") -> list[TensorMap]:
    """Every map of a Faster R-CNN ResNet, ResNet-FPN or Inception-ResNet v2 from a detection checkpoint
    (parts ``backbone``, ``rpn``, ``second_stage``; the FPN variant also ``fpn`` and ``box_classifier``;
    Mask R-CNN also ``mask_head``);
    ``shapes``: ``{object path: shape}`` of the checkpoint's variables."""
    first = f"{root}/{FPN_BACKBONE if model.fpn is not None else PROPOSAL_ROOT}/layer_with_weights-0/kernel"
    if first not in shapes:
        kind = ("ResNet-FPN" if model.fpn is not None else
                "Inception-ResNet v2" if isinstance(model.backbone, InceptionResnetV2) else "ResNet")
        raise CheckpointError(
            f"no Faster R-CNN {kind} under {root} in this checkpoint (looked for {first}); is the config's "
            "feature_extractor.type the checkpoint's? `raredet inspect-checkpoint` lists its object paths")
    extractor = (fpn_extractor_maps(model, shapes, root) if model.fpn is not None
                 else backbone_tensor_maps(model, shapes, root))
    maps = extractor + rpn_maps(model, root) + second_stage_maps(root, shapes)
    return maps + (mask_head_maps(model.mask_head, root, shapes) if model.mask_head is not None else [])


def classification_maps(model: FasterRCNN, shapes: Shapes, root: str = "feature_extractor"
                        ) -> list[TensorMap]:
    """The whole ResNet (Inception-ResNet v2) from a classification checkpoint (the Keras application's
    ``layer_with_weights``)."""
    if isinstance(model.backbone, InceptionResnetV2):
        return inception_resnet_v2.classification_backbone_maps(model.backbone, "backbone", root, shapes)
    if f"{root}/layer_with_weights-0/kernel" not in shapes:
        raise CheckpointError(f"no Keras ResNet at {root} in this checkpoint; `raredet inspect-checkpoint` "
                              "lists its object paths")
    return backbone_maps(_resnet(model), "backbone", root, shapes)
