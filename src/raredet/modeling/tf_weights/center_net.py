"""CenterNet (the TF OD API's ``center_net`` meta-architecture, DeepMAC included): which TF variable
feeds which raredet tensor, for checkpoints the TF OD API wrote (``tf.train.Checkpoint(model=
detection_model)``: the zoo's ``ckpt-0``, a TF ``model_dir``'s ``ckpt-N``) and for classification
checkpoints of the extractors' backbones (root ``feature_extractor``).

Object paths under the detection root (``model``), as TF 2.15 writes them:

* **ResNet v1 FPN** (``resnet_v1_{50,101}_fpn``, ``CenterNetResnetV1FpnFeatureExtractor``):
  ``_feature_extractor/_base_model/layer_with_weights-N``: ``tf.keras.applications.ResNet50/101``,
  its layers holding weights in ``resnet.keras_layer_order`` (the same graph as the OD API's Keras
  ResNet), every conv with a ``bias`` (Keras' default). The top-down path sits in
  ``_feature_extractor/_feature_extractor_model/layer_with_weights-M`` (``M = 0`` is the ResNet model
  again): ``1`` the 1x1 conv of C5, then per level C4, C3, C2 the lateral 1x1 conv, the 3x3 conv and
  its batch norm (``M = 2 + 3 i + 0, 1, 2``); raredet's ``top``, ``lateral.i``, ``smooth.i.{0,1}``,
  part ``fpn``.
* **ResNet v2** (``resnet_v2_{50,101}``, ``CenterNetResnetFeatureExtractor``): ``_base_model/
  layer_with_weights-N``: ``tf.keras.applications.ResNet50V2/101V2``: the stem conv, then per block the
  pre-activation batch norm, the 1x1 conv and batch norm, the 3x3 conv and batch norm, the projection
  shortcut (a stage's first block), the last 1x1 conv (checked against the checkpoint's own full names
  in the tests); last ``post_bn``, which the extractor never
  runs (raredet has none: it stays in the checkpoint, listed as unexpected). The upsampling stages in
  ``_feature_extractor_model/layer_with_weights-M``, ``M = 1 + 4 i + (conv, its batch norm, the
  transposed conv, its batch norm)``; raredet's ``upsample.i.{conv, conv_bn, deconv, deconv_bn}``,
  part ``upsample``.
* **Hourglass** (``hourglass_10/20/32/52/104``, ``CenterNetHourglassFeatureExtractor``):
  ``_feature_extractor/_network/<attribute path>``, one to one with raredet's state-dict keys
  (``modeling/hourglass.py``); the whole network is part ``hourglass`` (not ``backbone``: TF has no
  classification backbone there, so a ``classification`` load of such a checkpoint reads nothing).
* **Prediction heads**: ``_prediction_head_dict/<prediction name>/<s>/layer_with_weights-i`` for
  feature output ``s`` (TF escapes ``/`` in a name as ``.S``: ``box.Soffset``), ``i`` counting the
  head's convs (a ``use_depthwise`` separable conv is one layer: ``depthwise_kernel``,
  ``pointwise_kernel``, ``bias``). Names: ``object_center``, ``box/scale``, ``box/offset`` (part
  ``object_detection``); a keypoint task's ``<task_name>/keypoint/{heatmap, offset, regression}``
  (part ``keypoints``); DeepMAC's ``INSTANCE_EMBEDDING`` and ``PIXEL_EMBEDDING`` (part ``deepmac``).
* **DeepMAC's mask network**: ``_mask_net/_net/<hourglass attribute path>`` and
  ``_mask_net/project_out`` (part ``deepmac``). DeepMAC's ``_self_supervised_rng/_state_var`` (the
  random generator of its training-only augmentation) feeds nothing: a load reports it unexpected.

``restore_from_objects`` (``CenterNetMetaArch``): ``detection`` restores ``model/_feature_extractor``
(the whole extractor: backbone and the FPN / upsampling layers, not the heads nor DeepMAC's mask
network); ``classification`` the extractor's ``classification_backbone``, the Keras ResNet
(``_base_model``; TF's hourglass extractors have none and raise, so raredet refuses it for them);
``full`` everything; ``fine_tune`` is refused by TF ("no longer supported for CenterNet ... set
fine_tune_checkpoint_type to 'detection' which has the same functionality"), and by raredet
(``pretrained.check_checkpoint_type``).

What raredet changes to compute as TF does is ``CenterNet.use_weights_convention("tf")``: the ResNet v1
FPN extractor switches to ``tf.keras.applications.ResNet``'s conventions, which give its convs bias
buffers (``center_net_resnet_fpn.py``); ``tensor_maps`` and ``classification_maps`` switch the model
first, so that those tensors exist to be loaded. The ResNet v2 and hourglass extractors and the heads
already compute as TF's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from torch import nn

from raredet.errors import CheckpointError
from raredet.modeling.center_net_resnet_fpn import CenterNetResnetV1Fpn
from raredet.modeling.hourglass import HourglassNetwork
from raredet.modeling.resnet_v2 import CenterNetResNetV2, PreactBottleneck
from raredet.modeling.tf_weights.common import TensorMap
from raredet.modeling.tf_weights.keras_layers import Shapes, layer_maps, separable_maps
from raredet.modeling.tf_weights.resnet import backbone_maps

if TYPE_CHECKING:
    from raredet.modeling.center_net import CenterNet

EXTRACTOR = "_feature_extractor"
BASE_MODEL = f"{EXTRACTOR}/_base_model"  # the Keras applications ResNet (classification_backbone)
TOP_MODEL = f"{EXTRACTOR}/_feature_extractor_model"  # the layers above it
HOURGLASS = f"{EXTRACTOR}/_network"
HEADS = "_prediction_head_dict"
MASK_NET = "_mask_net"
# raredet's ObjectDetectionTask attribute -> the TF OD API's prediction name
DETECTION_HEADS = (("center", "object_center"), ("scale", "box/scale"), ("offset", "box/offset"))
DEEPMAC_HEADS = (("instance_embedding", "INSTANCE_EMBEDDING"), ("pixel_embedding", "PIXEL_EMBEDDING"))


def tensor_maps(model: CenterNet, shapes: Shapes, root: str = "model") -> list[TensorMap]:
    """Every map of a CenterNet from a detection checkpoint (parts ``backbone``, ``fpn`` /
    ``upsample``, ``object_detection``, ``keypoints``, ``deepmac``); ``shapes``: ``{object path:
    shape}`` of the checkpoint's variables. Switches ``model`` to TF's conventions first."""
    model.use_weights_convention("tf")
    maps = extractor_maps(model, shapes, root)
    return maps + task_maps(model, shapes, root)


def classification_maps(model: CenterNet, shapes: Shapes, root: str = "feature_extractor") -> list[TensorMap]:
    """The Keras ResNet from a classification checkpoint (``tf.train.Checkpoint(feature_extractor=
    <the extractor's classification_backbone>)``, root ``feature_extractor``)."""
    model.use_weights_convention("tf")
    extractor = model.feature_extractor
    _require(shapes, f"{root}/layer_with_weights-0/kernel", model.feature_extractor_type)
    if isinstance(extractor, CenterNetResnetV1Fpn):
        return backbone_maps(extractor.backbone, "feature_extractor.backbone", root, shapes)
    if isinstance(extractor, CenterNetResNetV2):
        return resnet_v2_backbone_maps(extractor, "feature_extractor", root, shapes)
    raise CheckpointError(_no_classification_backbone(model))


def extractor_maps(model: CenterNet, shapes: Shapes, root: str) -> list[TensorMap]:
    extractor, kind = model.feature_extractor, model.feature_extractor_type
    if isinstance(extractor, CenterNetResnetV1Fpn):
        _require(shapes, f"{root}/{BASE_MODEL}/layer_with_weights-0/kernel", kind)
        maps = backbone_maps(extractor.backbone, "feature_extractor.backbone", f"{root}/{BASE_MODEL}", shapes)
        return maps + resnet_v1_fpn_maps(extractor, "feature_extractor", f"{root}/{TOP_MODEL}", shapes)
    if isinstance(extractor, CenterNetResNetV2):
        _require(shapes, f"{root}/{BASE_MODEL}/layer_with_weights-0/kernel", kind)
        maps = resnet_v2_backbone_maps(extractor, "feature_extractor", f"{root}/{BASE_MODEL}", shapes)
        return maps + resnet_v2_upsample_maps(extractor, "feature_extractor", f"{root}/{TOP_MODEL}", shapes)
    if isinstance(extractor, HourglassNetwork):
        _require(shapes, f"{root}/{HOURGLASS}/downsample_input/conv_block/conv/kernel", kind)
        return attribute_path_maps(extractor, "feature_extractor", f"{root}/{HOURGLASS}", "hourglass", shapes)
    raise CheckpointError(f"reading TF checkpoints into CenterNet {kind} models is not supported (no TF "
                          "variable mapping for this feature extractor)")


def resnet_v1_fpn_maps(extractor: CenterNetResnetV1Fpn, target: str, root: str, shapes: Shapes
                       ) -> list[TensorMap]:
    """The top-down path above the ResNet (module docstring), part ``fpn``."""
    def layer(index: int) -> str:
        return f"{root}/layer_with_weights-{index}"

    maps = layer_maps(extractor.top, f"{target}.top", layer(1), "fpn", shapes)
    for i, (lateral, smooth) in enumerate(zip(extractor.lateral, extractor.smooth, strict=True)):
        smooth = cast(nn.Sequential, smooth)
        maps += layer_maps(lateral, f"{target}.lateral.{i}", layer(2 + 3 * i), "fpn", shapes)
        maps += layer_maps(smooth[0], f"{target}.smooth.{i}.0", layer(3 + 3 * i), "fpn", shapes)
        maps += layer_maps(smooth[1], f"{target}.smooth.{i}.1", layer(4 + 3 * i), "fpn", shapes)
    return maps


def resnet_v2_layer_order(extractor: CenterNetResNetV2) -> list[str]:
    """raredet module paths (under the extractor) in the order Keras' ``ResNet50V2/101V2`` count their
    layers holding weights."""
    order = ["conv1"]
    for stage in ("conv2", "conv3", "conv4", "conv5"):
        for index, block in enumerate(cast(nn.Sequential, getattr(extractor, stage))):
            block = cast(PreactBottleneck, block)
            prefix = f"{stage}.{index}"
            order += [f"{prefix}.{name}" for name in ("preact_bn", "conv1", "bn1", "conv2", "bn2")]
            if block.conv0 is not None:  # Keras' topological order puts the shortcut here
                order.append(f"{prefix}.conv0")
            order.append(f"{prefix}.conv3")
    return order


def resnet_v2_backbone_maps(extractor: CenterNetResNetV2, target: str, root: str, shapes: Shapes
                            ) -> list[TensorMap]:
    modules = dict(extractor.named_modules())
    maps: list[TensorMap] = []
    for index, name in enumerate(resnet_v2_layer_order(extractor)):
        source = f"{root}/layer_with_weights-{index}"
        maps += layer_maps(modules[name], f"{target}.{name}", source, "backbone", shapes)
    return maps


def resnet_v2_upsample_maps(extractor: CenterNetResNetV2, target: str, root: str, shapes: Shapes
                            ) -> list[TensorMap]:
    """The three upsampling stages (part ``upsample``); a transposed conv's Keras kernel ``[kh, kw, out,
    in]`` is torch's ``[in, out, kh, kw]`` by the same transpose as a conv's."""
    maps: list[TensorMap] = []
    for i, _ in enumerate(extractor.upsample):
        for j, name in enumerate(("conv", "conv_bn", "deconv", "deconv_bn")):
            here, source = f"{target}.upsample.{i}.{name}", f"{root}/layer_with_weights-{1 + 4 * i + j}"
            module = extractor.upsample[i].get_submodule(name)
            if isinstance(module, nn.ConvTranspose2d):
                maps += [TensorMap(f"{here}.weight", f"{source}/kernel", "conv", "upsample"),
                         TensorMap(f"{here}.bias", f"{source}/bias", "vector", "upsample")]
            else:
                maps += layer_maps(module, here, source, "upsample", shapes)
    return maps


def attribute_path_maps(module: nn.Module, target: str, root: str, part: str, shapes: Shapes
                        ) -> list[TensorMap]:
    """A module whose every conv and batch norm sits at the TF object path of its attribute path
    (``a.0.b`` -> ``{root}/a/0/b``): the hourglass networks."""
    maps: list[TensorMap] = []
    for name, layer in module.named_modules():
        if isinstance(layer, (nn.Conv2d, nn.BatchNorm2d)):
            maps += layer_maps(layer, f"{target}.{name}", f"{root}/{name.replace('.', '/')}", part, shapes)
    return maps


def head_maps(heads: nn.ModuleList, target: str, name: str, root: str, part: str, shapes: Shapes
              ) -> list[TensorMap]:
    """One prediction's heads (one per feature output, a Sequential of convs and ReLUs) from
    ``{root}/_prediction_head_dict/<name>/<s>/layer_with_weights-i``."""
    maps: list[TensorMap] = []
    escaped = name.replace("/", ".S")
    for s, head in enumerate(heads):
        convs = [(i, m) for i, m in enumerate(cast(nn.Sequential, head)) if isinstance(m, nn.Conv2d)]
        layer, k = 0, 0
        while k < len(convs):
            index, conv = convs[k]
            source = f"{root}/{HEADS}/{escaped}/{s}/layer_with_weights-{layer}"
            if conv.groups > 1:  # a separable conv: depthwise, then its pointwise
                pointwise_index, pointwise = convs[k + 1]
                maps += separable_maps(pointwise, f"{target}.{s}.{index}", f"{target}.{s}.{pointwise_index}",
                                       source, part)
                k += 2
            else:
                maps += layer_maps(conv, f"{target}.{s}.{index}", source, part, shapes)
                k += 1
            layer += 1
    return maps


def task_maps(model: CenterNet, shapes: Shapes, root: str) -> list[TensorMap]:
    """The object-detection heads, then every further task's (keypoints, DeepMAC)."""
    from raredet.modeling.center_net_keypoints import CenterNetKeypointTask
    from raredet.modeling.deepmac import DeepMACTask

    maps: list[TensorMap] = []
    for attribute, name in DETECTION_HEADS:
        heads = cast(nn.ModuleList, getattr(model.object_detection, attribute))
        maps += head_maps(heads, f"object_detection.{attribute}", name, root, "object_detection", shapes)
    names = {id(module): name for name, module in model.named_modules()}
    for index, task in enumerate(model.tasks):
        if isinstance(task, CenterNetKeypointTask):
            for name, heads in task.prediction_heads().items():
                maps += head_maps(heads, names[id(heads)], name, root, "keypoints", shapes)
        elif isinstance(task, DeepMACTask):
            for attribute, name in DEEPMAC_HEADS:
                heads = cast(nn.ModuleList, getattr(task, attribute))
                maps += head_maps(heads, f"tasks.{index}.{attribute}", name, root, "deepmac", shapes)
            mask_net = f"tasks.{index}.mask_net"
            maps += attribute_path_maps(task.mask_net.net, f"{mask_net}.net", f"{root}/{MASK_NET}/_net",
                                        "deepmac", shapes)
            maps += layer_maps(task.mask_net.project_out, f"{mask_net}.project_out",
                               f"{root}/{MASK_NET}/project_out", "deepmac", shapes)
        else:
            raise CheckpointError(f"no TF variable mapping for the CenterNet task {type(task).__name__}")
    return maps


def _no_classification_backbone(model: CenterNet) -> str:
    return (f"fine_tune_checkpoint_type 'classification': the TF OD API's CenterNet "
            f"{model.feature_extractor_type} extractor has no classification backbone (its "
            "classification_backbone raises NotImplementedError); load its detection checkpoint as "
            "'detection' (the whole extractor) or 'full'")


def _require(shapes: Shapes, path: str, kind: str) -> None:
    if path not in shapes:
        raise CheckpointError(
            f"no CenterNet {kind} feature extractor in this checkpoint (looked for {path}); is the config's "
            "feature_extractor.type the checkpoint's? `raredet inspect-checkpoint` lists its object paths")
