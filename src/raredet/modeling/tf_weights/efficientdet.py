"""EfficientDet D0-D7 (``ssd_efficientnet-b0..b7_bifpn_keras``): which TF variable feeds which raredet
tensor, for checkpoints the TF OD API wrote (``tf.train.Checkpoint(model=detection_model)``, the zoo's
``ckpt-0``) and for the ImageNet checkpoints of its EfficientNet (``feature_extractor`` root).

Object paths (checkpoint key minus ``/.ATTRIBUTES/VARIABLE_VALUE``), as TF 2.15 writes them:

* **EfficientNet** (``tf-models-official``'s ``official/legacy/image_classification/efficientnet``,
  a Keras functional model): ``{root}/layer_with_weights-N/{kernel | depthwise_kernel | bias | gamma |
  beta | moving_mean | moving_variance}``, where ``N`` counts the layers that hold weights in the order
  the model applies them: the stem conv and its batch norm, then per block the expand conv and batch norm
  (absent when the expand ratio is 1), the depthwise conv and batch norm, the squeeze-excitation's
  ``se_reduce`` and ``se_expand`` convs (with biases), the project conv and batch norm. raredet's
  modules come in the same order. ``root`` is ``model/_feature_extractor/_efficientnet`` in a detection
  checkpoint (the model cut at the level-``max`` block; the rest of the classification network is saved
  under ``.../classification_backbone``) and ``feature_extractor`` in a classification checkpoint.
* **BiFPN** (``model/_feature_extractor/_bifpn_stage``): node ``k`` in the TF OD API's node order
  (raredet's ``bifpn.nodes[k]``): input ``i``'s 1x1 conv ``node_input_blocks/k/i/1/0`` and its batch
  norm ``.../1/1``; the fusion weights ``node_combine_op/k/bifpn_combine_weights`` (``[n, 1]``); the
  post-combine separable conv ``node_post_combine_block/k/1`` and batch norm ``.../2`` (``0`` is the
  activation, applied first).
* **Box predictor** (``model/_box_predictor``): the Keras weight-shared predictor every SSD family
  shares (``ssd_parts.weight_shared_maps``: separable tower convs, a batch norm per level, separable
  heads; EfficientDet's configs have ``add_background_class: false``, so no background column).

Computing as TF does needs, besides the TF OD API's input normalisation (which the EfficientNet
extractor shares with torchvision's, to 4e-7), TF's 'SAME' padding on the EfficientNet's strided convs
(its stem and stride-2 depthwise convs) and the TF EfficientNet's batch-norm epsilon 1e-3 (raredet's
b0-b4 use torchvision's 1e-5): ``SSD.use_weights_convention("tf")`` switches both (the latter through
``EfficientNet.use_tf_conventions``), also when a raredet checkpoint of such a model is rebuilt. The
BiFPN's max pooling already pads as TF's, and its upsampling is nearest-neighbour as TF's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from torch import nn

from raredet.errors import CheckpointError
from raredet.modeling.bifpn import BiFPN, BiFpnNode, Resample
from raredet.modeling.tf_weights.common import TensorMap
from raredet.modeling.tf_weights.keras_layers import (
    Shapes,
    batch_norm_maps,
    conv_maps,
    functional_model_maps,
    separable_maps,
)
from raredet.modeling.tf_weights.ssd_parts import weight_shared_maps

if TYPE_CHECKING:
    from raredet.modeling.predictor import WeightSharedConvolutionalBoxPredictor
    from raredet.modeling.ssd import SSD, EfficientDetFeatureExtractor

DETECTION_BACKBONE_ROOTS = ("_feature_extractor/_efficientnet", "_feature_extractor/classification_backbone")
BIFPN_ROOT = "_feature_extractor/_bifpn_stage"
BACKBONE = "feature_extractor.backbone"


def tensor_maps(model: SSD, shapes: Shapes, root: str = "model") -> list[TensorMap]:
    """Every map of an EfficientDet ``SSD`` from a detection checkpoint whose variables'
    ``{object path: shape}`` are ``shapes`` (parts ``backbone``, ``bifpn``, ``box_predictor``)."""
    backbone_root = next((f"{root}/{r}" for r in DETECTION_BACKBONE_ROOTS
                          if f"{root}/{r}/layer_with_weights-0/kernel" in shapes), None)
    if backbone_root is None:
        raise CheckpointError(
            f"no EfficientNet under {root}/_feature_extractor in this checkpoint (looked for "
            f"{root}/{DETECTION_BACKBONE_ROOTS[0]}/layer_with_weights-0/kernel); is it an EfficientDet "
            "detection checkpoint? `raredet inspect-checkpoint` lists its object paths"
        )
    extractor = cast("EfficientDetFeatureExtractor", model.feature_extractor)
    predictor = cast("WeightSharedConvolutionalBoxPredictor", model.box_predictor)
    maps = functional_model_maps(extractor.backbone, BACKBONE, backbone_root, "backbone", shapes)
    maps += bifpn_maps(extractor.bifpn, "feature_extractor.bifpn", f"{root}/{BIFPN_ROOT}", shapes)
    return maps + weight_shared_maps(predictor, "box_predictor", root, shapes)


def classification_maps(model: SSD, shapes: Shapes, root: str = "feature_extractor") -> list[TensorMap]:
    """The backbone's maps from a classification checkpoint (``tf.train.Checkpoint(feature_extractor=
    <the Keras EfficientNet>)``); the layers after the last level the detector taps are not read."""
    backbone = cast("EfficientDetFeatureExtractor", model.feature_extractor).backbone
    return functional_model_maps(backbone, BACKBONE, root, "backbone", shapes)


def bifpn_maps(bifpn: BiFPN, target: str, root: str, shapes: Shapes, part: str = "bifpn") -> list[TensorMap]:
    """Every BiFPN node's input projections, fusion weights and post-combine conv and batch norm."""
    maps: list[TensorMap] = []
    for k, node in enumerate(cast(list[BiFpnNode], bifpn.nodes)):
        here = f"{target}.nodes.{k}"
        for i, resample in enumerate(cast(list[Resample], node.inputs)):
            if resample.project is not None:
                block = f"{root}/node_input_blocks/{k}/{i}/1"
                conv = cast(nn.Conv2d, resample.project[0])
                maps += conv_maps(conv, f"{here}.inputs.{i}.project.0", f"{block}/0", part)
                maps += batch_norm_maps(f"{here}.inputs.{i}.project.1", f"{block}/1", part, shapes)
        if node.combine is not None and node.combine.weight is not None:
            maps.append(TensorMap(f"{here}.combine.weight",
                                  f"{root}/node_combine_op/{k}/bifpn_combine_weights", "flat", part))
        if node.post is not None:
            post = f"{root}/node_post_combine_block/{k}"
            separable = cast(nn.Sequential, cast(nn.Sequential, node.post)[1])  # (depthwise, pointwise)
            pointwise = cast(nn.Conv2d, separable[1])
            maps += separable_maps(pointwise, f"{here}.post.1.0", f"{here}.post.1.1", f"{post}/1", part)
            maps += batch_norm_maps(f"{here}.post.2", f"{post}/2", part, shapes)
    return maps
