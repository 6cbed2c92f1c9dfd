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

``restore_from_objects``: ``classification`` restores the feature extractor's
``classification_backbone`` (the whole Keras ResNet, root ``feature_extractor`` in a classification
checkpoint); ``detection`` the two feature-extractor models above (the backbone, all of ``layer1..4``);
``full`` everything. What raredet changes to compute as TF does is
``FasterRCNN.use_weights_convention("tf")``. The FPN variant is not mapped yet.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from raredet.errors import CheckpointError
from raredet.modeling.tf_weights.common import TensorMap
from raredet.modeling.tf_weights.keras_layers import Shapes, conv_maps
from raredet.modeling.tf_weights.resnet import backbone_maps

if TYPE_CHECKING:
    from raredet.modeling.faster_rcnn import FasterRCNN

PROPOSAL_ROOT = "_feature_extractor_for_proposal_features"
BOX_CLASSIFIER_ROOT = "_feature_extractor_for_box_classifier_features"
RPN_CONV = "_first_stage_box_predictor_first_conv/layer_with_weights-0"
RPN_HEADS = "_first_stage_box_predictor/_prediction_heads"
SECOND_STAGE = "_mask_rcnn_box_predictor"


def backbone_tensor_maps(model: FasterRCNN, shapes: Shapes, root: str) -> list[TensorMap]:
    """The ResNet: stem and ``layer1..3`` from the proposal model, ``layer4`` from the box classifier's."""
    maps = backbone_maps(model.backbone, "backbone", f"{root}/{PROPOSAL_ROOT}", shapes, stages=(1, 2, 3))
    return maps + backbone_maps(model.backbone, "backbone", f"{root}/{BOX_CLASSIFIER_ROOT}", shapes,
                                stages=(4,), stem=False)


def rpn_maps(model: FasterRCNN, root: str) -> list[TensorMap]:
    rpn = model.rpn
    if len(rpn.objectness) != 1:
        raise CheckpointError("the FPN variant of Faster R-CNN has no TF mapping yet")
    heads = f"{root}/{RPN_HEADS}"
    return (conv_maps(rpn.conv, "rpn.conv", f"{root}/{RPN_CONV}", "rpn")
            + conv_maps(_conv(rpn.objectness[0]), "rpn.objectness.0",
                        f"{heads}/class_predictions_with_background/0/_class_predictor_layers/0", "rpn")
            + conv_maps(_conv(rpn.box[0]), "rpn.box.0", f"{heads}/box_encodings/0/_box_encoder_layers/0",
                        "rpn"))


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


def tensor_maps(model: FasterRCNN, shapes: Shapes, root: str = "model") -> list[TensorMap]:
    """Every map of a Faster R-CNN ResNet from a detection checkpoint (parts ``backbone``, ``rpn``,
    ``second_stage``); ``shapes``: ``{object path: shape}`` of the checkpoint's variables."""
    if f"{root}/{PROPOSAL_ROOT}/layer_with_weights-0/kernel" not in shapes:
        raise CheckpointError(
            f"no Faster R-CNN ResNet under {root} in this checkpoint (looked for {root}/{PROPOSAL_ROOT}/"
            "layer_with_weights-0/kernel); `raredet inspect-checkpoint` lists its object paths")
    if model.fpn is not None:
        raise CheckpointError("faster_rcnn_resnet*_fpn_keras: TF checkpoints of the FPN variant cannot be "
                              "read yet; use the plain faster_rcnn_resnet*_keras models")
    return backbone_tensor_maps(model, shapes, root) + rpn_maps(model, root) + second_stage_maps(root, shapes)


def classification_maps(model: FasterRCNN, shapes: Shapes, root: str = "feature_extractor"
                        ) -> list[TensorMap]:
    """The whole ResNet from a classification checkpoint (the Keras ResNet's ``layer_with_weights``)."""
    if f"{root}/layer_with_weights-0/kernel" not in shapes:
        raise CheckpointError(f"no Keras ResNet at {root} in this checkpoint; `raredet inspect-checkpoint` "
                              "lists its object paths")
    return backbone_maps(model.backbone, "backbone", root, shapes)
