"""TensorMaps of the SSD parts every TF OD API SSD family shares: the Keras FPN
(``KerasFpnTopDownFeatureMaps`` and the stride-2 layers above the backbone), the original SSD's extra
layers (``KerasMultiResolutionFeatureMaps``) and the two box predictors.

Object paths under the detection model's root (``model`` in the zoo's ``ckpt-0``):

* **FPN** (``_feature_extractor/_fpn_features_generator``): the coarsest level's 1x1 projection
  ``top_layers/0``; then, finest-but-one level first going down (``j = 0`` is the level below the
  coarsest), the lateral 1x1 projection ``residual_blocks/j/0`` and the smoothing block
  ``conv_layers/j/{o, o + 1}`` (conv or separable conv, then batch norm; ``o`` is 1 with
  ``use_explicit_padding``, whose padding layer comes first). Levels above the backbone:
  ``_feature_extractor/_coarse_feature_layers/i/{o, o + 1}``.
* **SSD extra layers** (``_feature_extractor/feature_map_generator``): ``convolutions/k`` is the flat
  list of layers (1x1 conv, batch norm, activation, then the 3x3 stride-2 conv -- a depthwise conv with
  its own batch norm and activation before a 1x1 with ``use_depthwise`` -- batch norm, activation) per
  extra map.
* **Weight-shared predictor** (``_box_predictor``): the towers' shared convs
  ``_head_scope_conv_layers/{PredictionTower | BoxPredictionTower | ClassPredictionTower}/i``, their
  per-level batch norms ``_base_tower_layers_for_heads/{box_encodings |
  class_predictions_with_background}/level/(3 i + 1)`` (conv, batch norm, activation per tower layer),
  the heads ``_box_prediction_head/_box_encoder_layers/0`` and
  ``_prediction_heads/class_predictions_with_background/_class_predictor_layers/d`` (``d`` = 1 after a
  dropout layer).
* **Convolutional (per-level) predictor** (``_box_predictor``): per level ``_shared_nets/level/(3 i)``
  (1x1 conv) and ``/(3 i + 1)`` (batch norm), the heads ``_prediction_heads/box_encodings/level/
  _box_encoder_layers/0`` and ``_prediction_heads/class_predictions_with_background/level/
  _class_predictor_layers/d``.

A class head with TF's background column (``add_background_class: true``, each anchor's first of
``K + 1`` outputs) loses that column on the way in (``TensorMap.out_index``); a head for another number
of classes is left to the shape check (fine-tuning onto another label map keeps raredet's initialiser).
"""

from __future__ import annotations

from typing import cast

from torch import nn

from raredet.errors import CheckpointError
from raredet.modeling.fpn import FeaturePyramid, SsdExtraLayers
from raredet.modeling.predictor import (
    ConvolutionalBoxPredictor,
    WeightSharedConvolutionalBoxPredictor,
    _Tower,
)
from raredet.modeling.tf_weights.common import TensorMap
from raredet.modeling.tf_weights.keras_layers import Shapes, batch_norm_maps, conv_maps, separable_maps

FPN_ROOT = "_feature_extractor/_fpn_features_generator"
COARSE_ROOT = "_feature_extractor/_coarse_feature_layers"
EXTRA_LAYERS_ROOT = "_feature_extractor/feature_map_generator"
PREDICTOR_ROOT = "_box_predictor"
CLASS_HEAD = "class_predictions_with_background"


def conv_block_maps(block: nn.Sequential, target: str, source: str, index: int, part: str, shapes: Shapes
                    ) -> list[TensorMap]:
    """A ``ConvNormAct`` (conv, or depthwise + 1x1; then norm) from a Keras list whose conv (or
    ``SeparableConv2D``) is item ``index`` of ``source`` and its batch norm item ``index + 1``."""
    convs = [m for m in block if isinstance(m, nn.Conv2d)]
    norm_at = len(convs)
    if len(convs) == 2:
        maps = separable_maps(convs[1], f"{target}.0", f"{target}.1", f"{source}/{index}", part)
    else:
        maps = conv_maps(convs[0], f"{target}.0", f"{source}/{index}", part)
    if isinstance(block[norm_at], nn.BatchNorm2d):
        maps += batch_norm_maps(f"{target}.{norm_at}", f"{source}/{index + 1}", part, shapes)
    return maps


def fpn_maps(fpn: FeaturePyramid, target: str, root: str, shapes: Shapes, explicit_padding: bool = False,
             part: str = "fpn") -> list[TensorMap]:
    """The FPN's projections, smoothing blocks and extra stride-2 levels (module docstring)."""
    fpn_root, offset = f"{root}/{FPN_ROOT}", int(explicit_padding)
    top = len(fpn.projections) - 1
    maps = conv_maps(cast(nn.Conv2d, fpn.projections[top]), f"{target}.projections.{top}",
                     f"{fpn_root}/top_layers/0", part)
    for j, level in enumerate(range(top - 1, -1, -1)):
        maps += conv_maps(cast(nn.Conv2d, fpn.projections[level]), f"{target}.projections.{level}",
                          f"{fpn_root}/residual_blocks/{j}/0", part)
        maps += conv_block_maps(cast(nn.Sequential, fpn.smoothing[level]), f"{target}.smoothing.{level}",
                                f"{fpn_root}/conv_layers/{j}", offset, part, shapes)
    for i, block in enumerate(fpn.extra):
        maps += conv_block_maps(cast(nn.Sequential, block), f"{target}.extra.{i}",
                                f"{root}/{COARSE_ROOT}/{i}", offset, part, shapes)
    return maps


def ssd_extra_layers_maps(extra: SsdExtraLayers, target: str, root: str, shapes: Shapes, backbone_maps: int,
                          explicit_padding: bool = False, part: str = "extra_layers") -> list[TensorMap]:
    """The original SSD's extra maps: per map a 1x1 block then a 3x3 stride-2 block (module docstring).
    TF's list of layer lists starts with an empty one per map taken from the backbone
    (``backbone_maps``)."""
    maps: list[TensorMap] = []
    for k, block in enumerate(extra.blocks):
        source = f"{root}/{EXTRA_LAYERS_ROOT}/convolutions/{backbone_maps + k}"
        reduce, expand = (cast(nn.Sequential, layer) for layer in cast(nn.Sequential, block))
        maps += conv_block_maps(reduce, f"{target}.blocks.{k}.0", source, 0, part, shapes)
        maps += _extra_stride2_maps(expand, f"{target}.blocks.{k}.1", source, 3 + int(explicit_padding), part,
                                    shapes)
    return maps


def _extra_stride2_maps(block: nn.Sequential, target: str, source: str, index: int, part: str, shapes: Shapes
                        ) -> list[TensorMap]:
    convs = [m for m in block if isinstance(m, nn.Conv2d)]
    if len(convs) == 1:
        return conv_block_maps(block, target, source, index, part, shapes)
    raise CheckpointError(
        f"{target}: the TF OD API's depthwise SSD extra layers (use_depthwise) put a batch norm and an "
        "activation between the depthwise and the 1x1 conv, which raredet's SsdExtraLayers does not have "
        "yet; TF weights for this config cannot be loaded"
    )


def predictor_maps(predictor: nn.Module, target: str, root: str, shapes: Shapes, part: str = "box_predictor"
                   ) -> list[TensorMap]:
    """Either box predictor's maps (module docstring)."""
    if isinstance(predictor, WeightSharedConvolutionalBoxPredictor):
        return weight_shared_maps(predictor, target, root, shapes, part)
    if isinstance(predictor, ConvolutionalBoxPredictor):
        return convolutional_maps(predictor, target, root, shapes, part)
    raise CheckpointError(f"{target}: no TF mapping for a {type(predictor).__name__}")


def weight_shared_maps(predictor: WeightSharedConvolutionalBoxPredictor, target: str, root: str,
                       shapes: Shapes, part: str = "box_predictor") -> list[TensorMap]:
    """The weight-shared predictor's towers (shared convs, per-level batch norms) and heads."""
    pred_root = f"{root}/{PREDICTOR_ROOT}"
    if predictor.class_tower is None:
        towers = [("box_tower", "PredictionTower", "box_encodings")]
    else:
        towers = [("box_tower", "BoxPredictionTower", "box_encodings"),
                  ("class_tower", "ClassPredictionTower", CLASS_HEAD)]
    maps: list[TensorMap] = []
    for ours, scope, head in towers:
        tower = cast(_Tower, getattr(predictor, ours))
        maps += _tower_maps(tower, f"{target}.{ours}", pred_root, scope, head, part, shapes)
    maps += _head_maps(predictor.box_head, f"{target}.box_head",
                       f"{pred_root}/_box_prediction_head/_box_encoder_layers/0", part)
    class_root = f"{pred_root}/_prediction_heads/{CLASS_HEAD}/_class_predictor_layers"
    class_source = f"{class_root}/{_after_dropout(class_root, shapes)}"
    keep = class_channels(predictor.num_classes, predictor.class_head, shapes.get(f"{class_source}/bias"))
    return maps + _without_background(_head_maps(predictor.class_head, f"{target}.class_head", class_source,
                                                 part), keep)


def _tower_maps(tower: _Tower, target: str, root: str, scope: str, head: str, part: str, shapes: Shapes
                ) -> list[TensorMap]:
    maps: list[TensorMap] = []
    for i, conv in enumerate(tower.convs):
        maps += _head_maps(conv, f"{target}.convs.{i}", f"{root}/_head_scope_conv_layers/{scope}/{i}", part)
    for level, norms in enumerate(tower.norms):
        for i, norm in enumerate(cast(nn.ModuleList, norms)):
            if isinstance(norm, nn.BatchNorm2d):
                source = f"{root}/_base_tower_layers_for_heads/{head}/{level}/{3 * i + 1}"
                maps += batch_norm_maps(f"{target}.norms.{level}.{i}", source, part, shapes)
    return maps


def _head_maps(head: nn.Module, target: str, source: str, part: str) -> list[TensorMap]:
    """A conv, or a (depthwise, 1x1) ``Sequential`` standing for one Keras ``SeparableConv2D``."""
    if isinstance(head, nn.Sequential):
        return separable_maps(cast(nn.Conv2d, head[1]), f"{target}.0", f"{target}.1", source, part)
    return conv_maps(cast(nn.Conv2d, head), target, source, part)


def _after_dropout(layers_root: str, shapes: Shapes) -> int:
    """Index of the class predictor in its Keras layer list: 1 when a dropout layer comes first."""
    return 0 if any(path.startswith(f"{layers_root}/0/") for path in shapes) else 1


def class_channels(num_classes: int, head: nn.Module, tf_bias_shape: tuple[int, ...] | None
                   ) -> tuple[int, ...] | None:
    """The TF class head's output channels that feed raredet's (each anchor's ``K`` after its
    background column), or None when TF's head has no background column or another width."""
    conv = cast(nn.Conv2d, head[-1] if isinstance(head, nn.Sequential) else head)
    anchors = conv.out_channels // num_classes
    if tf_bias_shape is None or tuple(tf_bias_shape) != (anchors * (num_classes + 1),):
        return None
    return tuple(a * (num_classes + 1) + 1 + k for a in range(anchors) for k in range(num_classes))


def _without_background(maps: list[TensorMap], keep: tuple[int, ...] | None) -> list[TensorMap]:
    if keep is None:
        return maps
    return [m if m.layout == "depthwise" else TensorMap(m.target, m.source, m.layout, m.part, keep)
            for m in maps]


def convolutional_maps(predictor: ConvolutionalBoxPredictor, target: str, root: str, shapes: Shapes,
                       part: str = "box_predictor") -> list[TensorMap]:
    """The per-level predictor: its 1x1 tower layers and one box and one class head per level."""
    pred_root, maps = f"{root}/{PREDICTOR_ROOT}", []
    for level, tower in enumerate(predictor.towers):
        for i, layer in enumerate(cast(nn.Sequential, tower)):
            maps += conv_block_maps(cast(nn.Sequential, layer), f"{target}.towers.{level}.{i}",
                                    f"{pred_root}/_shared_nets/{level}", 3 * i, part, shapes)
        box, cls = predictor.box_heads[level], predictor.class_heads[level]
        _plain_head(box, f"{target}.box_heads.{level}")
        _plain_head(cls, f"{target}.class_heads.{level}")
        maps += conv_maps(cast(nn.Conv2d, box), f"{target}.box_heads.{level}",
                          f"{pred_root}/_prediction_heads/box_encodings/{level}/_box_encoder_layers/0", part)
        class_root = f"{pred_root}/_prediction_heads/{CLASS_HEAD}/{level}/_class_predictor_layers"
        source = f"{class_root}/{_after_dropout(class_root, shapes)}"
        keep = class_channels(predictor.num_classes, cls, shapes.get(f"{source}/bias"))
        maps += _without_background(conv_maps(cast(nn.Conv2d, cls), f"{target}.class_heads.{level}", source,
                                              part), keep)
    return maps


def _plain_head(head: nn.Module, target: str) -> None:
    if not isinstance(head, nn.Conv2d):
        raise CheckpointError(
            f"{target}: the TF OD API's depthwise convolutional_box_predictor (use_depthwise) puts a batch "
            "norm and an activation between the depthwise and the 1x1 conv, which raredet's head does not "
            "have yet; TF weights for this config cannot be loaded"
        )
