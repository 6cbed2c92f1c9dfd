"""Speed changes that must not change the numbers: channels-last training, in-place ReLU6, the loader's
channels-last batches. The reference is always the same model run the plain way (NCHW, out of place)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from raredet.data.dataset import collate
from raredet.modeling.ssd import SSD

HP = {
    "activation": "RELU_6",
    "initializer": {"random_normal_initializer": {"stddev": 0.01}},
    "batch_norm": {"decay": 0.97, "scale": True, "epsilon": 0.001},
}


def fpnlite(depth_multiplier: float = 0.35) -> SSD:
    """The zoo's ssd_mobilenet_v2_fpnlite settings (depthwise FPN and shared depthwise tower), narrower."""
    torch.manual_seed(0)
    return SSD(
        num_classes=3,
        feature_extractor={"type": "ssd_mobilenet_v2_fpn_keras", "depth_multiplier": depth_multiplier,
                           "min_depth": 16, "conv_hyperparams": HP, "use_depthwise": True,
                           "fpn": {"min_level": 3, "max_level": 7, "additional_layer_depth": 32}},
        box_predictor={"weight_shared_convolutional_box_predictor": {
            "conv_hyperparams": HP, "depth": 32, "num_layers_before_predictor": 2, "kernel_size": 3,
            "class_prediction_bias_init": -4.6, "share_prediction_tower": True, "use_depthwise": True}},
        anchor_generator={"multiscale_anchor_generator": {
            "min_level": 3, "max_level": 7, "anchor_scale": 4.0, "aspect_ratios": [1.0, 2.0, 0.5],
            "scales_per_octave": 2}},
    )


def _run(model: nn.Module, images: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Outputs and parameter gradients of a fixed weighted sum of the outputs, in training mode."""
    model.train()
    out = model(images)
    gen = torch.Generator().manual_seed(1)
    loss = sum((v * torch.randn(v.shape, generator=gen)).sum() for k, v in out.items() if k != "anchors")
    model.zero_grad(set_to_none=True)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in out.items()}, grads


def _images(batch: int = 2, size: int = 64) -> torch.Tensor:
    return torch.randint(0, 256, (batch, 3, size, size), generator=torch.Generator().manual_seed(2),
                         dtype=torch.uint8)


@pytest.mark.xfail(
    strict=True,
    reason="float32 NHWC gradients differ from NCHW by up to 12 % on this model since the TF-parity "
    "initialisers (docs/benchmarks.md); channels-last is opt-in until this passes",
)
def test_channels_last_gives_the_nchw_outputs_gradients_and_statistics():
    plain = fpnlite()
    fast = copy.deepcopy(plain).to(memory_format=torch.channels_last)
    images = _images()
    out_a, grads_a = _run(plain, images)
    out_b, grads_b = _run(fast, images.contiguous(memory_format=torch.channels_last))
    conv = next(m for m in fast.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)  # the conversion did happen
    for key in out_a:
        torch.testing.assert_close(out_b[key], out_a[key], rtol=1e-4, atol=1e-5)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 50
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-3, atol=1e-5, msg=name)
    for (name, a), (_, b) in zip(plain.named_buffers(), fast.named_buffers(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=name)  # BN running statistics


def test_in_place_activations_change_nothing():
    fast = fpnlite()
    in_place = [m for m in fast.modules() if isinstance(m, (nn.ReLU, nn.ReLU6)) and m.inplace]
    # MobileNetV2: the stem, 17 inverted residuals (the first without expansion: 1 ReLU6, the other 16:
    # 2 each), the last 1x1 conv = 35; then the FPN's 2 smoothing and 2 extra levels and the shared
    # tower's one (conv_hyperparams' RELU_6): all 40 in place.
    assert sum(isinstance(m, nn.ReLU6) for m in fast.backbone.modules()) == 1 + 1 + 16 * 2 + 1
    assert len(in_place) == 35 + 2 + 2 + 1
    assert any(isinstance(m, nn.ReLU6) and m.inplace for m in fast.box_predictor.modules())
    plain = copy.deepcopy(fast)
    for module in plain.modules():
        if isinstance(module, (nn.ReLU, nn.ReLU6)):
            module.inplace = False
    images = _images()
    out_a, grads_a = _run(plain, images)
    out_b, grads_b = _run(fast, images)
    for key in out_a:
        assert torch.equal(out_a[key], out_b[key]), key
    for name in grads_a:
        assert torch.equal(grads_a[name], grads_b[name]), name


def test_only_relu_and_relu6_run_in_place():
    from raredet.modeling.layers import ConvHyperparams

    def act(name: str, inplace: bool) -> nn.Module:
        return ConvHyperparams.from_dict({"activation": name}).act(inplace=inplace)

    assert act("RELU_6", True).inplace and act("RELU", True).inplace
    assert not act("RELU_6", False).inplace
    assert not act("SWISH", True).inplace  # SiLU's backward needs its input
    x = torch.tensor([-1.0, 3.0, 8.0])
    act("RELU_6", True)(x)
    assert x.tolist() == [0.0, 3.0, 6.0]  # overwritten: the point of in place


def test_collate_gives_channels_last_images_without_copying_into_nchw():
    rng = np.random.default_rng(0)
    examples = []
    for i, (h, w) in enumerate([(4, 5), (3, 6)]):
        examples.append({
            "image": rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "boxes": np.zeros((0, 4), np.float32),
            "labels": np.zeros(0, np.int64), "weights": np.zeros(0, np.float32),
            "is_crowd": np.zeros(0, bool), "difficult": np.zeros(0, bool), "source_id": str(i),
            "original_size": (h, w),
        })
    images = collate(examples)["images"]
    assert images.shape == (2, 3, 4, 6)
    assert images.is_contiguous(memory_format=torch.channels_last)
    expected = np.zeros((2, 3, 4, 6), np.uint8)  # padded bottom/right, channels first by index
    expected[0, :, :4, :5] = examples[0]["image"].transpose(2, 0, 1)
    expected[1, :, :3, :6] = examples[1]["image"].transpose(2, 0, 1)
    assert np.array_equal(images.numpy(), expected)
