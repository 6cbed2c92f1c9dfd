"""The weights tests/fixtures/inception_resnet_v2/make_parity.py gives TF's Inception-ResNet v2 extractor and
mask head, set in raredet's modules (tests/modeling/test_inception_resnet_v2.py, test_mask_head.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from raredet.modeling.inception_resnet_v2 import BatchNormNoScale

PARITY = Path(__file__).resolve().parents[1] / "fixtures" / "inception_resnet_v2" / "parity.json"


def layer_weights(index: int, kind: str, shape: tuple[int, ...]) -> tuple[np.ndarray, ...]:
    """tests/fixtures/inception_resnet_v2/make_parity.py's weights of the index-th layer, TF layouts."""
    rng = np.random.default_rng(1000 + index)
    if kind == "conv":
        fan_in = shape[0] * shape[1] * shape[2]
        kernel = rng.standard_normal(shape) * np.sqrt(1.0 / fan_in)
        return kernel.astype(np.float32), (0.05 * rng.standard_normal(shape[3])).astype(np.float32)
    beta = 0.1 * rng.standard_normal(shape)
    mean = 0.1 * rng.standard_normal(shape)
    variance = rng.uniform(0.5, 1.5, shape)
    return beta.astype(np.float32), mean.astype(np.float32), variance.astype(np.float32)


def set_tf_fixture_weights(module: nn.Module) -> int:
    """Give ``module``'s convs and batch norms, in registration order (Keras' creation order), the
    fixture's weights; returns how many layers were set."""
    layers = [m for m in module.modules() if isinstance(m, (nn.Conv2d, BatchNormNoScale))]
    with torch.no_grad():
        for index, layer in enumerate(layers):
            if isinstance(layer, nn.Conv2d):
                out_ch, in_ch, kh, kw = layer.weight.shape
                kernel, bias = layer_weights(index, "conv", (kh, kw, in_ch, out_ch))
                layer.weight.copy_(torch.from_numpy(kernel).permute(3, 2, 0, 1))
                if layer.bias is not None:
                    layer.bias.copy_(torch.from_numpy(bias))
            else:
                beta, mean, variance = layer_weights(index, "bn", (layer.bias.shape[0],))
                layer.bias.copy_(torch.from_numpy(beta))
                layer.running_mean.copy_(torch.from_numpy(mean))
                layer.running_var.copy_(torch.from_numpy(variance))
    return len(layers)
