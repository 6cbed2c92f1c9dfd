"""Computing as the TF OD API's Keras models compute, for weights trained by TensorFlow.

Two things differ between a model trained by TensorFlow and raredet's default (torchvision's
conventions), and neither changes a parameter's shape or name:

* **Padding.** TF's ``padding='SAME'`` pads ``total = max((ceil(n / s) - 1) * s + k_eff - n, 0)``
  pixels along a side of length ``n`` (stride ``s``, effective kernel ``k_eff = (k - 1) * d + 1``),
  ``total // 2`` before and the rest after. torch's symmetric ``padding = k // 2`` gives the same output
  size, but for a stride-2 layer on an even side TF pads 0 before and 1 after where torch pads 1 and 1,
  so every output pixel sees a window shifted by one. For stride 1 and an odd kernel both pad
  ``k // 2`` on each side: the same. ``use_tf_same_padding(module)`` switches every strided
  ``nn.Conv2d`` / ``nn.MaxPool2d`` that pads symmetrically to TF's rule (by swapping its class, so
  state-dict names and ``torch.jit.script`` keep working).
* **Input normalisation**, which each feature extractor's ``preprocess`` defines; see
  ``TF_INPUT_NORMALIZATION``.

A model switched to TF's conventions records it as ``model.weights_convention = "tf"`` (``"torchvision"``
otherwise) so that a raredet checkpoint of it is rebuilt the same way (see ``apply_weights_convention``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

WEIGHTS_CONVENTIONS = ("torchvision", "tf")

# (mean, std) in 0..255 pixel units, per channel RGB, as each TF OD API feature extractor's preprocess
# computes ``(x - mean) / std``: MobileNets ``(2 / 255) x - 1``; Keras ResNet v1 (SSD and Faster R-CNN)
# subtracts the channel means of ImageNet (Caffe style, no scaling); EfficientNet ``(x / 255 - m) / s``.
TF_INPUT_NORMALIZATION: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "mobilenet": ((127.5, 127.5, 127.5), (127.5, 127.5, 127.5)),
    "resnet_v1": ((123.68, 116.779, 103.939), (1.0, 1.0, 1.0)),
    "efficientnet": ((0.485 * 255, 0.456 * 255, 0.406 * 255), (0.229 * 255, 0.224 * 255, 0.225 * 255)),
}


def tf_same_pads(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """(before, after) padding of TF's ``'SAME'`` along one side of length ``size``."""
    effective = (kernel - 1) * dilation + 1
    total = max((math.ceil(size / stride) - 1) * stride + effective - size, 0)
    return total // 2, total - total // 2


class TFSameConv2d(nn.Conv2d):
    """``nn.Conv2d`` that pads as TF's ``'SAME'`` (computed from the input's size at each call)."""

    def forward(self, x: Tensor) -> Tensor:
        top, bottom = tf_same_pads(x.shape[-2], self.kernel_size[0], self.stride[0], self.dilation[0])
        left, right = tf_same_pads(x.shape[-1], self.kernel_size[1], self.stride[1], self.dilation[1])
        return self._conv_forward(F.pad(x, (left, right, top, bottom)), self.weight, self.bias)


class TFSameMaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d`` that pads as TF's ``'SAME'`` max pooling (padding never wins the max)."""

    def forward(self, x: Tensor) -> Tensor:
        kernel, stride = _pair(self.kernel_size), _pair(self.stride)
        top, bottom = tf_same_pads(x.shape[-2], kernel[0], stride[0])
        left, right = tf_same_pads(x.shape[-1], kernel[1], stride[1])
        padded = F.pad(x, (left, right, top, bottom), value=float("-inf"))
        return F.max_pool2d(padded, kernel, stride, 0, 1, self.ceil_mode)  # never with indices


def _pair(value: int | tuple[int, ...]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def _pads_symmetric_same(
    kernel: tuple[int, ...], padding: tuple[int, ...], dilation: tuple[int, ...]
) -> bool:
    return all(p == (k - 1) * d // 2 for k, p, d in zip(kernel, padding, dilation, strict=True))


def use_tf_same_padding(module: nn.Module) -> int:
    """Switch every strided conv and max pool of ``module`` that pads symmetrically 'same' (``padding
    = k // 2``) to TF's ``'SAME'`` rule; returns how many layers changed. Unstrided layers and layers
    with explicit or no padding compute the same either way and are left alone."""
    changed = 0
    for layer in module.modules():
        if type(layer) is nn.Conv2d and max(layer.stride) > 1 and not isinstance(layer.padding, str):
            if _pads_symmetric_same(layer.kernel_size, _pair(layer.padding), layer.dilation) and max(
                layer.padding
            ) > 0:
                layer.__class__ = TFSameConv2d
                layer.padding = (0, 0)
                changed += 1
        elif type(layer) is nn.MaxPool2d and max(_pair(layer.stride)) > 1 and not layer.return_indices:
            kernel, padding = _pair(layer.kernel_size), _pair(layer.padding)
            if _pads_symmetric_same(kernel, padding, (1, 1)) and max(padding) > 0:
                layer.__class__ = TFSameMaxPool2d
                layer.padding = 0
                changed += 1
    return changed


def apply_weights_convention(model: nn.Module, convention: str) -> None:
    """Make ``model`` compute with ``convention`` ("torchvision" or "tf"): the model's own
    ``use_weights_convention`` does what its architecture needs (e.g. ``SSD.use_weights_convention``).
    A model without that method accepts only "torchvision"."""
    if convention not in WEIGHTS_CONVENTIONS:
        raise ValueError(f"weights convention {convention!r}; valid: {list(WEIGHTS_CONVENTIONS)}")
    hook = getattr(model, "use_weights_convention", None)
    if hook is not None:
        hook(convention)
    elif convention != "torchvision":
        raise ValueError(f"{type(model).__name__} cannot compute with {convention!r} conventions")


def switching_to_tf(current: str, convention: str) -> bool:
    """Whether a model computing with `current` must switch to `convention`: False when they are the
    same; True for "torchvision" -> "tf"; ValueError for an unknown convention or for "tf" ->
    "torchvision" (a switched model cannot switch back: build a new one)."""
    if convention not in WEIGHTS_CONVENTIONS:
        raise ValueError(f"weights convention {convention!r}; valid: {list(WEIGHTS_CONVENTIONS)}")
    if convention == current:
        return False
    if convention == "torchvision":
        raise ValueError("a model switched to TF's conventions cannot switch back; build a new one")
    return True


def content_sizes(images: Tensor) -> Tensor:
    """``images [B, C, H, W]`` -> ``[B, 2]`` int64 (h, w): each image's extent without its padding, the
    trailing rows and columns (bottom, right) that are exactly 0 in every channel, as TF's resizers pad.
    An image with no non-zero pixel keeps its whole size."""
    nonzero = images.ne(0).any(dim=1)  # [B, H, W]
    rows = torch.arange(1, images.shape[-2] + 1, device=images.device)
    cols = torch.arange(1, images.shape[-1] + 1, device=images.device)
    height = (nonzero.any(dim=2) * rows).amax(dim=1)  # [B]: 1 + the last row with content (0: none)
    width = (nonzero.any(dim=1) * cols).amax(dim=1)
    empty = (height == 0) | (width == 0)
    height = torch.where(empty, images.shape[-2], height)
    width = torch.where(empty, images.shape[-1], width)
    return torch.stack([height, width], dim=1).to(torch.int64)


def content_mask(images: Tensor) -> Tensor:
    """``images [B, C, H, W]`` -> ``[B, 1, H, W]`` float: 1 inside each image's content
    (``content_sizes``), 0 on its padding.

    The TF OD API's SSD normalises an image and then pads it (``ssd_meta_arch.preprocess``: the resizer
    runs on the normalised image), so its padding is 0 after the normalisation; raredet pads raw pixels
    with 0 (the resizer, the batch collation), which normalise to ``-mean / std``. Multiplying the
    normalised input by this mask gives TF's input."""
    sizes = content_sizes(images)
    rows = torch.arange(images.shape[-2], device=images.device)
    cols = torch.arange(images.shape[-1], device=images.device)
    inside = (rows[None, :, None] < sizes[:, 0, None, None]) & (cols[None, None, :] < sizes[:, 1, None, None])
    return inside[:, None].to(torch.float32)
