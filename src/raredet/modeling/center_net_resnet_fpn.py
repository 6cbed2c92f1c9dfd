"""CenterNet's ``resnet_v1_50_fpn`` and ``resnet_v1_101_fpn`` feature extractors (the TF OD API's
``CenterNetResnetV1FpnFeatureExtractor``): a ResNet v1 and a light top-down path to one stride-4 map.

From the ResNet's C5 (stride 32): a 1x1 conv to 256 channels; then for C4, C3, C2 in turn: upsample
the running map 2x (nearest), add a 1x1 conv of the ResNet map (256, 128, 64 filters), then a 3x3 conv
(to 128, 64, 64 channels), batch norm and ReLU. The output is ``[B, 64, H/4, W/4]``, one feature output.

The ResNet is ``backbones.ResNet`` (torchvision's names, so ImageNet weights load into ``backbone``).
Its input: the CenterNet model has already applied the config's ``channel_means``/``channel_stds``
(default 0 and 1, so pixels in 0..255); the TF OD API then applies Keras' ResNet preprocessing ('caffe':
BGR, ImageNet means subtracted), and this extractor applies the normalisation its weights expect:
torchvision's ImageNet mean and std (RGB, /255) by default, Keras' 'caffe' once switched to TF's
conventions (``use_tf_conventions``, for weights TensorFlow trained). New layers start as Keras' do
(Glorot uniform kernels, zero biases; batch norm epsilon 1e-3, momentum 0.99).

TF's ResNet here is ``tf.keras.applications.ResNet50/101`` itself, not the OD API's Keras ResNet the
SSD and Faster R-CNN extractors build through a layer override, and it differs from both torchvision's
and that one; ``use_tf_conventions`` switches raredet's to it (``tf_weights/center_net.py`` loads it):

* the stride of a stage's first block on its first 1x1 conv (ResNet v1.0), not on the 3x3;
* every conv has a bias (Keras' default ``use_bias=True``): raredet's ResNet convs gain one as a
  *buffer* (``conv.bias``, zero until TF weights fill it; in the state dict, so a raredet checkpoint
  of such a model keeps it). Each of those convs feeds a batch norm, which removes a constant shift
  while it normalises with batch statistics, so the bias gets no gradient in training; kept fixed, it
  only matters to the frozen statistics, exactly as in TF;
* batch norm epsilon 1.001e-5 (Keras' ResNet), not 1e-5;
* the stem pads 3 and the max pool 1 on every side (``ZeroPadding2D`` then 'valid'; the pool follows a
  ReLU, so zero padding is torch's), as raredet's ResNet already does.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from raredet.modeling.backbones import Bottleneck, ResNet

TOP_DOWN_FILTERS = (256, 128, 64)  # the 1x1 lateral convs of C4, C3, C2
TOP_DOWN_OUTPUTS = (128, 64, 64)  # the 3x3 convs after each addition
IMAGENET_MEAN_255 = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD_255 = (0.229 * 255, 0.224 * 255, 0.225 * 255)
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)  # Keras' ResNet preprocess_input('caffe')
KERAS_APPLICATION_BN_EPSILON = 1.001e-5  # tf.keras.applications.ResNet's batch norms


def use_keras_application_resnet(resnet: ResNet) -> None:
    """Make ``resnet`` compute as ``tf.keras.applications.ResNet50/101`` (module docstring): strides on
    the first 1x1 conv of a bottleneck, a bias buffer on every conv, batch norm epsilon 1.001e-5.
    No parameter changes; idempotent."""
    for module in resnet.modules():
        if isinstance(module, Bottleneck) and module.conv2.stride != (1, 1):
            module.conv1.stride, module.conv2.stride = module.conv2.stride, (1, 1)
        if isinstance(module, nn.Conv2d) and module.bias is None:
            del module.bias  # the parameter slot (None) -> a buffer of the same name
            module.register_buffer("bias", module.weight.new_zeros(module.out_channels))
        if isinstance(module, nn.BatchNorm2d):
            module.eps = KERAS_APPLICATION_BN_EPSILON


class CenterNetResnetV1Fpn(nn.Module):
    """``forward(x [B, 3, H, W]) -> [[B, 64, H/4, W/4]]``; ``out_channels`` 64, ``num_outputs`` 1.
    ``depth``: 50 or 101 (18 and 34 also build: TF has them too); ``depth_multiplier`` (raredet, for
    small tests) scales the ResNet's widths."""

    input_mean: Tensor
    input_std: Tensor

    def __init__(self, depth: int = 50, depth_multiplier: float = 1.0) -> None:
        super().__init__()
        self.backbone = ResNet(depth, depth_multiplier=depth_multiplier)
        c = self.backbone.out_channels
        self.top = nn.Conv2d(c[5], TOP_DOWN_FILTERS[0], 1)
        self.lateral = nn.ModuleList(nn.Conv2d(c[level], f, 1)
                                     for level, f in zip((4, 3, 2), TOP_DOWN_FILTERS, strict=True))
        ins = (TOP_DOWN_FILTERS[0], *TOP_DOWN_OUTPUTS[:-1])
        self.smooth = nn.ModuleList(
            nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o, eps=1e-3, momentum=0.01),
                          nn.ReLU()) for i, o in zip(ins, TOP_DOWN_OUTPUTS, strict=True))
        for module in [self.top, *self.lateral, *self.smooth.modules()]:
            if isinstance(module, nn.Conv2d):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(cast(Tensor, module.bias))
        self.out_channels = TOP_DOWN_OUTPUTS[-1]
        self.num_outputs = 1
        self.caffe_input = False
        self.register_buffer("input_mean", torch.tensor(IMAGENET_MEAN_255).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("input_std", torch.tensor(IMAGENET_STD_255).view(1, 3, 1, 1), persistent=False)

    def use_tf_conventions(self) -> None:
        """Compute as the TF OD API's extractor: Keras' applications ResNet (module docstring) and its
        'caffe' input (BGR, ImageNet means subtracted, no scaling). Idempotent."""
        use_keras_application_resnet(self.backbone)
        self.caffe_input = True
        self.input_mean.copy_(torch.tensor(CAFFE_MEAN_BGR).view(1, 3, 1, 1))
        self.input_std.fill_(1.0)

    def forward(self, x: Tensor) -> list[Tensor]:
        if self.caffe_input:
            x = x.flip(1)
        maps = self.backbone((x - self.input_mean) / self.input_std)
        top = self.top(maps[5])
        for level, lateral, smooth in zip((4, 3, 2), self.lateral, self.smooth, strict=True):
            residual = lateral(maps[level])
            top = F.interpolate(top, size=residual.shape[-2:], mode="nearest") + residual
            top = smooth(top)
        return [top]
