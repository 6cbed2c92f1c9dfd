"""The TF OD API's Keras ResNet v1 (``ssd_resnet{50,101,152}_v1_fpn_keras``, and the backbone of
``faster_rcnn_resnet{50,101,152}[_fpn]_keras``) onto raredet's torchvision-named ``ResNet``.

What the Keras model computes (``object_detection/models/keras_models/resnet_v1.py``, which builds
``tf.keras.applications.resnet.ResNet50/101/152`` through a layer override), and how raredet follows it
once TF weights are loaded (``ResNet.use_tf_conventions``; nothing changes a parameter's shape):

* **Stride** on the first 1x1 conv of a bottleneck's first block (ResNet v1.0: Keras'
  ``convN_block1_1_conv``) where torchvision's v1.5 puts it on the 3x3: moved to ``conv1``.
* **Padding.** A strided conv with a kernel above 1 (only the 7x7 stem) pads ``k // 2`` on each
  side then convolves 'valid' (the override's ``_fixed_padding``): torch's symmetric padding, *not*
  TF's 'SAME'; the stem is marked ``KerasFixedPaddingConv2d`` so ``use_tf_same_padding`` leaves it
  alone. The Keras application's ``ZeroPadding2D`` layers are no-ops, and the 3x3 stride-2 max pool
  pads 'SAME' (0 before, 1 after on an even side): switched to ``TFSameMaxPool2d``. 1x1 strided convs
  and stride-1 3x3 convs compute the same either way.
* **No biases** in any conv (``use_bias=False``), as raredet's.
* **Batch norm epsilon and activation**: with ``override_base_feature_extractor_hyperparams`` (the SSD
  zoo configs) the feature extractor's ``conv_hyperparams`` build every batch norm (their epsilon,
  0.001 in the zoo) and every activation (``RELU_6`` in the zoo, the residual ``_out`` activations
  included); without it ReLU and epsilon 1e-5 (the override's default; Faster R-CNN's always).

Variables: the Keras functional model saves its layers as ``layer_with_weights-N``, N counting the
layers that hold weights in Keras' topological order. For a bottleneck stage's first block it is
``1_conv, 1_bn, 2_conv, 2_bn, 0_conv, 3_conv, 0_bn, 3_bn`` (``0`` the projection shortcut), for the
others ``1_conv, 1_bn, 2_conv, 2_bn, 3_conv, 3_bn``; the stem ``conv1_conv, conv1_bn`` comes first.
``keras_layer_order`` gives that order (checked against the checkpoints' own full names in the tests).
The FPN and the box predictor above it are the SSD parts every family shares (``ssd_parts``).

Plugged into ``tf_weights.load_tf_checkpoint`` as the ``resnet`` family: ``tensor_maps`` (detection
checkpoint, root ``model``) and ``classification_maps`` (root ``feature_extractor``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from torch import nn

from raredet.errors import CheckpointError
from raredet.modeling.backbones import RESNET_DEPTHS, Bottleneck, ResNet
from raredet.modeling.fpn import FeaturePyramid
from raredet.modeling.tf_weights.common import TensorMap
from raredet.modeling.tf_weights.keras_layers import Shapes, layer_maps
from raredet.modeling.tf_weights.ssd_parts import fpn_maps, predictor_maps

if TYPE_CHECKING:
    from raredet.modeling.ssd import SSD

BACKBONE_ROOT = "_feature_extractor/classification_backbone"
# Keras' per-block layer suffix -> raredet's module inside a ``Bottleneck``.
BLOCK_MODULES = {"0_conv": "downsample.0", "0_bn": "downsample.1", "1_conv": "conv1", "1_bn": "bn1",
                 "2_conv": "conv2", "2_bn": "bn2", "3_conv": "conv3", "3_bn": "bn3"}
FIRST_BLOCK_ORDER = ("1_conv", "1_bn", "2_conv", "2_bn", "0_conv", "3_conv", "0_bn", "3_bn")
BLOCK_ORDER = ("1_conv", "1_bn", "2_conv", "2_bn", "3_conv", "3_bn")


def resnet_depth(backbone: nn.Module) -> int:
    """50, 101 or 152 from the number of blocks per stage."""
    counts = [len(getattr(backbone, f"layer{i}")) for i in range(1, 5)]
    for depth, (block, expected) in RESNET_DEPTHS.items():
        if block is Bottleneck and counts == expected:
            return depth
    raise CheckpointError(f"no TF OD API Keras ResNet has {counts} blocks per stage (only ResNet-50/101/152)")


def keras_layer_order(depth: int, stages: Iterable[int] = (1, 2, 3, 4), stem: bool = True
                      ) -> list[tuple[str, str]]:
    """``(Keras layer name, raredet module path)`` of a Keras ResNet-``depth`` in the order its
    ``layer_with_weights-N`` count them; ``stages`` 1..4 are torchvision's ``layer1..layer4`` (Keras
    ``conv2..conv5``). A Keras submodel that starts at a later stage counts from 0 there."""
    block, counts = RESNET_DEPTHS[depth]
    if block is not Bottleneck:
        raise CheckpointError(f"the TF OD API has no Keras ResNet-{depth} (ResNet-50/101/152 only)")
    order = [("conv1_conv", "conv1"), ("conv1_bn", "bn1")] if stem else []
    for stage in stages:
        for index in range(counts[stage - 1]):
            prefix = f"conv{stage + 1}_block{index + 1}_"
            for suffix in FIRST_BLOCK_ORDER if index == 0 else BLOCK_ORDER:
                order.append((prefix + suffix, f"layer{stage}.{index}.{BLOCK_MODULES[suffix]}"))
    return order


def backbone_maps(backbone: ResNet, target: str, root: str, shapes: Shapes, part: str = "backbone",
                  stages: Iterable[int] = (1, 2, 3, 4), stem: bool = True) -> list[TensorMap]:
    """The Keras ResNet (or the part of it from ``stages``) saved at ``root`` (its
    ``layer_with_weights-N``) onto the raredet ``backbone`` named ``target`` in the state dict."""
    modules = dict(backbone.named_modules())
    maps: list[TensorMap] = []
    for index, (_, module) in enumerate(keras_layer_order(resnet_depth(backbone), stages, stem)):
        maps += layer_maps(modules[module], f"{target}.{module}", f"{root}/layer_with_weights-{index}", part,
                           shapes)
    return maps


def tensor_maps(model: SSD, shapes: Shapes, root: str = "model") -> list[TensorMap]:
    """Every map of an SSD ResNet-FPN from a detection checkpoint (``shapes``: ``{object path: shape}``
    of its variables): parts ``backbone``, ``fpn``, ``box_predictor``."""
    _require(shapes, f"{root}/{BACKBONE_ROOT}", model.feature_extractor_type)
    extractor = model.feature_extractor
    maps = backbone_maps(_resnet(model), "feature_extractor.backbone", f"{root}/{BACKBONE_ROOT}", shapes)
    fpn = getattr(extractor, "fpn", None)
    if not isinstance(fpn, FeaturePyramid):
        raise CheckpointError(f"{model.feature_extractor_type}: only SSD ResNets with an FPN are mapped")
    maps += fpn_maps(fpn, "feature_extractor.fpn", root, shapes)
    return maps + predictor_maps(model.box_predictor, "box_predictor", root, shapes)


def classification_maps(model: SSD, shapes: Shapes, root: str = "feature_extractor") -> list[TensorMap]:
    """The backbone from a classification checkpoint (``tf.train.Checkpoint(feature_extractor=<the Keras
    ResNet>)``, the zoo's ImageNet checkpoints)."""
    _require(shapes, root, model.feature_extractor_type)
    return backbone_maps(_resnet(model), "feature_extractor.backbone", root, shapes)


def _resnet(model: SSD) -> ResNet:
    backbone = model.feature_extractor.backbone
    if not isinstance(backbone, ResNet):
        raise CheckpointError(f"{model.feature_extractor_type}: the backbone is not a ResNet")
    return backbone


def _require(shapes: Shapes, root: str, what: str) -> None:
    if f"{root}/layer_with_weights-0/kernel" not in shapes:
        raise CheckpointError(
            f"no Keras ResNet at {root} in this checkpoint (looked for {root}/layer_with_weights-0/kernel); "
            f"is it a TF OD API checkpoint of {what}? `raredet inspect-checkpoint` lists its object paths")
