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
* **Box predictor** (``model/_box_predictor``, the Keras weight-shared predictor): the towers' shared
  convs ``_head_scope_conv_layers/{Box,Class}PredictionTower/i`` (``PredictionTower`` when shared), their
  per-level batch norms ``_base_tower_layers_for_heads/{box_encodings,
  class_predictions_with_background}/level/j`` (``j`` counting conv, batch norm, activation per layer),
  the heads ``_box_prediction_head/_box_encoder_layers/0`` and
  ``_prediction_heads/class_predictions_with_background/_class_predictor_layers/0``. A class head with
  TF's background column (``add_background_class: true``) loses that column on the way in.

Computing as TF does needs, besides the TF OD API's input normalisation (which the EfficientNet
extractor shares with torchvision's, to 4e-7), TF's 'SAME' padding on the EfficientNet's strided convs
(its stem and stride-2 depthwise convs) and the TF EfficientNet's batch-norm epsilon 1e-3 (raredet's
b0-b4 use torchvision's 1e-5): ``SSD.use_weights_convention("tf")`` switches both (the latter through
``EfficientNet.use_tf_conventions``), also when a raredet checkpoint of such a model is rebuilt. The
BiFPN's max pooling already pads as TF's, and its upsampling is nearest-neighbour as TF's.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, cast

from torch import nn

from raredet.errors import CheckpointError
from raredet.modeling.bifpn import BiFPN, BiFpnNode, Resample
from raredet.modeling.efficientnet import EfficientNet
from raredet.modeling.predictor import WeightSharedConvolutionalBoxPredictor, _Tower
from raredet.modeling.tf_weights.common import TensorMap

if TYPE_CHECKING:
    from raredet.modeling.ssd import SSD, EfficientDetFeatureExtractor

Shapes = Mapping[str, tuple[int, ...]]  # object path -> shape of every variable in the checkpoint

BN_SOURCES = (("weight", "gamma"), ("bias", "beta"), ("running_mean", "moving_mean"),
              ("running_var", "moving_variance"))
DETECTION_BACKBONE_ROOTS = ("_feature_extractor/_efficientnet", "_feature_extractor/classification_backbone")
BIFPN_ROOT = "_feature_extractor/_bifpn_stage"
PREDICTOR_ROOT = "_box_predictor"


def _backbone(model: SSD) -> EfficientNet:
    return cast(EfficientNet, model.feature_extractor.backbone)


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
    bifpn = cast("EfficientDetFeatureExtractor", model.feature_extractor).bifpn
    predictor = cast(WeightSharedConvolutionalBoxPredictor, model.box_predictor)
    maps = backbone_maps(_backbone(model), backbone_root, "feature_extractor.backbone")
    maps += bifpn_maps(bifpn, f"{root}/{BIFPN_ROOT}", "feature_extractor.bifpn")
    maps += predictor_maps(predictor, shapes, f"{root}/{PREDICTOR_ROOT}", "box_predictor")
    return maps


def classification_maps(model: SSD, shapes: Shapes | None = None, root: str = "feature_extractor"
                        ) -> list[TensorMap]:
    """The backbone's maps from a classification checkpoint (``tf.train.Checkpoint(feature_extractor=
    <the Keras EfficientNet>)``); the layers after the last level the detector taps are not read."""
    return backbone_maps(_backbone(model), root, "feature_extractor.backbone")


def _layers(module: nn.Module, prefix: str) -> Iterator[tuple[str, nn.Module]]:
    """``(state-dict prefix, layer)`` of every conv and batch norm of ``module``, in registration order."""
    for name, layer in module.named_modules():
        if isinstance(layer, (nn.Conv2d, nn.BatchNorm2d)):
            yield f"{prefix}.{name}", layer


def _conv(target: str, source: str, conv: nn.Conv2d, part: str) -> list[TensorMap]:
    depthwise = conv.groups > 1
    maps = [TensorMap(f"{target}.weight", f"{source}/{'depthwise_kernel' if depthwise else 'kernel'}",
                      "depthwise" if depthwise else "conv", part)]
    if conv.bias is not None:
        maps.append(TensorMap(f"{target}.bias", f"{source}/bias", "vector", part))
    return maps


def _norm(target: str, source: str, part: str) -> list[TensorMap]:
    return [TensorMap(f"{target}.{ours}", f"{source}/{tf}", "vector", part) for ours, tf in BN_SOURCES]


def _layer(target: str, source: str, layer: nn.Module, part: str) -> list[TensorMap]:
    if isinstance(layer, nn.BatchNorm2d):
        return _norm(target, source, part)
    assert isinstance(layer, nn.Conv2d)
    return _conv(target, source, layer, part)


def backbone_maps(backbone: nn.Module, root: str, prefix: str, part: str = "backbone") -> list[TensorMap]:
    """The EfficientNet's convs and batch norms, the ``N``-th one from ``{root}/layer_with_weights-N``."""
    maps: list[TensorMap] = []
    for n, (target, layer) in enumerate(_layers(backbone, prefix)):
        maps += _layer(target, f"{root}/layer_with_weights-{n}", layer, part)
    return maps


def bifpn_maps(bifpn: BiFPN, root: str, prefix: str, part: str = "bifpn") -> list[TensorMap]:
    """Every BiFPN node's input projections, fusion weights and post-combine conv and batch norm."""
    maps: list[TensorMap] = []
    for k, node in enumerate(cast(list[BiFpnNode], bifpn.nodes)):
        here = f"{prefix}.nodes.{k}"
        for i, resample in enumerate(cast(list[Resample], node.inputs)):
            if resample.project is not None:
                block = f"{root}/node_input_blocks/{k}/{i}/1"
                conv = cast(nn.Conv2d, resample.project[0])
                maps += _conv(f"{here}.inputs.{i}.project.0", f"{block}/0", conv, part)
                maps += _norm(f"{here}.inputs.{i}.project.1", f"{block}/1", part)
        if node.combine is not None and node.combine.weight is not None:
            maps.append(TensorMap(f"{here}.combine.weight",
                                  f"{root}/node_combine_op/{k}/bifpn_combine_weights", "flat", part))
        if node.post is not None:
            post = f"{root}/node_post_combine_block/{k}"
            maps += _separable(f"{here}.post.1", f"{post}/1", cast(nn.Sequential, node.post)[1], part)
            maps += _norm(f"{here}.post.2", f"{post}/2", part)
    return maps


def _separable(target: str, source: str, module: nn.Module, part: str) -> list[TensorMap]:
    """A Keras ``SeparableConv2D`` (``depthwise_kernel``, ``pointwise_kernel``, ``bias``) into raredet's
    ``Sequential(depthwise, pointwise)``; a plain ``Conv2D`` when ``module`` is a single conv."""
    if isinstance(module, nn.Conv2d):
        return _conv(target, source, module, part)
    depthwise, pointwise = cast(nn.Conv2d, module[0]), cast(nn.Conv2d, module[1])  # type: ignore[index]
    maps = [TensorMap(f"{target}.0.weight", f"{source}/depthwise_kernel", "depthwise", part),
            TensorMap(f"{target}.1.weight", f"{source}/pointwise_kernel", "conv", part)]
    assert depthwise.bias is None
    if pointwise.bias is not None:
        maps.append(TensorMap(f"{target}.1.bias", f"{source}/bias", "vector", part))
    return maps


def predictor_maps(predictor: WeightSharedConvolutionalBoxPredictor, shapes: Shapes, root: str, prefix: str,
                   part: str = "box_predictor") -> list[TensorMap]:
    """The weight-shared predictor's towers (shared convs, per-level batch norms) and heads."""
    if predictor.class_tower is None:
        towers = [("box_tower", "PredictionTower", "box_encodings")]
    else:
        towers = [("box_tower", "BoxPredictionTower", "box_encodings"),
                  ("class_tower", "ClassPredictionTower", "class_predictions_with_background")]
    maps: list[TensorMap] = []
    for ours, scope, head in towers:
        maps += _tower_maps(getattr(predictor, ours), f"{prefix}.{ours}", root, scope, head, part)
    maps += _separable(f"{prefix}.box_head", f"{root}/_box_prediction_head/_box_encoder_layers/0",
                       predictor.box_head, part)
    class_source = f"{root}/_prediction_heads/class_predictions_with_background/_class_predictor_layers/0"
    class_maps = _separable(f"{prefix}.class_head", class_source, predictor.class_head, part)
    keep = _without_background(predictor, shapes.get(f"{class_source}/bias"))
    return maps + [_select(m, keep) for m in class_maps]


def _tower_maps(tower: _Tower, target: str, root: str, scope: str, head: str, part: str) -> list[TensorMap]:
    """A tower's shared convs and its batch norms per level; TF's per-level layer list holds conv, batch
    norm, activation for each tower layer."""
    maps: list[TensorMap] = []
    for i, conv in enumerate(tower.convs):
        maps += _separable(f"{target}.convs.{i}", f"{root}/_head_scope_conv_layers/{scope}/{i}", conv, part)
    for level, norms in enumerate(cast(list[nn.ModuleList], tower.norms)):
        for i in range(len(norms)):
            source = f"{root}/_base_tower_layers_for_heads/{head}/{level}/{3 * i + 1}"
            maps += _norm(f"{target}.norms.{level}.{i}", source, part)
    return maps


def _without_background(predictor: WeightSharedConvolutionalBoxPredictor,
                        tf_bias_shape: tuple[int, ...] | None) -> tuple[int, ...] | None:
    """The output channels to keep of a TF class head with a background column (each anchor's first
    of ``K + 1``), or None when the head has ``K`` per anchor (``add_background_class: false``) or
    another width (another ``num_classes``: left to the shape check)."""
    k = predictor.num_classes
    head = predictor.class_head
    ours = cast(nn.Conv2d, head[-1] if isinstance(head, nn.Sequential) else head).out_channels
    anchors = ours // k
    if tf_bias_shape is None or tuple(tf_bias_shape) != (anchors * (k + 1),):
        return None
    return tuple(a * (k + 1) + 1 + c for a in range(anchors) for c in range(k))


def _select(item: TensorMap, keep: tuple[int, ...] | None) -> TensorMap:
    """``item`` restricted to the output channels ``keep`` (a depthwise kernel has no class channels)."""
    if keep is None or item.layout == "depthwise":
        return item
    return TensorMap(item.target, item.source, item.layout, item.part, keep)
