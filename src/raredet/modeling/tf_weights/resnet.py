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
"""

from __future__ import annotations

from collections.abc import Iterable

from raredet.modeling.backbones import RESNET_DEPTHS, Bottleneck
from raredet.modeling.tf_weights.common import TensorMap

# Keras batch-norm variable -> torch ``BatchNorm2d`` tensor.
BATCH_NORM_TENSORS = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean",
                      "moving_variance": "running_var"}
# Keras' per-block layer suffix -> raredet's module inside a ``Bottleneck``.
BLOCK_MODULES = {"0_conv": "downsample.0", "0_bn": "downsample.1", "1_conv": "conv1", "1_bn": "bn1",
                 "2_conv": "conv2", "2_bn": "bn2", "3_conv": "conv3", "3_bn": "bn3"}
FIRST_BLOCK_ORDER = ("1_conv", "1_bn", "2_conv", "2_bn", "0_conv", "3_conv", "0_bn", "3_bn")
BLOCK_ORDER = ("1_conv", "1_bn", "2_conv", "2_bn", "3_conv", "3_bn")
def keras_layer_order(depth: int, stages: Iterable[int] = (1, 2, 3, 4), stem: bool = True
                      ) -> list[tuple[str, str]]:
    """``(Keras layer name, raredet module path)`` of a Keras ResNet-``depth`` in the order its
    ``layer_with_weights-N`` count them; ``stages`` 1..4 are torchvision's ``layer1..layer4`` (Keras
    ``conv2..conv5``). A Keras submodel that starts at a later stage counts from 0 there."""
    block, counts = RESNET_DEPTHS[depth]
    if block is not Bottleneck:
        raise ValueError(f"the TF OD API has no Keras ResNet-{depth} (bottleneck ResNets 50/101/152 only)")
    order = [("conv1_conv", "conv1"), ("conv1_bn", "bn1")] if stem else []
    for stage in stages:
        for index in range(counts[stage - 1]):
            prefix = f"conv{stage + 1}_block{index + 1}_"
            for suffix in FIRST_BLOCK_ORDER if index == 0 else BLOCK_ORDER:
                order.append((prefix + suffix, f"layer{stage}.{index}.{BLOCK_MODULES[suffix]}"))
    return order


def layer_maps(source: str, target: str, part: str, is_conv: bool) -> list[TensorMap]:
    """The maps of one Keras layer saved at ``source`` (object path) onto raredet's module ``target``."""
    if is_conv:
        return [TensorMap(f"{target}.weight", f"{source}/kernel", "conv", part)]
    return [TensorMap(f"{target}.{name}", f"{source}/{tf_name}", "vector", part)
            for tf_name, name in BATCH_NORM_TENSORS.items()]


def backbone_maps(source_root: str, target_root: str, depth: int, part: str = "backbone",
                  stages: Iterable[int] = (1, 2, 3, 4), stem: bool = True) -> list[TensorMap]:
    """TensorMaps of a Keras ResNet saved at ``source_root`` (its ``layer_with_weights-N`` children)
    onto the raredet ``ResNet`` at ``target_root`` (a state-dict prefix, e.g. ``feature_extractor.
    backbone``)."""
    maps = []
    for index, (keras_name, module) in enumerate(keras_layer_order(depth, stages, stem)):
        maps += layer_maps(f"{source_root}/layer_with_weights-{index}", f"{target_root}.{module}", part,
                           keras_name.endswith("_conv"))
    return maps


def expected_full_names(depth: int, stages: Iterable[int] = (1, 2, 3, 4), stem: bool = True
                        ) -> dict[int, str]:
    """``layer_with_weights`` index -> the Keras layer name its variables carry (``conv2_block1_0_conv``
    ...), to check a checkpoint against ``keras_layer_order``."""
    return {i: name for i, (name, _) in enumerate(keras_layer_order(depth, stages, stem))}
