"""Feature pyramids: the FPN of RetinaNet (TF OD API ``fpn { min_level max_level
additional_layer_depth }``) and the plain multi-resolution maps of the original SSD.

FPN, as the TF OD API's Keras FPN builds it: a 1x1 projection (with bias, no norm) of each backbone
level from ``min_level`` to ``min(max_level, 5)``; top-down, each coarser result is upsampled (nearest)
and added; every merged level but the coarsest gets a 3x3 "smoothing" conv -> BN -> activation.
Levels past the backbone come from 3x3 stride-2 conv -> BN -> activation on the previous output (the
TF OD API starts them from the coarsest FPN output, not from C5 as the RetinaNet paper does).
``use_depthwise`` makes the smoothing and extra convs depthwise-separable: the zoo's "FPN-lite".

Top-down input. The RetinaNet/FPN papers (and raredet's default, ``tf_top_down = False``) upsample the
*merged* map (lateral + upsampled, before smoothing) into the next finer level. The TF OD API's
``KerasFpnTopDownFeatureMaps`` upsamples the *smoothed* output (after conv -> BN -> activation)
instead. A model computing with TF weights sets ``tf_top_down = True`` (``SSD.use_weights_convention``);
parameters and shapes are the same either way.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from raredet.modeling.layers import ConvHyperparams, ConvNormAct

# Coarsest level the backbones produce (stride 32).
BACKBONE_MAX_LEVEL = 5


class FeaturePyramid(nn.Module):
    """FPN over backbone levels; ``forward({level: map}) -> [map per level min_level..max_level]``."""

    def __init__(
        self,
        in_channels: dict[int, int],
        conv_hyperparams: ConvHyperparams,
        min_level: int = 3,
        max_level: int = 7,
        additional_layer_depth: int = 256,
        use_depthwise: bool = False,
        freeze_batchnorm: bool = False,
    ) -> None:
        super().__init__()
        if min_level not in in_channels or max_level < min_level:
            raise ValueError(
                f"min_level must be one of the backbone's levels "
                f"{sorted(in_channels)} and max_level >= min_level; got {min_level}..{max_level}"
            )
        hp, depth = conv_hyperparams, additional_layer_depth
        self.min_level, self.max_level = min_level, max_level
        self.top_level = min(max_level, BACKBONE_MAX_LEVEL)
        levels = range(min_level, self.top_level + 1)
        self.projections = nn.ModuleList(_projection(hp, in_channels[lv], depth) for lv in levels)
        self.smoothing = nn.ModuleList(
            ConvNormAct(hp, depth, depth, 3, 1, use_depthwise, freeze_batchnorm) for _ in levels[:-1]
        )
        self.extra = nn.ModuleList(
            ConvNormAct(hp, depth, depth, 3, 2, use_depthwise, freeze_batchnorm)
            for _ in range(self.top_level, max_level)
        )
        self.out_channels = [depth] * (max_level - min_level + 1)
        self.tf_top_down = False  # upsample the smoothed map, as the TF OD API (module docstring)

    def forward(self, features: dict[int, Tensor]) -> list[Tensor]:
        levels = range(self.min_level, self.top_level + 1)
        laterals = [proj(features[lv]) for proj, lv in zip(self.projections, levels, strict=True)]
        merged = laterals[-1]
        outputs = [merged]
        for lateral, smooth in zip(laterals[-2::-1], self.smoothing[::-1], strict=True):
            merged = lateral + F.interpolate(merged, size=lateral.shape[-2:], mode="nearest")
            outputs.append(smooth(merged))
            if self.tf_top_down:
                merged = outputs[-1]
        outputs.reverse()
        for conv in self.extra:
            outputs.append(conv(outputs[-1]))
        return outputs


def _projection(hp: ConvHyperparams, in_ch: int, depth: int) -> nn.Conv2d:
    conv = nn.Conv2d(in_ch, depth, 1)
    hp.initialize(conv)
    return conv


class SsdExtraLayers(nn.Module):
    """The original SSD's extra maps, as the TF OD API's ``multi_resolution_feature_maps`` builds them:
    after the backbone maps, each new map is 1x1 conv to ``reduce_depths`` (default ``depth // 2``)
    -> BN -> act, then 3x3 stride-2 conv (depthwise-separable with ``use_depthwise``, the SSDLite form)
    to ``depth``. The TF OD API's reduce depth is ``depth_fn(nominal depth // 2)``, which differs from
    ``depth_fn(nominal) // 2`` where ``min_depth`` applies (give it as ``reduce_depths``)."""

    def __init__(
        self,
        in_channels: int,
        depths: list[int],
        conv_hyperparams: ConvHyperparams,
        use_depthwise: bool = False,
        freeze_batchnorm: bool = False,
        reduce_depths: list[int] | None = None,
    ) -> None:
        super().__init__()
        hp, blocks = conv_hyperparams, []
        reduce_depths = reduce_depths or [depth // 2 for depth in depths]
        for depth, reduced in zip(depths, reduce_depths, strict=True):
            blocks.append(
                nn.Sequential(
                    ConvNormAct(hp, in_channels, reduced, 1, 1, False, freeze_batchnorm),
                    # Keras' DepthwiseConv2D gets no remapped hyperparams here, the 1x1 does.
                    ConvNormAct(
                        hp,
                        reduced,
                        depth,
                        3,
                        2,
                        use_depthwise,
                        freeze_batchnorm,
                        depthwise_hp=False,
                        pointwise_hp=True,
                    ),
                )
            )
            in_channels = depth
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: Tensor) -> list[Tensor]:
        outputs = []
        for block in self.blocks:
            x = block(x)
            outputs.append(x)
        return outputs
