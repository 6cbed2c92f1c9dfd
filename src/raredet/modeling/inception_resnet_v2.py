"""Inception-ResNet v2 (Szegedy et al. 2016) as the TF OD API's ``faster_rcnn_inception_resnet_v2_keras``
feature extractor builds it, split into Faster R-CNN's two stages as the TF OD API splits it.

The TF OD API wraps Keras' ``InceptionResNetV2`` application (``models/keras_models/inception_resnet_v2.py``)
with ``align_feature_maps=True``, so every convolution and pooling pads ``'SAME'`` (the application's
``'valid'`` ones included): a stride-2 layer on an even side pads 0 before and 1 after
(``tf_compat.TFSameConv2d`` / ``TFSameMaxPool2d``), the average pool averages over the pixels inside the
map only. Its batch norms have no scale (``batchnorm_scale=False``: a learned offset ``beta`` only),
epsilon 1e-3 and decay 0.9997; they use their moving statistics unless ``batch_norm_trainable`` (the
TF OD API's ``FreezableBatchNorm(training=False)``, whose ``beta`` still trains). A conv followed by a
batch norm has no bias; the 1x1 ``_conv`` closing each residual block has one and no batch norm.

* **First stage** (``proposal_features``, output stride 16, the Keras layer ``block17_20_ac``):
  stem (conv 3x3/2 32, conv 3x3 32, conv 3x3 64, max pool 3/2, conv 1x1 80, conv 3x3 192, max pool 3/2),
  ``mixed_5b`` (320 channels), 10 ``block35`` (scale 0.17), ``mixed_6a`` (1088 channels, stride 2),
  20 ``block17`` (scale 0.1).
* **Second stage** (``box_classifier_features``, on the ROI crops, from ``block17_20_ac`` to
  ``conv_7b_ac``): ``mixed_7a`` (2080 channels, stride 2), 9 ``block8`` (scale 0.2), a tenth ``block8``
  with scale 1 and no activation, ``conv_7b`` (1x1, 1536 channels).

The input is normalised as the extractor's ``preprocess``: ``(2 / 255) x - 1`` (``INPUT_NORMALIZATION``).
Module names follow Keras' (``mixed_5b``, ``block35[i]`` for ``block35_{i+1}``, ...).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from raredet.modeling.tf_compat import TFSameConv2d, TFSameMaxPool2d

# (mean, std) in 0..255 pixel units: the extractor's preprocess, (2 / 255) x - 1
INPUT_NORMALIZATION = ((127.5, 127.5, 127.5), (127.5, 127.5, 127.5))
# The TF OD API's inception_resnet_v2 defaults (default_batchnorm_epsilon / _momentum)
BN_EPSILON = 1e-3
BN_DECAY = 0.9997
PROPOSAL_CHANNELS = 1088  # block17_20_ac
BOX_CLASSIFIER_CHANNELS = 1536  # conv_7b_ac
REPEATS = (10, 20, 10)  # block35, block17, block8 blocks


class BatchNormNoScale(nn.Module):
    """Keras' ``BatchNormalization(scale=False)``: normalise, then add the learned ``bias`` (TF's
    ``beta``); no ``gamma`` parameter. ``frozen``: always the moving statistics (``FreezableBatchNorm``
    with ``training=False``), the bias still trains."""

    running_mean: Tensor
    running_var: Tensor

    def __init__(self, channels: int, frozen: bool) -> None:
        super().__init__()
        self.frozen = frozen
        self.eps, self.momentum = BN_EPSILON, 1.0 - BN_DECAY
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x: Tensor) -> Tensor:
        batch_stats = self.training and not self.frozen
        return F.batch_norm(x, self.running_mean, self.running_var, None, self.bias, batch_stats,
                            self.momentum, self.eps)


class ConvBN(nn.Sequential):
    """Keras' ``conv2d_bn``: conv without bias ('SAME' padding as TF), batch norm without scale, ReLU."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int | tuple[int, int], frozen: bool,
                 stride: int = 1) -> None:
        kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
        if stride == 1:  # odd kernels: TF's SAME is the symmetric k // 2
            conv = nn.Conv2d(in_ch, out_ch, (kh, kw), padding=(kh // 2, kw // 2), bias=False)
        else:
            conv = TFSameConv2d(in_ch, out_ch, (kh, kw), stride=stride, padding=0, bias=False)
        super().__init__(conv, BatchNormNoScale(out_ch, frozen), nn.ReLU(inplace=True))


class Mixed(nn.Module):
    """Parallel branches concatenated on channels (Keras' ``Concatenate``)."""

    def __init__(self, *branches: nn.Module) -> None:
        super().__init__()
        self.branches = nn.ModuleList(branches)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([branch(x) for branch in self.branches], dim=1)


class InceptionResnetBlock(nn.Module):
    """``inception_resnet_block``: ``x + scale * conv1x1(concat(branches(x)))`` then ReLU (none when
    ``activation`` is False); the 1x1 conv has a bias and no batch norm."""

    def __init__(self, mixed: Mixed, mixed_channels: int, channels: int, scale: float,
                 activation: bool = True) -> None:
        super().__init__()
        self.mixed = mixed
        self.conv = nn.Conv2d(mixed_channels, channels, 1, bias=True)
        self.scale, self.activation = scale, activation

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.scale * self.conv(self.mixed(x))
        return torch.relu(x) if self.activation else x


Width = Callable[[int], int]  # a layer's Keras filter count -> the narrowed count


def block35(channels: int, d: Width, frozen: bool) -> InceptionResnetBlock:
    mixed = Mixed(ConvBN(channels, d(32), 1, frozen),
                  nn.Sequential(ConvBN(channels, d(32), 1, frozen), ConvBN(d(32), d(32), 3, frozen)),
                  nn.Sequential(ConvBN(channels, d(32), 1, frozen), ConvBN(d(32), d(48), 3, frozen),
                                ConvBN(d(48), d(64), 3, frozen)))
    return InceptionResnetBlock(mixed, 2 * d(32) + d(64), channels, scale=0.17)


def block17(channels: int, d: Width, frozen: bool) -> InceptionResnetBlock:
    mixed = Mixed(ConvBN(channels, d(192), 1, frozen),
                  nn.Sequential(ConvBN(channels, d(128), 1, frozen), ConvBN(d(128), d(160), (1, 7), frozen),
                                ConvBN(d(160), d(192), (7, 1), frozen)))
    return InceptionResnetBlock(mixed, 2 * d(192), channels, scale=0.1)


def block8(channels: int, d: Width, frozen: bool, scale: float = 0.2, activation: bool = True
           ) -> InceptionResnetBlock:
    mixed = Mixed(ConvBN(channels, d(192), 1, frozen),
                  nn.Sequential(ConvBN(channels, d(192), 1, frozen), ConvBN(d(192), d(224), (1, 3), frozen),
                                ConvBN(d(224), d(256), (3, 1), frozen)))
    return InceptionResnetBlock(mixed, d(192) + d(256), channels, scale=scale, activation=activation)


class InceptionResnetV2(nn.Module):
    """The two halves of the module docstring. ``out_channels``: ``{4: 1088, 5: 1536}``, the first
    stage's map (stride 16) and the second stage's features (the levels' names as ``ResNet``'s).

    ``depth_multiplier``, ``min_depth`` and ``repeats`` build a narrow, shallow variant for small test
    models (no config field sets them; the TF OD API's extractor has none): each ``conv2d_bn`` gets
    ``max(int(filters * depth_multiplier), min_depth)`` filters (the residual blocks' closing 1x1 conv
    keeps its input's width, as Keras takes it), and ``repeats`` block35 / block17 / block8 blocks (the
    last block8 the un-activated one). The defaults are the zoo's network."""

    def __init__(self, freeze_batchnorm: bool = True, *, depth_multiplier: float = 1.0, min_depth: int = 8,
                 repeats: tuple[int, int, int] = REPEATS) -> None:
        super().__init__()
        f = freeze_batchnorm

        def d(filters: int) -> int:
            return max(int(filters * depth_multiplier), min_depth)

        if min(repeats) < 1:
            raise ValueError(f"repeats must be at least 1 each, got {repeats}")
        self.input_normalization = INPUT_NORMALIZATION
        self.stem = nn.Sequential(
            ConvBN(3, d(32), 3, f, stride=2), ConvBN(d(32), d(32), 3, f), ConvBN(d(32), d(64), 3, f),
            TFSameMaxPool2d(3, 2), ConvBN(d(64), d(80), 1, f), ConvBN(d(80), d(192), 3, f),
            TFSameMaxPool2d(3, 2))
        c = d(192)
        self.mixed_5b = Mixed(
            ConvBN(c, d(96), 1, f),
            nn.Sequential(ConvBN(c, d(48), 1, f), ConvBN(d(48), d(64), 5, f)),
            nn.Sequential(ConvBN(c, d(64), 1, f), ConvBN(d(64), d(96), 3, f), ConvBN(d(96), d(96), 3, f)),
            nn.Sequential(nn.AvgPool2d(3, 1, 1, count_include_pad=False), ConvBN(c, d(64), 1, f)))
        c = 2 * d(96) + 2 * d(64)  # 320
        self.block35 = nn.Sequential(*[block35(c, d, f) for _ in range(repeats[0])])
        self.mixed_6a = Mixed(
            ConvBN(c, d(384), 3, f, stride=2),
            nn.Sequential(ConvBN(c, d(256), 1, f), ConvBN(d(256), d(256), 3, f),
                          ConvBN(d(256), d(384), 3, f, stride=2)),
            TFSameMaxPool2d(3, 2))
        c = 2 * d(384) + c  # 1088
        self.block17 = nn.Sequential(*[block17(c, d, f) for _ in range(repeats[1])])
        self.mixed_7a = Mixed(
            nn.Sequential(ConvBN(c, d(256), 1, f), ConvBN(d(256), d(384), 3, f, stride=2)),
            nn.Sequential(ConvBN(c, d(256), 1, f), ConvBN(d(256), d(288), 3, f, stride=2)),
            nn.Sequential(ConvBN(c, d(256), 1, f), ConvBN(d(256), d(288), 3, f),
                          ConvBN(d(288), d(320), 3, f, stride=2)),
            TFSameMaxPool2d(3, 2))
        proposal_channels, c = c, d(384) + d(288) + d(320) + c  # 2080
        self.block8 = nn.Sequential(*[block8(c, d, f) for _ in range(repeats[2] - 1)],
                                    block8(c, d, f, scale=1.0, activation=False))
        self.conv_7b = ConvBN(c, d(BOX_CLASSIFIER_CHANNELS), 1, f)
        self.out_channels = {4: proposal_channels, 5: d(BOX_CLASSIFIER_CHANNELS)}
        for module in self.modules():
            if isinstance(module, nn.Conv2d):  # Keras' default: glorot_uniform kernels, zero biases
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def proposal_features(self, x: Tensor) -> Tensor:
        """``x [B, 3, H, W]`` normalised -> ``[B, 1088, ceil(H / 16), ceil(W / 16)]`` (``block17_20_ac``)."""
        x = self.mixed_5b(self.stem(x))
        return self.block17(self.mixed_6a(self.block35(x)))

    def box_classifier_features(self, crops: Tensor) -> Tensor:
        """ROI crops ``[N, 1088, S, S]`` -> ``[N, 1536, ceil(S / 2), ceil(S / 2)]`` (``conv_7b_ac``)."""
        return self.conv_7b(self.block8(self.mixed_7a(crops)))

    def use_tf_conventions(self) -> None:
        """Already the TF OD API's Keras model (padding, batch norm): nothing to switch."""
