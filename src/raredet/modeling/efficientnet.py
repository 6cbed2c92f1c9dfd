"""EfficientNet B0–B7 (Tan & Le 2019) in plain torch, with torchvision's parameter names and shapes.

Every parameter and buffer is named as in torchvision's ``efficientnet_b0`` .. ``efficientnet_b7``
(``features.0.0.weight`` for the stem conv, ``features.1.0.block.0.0.weight`` for the first block's
depthwise conv, ``...block.1.fc1.weight`` for a squeeze-excitation, ``features.8`` for the last 1x1
conv), so a torchvision ImageNet state dict loads by name as for ResNet and MobileNetV2.

The architecture is the paper's: a stride-2 3x3 stem, then seven stages of MBConv blocks (1x1 expand
-> kxk depthwise -> squeeze-excitation -> 1x1 linear project, residual when the shape is kept), swish
(SiLU) everywhere. Variant b<N> scales every width by ``width`` (rounded to a multiple of 8, never
more than 10% down) and every stage's block count by ``depth`` (rounded up):

====  =====  =====  ====  =====  =====  =====  =====  =====
      b0     b1     b2    b3     b4     b5     b6     b7
====  =====  =====  ====  =====  =====  =====  =====  =====
width 1.0    1.0    1.1   1.2    1.4    1.6    1.8    2.0
depth 1.0    1.1    1.2   1.4    1.8    2.2    2.6    3.1
====  =====  =====  ====  =====  =====  =====  =====  =====

Batch norm is torchvision's per variant (eps 1e-5 / momentum 0.1 for b0–b4; eps 1e-3 / momentum 0.01
for b5–b7, whose weights torchvision ported from TF), so ImageNet weights behave as trained.

Feature levels are the TF OD API's (``ssd_efficientnet_bifpn_feature_extractor``): level 3 is the
output of block 1 of stage 3 (``stack_2/block_1``), level 4 of block 2 of stage 5 (``stack_4/block_2``)
and level 5 of block 0 of stage 7 (``stack_6/block_0``). For b0 these are the stage ends; for the
deeper variants they sit inside the stage (the TF OD API names fixed block indices), and the
detector keeps that choice so a config means the same network in both. A detection backbone
(``full=False``) therefore stops at the level-5 block: the rest of stage 7 and ``features.8`` feed
nothing and are not built (a torchvision state dict reports them as unexpected, like the classifier).

Drop-connect (stochastic depth) drops a residual branch per sample in training, scaled by
``1 / (1 - p)``, with ``p = drop_connect_rate * i / N`` for the i-th block (from 0), ``N`` the
variant's block count (16 for b0, 23 for b1, ...; the blocks a detection backbone does not build
count too), as the TF EfficientNet the TF OD API builds and torchvision both do (checked against TF
2.15's ``efficientnet-b1``: 0.2 / 23 at ``stack_0/block_1``). Initialisation is the TF model's:
truncated normal with variance ``2 / fan_out`` (fan-out per output channel of a group, so a depthwise
kxk kernel has fan-out ``k * k``), zero biases.
"""

from __future__ import annotations

import math
from typing import cast

import torch
from torch import Tensor, nn

from raredet.modeling.backbones import scaled_depth
from raredet.modeling.layers import batch_norm

# (expand ratio, kernel, first stride, in channels, out channels, blocks) of b0, the paper's table 1.
B0_STAGES = (
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
)
# variant -> (width multiplier, depth multiplier)
EFFICIENTNET_VARIANTS: dict[str, tuple[float, float]] = {
    "b0": (1.0, 1.0),
    "b1": (1.0, 1.1),
    "b2": (1.1, 1.2),
    "b3": (1.2, 1.4),
    "b4": (1.4, 1.8),
    "b5": (1.6, 2.2),
    "b6": (1.8, 2.6),
    "b7": (2.0, 3.1),
}
# level -> (index in ``features``, block index in that stage): the TF OD API's endpoints.
LEVEL_TAPS: dict[int, tuple[int, int]] = {1: (1, 0), 2: (2, 1), 3: (3, 1), 4: (5, 2), 5: (7, 0)}
# L2 weight of the TF EfficientNet's own conv kernels (keras l2(5e-6) = 0.5 * 1e-5 * ||w||^2, the
# convention of raredet's l2 maps).
EFFICIENTNET_L2_WEIGHT = 1e-5
# The TF EfficientNet's batch norm (bn_epsilon 1e-3, bn_momentum 0.99 in Keras' convention).
TF_BN_EPSILON, TF_BN_MOMENTUM = 1e-3, 0.01
# Each conv also records its kernel's L2 weight under this attribute, for scans that read it per conv.
L2_ATTR = "l2_weight"


def _width(channels: int, width: float) -> int:
    """TF's ``round_filters`` / torchvision's ``_make_divisible``: nearest multiple of 8, >= 90%."""
    return scaled_depth(channels, width, min_depth=8, divisor=8)


class ConvNormSiLU(nn.Sequential):
    """conv -> BN (-> SiLU), indexed ``0``, ``1``, ``2`` as torchvision's ``Conv2dNormActivation``."""

    def __init__(
        self, in_ch: int, out_ch: int, kernel: int, stride: int, groups: int, norm: dict, act: bool = True
    ) -> None:
        conv = nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, groups=groups, bias=False)
        layers: list[nn.Module] = [conv, batch_norm(out_ch, **norm)]
        if act:
            layers.append(nn.SiLU(inplace=True))
        super().__init__(*layers)


class SqueezeExcitation(nn.Module):
    """Global average -> 1x1 ``fc1`` -> SiLU -> 1x1 ``fc2`` -> sigmoid, scaling the channels."""

    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.act = nn.SiLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        scale = self.fc2(self.act(self.fc1(x.mean((2, 3), keepdim=True))))
        return x * torch.sigmoid(scale)


def drop_connect(x: Tensor, p: float, training: bool) -> Tensor:
    """Zero whole samples of ``x [B, ...]`` with probability ``p``, scale the rest by ``1 / (1 - p)``."""
    if not training or p == 0.0:
        return x
    keep = torch.empty((x.shape[0],) + (1,) * (x.dim() - 1), dtype=x.dtype, device=x.device)
    keep.bernoulli_(1.0 - p)
    return x * keep / (1.0 - p)


class MBConv(nn.Module):
    """Mobile inverted bottleneck with squeeze-excitation; submodules under ``block`` as in torchvision."""

    def __init__(
        self, in_ch: int, out_ch: int, expand_ratio: int, kernel: int, stride: int, drop: float, norm: dict
    ) -> None:
        super().__init__()
        hidden = scaled_depth(in_ch, expand_ratio, min_depth=8, divisor=8)
        layers: list[nn.Module] = []
        if hidden != in_ch:
            layers.append(ConvNormSiLU(in_ch, hidden, 1, 1, 1, norm))
        layers += [
            ConvNormSiLU(hidden, hidden, kernel, stride, hidden, norm),
            SqueezeExcitation(hidden, max(1, in_ch // 4)),
            ConvNormSiLU(hidden, out_ch, 1, 1, 1, norm, act=False),
        ]
        self.block = nn.Sequential(*layers)
        self.use_res_connect = stride == 1 and in_ch == out_ch
        self.drop_prob = drop

    def forward(self, x: Tensor) -> Tensor:
        out = self.block(x)
        if not self.use_res_connect:
            return out
        return x + drop_connect(out, self.drop_prob, self.training)


class EfficientNet(nn.Module):
    """EfficientNet ``variant`` (b0..b7), torchvision layout, no classifier.

    ``forward(x) -> {level: map}`` for ``levels`` (default 3..5, strides 8, 16, 32); ``out_channels``
    gives each level's channels. ``full=True`` builds every block and ``features.8`` (the whole
    torchvision ``features``), e.g. to compare with torchvision's parameter counts.
    """

    def __init__(
        self,
        variant: str = "b0",
        levels: tuple[int, ...] = (3, 4, 5),
        drop_connect_rate: float = 0.2,
        freeze_batchnorm: bool = False,
        full: bool = False,
    ) -> None:
        super().__init__()
        if variant not in EFFICIENTNET_VARIANTS:
            valid = sorted(EFFICIENTNET_VARIANTS)
            raise ValueError(f"EfficientNet variant: unknown {variant!r}; valid: {valid}")
        if not levels or not set(levels) <= set(LEVEL_TAPS):
            raise ValueError(f"EfficientNet levels must be among {sorted(LEVEL_TAPS)}, got {list(levels)}")
        width, depth = EFFICIENTNET_VARIANTS[variant]
        late = variant in ("b5", "b6", "b7")
        norm = {"frozen": freeze_batchnorm, "eps": TF_BN_EPSILON if late else 1e-5,
                "momentum": TF_BN_MOMENTUM if late else 0.1}
        self.variant, self.levels = variant, tuple(sorted(levels))
        last_stage, last_block = LEVEL_TAPS[self.levels[-1]]
        stem = _width(32, width)
        layers: list[nn.Module] = [ConvNormSiLU(3, stem, 3, 2, 1, norm)]
        index, in_ch = 0, stem
        total_blocks = sum(int(math.ceil(stage[-1] * depth)) for stage in B0_STAGES)
        for s, (ratio, kernel, stride, _, out, repeats) in enumerate(B0_STAGES, start=1):
            out_ch, count = _width(out, width), int(math.ceil(repeats * depth))
            blocks = []
            for b in range(count):
                if not full and (s, b) > (last_stage, last_block):
                    break
                blocks.append(
                    MBConv(
                        in_ch,
                        out_ch,
                        ratio,
                        kernel,
                        stride if b == 0 else 1,
                        drop_connect_rate * index / total_blocks,
                        norm,
                    )
                )
                in_ch, index = out_ch, index + 1
            if blocks:
                layers.append(nn.Sequential(*blocks))
        if full:
            layers.append(ConvNormSiLU(in_ch, 4 * in_ch, 1, 1, 1, norm))
        self.features = nn.Sequential(*layers)
        self._taps = {LEVEL_TAPS[lv]: lv for lv in self.levels}
        self.out_channels = {lv: _width(B0_STAGES[LEVEL_TAPS[lv][0] - 1][4], width) for lv in self.levels}
        init_like_tf(self)

    def forward(self, x: Tensor) -> dict[int, Tensor]:
        outputs: dict[int, Tensor] = {}
        x = self.features[0](x)
        for s in range(1, min(len(self.features), len(B0_STAGES) + 1)):
            for b, block in enumerate(cast(nn.Sequential, self.features[s])):
                x = block(x)
                level = self._taps.get((s, b))
                if level is not None:
                    outputs[level] = x
            if len(outputs) == len(self.levels):
                break
        return outputs

    def use_tf_conventions(self) -> None:
        """Batch norm as the TF EfficientNet's (epsilon 1e-3, momentum 0.01 = Keras' 0.99) for weights
        TensorFlow trained; b5-b7 already have it, b0-b4 keep torchvision's 1e-5 otherwise. (TF's 'SAME'
        padding of the strided convs is ``tf_compat.use_tf_same_padding``'s.)"""
        for module in self.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.eps, module.momentum = TF_BN_EPSILON, TF_BN_MOMENTUM

    def l2_weights(self, prefix: str = "") -> dict[str, float]:
        """``{name: l2 weight}`` as the TF EfficientNet regularises: every conv kernel but the depthwise
        ones (TF's ``kernel_regularizer`` does not reach a ``DepthwiseConv2D``'s kernel), and the
        squeeze-excitation biases (its ``bias_regularizer``)."""
        dot = f"{prefix}." if prefix else ""
        weights = {}
        for name, module in self.named_modules():
            if isinstance(module, nn.Conv2d):
                if getattr(module, L2_ATTR, 0.0):
                    weights[f"{dot}{name}.weight"] = EFFICIENTNET_L2_WEIGHT
                if module.bias is not None:
                    weights[f"{dot}{name}.bias"] = EFFICIENTNET_L2_WEIGHT
        return weights


def tf_fan_out(weight: Tensor, groups: int) -> int:
    """Keras' fan-out of a conv kernel: output channels per group (1 for a depthwise conv) x k x k."""
    return (weight.shape[0] // groups) * weight.shape[2] * weight.shape[3]


def init_like_tf(model: nn.Module) -> None:
    """Convs: truncated normal (+-2 std), variance ``2 / fan_out`` (Keras ``VarianceScaling(2.0,
    'fan_out')``, corrected for the truncation); biases 0; batch norms 1 / 0."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            std = math.sqrt(2.0 / tf_fan_out(m.weight, m.groups)) / 0.87962566103423978
            nn.init.trunc_normal_(m.weight, 0.0, std, -2 * std, 2 * std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
            depthwise = m.groups > 1 and m.groups == m.in_channels
            setattr(m, L2_ATTR, 0.0 if depthwise else EFFICIENTNET_L2_WEIGHT)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
