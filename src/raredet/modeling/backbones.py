"""ResNet v1 and MobileNetV2 backbones in plain torch, with torchvision's parameter names and shapes, and
MobileNetV1 (which torchvision does not have; its names are described on ``MobileNetV1``).

Because every parameter and buffer is named as in torchvision (``conv1``, ``bn1``, ``layer1.0.conv1``,
``features.3.conv.1.0`` ...), a torchvision ImageNet state dict loads by name with
``load_state_dict(strict=False)`` (the classifier, ``fc`` / ``classifier``, is absent here).

ResNet is torchvision's (v1.5: the stride sits on the 3x3 conv of a bottleneck), since that is where
the weights raredet can load come from. raredet extension: ResNet also takes ``depth_multiplier`` and
``min_depth`` like MobileNet, scaling every width and rounding it to a multiple of 8 (at least
``min_depth``); 1.0 gives the standard shapes, and e.g. a ResNet-18 at 0.25 trains on a CPU.

``forward`` returns ``{level: feature map}`` for levels 2..5 (strides 4, 8, 16, 32); ``out_channels``
gives each level's channel count.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

from torch import Tensor, nn

from raredet.modeling.layers import ConvHyperparams, batch_norm
from raredet.modeling.tf_compat import TFSameConv2d, use_tf_same_padding


def scaled_depth(channels: int, depth_multiplier: float = 1.0, min_depth: int = 16, divisor: int = 8) -> int:
    """``channels * depth_multiplier`` rounded to the nearest multiple of ``divisor``, at least
    ``min_depth``, never more than 10% below the unrounded value (MobileNet's rounding rule)."""
    value = channels * depth_multiplier
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return max(rounded, min_depth)


# ---- ResNet v1 ---------------------------------------------------------------------------------


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual connection (ResNet-18/34)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int, frozen_bn: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = batch_norm(planes, frozen_bn)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = batch_norm(planes, frozen_bn)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(inplanes, planes, stride, frozen_bn)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand x4, with a residual connection (ResNet-50/101/152)."""

    expansion = 4

    def __init__(
        self, inplanes: int, planes: int, stride: int, frozen_bn: bool, outplanes: int | None = None,
        projection: bool = False,
    ) -> None:
        super().__init__()
        outplanes = outplanes or planes * 4
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = batch_norm(planes, frozen_bn)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = batch_norm(planes, frozen_bn)
        self.conv3 = nn.Conv2d(planes, outplanes, 1, bias=False)
        self.bn3 = batch_norm(outplanes, frozen_bn)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(inplanes, outplanes, stride, frozen_bn, projection)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


def _shortcut(inplanes: int, outplanes: int, stride: int, frozen_bn: bool, projection: bool = False
              ) -> nn.Sequential | None:
    """Projection shortcut (named ``downsample`` as in torchvision) when the shape changes, or always
    with ``projection`` (Keras' ResNet projects in the first block of every stage)."""
    if stride == 1 and inplanes == outplanes and not projection:
        return None
    return nn.Sequential(
        nn.Conv2d(inplanes, outplanes, 1, stride, bias=False), batch_norm(outplanes, frozen_bn)
    )


# Batch-norm epsilon of the TF OD API's Keras ResNet layer override when no conv_hyperparams build them.
KERAS_RESNET_BN_EPSILON = 1e-5


class KerasFixedPaddingConv2d(nn.Conv2d):
    """A strided conv padding ``k // 2`` on both sides, as the TF OD API's Keras ResNet pads its stem
    (``_fixed_padding``, not TF's 'SAME'): computes as ``nn.Conv2d``; the class tells
    ``use_tf_same_padding`` to leave it alone."""


RESNET_DEPTHS: dict[int, tuple[type[BasicBlock] | type[Bottleneck], list[int]]] = {
    18: (BasicBlock, [2, 2, 2, 2]),
    34: (BasicBlock, [3, 4, 6, 3]),
    50: (Bottleneck, [3, 4, 6, 3]),
    101: (Bottleneck, [3, 4, 23, 3]),
    152: (Bottleneck, [3, 8, 36, 3]),
}


class ResNet(nn.Module):
    """ResNet v1 (torchvision layout, no classifier).

    ``keras_widths``: each conv's width is ``max(int(c * depth_multiplier), min_depth)`` on its own,
    the rule of the TF OD API's Keras ResNet (its layer override scales every conv; a bottleneck's
    expansion ``4 c`` is scaled, not ``4 x`` the scaled ``c``), instead of ``scaled_depth``, and the
    first block of every stage has a projection shortcut even where the shape is kept (Keras'
    ``conv_shortcut``). With ``depth_multiplier`` 1 both give the standard shapes."""

    def __init__(
        self,
        depth: int = 50,
        depth_multiplier: float = 1.0,
        min_depth: int = 16,
        freeze_batchnorm: bool = False,
        keras_widths: bool = False,
    ) -> None:
        super().__init__()
        block, counts = RESNET_DEPTHS[depth]

        def width(channels: int) -> int:
            if keras_widths:
                return max(int(channels * depth_multiplier), min_depth)
            return scaled_depth(channels, depth_multiplier, min_depth)

        nominal = (64, 128, 256, 512)
        stem = width(64)
        self.conv1 = nn.Conv2d(3, stem, 7, 2, 3, bias=False)
        self.bn1 = batch_norm(stem, freeze_batchnorm)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes, stages, outs = stem, [], []
        for i, (channels, count) in enumerate(zip(nominal, counts, strict=True)):
            planes = width(channels)
            out = width(channels * block.expansion) if keras_widths else planes * block.expansion
            blocks = [
                _block(block, inplanes if j == 0 else out, planes, out, 2 if i > 0 and j == 0 else 1,
                       freeze_batchnorm, keras_widths and j == 0)
                for j in range(count)
            ]
            stages.append(nn.Sequential(*blocks))
            inplanes = out
            outs.append(out)
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.out_channels = {2 + i: c for i, c in enumerate(outs)}
        # The hyperparams the TF OD API would build this backbone's batch norms and activations with
        # (an SSD's conv_hyperparams under override_base_feature_extractor_hyperparams; None: its Keras
        # ResNet's own). Unused until TF weights are loaded (ResNet.use_tf_conventions).
        self.keras_hyperparams: ConvHyperparams | None = None
        _init_like_torchvision(self)

    def use_tf_conventions(self) -> None:
        """Compute as the TF OD API's Keras ResNet v1 (``tf_weights/resnet.py`` says why each): strides
        on the first 1x1 conv of a bottleneck (v1.0) instead of the 3x3 (v1.5), the stem's symmetric
        ``k // 2`` padding kept (also if ``use_tf_same_padding`` switched it), the max pool padding
        'SAME', and the batch norms and activations of ``keras_hyperparams`` (ReLU and epsilon 1e-5
        when None). No parameter changes shape. Idempotent."""
        for module in self.modules():
            if isinstance(module, Bottleneck) and module.conv2.stride != (1, 1):
                module.conv1.stride, module.conv2.stride = module.conv2.stride, (1, 1)
        stem = self.conv1
        if type(stem) in (nn.Conv2d, TFSameConv2d):
            stem.__class__ = KerasFixedPaddingConv2d
            stem.padding = (stem.kernel_size[0] // 2, stem.kernel_size[1] // 2)
        use_tf_same_padding(self.maxpool)
        hp = self.keras_hyperparams
        for module in self.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.eps = hp.bn_epsilon if hp is not None else KERAS_RESNET_BN_EPSILON
        for parent in list(self.modules()):
            if isinstance(getattr(parent, "relu", None), nn.Module):
                parent.relu = hp.act(inplace=True) if hp is not None else nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> dict[int, Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c2 = self.layer1(x)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        return {2: c2, 3: c3, 4: c4, 5: self.layer4(c4)}


def _block(block: type[BasicBlock] | type[Bottleneck], inplanes: int, planes: int, out: int, stride: int,
           frozen: bool, projection: bool) -> nn.Module:
    if block is Bottleneck:
        return Bottleneck(inplanes, planes, stride, frozen, out, projection)
    return block(inplanes, planes, stride, frozen)


def _init_like_torchvision(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


# ---- MobileNetV2 ---------------------------------------------------------------------------------


class ConvBNReLU6(nn.Sequential):
    """conv -> BN -> ReLU6, indexed ``0``, ``1``, ``2`` as torchvision's ``Conv2dNormActivation``."""

    def __init__(
        self, in_ch: int, out_ch: int, kernel: int, stride: int, groups: int, frozen_bn: bool
    ) -> None:
        conv = nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, groups=groups, bias=False)
        super().__init__(conv, batch_norm(out_ch, frozen_bn), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    """1x1 expand (skipped when ``expand_ratio`` is 1), 3x3 depthwise, 1x1 linear project, residual when
    the shape is kept. Submodules under ``conv`` as in torchvision."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int, frozen_bn: bool) -> None:
        super().__init__()
        hidden = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU6(inp, hidden, 1, 1, 1, frozen_bn))
        layers += [
            ConvBNReLU6(hidden, hidden, 3, stride, hidden, frozen_bn),
            nn.Conv2d(hidden, oup, 1, bias=False),
            batch_norm(oup, frozen_bn),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


# (expand ratio t, channels c, repeats n, first stride s), Sandler et al. 2018, table 2.
MOBILENET_V2_SETTINGS = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]
# Index in ``features`` whose output closes each stride level (2: stride 4 ... 5: stride 32).
MOBILENET_V2_LEVEL_ENDS = {2: 3, 3: 6, 4: 13, 5: 18}


def mobilenet_v2_last_depth(
    depth_multiplier: float, min_depth: int, *, keras: bool = True, narrow: bool = False
) -> int:
    """Width of MobileNetV2's last 1x1 conv (``features.18``; Keras ``Conv_1``, slim ``layer_19``) as
    the TF OD API builds it.

    Keras (the ``*_keras`` extractors): 1280, scaled only by a multiplier below 1 (its layer override
    resets the Keras application's widening above 1). TF1 slim: 1280 scaled by any multiplier, or 256
    scaled (``narrow``: the slim ``ssd_mobilenet_v2_fpn`` with ``use_depthwise``, its
    ``_create_modified_mobilenet_config``). The Keras FPN extractor defines the same 256 but never
    passes it to its backbone, so no Keras model is narrowed. Always at least ``min_depth``.
    (torchvision: 1280 scaled only above 1.)"""
    if keras:
        return scaled_depth(1280, min(1.0, depth_multiplier), min_depth)
    return scaled_depth(256 if narrow else 1280, depth_multiplier, min_depth)


class MobileNetV2(nn.Module):
    """MobileNetV2 (torchvision layout, ``features.0`` .. ``features.18``, no classifier).

    ``last_depth``: the last 1x1 conv's width (``mobilenet_v2_last_depth``); default the TF OD API's
    Keras rule."""

    def __init__(
        self,
        depth_multiplier: float = 1.0,
        min_depth: int = 16,
        freeze_batchnorm: bool = False,
        last_depth: int | None = None,
    ) -> None:
        super().__init__()
        in_ch = scaled_depth(32, depth_multiplier, min_depth)
        last = last_depth or mobilenet_v2_last_depth(depth_multiplier, min_depth)
        layers: list[nn.Module] = [ConvBNReLU6(3, in_ch, 3, 2, 1, freeze_batchnorm)]
        for t, c, n, s in MOBILENET_V2_SETTINGS:
            out_ch = scaled_depth(c, depth_multiplier, min_depth)
            for i in range(n):
                layers.append(InvertedResidual(in_ch, out_ch, s if i == 0 else 1, t, freeze_batchnorm))
                in_ch = out_ch
        layers.append(ConvBNReLU6(in_ch, last, 1, 1, 1, freeze_batchnorm))
        self.features = nn.Sequential(*layers)
        self.out_channels = {
            lv: _block_out_channels(self.features[i]) for lv, i in MOBILENET_V2_LEVEL_ENDS.items()
        }
        _init_like_torchvision(self)

    def forward(self, x: Tensor) -> dict[int, Tensor]:
        outputs, start = {}, 0
        for level, end in MOBILENET_V2_LEVEL_ENDS.items():
            x = self.features[start : end + 1](x)
            outputs[level], start = x, end + 1
        return outputs

    def ssd_features(self, x: Tensor) -> list[Tensor]:
        """The two maps the TF OD API's non-FPN SSD MobileNetV2 uses: the 1x1 expansion output of the
        first stride-32 block (``layer_15/expansion_output``, stride 16, 576 channels at 1.0) and the
        final 1x1 conv (``layer_19``, stride 32, 1280 channels)."""
        x = self.features[:14](x)
        block = cast(InvertedResidual, self.features[14])
        expansion = block.conv[0](x)
        x = block.conv[1:](expansion)
        return [expansion, self.features[15:](x)]

    @property
    def ssd_channels(self) -> list[int]:
        expand = cast(nn.Sequential, cast(InvertedResidual, self.features[14]).conv[0])
        return [cast(nn.Conv2d, expand[0]).out_channels, self.out_channels[5]]


def set_batch_norm_hyperparams(module: nn.Module, epsilon: float, momentum: float) -> None:
    """Every batch norm of ``module`` takes ``epsilon`` and (torch's) ``momentum``: e.g. a MobileNetV2
    computing with TF weights, whose Keras batch norms use epsilon 1e-3 (torchvision's: 1e-5)."""
    for layer in module.modules():
        if isinstance(layer, nn.BatchNorm2d):
            layer.eps, layer.momentum = epsilon, momentum


def _block_out_channels(block: nn.Module) -> int:
    convs = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
    return convs[-1].out_channels


# ---- MobileNetV1 ---------------------------------------------------------------------------------

# (pointwise output channels, depthwise stride) of the 13 depthwise-separable blocks, Howard et al. 2017,
# table 1.
MOBILENET_V1_BLOCKS = [
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (1024, 2),
    (1024, 1),
]
# Index in ``blocks`` whose output closes each stride level: the TF OD API's Conv2d_3_pointwise,
# Conv2d_5_pointwise, Conv2d_11_pointwise and Conv2d_13_pointwise (Keras conv_pw_3/5/11/13_relu).
MOBILENET_V1_LEVEL_ENDS = {2: 2, 3: 4, 4: 10, 5: 12}


class ConvBNAct(nn.Sequential):
    """conv -> BN -> ReLU6, indexed ``0``, ``1``, ``2``."""

    def __init__(
        self, in_ch: int, out_ch: int, kernel: int, stride: int, groups: int, norm: Callable[[int], nn.Module]
    ) -> None:
        conv = nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, groups=groups, bias=False)
        super().__init__(conv, norm(out_ch), nn.ReLU6(inplace=True))


class DepthwiseSeparable(nn.Module):
    """One MobileNetV1 block: ``depthwise`` (3x3 per channel, strided) then ``pointwise`` (1x1), each a
    ``ConvBNAct``."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, norm: Callable[[int], nn.Module]) -> None:
        super().__init__()
        self.depthwise = ConvBNAct(in_ch, in_ch, 3, stride, in_ch, norm)
        self.pointwise = ConvBNAct(in_ch, out_ch, 1, 1, 1, norm)

    def forward(self, x: Tensor) -> Tensor:
        return self.pointwise(self.depthwise(x))


class MobileNetV1(nn.Module):
    """MobileNetV1 (Howard et al. 2017) as the TF OD API's Keras ``mobilenet_v1`` builds it, no classifier.

    Parameter names (torchvision has no MobileNetV1, so these are raredet's): ``stem`` is the first 3x3
    stride-2 conv (Keras ``conv1``), ``blocks.{i}`` the 13 depthwise-separable blocks, with
    ``blocks.{i}.depthwise`` = Keras ``conv_dw_{i+1}`` and ``blocks.{i}.pointwise`` = Keras
    ``conv_pw_{i+1}``; inside each, ``.0`` is the conv, ``.1`` the batch norm (``.2`` the ReLU6).

    Widths are ``max(int(c * depth_multiplier), min_depth)`` for every conv, the TF OD API's slim rule
    (no rounding to a multiple of 8, unlike MobileNetV2). ``keras``: the TF OD API's Keras MobileNetV1
    (the ``*_keras`` extractors) applies the multiplier twice, ``max(int(int(c * m) * m), min_depth)``
    (the Keras application scales each width, then the OD API's layer override scales it again), except
    for widths its ``conv_defs`` set (below), scaled once; with ``depth_multiplier`` 1 both rules give
    the paper's widths. ``top_depths`` are the nominal output channels of the last two pointwise convs
    (blocks 12 and 13, before the multiplier): the paper's (1024, 1024), or (512, 256) for the TF OD
    API's FPN with ``use_depthwise``, which narrows them (through ``conv_defs``). Batch norms use
    ``bn_epsilon`` and ``bn_momentum`` (torch's momentum, ``1 - decay``); there are no torchvision
    weights to match, so the defaults are the TF OD API's (epsilon 0.001, decay 0.9997).

    ``forward`` returns ``{level: map}`` for levels 2..5 (strides 4, 8, 16, 32; blocks 3, 5, 11, 13).
    """

    def __init__(
        self,
        depth_multiplier: float = 1.0,
        min_depth: int = 16,
        freeze_batchnorm: bool = False,
        top_depths: tuple[int, int] = (1024, 1024),
        bn_epsilon: float = 0.001,
        bn_momentum: float = 0.0003,
        keras: bool = False,
    ) -> None:
        super().__init__()
        conv_defs = tuple(top_depths) != (1024, 1024)

        def width(channels: int, conv_def: bool = False) -> int:
            scaled = int(channels * depth_multiplier)
            if keras and not conv_def:
                scaled = int(scaled * depth_multiplier)
            return max(scaled, min_depth)

        def norm(channels: int) -> nn.Module:
            return batch_norm(channels, freeze_batchnorm, bn_epsilon, bn_momentum)

        settings = [(c, s, False) for c, s in MOBILENET_V1_BLOCKS[:-2]]
        settings += [(top_depths[0], 2, conv_defs), (top_depths[1], 1, conv_defs)]
        in_ch = width(32)
        self.stem = ConvBNAct(3, in_ch, 3, 2, 1, norm)
        blocks = []
        for channels, stride, conv_def in settings:
            blocks.append(DepthwiseSeparable(in_ch, width(channels, conv_def), stride, norm))
            in_ch = width(channels, conv_def)
        self.blocks = nn.Sequential(*blocks)
        self.out_channels = {
            lv: _block_out_channels(self.blocks[i]) for lv, i in MOBILENET_V1_LEVEL_ENDS.items()
        }
        _init_like_torchvision(self)

    def forward(self, x: Tensor) -> dict[int, Tensor]:
        x = self.stem(x)
        outputs, start = {}, 0
        for level, end in MOBILENET_V1_LEVEL_ENDS.items():
            x = self.blocks[start : end + 1](x)
            outputs[level], start = x, end + 1
        return outputs
