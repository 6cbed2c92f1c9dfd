"""The TF OD API's Keras Inception-ResNet v2 (``faster_rcnn_inception_resnet_v2_keras``, Mask R-CNN's
zoo extractor) onto raredet's ``InceptionResnetV2``: which TF variable feeds which raredet tensor.

The extractor wraps Keras' ``InceptionResNetV2`` application (``include_top=False``) and saves it as
functional models, whose layers holding weights are ``layer_with_weights-N``:

* ``_feature_extractor_for_proposal_features`` (detection checkpoint): the application cut at
  ``block17_20_ac`` (stem, ``mixed_5b``, the block35s, ``mixed_6a``, the block17s);
* ``_feature_extractor_for_box_classifier_features``: the rest (``mixed_7a``, the block8s, ``conv_7b``),
  extracted as its own functional model (``model_util.extract_submodel``), counting from 0 again;
* ``feature_extractor`` (classification checkpoint, the zoo's ImageNet one): the whole application, the
  proposal model's layers then the box classifier's.

Keras orders a functional model's layers by depth (the longest path from the layer to the output),
deepest first, and layers of equal depth in the order a depth-first walk from the output meets them
(``functional._map_graph_network``). Every Inception module and residual block ends in a single
layer through which all paths pass (its ``Concatenate``, or the residual ``_ac`` activation), so the
order is block by block; inside a block, with ``conv2d_bn`` three layers (conv, batch norm,
activation) and a pool one, a layer's depth is its distance to the block's ``Concatenate``, and ties
go to the earlier branch (the walk enters the concatenation's inputs in order). So ``mixed_5b``
gives its third branch's first conv and batch norm first (distance 9 and 8), then the second branch's
first conv and the third branch's second conv (distance 6), their batch norms, then the last conv of
each of the four branches (distance 3; the pool branch's pool is at 4), their batch norms; a residual
block then adds its closing 1x1 ``blockNN_i_conv`` (kernel and bias, no batch norm). ``keras_order``
computes this order; the tests check it against the variables' own names in checkpoints the TF OD API
wrote (``conv2d_N`` and ``freezable_batch_norm_N`` count the layers in creation order, raredet's
registration order).

Batch norms have no ``gamma`` (``batchnorm_scale=False``): ``beta``, ``moving_mean``,
``moving_variance`` -> ``bias``, ``running_mean``, ``running_var`` of ``BatchNormNoScale``.
"""

from __future__ import annotations

from torch import nn

from raredet.errors import CheckpointError
from raredet.modeling.inception_resnet_v2 import (
    BatchNormNoScale,
    ConvBN,
    InceptionResnetBlock,
    InceptionResnetV2,
    Mixed,
)
from raredet.modeling.tf_weights.common import TensorMap
from raredet.modeling.tf_weights.keras_layers import Shapes, conv_maps

PROPOSAL_MODULES = ("stem", "mixed_5b", "block35", "mixed_6a", "block17")
BOX_CLASSIFIER_MODULES = ("mixed_7a", "block8", "conv_7b")
BATCH_NORM_VARIABLES = (("bias", "beta"), ("running_mean", "moving_mean"), ("running_var", "moving_variance"))

WeightLayer = tuple[str, nn.Module]  # (state-dict prefix, a Conv2d or BatchNormNoScale)


def _keras_layers(module: nn.Module, name: str) -> list[WeightLayer | None]:
    """A branch as Keras' sequence of layers: ``conv2d_bn`` -> conv, batch norm, activation (None: a
    layer without weights); a pool -> None."""
    if isinstance(module, ConvBN):
        return [(f"{name}.0", module[0]), (f"{name}.1", module[1]), None]
    if isinstance(module, nn.Sequential):
        return [layer for index, child in enumerate(module)
                for layer in _keras_layers(child, f"{name}.{index}")]
    return [None]


def _mixed_order(mixed: Mixed, name: str) -> list[WeightLayer]:
    """The weight layers of an Inception module in Keras' order (module docstring)."""
    ranked = []
    for b, branch in enumerate(mixed.branches):
        layers = _keras_layers(branch, f"{name}.branches.{b}")
        for position, layer in enumerate(layers):
            if layer is not None:
                ranked.append((-(len(layers) - position), b, layer))
    return [layer for _, _, layer in sorted(ranked, key=lambda item: item[:2])]


def keras_order(network: InceptionResnetV2, modules: tuple[str, ...]) -> list[WeightLayer]:
    """``(raredet name, layer)`` of every conv and batch norm of ``network``'s ``modules`` in the order of
    the Keras functional model's ``layer_with_weights-N``."""
    order: list[WeightLayer] = []
    for module_name in modules:
        module = getattr(network, module_name)
        if isinstance(module, ConvBN):  # conv_7b
            order += [layer for layer in _keras_layers(module, module_name) if layer is not None]
        elif isinstance(module, Mixed):
            order += _mixed_order(module, module_name)
        else:  # the stem (a chain), or a run of residual blocks
            for index, child in enumerate(module):
                name = f"{module_name}.{index}"
                if isinstance(child, InceptionResnetBlock):
                    order += _mixed_order(child.mixed, f"{name}.mixed") + [(f"{name}.conv", child.conv)]
                else:
                    order += [layer for layer in _keras_layers(child, name) if layer is not None]
    return order


def network_maps(network: InceptionResnetV2, target: str, root: str, modules: tuple[str, ...], part: str
                 ) -> list[TensorMap]:
    """The Keras functional model saved at ``root`` holding ``modules`` of ``network`` (the state-dict
    prefix ``target``)."""
    maps: list[TensorMap] = []
    for index, (name, layer) in enumerate(keras_order(network, modules)):
        source = f"{root}/layer_with_weights-{index}"
        if isinstance(layer, nn.Conv2d):
            maps += conv_maps(layer, f"{target}.{name}", source, part)
        else:
            assert isinstance(layer, BatchNormNoScale)
            maps += [TensorMap(f"{target}.{name}.{ours}", f"{source}/{theirs}", "vector", part)
                     for ours, theirs in BATCH_NORM_VARIABLES]
    return maps


def detection_backbone_maps(network: InceptionResnetV2, target: str, root: str, proposal_root: str,
                            box_classifier_root: str) -> list[TensorMap]:
    """Both halves from a detection checkpoint: ``{root}/{proposal_root}`` and
    ``{root}/{box_classifier_root}``."""
    return (network_maps(network, target, f"{root}/{proposal_root}", PROPOSAL_MODULES, "backbone")
            + network_maps(network, target, f"{root}/{box_classifier_root}", BOX_CLASSIFIER_MODULES,
                           "backbone"))


def classification_backbone_maps(network: InceptionResnetV2, target: str, root: str, shapes: Shapes
                                 ) -> list[TensorMap]:
    """The whole Keras application at ``root`` (a classification checkpoint's ``feature_extractor``)."""
    if f"{root}/layer_with_weights-0/kernel" not in shapes:
        raise CheckpointError(f"no Keras Inception-ResNet v2 at {root} in this checkpoint (looked for "
                              f"{root}/layer_with_weights-0/kernel); `raredet inspect-checkpoint` lists its "
                              "object paths")
    return network_maps(network, target, root, PROPOSAL_MODULES + BOX_CLASSIFIER_MODULES, "backbone")
