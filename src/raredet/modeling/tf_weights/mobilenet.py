"""The TF OD API's SSD MobileNets (``ssd_mobilenet_v2_fpn_keras`` -- the zoo's FPN-lite --,
``ssd_mobilenet_v2_keras`` and ``ssd_mobilenet_v1_fpn_keras``): which TF variable feeds which raredet
tensor, for checkpoints the TF OD API wrote (``tf.train.Checkpoint(model=detection_model)``, the zoo's
``ckpt-0``, root ``model``) and for the ImageNet checkpoints of the backbone (root
``feature_extractor``).

* **Backbone** (``model/_feature_extractor/classification_backbone``, a Keras functional model built
  from ``tf.keras.applications.MobileNetV2`` / the OD API's Keras MobileNetV1 through a layer override):
  ``layer_with_weights-N``, N counting the layers holding weights in the order the model applies them.
  For MobileNetV2 that is ``Conv1``, ``bn_Conv1``, block 0's depthwise, batch norm, project, batch norm,
  then per block ``expand``, ``expand_BN``, ``depthwise``, ``depthwise_BN``, ``project``,
  ``project_BN``, and ``Conv_1``, ``Conv_1_bn``: raredet's ``features`` in registration order. For
  MobileNetV1: ``conv1``, ``conv1_bn``, then ``conv_dw_i``, ``conv_dw_i_bn``, ``conv_pw_i``,
  ``conv_pw_i_bn``: raredet's ``stem`` then ``blocks``. The tests check this order against the Keras
  layer names the checkpoints carry (each variable's full name).
* **FPN** and the **extra layers**, **box predictors**: ``ssd_parts``.

What raredet changes to compute as TF does is ``SSD.use_weights_convention("tf")``: TF's 'SAME' padding
on strided convs, the input ``(2 / 255) x - 1``, the backbone's Keras batch norms (epsilon 1e-3, or the
conv_hyperparams' under ``override_base_feature_extractor_hyperparams``) and the FPN's top-down input
(the smoothed map).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from raredet.errors import CheckpointError
from raredet.modeling.fpn import FeaturePyramid
from raredet.modeling.tf_weights.common import TensorMap
from raredet.modeling.tf_weights.keras_layers import Shapes, functional_model_maps
from raredet.modeling.tf_weights.ssd_parts import fpn_maps, predictor_maps, ssd_extra_layers_maps

if TYPE_CHECKING:
    from raredet.modeling.ssd import SSD

BACKBONE_ROOT = "_feature_extractor/classification_backbone"
# Maps the plain SSD MobileNetV2 takes from its backbone before the extra layers.
SSD_BACKBONE_MAPS = 2


def backbone_maps(model: SSD, shapes: Shapes, root: str) -> list[TensorMap]:
    """The backbone from the Keras functional model at ``root``."""
    return functional_model_maps(model.feature_extractor.backbone, "feature_extractor.backbone", root,
                                 "backbone", shapes)


def tensor_maps(model: SSD, shapes: Shapes, root: str = "model") -> list[TensorMap]:
    """Every map of an SSD MobileNet from a detection checkpoint whose variables' ``{object path:
    shape}`` are ``shapes`` (parts ``backbone``, ``fpn`` or ``extra_layers``, ``box_predictor``)."""
    if f"{root}/{BACKBONE_ROOT}/layer_with_weights-0/kernel" not in shapes:
        raise CheckpointError(
            f"no MobileNet under {root}/_feature_extractor in this checkpoint (looked for "
            f"{root}/{BACKBONE_ROOT}/layer_with_weights-0/kernel); is it a TF OD API detection checkpoint of "
            f"{model.feature_extractor_type}? `raredet inspect-checkpoint` lists its object paths"
        )
    extractor = model.feature_extractor
    explicit = bool(getattr(extractor, "use_explicit_padding", False))
    maps = backbone_maps(model, shapes, f"{root}/{BACKBONE_ROOT}")
    fpn = getattr(extractor, "fpn", None)
    if isinstance(fpn, FeaturePyramid):
        maps += fpn_maps(fpn, "feature_extractor.fpn", root, shapes, explicit)
    else:
        extra = getattr(extractor, "extra")  # noqa: B009  (SsdMobileNetV2FeatureExtractor)
        maps += ssd_extra_layers_maps(extra, "feature_extractor.extra", root, shapes, SSD_BACKBONE_MAPS,
                                      explicit)
    return maps + predictor_maps(model.box_predictor, "box_predictor", root, shapes)


def classification_maps(model: SSD, shapes: Shapes, root: str = "feature_extractor") -> list[TensorMap]:
    """The backbone's maps from a classification checkpoint (``tf.train.Checkpoint(feature_extractor=
    <the Keras MobileNet>)``)."""
    return backbone_maps(model, shapes, root)


def keras_layer_names(model: SSD) -> list[str]:
    """The Keras layer names of the backbone's layers holding weights, in ``layer_with_weights`` order
    (for checking the order against a checkpoint's full names)."""
    backbone = model.feature_extractor.backbone
    if model.feature_extractor_type.startswith("ssd_mobilenet_v2"):
        return _mobilenet_v2_names(len(cast(list, backbone.features)) - 2)
    return _mobilenet_v1_names(len(cast(list, backbone.blocks)))


def _mobilenet_v2_names(blocks: int) -> list[str]:
    names = ["Conv1", "bn_Conv1", "expanded_conv_depthwise", "expanded_conv_depthwise_BN",
             "expanded_conv_project", "expanded_conv_project_BN"]
    for i in range(1, blocks):
        for layer in ("expand", "depthwise", "project"):
            names += [f"block_{i}_{layer}", f"block_{i}_{layer}_BN"]
    return names + ["Conv_1", "Conv_1_bn"]


def _mobilenet_v1_names(blocks: int) -> list[str]:
    names = ["conv1", "conv1_bn"]
    for i in range(1, blocks + 1):
        names += [f"conv_dw_{i}", f"conv_dw_{i}_bn", f"conv_pw_{i}", f"conv_pw_{i}_bn"]
    return names
