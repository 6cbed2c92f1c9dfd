"""Mask R-CNN's mask head (He et al. 2017) as the TF OD API's Keras ``MaskRCNNMaskHead`` builds it, and
the ground-truth mask targets it trains on.

The head runs on the second stage's box-classifier features of each box ``[N, C, h, w]`` (for
Inception-ResNet v2 the ``conv_7b`` output, 9 x 9 for 17 x 17 crops):

* ``convolve_then_upsample_masks: false`` (the default): resize the features to ``mask_height x
  mask_width`` (bilinear, ``align_corners=True``: TF's ``resize_bilinear(align_corners=True)``), then
  ``mask_prediction_num_conv_layers - 1`` convs 3x3 'same' of ``mask_prediction_conv_depth`` channels,
  each with ``conv_hyperparams``' batch norm (if any) and activation, then a last conv 3x3 with a bias
  to ``K`` mask logits (1 when ``masks_are_class_agnostic``);
* ``true``: the convs first, then nearest-neighbour upsampling by ``mask_height // h`` x ``mask_width //
  w``, a conv 3x3 with batch norm and activation, then the last conv.

``mask_prediction_conv_depth: 0`` takes the TF OD API's automatic depth (``mask_predictor_conv_depth``).
Training targets (``mask_targets``): each box's ground-truth instance mask cropped at the box by
``crop_and_resize`` to the mask size (TF's ``tf.image.crop_and_resize``, bilinear, so the targets are
fractions at the instance's edges), as the TF OD API's Faster R-CNN loss does.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from raredet.modeling.layers import ConvHyperparams


def mask_predictor_conv_depth(num_feature_channels: int, num_classes: int) -> int:
    """The TF OD API's automatic depth: ``2 ** round((2 log2 C + 3 log2 K) / 5)`` for ``C`` feature
    channels and ``K`` classes (a weighted mean in log space, weights 2 and 3). 1536 and 90 give 256."""
    log_depth = (2.0 * math.log2(num_feature_channels) + 3.0 * math.log2(num_classes)) / 5.0
    return int(2.0 ** round(log_depth))


class MaskHead(nn.Module):
    """Box features ``[N, C, h, w]`` -> mask logits ``[N, K or 1, mask_height, mask_width]`` (module
    docstring); arguments as the ``mask_rcnn_box_predictor`` fields."""

    def __init__(self, in_channels: int, num_classes: int, hp: ConvHyperparams, *, mask_height: int = 15,
                 mask_width: int = 15, mask_prediction_num_conv_layers: int = 2,
                 mask_prediction_conv_depth: int = 256, masks_are_class_agnostic: bool = False,
                 convolve_then_upsample_masks: bool = False, freeze_batchnorm: bool = False) -> None:
        super().__init__()
        if mask_height < 1 or mask_width < 1 or mask_prediction_num_conv_layers < 1:
            raise ValueError("mask_height, mask_width and mask_prediction_num_conv_layers must be at least "
                             f"1, got {mask_height}, {mask_width}, {mask_prediction_num_conv_layers}")
        depth = mask_prediction_conv_depth or mask_predictor_conv_depth(in_channels, num_classes)
        self.hp, self.mask_size = hp, (mask_height, mask_width)
        self.convolve_then_upsample = convolve_then_upsample_masks
        layers: list[nn.Module] = []
        channels = in_channels
        for _ in range(mask_prediction_num_conv_layers - 1):
            layers += [hp.conv(channels, depth, 3), hp.norm(depth, freeze_batchnorm), hp.act()]
            channels = depth
        self.convs = nn.Sequential(*layers)
        self.upsample_conv = nn.Sequential()
        if convolve_then_upsample_masks:
            self.upsample_conv = nn.Sequential(hp.conv(channels, depth, 3), hp.norm(depth, freeze_batchnorm),
                                               hp.act())
            channels = depth
        num_masks = 1 if masks_are_class_agnostic else num_classes
        self.last = nn.Conv2d(channels, num_masks, 3, padding=1, bias=True)
        hp.initialize(self.last)

    def forward(self, features: Tensor) -> Tensor:
        if not self.convolve_then_upsample:
            x = F.interpolate(features, size=self.mask_size, mode="bilinear", align_corners=True)
            return self.last(self.convs(x))
        x = self.convs(features)
        scale_h, scale_w = self.mask_size[0] // x.shape[-2], self.mask_size[1] // x.shape[-1]
        # TF's nearest_neighbor_upsampling: each cell repeated scale times (an integer factor)
        x = x.repeat_interleave(scale_h, dim=-2).repeat_interleave(scale_w, dim=-1)
        return self.last(self.upsample_conv(x))


def _sample_positions(lo: Tensor, hi: Tensor, size: int, samples: int) -> Tensor:
    """``tf.image.crop_and_resize``'s sample positions: ``lo, hi [B, P]`` normalised -> ``[B, P, samples]``
    in cells of an axis of ``size`` (``modeling.roi_ops``)."""
    scale = float(size - 1)
    if samples == 1:
        return ((lo + hi) * 0.5 * scale)[..., None]
    steps = torch.arange(samples, device=lo.device, dtype=lo.dtype)
    return (lo * scale)[..., None] + steps * ((hi - lo) * scale / (samples - 1))[..., None]


@torch.no_grad()
def mask_targets(masks: Tensor, match: Tensor, boxes: Tensor, mask_size: tuple[int, int]) -> Tensor:
    """Each box's matched instance mask cropped at the box, as the TF OD API's Faster R-CNN loss crops
    its targets: ``masks [B, N, H, W]`` (0/1, at the padded input's size), ``match [B, P]`` the index
    of each box's instance, ``boxes [B, P, 4]`` xyxy pixels -> ``[B, P, mask_h, mask_w]`` float in
    [0, 1]. ``tf.image.crop_and_resize`` of the box normalised by ``H, W``: sample ``i`` at ``y1 / H *
    (H - 1) + i (y2 - y1) / H (H - 1) / (mask_h - 1)``, bilinear between the 4 nearest pixels, 0
    outside the mask. Reads only the 4 neighbours of each sample (no float copy of the masks)."""
    b, _, h, w = masks.shape
    boxes = boxes.float()
    ys = _sample_positions(boxes[..., 1] / h, boxes[..., 3] / h, h, mask_size[0])  # [B, P, mh]
    xs = _sample_positions(boxes[..., 0] / w, boxes[..., 2] / w, w, mask_size[1])  # [B, P, mw]
    image = torch.arange(b, device=masks.device)[:, None, None, None]
    instance = match[:, :, None, None]

    def at(y: Tensor, x: Tensor) -> Tensor:  # [B, P, mh], [B, P, mw] -> [B, P, mh, mw]
        return masks[image, instance, y[..., :, None], x[..., None, :]].float()

    y_top, x_left = ys.floor(), xs.floor()
    y_lerp, x_lerp = (ys - y_top)[..., :, None], (xs - x_left)[..., None, :]
    y0, y1 = y_top.long().clamp(0, h - 1), ys.ceil().long().clamp(0, h - 1)
    x0, x1 = x_left.long().clamp(0, w - 1), xs.ceil().long().clamp(0, w - 1)
    top = at(y0, x0) + (at(y0, x1) - at(y0, x0)) * x_lerp
    bottom = at(y1, x0) + (at(y1, x1) - at(y1, x0)) * x_lerp
    crops = top + (bottom - top) * y_lerp
    inside = ((ys >= 0) & (ys <= h - 1))[..., :, None] & ((xs >= 0) & (xs <= w - 1))[..., None, :]
    return torch.where(inside, crops, torch.zeros_like(crops))
