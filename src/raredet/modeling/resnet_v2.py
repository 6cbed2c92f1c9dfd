"""CenterNet's ResNet v2 feature extractors ``resnet_v2_50`` and ``resnet_v2_101`` (the TF OD API's
``models/center_net_resnet_feature_extractor.py``), in plain torch.

The backbone is Keras' ``ResNet50V2`` / ``ResNet101V2`` (``keras/applications/resnet.py``, pre-activation
bottlenecks) cut at ``conv5_block3_out`` (stride 32, 2048 channels, before Keras' ``post_bn``, which the
extractor never runs), followed by three upsampling stages to stride 4: each a 3x3 conv (with bias) ->
batch norm -> ReLU -> 3x3 transposed conv stride 2 (with bias) -> batch norm -> ReLU, of 256, 128, 64
filters. One output of 64 channels.

Input: the extractor's own ``preprocess`` maps the CenterNet-normalised image with Keras'
``resnet_v2.preprocess_input`` (``x / 127.5 - 1``); ``forward`` does the same, so it takes the image as
the CenterNet model normalises it (``(image - channel_means) / channel_stds``, by default means 0 and stds 1:
pixels 0..255).

Names, Keras layer -> raredet state-dict key (kernels ``[kh, kw, in, out]`` -> ``[out, in, kh, kw]``;
a transposed conv's ``[kh, kw, out, in]`` -> ``[in, out, kh, kw]``):

* ``conv1_conv`` -> ``conv1``
* ``conv<S>_block<B>_preact_bn`` -> ``conv<S>.<B-1>.preact_bn``; ``conv<S>_block<B>_<N>_conv`` ->
  ``conv<S>.<B-1>.conv<N>`` (N = 0 the projection shortcut, 1..3 the bottleneck);
  ``conv<S>_block<B>_<N>_bn`` -> ``conv<S>.<B-1>.bn<N>``
* the upsampling layers, in the order Keras creates them (its auto-named ``conv2d``,
  ``batch_normalization``, ``conv2d_transpose``, ``batch_normalization_1``, ...) ->
  ``upsample.<i>.{conv, conv_bn, deconv, deconv_bn}``, i = 0, 1, 2.

In a TF2 checkpoint (object paths, as ``tf.train.Checkpoint(feature_extractor=extractor)`` writes them
with TF 2.15.1) the backbone's weights sit under ``feature_extractor/_base_model/layer_with_weights-<N>/``,
N counting the layers of ``ResNet50V2`` that have weights in model order (0 ``conv1_conv``, 1
``conv2_block1_preact_bn``, ..., the last ``post_bn``, unused), and the upsampling ones under
``feature_extractor/_feature_extractor_model/layer_with_weights-<M>/``, M = 1 + 4 i + (0 conv, 1 conv_bn,
2 deconv, 3 deconv_bn) (``layer_with_weights-0`` there is the backbone again).

Facts kept: backbone batch norms epsilon 1.001e-5, the upsampling ones Keras' default 1e-3, all with
Keras' momentum 0.99 (torch 0.01). Every 3x3 / 7x7 conv pads ``k // 2`` zeros each side (Keras'
``ZeroPadding2D`` then 'valid'); the stem's 3x3 max pool stride 2 pads with zeros too (its input has no
ReLU before it, so a padded zero can win). The stride of a stage sits on its last block, whose shortcut
is then a stride-2 subsampling of the block's input (``MaxPooling2D(1, strides=2)``); the first block of
each stage projects its pre-activated input with a 1x1 conv. The transposed convs are TF's 'same' (each
output ``2 n``): the full ``2 n + 1`` transposed output with its last row and column dropped.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from raredet.modeling.backbones import KerasFixedPaddingConv2d
from raredet.modeling.layers import batch_norm, keras_default_init

BACKBONE_BN_EPSILON = 1.001e-5
UPSAMPLE_BN_EPSILON = 1e-3  # Keras BatchNormalization's default
BN_MOMENTUM = 1.0 - 0.99  # Keras' default momentum 0.99, as torch counts it

# blocks per stage conv2..conv5 of Keras' ResNet<depth>V2.
RESNET_V2_BLOCKS: dict[int, tuple[int, ...]] = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
STEM_FILTERS = 64
STAGE_FILTERS = (64, 128, 256, 512)
UPSAMPLE_FILTERS = (256, 128, 64)


def _bn(channels: int, eps: float, frozen_bn: bool) -> nn.BatchNorm2d:
    return batch_norm(channels, frozen_bn, eps, BN_MOMENTUM)


def _conv(in_ch: int, out_ch: int, kernel: int, stride: int = 1, bias: bool = False) -> nn.Conv2d:
    """A Keras conv initialised as Keras does (glorot uniform, zero bias), padded ``k // 2`` each side."""
    cls = KerasFixedPaddingConv2d if stride > 1 else nn.Conv2d
    conv = cls(in_ch, out_ch, kernel, stride, kernel // 2, bias=bias)
    keras_default_init(conv)
    return conv


class PreactBottleneck(nn.Module):
    """Keras ``block2``: ``preact = relu(preact_bn(x))``; 1x1 -> 3x3 (strided) -> 1x1 (x4, with bias)
    on ``preact``, plus the shortcut: ``conv0(preact)`` (1x1, with bias) in a stage's first block, else
    ``x`` subsampled by the stride."""

    def __init__(self, in_ch: int, filters: int, stride: int, conv_shortcut: bool, frozen_bn: bool) -> None:
        super().__init__()
        self.stride = stride
        self.preact_bn = _bn(in_ch, BACKBONE_BN_EPSILON, frozen_bn)
        self.conv0 = _conv(in_ch, 4 * filters, 1, stride, bias=True) if conv_shortcut else None
        self.conv1 = _conv(in_ch, filters, 1)
        self.bn1 = _bn(filters, BACKBONE_BN_EPSILON, frozen_bn)
        self.conv2 = _conv(filters, filters, 3, stride)
        self.bn2 = _bn(filters, BACKBONE_BN_EPSILON, frozen_bn)
        self.conv3 = _conv(filters, 4 * filters, 1, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        preact = F.relu(self.preact_bn(x))
        if self.conv0 is not None:
            shortcut = self.conv0(preact)
        else:
            shortcut = x[..., :: self.stride, :: self.stride] if self.stride > 1 else x
        out = F.relu(self.bn1(self.conv1(preact)))
        out = F.relu(self.bn2(self.conv2(out)))
        return self.conv3(out) + shortcut


def _stage(in_ch: int, filters: int, blocks: int, stride: int, frozen_bn: bool) -> nn.Sequential:
    """Keras ``stack2``: a projecting first block, the stride on the last block."""
    layers = [PreactBottleneck(in_ch, filters, 1, True, frozen_bn)]
    layers += [PreactBottleneck(4 * filters, filters, 1, False, frozen_bn) for _ in range(blocks - 2)]
    layers.append(PreactBottleneck(4 * filters, filters, stride, False, frozen_bn))
    return nn.Sequential(*layers)


class TFSameConvTranspose2d(nn.ConvTranspose2d):
    """Keras' ``Conv2DTranspose(padding='same')`` for an odd kernel and stride 2: output ``2 n``, the
    transposed conv of a 'SAME' conv that pads 0 before and 1 after, i.e. the full transposed output
    without its last row and column (torch's ``padding=1, output_padding=1`` drops the first instead)."""

    def forward(self, x: Tensor, output_size: list[int] | None = None) -> Tensor:
        out = super().forward(x)
        return out[..., : x.shape[-2] * self.stride[0], : x.shape[-1] * self.stride[1]]


class UpsampleStage(nn.Module):
    """3x3 conv -> batch norm -> ReLU -> 3x3 transposed conv stride 2 -> batch norm -> ReLU."""

    def __init__(self, in_ch: int, filters: int, frozen_bn: bool) -> None:
        super().__init__()
        self.conv = _conv(in_ch, filters, 3, bias=True)
        self.conv_bn = _bn(filters, UPSAMPLE_BN_EPSILON, frozen_bn)
        self.deconv = TFSameConvTranspose2d(filters, filters, 3, stride=2)
        # Keras' default glorot uniform: symmetric in the fans, so torch's weight layout does not matter.
        limit = math.sqrt(6.0 / (2 * filters * 9))
        nn.init.uniform_(self.deconv.weight, -limit, limit)
        if self.deconv.bias is not None:
            nn.init.zeros_(self.deconv.bias)
        self.deconv_bn = _bn(filters, UPSAMPLE_BN_EPSILON, frozen_bn)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.conv_bn(self.conv(x)))
        return F.relu(self.deconv_bn(self.deconv(x)))


class CenterNetResNetV2(nn.Module):
    """The TF OD API's ``CenterNetResnetFeatureExtractor``: ``forward(x [B, 3, H, W])`` -> one map
    ``[B, upsample_filters[-1], H / 4, W / 4]`` (H and W multiples of ``size_divisor``, 32).

    ``blocks`` per stage conv2..conv5 (``RESNET_V2_BLOCKS``); ``stage_filters`` (bottleneck widths, a
    stage outputs 4x) and ``upsample_filters`` default to Keras' and the TF OD API's; smaller ones
    build the same wiring narrower (tests)."""

    num_outputs = 1
    stride = 4
    size_divisor = 32

    def __init__(
        self, blocks: tuple[int, ...] = RESNET_V2_BLOCKS[50], frozen_bn: bool = False,
        stage_filters: tuple[int, ...] = STAGE_FILTERS, upsample_filters: tuple[int, ...] = UPSAMPLE_FILTERS,
    ) -> None:
        super().__init__()
        if len(blocks) != 4 or len(stage_filters) != 4 or min(blocks) < 2:
            raise ValueError(
                f"ResNet v2 takes 4 stages of at least 2 blocks, got {blocks} of {stage_filters}")
        self.out_channels = upsample_filters[-1]
        self.conv1 = _conv(3, STEM_FILTERS, 7, 2, bias=True)
        widths = [STEM_FILTERS, *(4 * f for f in stage_filters)]
        self.conv2 = _stage(widths[0], stage_filters[0], blocks[0], 2, frozen_bn)
        self.conv3 = _stage(widths[1], stage_filters[1], blocks[1], 2, frozen_bn)
        self.conv4 = _stage(widths[2], stage_filters[2], blocks[2], 2, frozen_bn)
        self.conv5 = _stage(widths[3], stage_filters[3], blocks[3], 1, frozen_bn)
        channels = [widths[4], *upsample_filters]
        self.upsample = nn.Sequential(
            *(UpsampleStage(channels[i], channels[i + 1], frozen_bn) for i in range(len(upsample_filters))))

    def forward(self, x: Tensor) -> list[Tensor]:
        height, width = x.shape[-2:]
        if not torch.jit.is_tracing() and (height % self.size_divisor or width % self.size_divisor):
            raise ValueError(f"the ResNet v2 extractor takes images whose height and width are multiples of "
                             f"{self.size_divisor}, got {height}x{width}: resize or pad to such a size")
        x = self.conv1(x / 127.5 - 1.0)
        x = F.max_pool2d(F.pad(x, (1, 1, 1, 1)), 3, 2)  # Keras pads the pool with zeros
        x = self.conv5(self.conv4(self.conv3(self.conv2(x))))
        return [self.upsample(x)]


def resnet_v2_50(frozen_bn: bool = False) -> CenterNetResNetV2:
    """CenterNet's ``resnet_v2_50`` feature extractor."""
    return CenterNetResNetV2(RESNET_V2_BLOCKS[50], frozen_bn)


def resnet_v2_101(frozen_bn: bool = False) -> CenterNetResNetV2:
    """CenterNet's ``resnet_v2_101`` feature extractor."""
    return CenterNetResNetV2(RESNET_V2_BLOCKS[101], frozen_bn)
