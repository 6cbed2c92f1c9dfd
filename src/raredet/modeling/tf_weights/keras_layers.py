"""TensorMaps of single Keras layers: ``Conv2D``, ``DepthwiseConv2D``, ``SeparableConv2D``,
``BatchNormalization``, and a Keras functional backbone whose layers holding weights come in the
order of raredet's modules.

Variables (object paths, as TF 2 writes them for a layer at ``source``): a conv's ``kernel`` (a
depthwise conv's ``depthwise_kernel``) and ``bias`` when it has one; a separable conv's
``depthwise_kernel``, ``pointwise_kernel`` and ``bias``; a batch norm's ``gamma`` (absent with
``scale: false``), ``beta`` (absent with ``center: false``), ``moving_mean``, ``moving_variance``. A
Keras functional model saves its layers as ``layer_with_weights-N``, N counting the layers that hold
weights in the order the model applies them.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from raredet.modeling.tf_weights.common import TensorMap

Shapes = Mapping[str, tuple[int, ...]]  # object path -> shape, every variable of a checkpoint

# torch BatchNorm2d tensor <- Keras BatchNormalization variable
BATCH_NORM_TENSORS = (("weight", "gamma"), ("bias", "beta"), ("running_mean", "moving_mean"),
                      ("running_var", "moving_variance"))
OPTIONAL_BATCH_NORM_VARIABLES = ("gamma", "beta")


def is_depthwise(conv: nn.Conv2d) -> bool:
    return conv.groups > 1 and conv.groups == conv.in_channels


def conv_maps(conv: nn.Conv2d, target: str, source: str, part: str) -> list[TensorMap]:
    """A Keras ``Conv2D`` or ``DepthwiseConv2D`` at ``source`` into the torch conv named ``target``."""
    if is_depthwise(conv):
        maps = [TensorMap(f"{target}.weight", f"{source}/depthwise_kernel", "depthwise", part)]
    else:
        maps = [TensorMap(f"{target}.weight", f"{source}/kernel", "conv", part)]
    if conv.bias is not None:
        maps.append(TensorMap(f"{target}.bias", f"{source}/bias", "vector", part))
    return maps


def separable_maps(pointwise: nn.Conv2d, target_depthwise: str, target_pointwise: str, source: str,
                   part: str) -> list[TensorMap]:
    """A Keras ``SeparableConv2D`` at ``source`` into a depthwise conv and a 1x1 conv (which holds the
    layer's bias, if any)."""
    maps = [TensorMap(f"{target_depthwise}.weight", f"{source}/depthwise_kernel", "depthwise", part),
            TensorMap(f"{target_pointwise}.weight", f"{source}/pointwise_kernel", "conv", part)]
    if pointwise.bias is not None:
        maps.append(TensorMap(f"{target_pointwise}.bias", f"{source}/bias", "vector", part))
    return maps


def batch_norm_maps(target: str, source: str, part: str, shapes: Shapes) -> list[TensorMap]:
    """A Keras batch norm at ``source`` into the torch batch norm ``target``. TF has no ``gamma``
    (``beta``) with ``scale`` (``center``) false, where raredet keeps 1 (0): such a variable is mapped
    only when the checkpoint has it, once the layer itself is there (its ``moving_mean``)."""
    layer_present = f"{source}/moving_mean" in shapes
    return [TensorMap(f"{target}.{ours}", f"{source}/{theirs}", "vector", part)
            for ours, theirs in BATCH_NORM_TENSORS
            if not (layer_present and theirs in OPTIONAL_BATCH_NORM_VARIABLES
                    and f"{source}/{theirs}" not in shapes)]


def layer_maps(layer: nn.Module, target: str, source: str, part: str, shapes: Shapes) -> list[TensorMap]:
    """A conv or batch norm ``layer`` (torch name ``target``) from the Keras layer at ``source``."""
    if isinstance(layer, nn.Conv2d):
        return conv_maps(layer, target, source, part)
    if isinstance(layer, nn.BatchNorm2d):
        return batch_norm_maps(target, source, part, shapes)
    raise TypeError(f"{target}: no Keras layer for {type(layer).__name__}")


def weight_layers(module: nn.Module, prefix: str) -> list[tuple[str, nn.Module]]:
    """``(torch name, layer)`` of every conv and batch norm of ``module`` in registration order."""
    return [(f"{prefix}.{name}" if prefix else name, layer) for name, layer in module.named_modules()
            if isinstance(layer, (nn.Conv2d, nn.BatchNorm2d))]


def functional_model_maps(module: nn.Module, target: str, root: str, part: str, shapes: Shapes
                          ) -> list[TensorMap]:
    """A Keras functional model at ``root`` whose layers holding weights are ``module``'s convs and batch
    norms in the same order: the ``i``-th feeds from ``{root}/layer_with_weights-{i}``."""
    maps: list[TensorMap] = []
    for i, (name, layer) in enumerate(weight_layers(module, target)):
        maps += layer_maps(layer, name, f"{root}/layer_with_weights-{i}", part, shapes)
    return maps
