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


def block35(frozen: bool) -> InceptionResnetBlock:
    mixed = Mixed(ConvBN(320, 32, 1, frozen),
                  nn.Sequential(ConvBN(320, 32, 1, frozen), ConvBN(32, 32, 3, frozen)),
                  nn.Sequential(ConvBN(320, 32, 1, frozen), ConvBN(32, 48, 3, frozen),
                                ConvBN(48, 64, 3, frozen)))
    return InceptionResnetBlock(mixed, 128, 320, scale=0.17)


def block17(frozen: bool) -> InceptionResnetBlock:
    mixed = Mixed(ConvBN(1088, 192, 1, frozen),
                  nn.Sequential(ConvBN(1088, 128, 1, frozen), ConvBN(128, 160, (1, 7), frozen),
                                ConvBN(160, 192, (7, 1), frozen)))
    return InceptionResnetBlock(mixed, 384, 1088, scale=0.1)


def block8(frozen: bool, scale: float = 0.2, activation: bool = True) -> InceptionResnetBlock:
    mixed = Mixed(ConvBN(2080, 192, 1, frozen),
                  nn.Sequential(ConvBN(2080, 192, 1, frozen), ConvBN(192, 224, (1, 3), frozen),
                                ConvBN(224, 256, (3, 1), frozen)))
    return InceptionResnetBlock(mixed, 448, 2080, scale=scale, activation=activation)


class InceptionResnetV2(nn.Module):
    """The two halves of the module docstring. ``out_channels``: ``{4: 1088, 5: 1536}``, the first
    stage's map (stride 16) and the second stage's features (the levels' names as ``ResNet``'s)."""

    def __init__(self, freeze_batchnorm: bool = True) -> None:
        super().__init__()
        f = freeze_batchnorm
        self.out_channels = {4: PROPOSAL_CHANNELS, 5: BOX_CLASSIFIER_CHANNELS}
        self.input_normalization = INPUT_NORMALIZATION
        self.stem = nn.Sequential(
            ConvBN(3, 32, 3, f, stride=2), ConvBN(32, 32, 3, f), ConvBN(32, 64, 3, f),
            TFSameMaxPool2d(3, 2), ConvBN(64, 80, 1, f), ConvBN(80, 192, 3, f), TFSameMaxPool2d(3, 2))
        self.mixed_5b = Mixed(
            ConvBN(192, 96, 1, f),
            nn.Sequential(ConvBN(192, 48, 1, f), ConvBN(48, 64, 5, f)),
            nn.Sequential(ConvBN(192, 64, 1, f), ConvBN(64, 96, 3, f), ConvBN(96, 96, 3, f)),
            nn.Sequential(nn.AvgPool2d(3, 1, 1, count_include_pad=False), ConvBN(192, 64, 1, f)))
        self.block35 = nn.Sequential(*[block35(f) for _ in range(10)])
        self.mixed_6a = Mixed(
            ConvBN(320, 384, 3, f, stride=2),
            nn.Sequential(ConvBN(320, 256, 1, f), ConvBN(256, 256, 3, f), ConvBN(256, 384, 3, f, stride=2)),
            TFSameMaxPool2d(3, 2))
        self.block17 = nn.Sequential(*[block17(f) for _ in range(20)])
        self.mixed_7a = Mixed(
            nn.Sequential(ConvBN(1088, 256, 1, f), ConvBN(256, 384, 3, f, stride=2)),
            nn.Sequential(ConvBN(1088, 256, 1, f), ConvBN(256, 288, 3, f, stride=2)),
            nn.Sequential(ConvBN(1088, 256, 1, f), ConvBN(256, 288, 3, f), ConvBN(288, 320, 3, f, stride=2)),
            TFSameMaxPool2d(3, 2))
        self.block8 = nn.Sequential(*[block8(f) for _ in range(9)], block8(f, scale=1.0, activation=False))
        self.conv_7b = ConvBN(2080, BOX_CLASSIFIER_CHANNELS, 1, f)
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
