"""Speed changes that must not change the numbers: channels-last training, in-place ReLU6, the loader's
channels-last batches. The reference is always the same model run the plain way (NCHW, out of place)."""

from __future__ import annotations

import copy

import numpy as np
import torch
from tests.helpers.ssd import conv_hyperparams, ssd_from_dicts
from torch import nn

from raredet.data.dataset import collate
from raredet.modeling.layers import ReLU6
from raredet.modeling.ssd import SSD

HP = {
    "activation": "RELU_6",
    "initializer": {"random_normal_initializer": {"stddev": 0.01}},
    "batch_norm": {"decay": 0.97, "scale": True, "epsilon": 0.001},
}


def fpnlite(depth_multiplier: float = 0.35) -> SSD:
    """The zoo's ssd_mobilenet_v2_fpnlite settings (depthwise FPN and shared depthwise tower), narrower."""
    torch.manual_seed(0)
    return ssd_from_dicts(
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


class _PinnedReLU6Pattern:
    """Forward hooks on every ReLU6/ReLU call that record which inputs were on the linear piece and,
    given `pinned` (another run's record), make the backward use that pattern instead of the run's own.

    Why: a float32 pre-activation within a few ulps of ReLU6's kinks (0 and 6) lands on either side
    depending on the order of the sums before it, which NHWC and NCHW kernels do differently. One such
    element passes its full gradient in one layout and none in the other, and the difference then
    spreads through everything below it (docs/benchmarks.md: "channels-last and float32"). With the
    pattern pinned, the two layouts compute the same function, so their gradients must agree to
    rounding. The outputs are not touched: `hardtanh(x) + (x - x.detach()) * (pinned - own)` has the
    value `hardtanh(x)` and the gradient `pinned * grad`, and still runs hardtanh's own backward.
    Needs out-of-place activations (an in-place one has overwritten `x` when the hook runs).
    """

    def __init__(self, model: nn.Module, pinned: list[torch.Tensor] | None = None) -> None:
        self.patterns: list[torch.Tensor] = []
        self.inputs: list[torch.Tensor] = []
        self.pinned = pinned
        for module in model.modules():
            if isinstance(module, (nn.ReLU, nn.ReLU6)):
                assert not module.inplace
                module.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, args: tuple[torch.Tensor], out: torch.Tensor) -> torch.Tensor:
        x = args[0]
        top = 6.0 if isinstance(module, nn.ReLU6) else float("inf")
        own = ((x > 0) & (x < top)).to(x.dtype)
        self.patterns.append(own)
        self.inputs.append(x.detach())
        if self.pinned is None:
            return out
        pinned = self.pinned[len(self.patterns) - 1]
        return out + (x - x.detach()) * (pinned - own)


def _out_of_place(model: nn.Module) -> nn.Module:
    for module in model.modules():
        if isinstance(module, (nn.ReLU, nn.ReLU6)):
            module.inplace = False
    return model


def _assert_gradients_near(grads: dict[str, torch.Tensor], exact: dict[str, torch.Tensor], tol: float,
                           floor: float = 1e-4) -> None:
    """Each tensor's largest error within `tol` of its largest float64 entry. Normwise, because a
    batch-norm scale's gradient, sum(grad * normalised input), cancels to ~1e-3 of its terms; the absolute
    floor is for the gradients that are zero analytically (a shift ahead of a training batch norm)."""
    assert grads.keys() == exact.keys() and len(exact) > 50
    for name, value in exact.items():
        error = float((grads[name].double() - value).abs().max())
        assert error <= tol * float(value.abs().max()) + floor, (name, error, float(value.abs().max()))


def test_channels_last_float32_is_as_close_to_float64_as_nchw():
    """float32, as training runs, in both layouts against the model in float64 (NCHW), each with ReLU6's
    on/off pattern pinned to float64's (see `_PinnedReLU6Pattern`); the few elements whose own pattern
    differs must all sit on a kink to rounding. Measured: worst tensor 6e-4 (NCHW) and 1.1e-3 (NHWC)
    of its largest entry; NCHW rerun on 2 threads against 1 differs by 6.6e-4 (docs/benchmarks.md)."""
    base = _out_of_place(fpnlite())
    images = _images()
    exact_model = copy.deepcopy(base).double()
    reference = _PinnedReLU6Pattern(exact_model)
    out_exact, grads_exact = _run(exact_model, images)
    pattern = [p.float() for p in reference.patterns]
    for memory_format in (torch.contiguous_format, torch.channels_last):
        model = copy.deepcopy(base).to(memory_format=memory_format)
        pinned = _PinnedReLU6Pattern(model, pattern)
        out, grads = _run(model, images.contiguous(memory_format=memory_format))
        activation = pinned.inputs[5]
        assert activation.is_contiguous(memory_format=memory_format) and activation.shape[1] > 1
        assert len(pinned.patterns) == len(pattern) > 40
        flipped = 0
        for own, ref, x in zip(pinned.patterns, pattern, reference.inputs, strict=True):
            differs = own != ref
            flipped += int(differs.sum())
            near_kink = torch.minimum(x.abs(), (x - 6).abs())[differs]
            assert bool((near_kink < 1e-4).all()), float(near_kink.max())  # rounding, not a wrong value
        assert flipped <= 10  # of ~650,000 activations
        for key in ("cls_logits", "box_deltas"):  # (the anchors are computed in the model's dtype)
            torch.testing.assert_close(out[key].double(), out_exact[key], rtol=1e-4, atol=1e-5, msg=key)
        _assert_gradients_near(grads, grads_exact, tol=3e-3)
        for (name, a), (_, b) in zip(exact_model.named_buffers(), model.named_buffers(), strict=True):
            torch.testing.assert_close(b.to(a.dtype), a, rtol=1e-4, atol=1e-5, msg=name)  # BN statistics


def test_channels_last_float64_gives_the_nchw_gradients_with_in_place_activations():
    """float64, where no pre-activation of this input comes within rounding of a kink: NHWC against
    NCHW with the in-place ReLU6 that training uses, unpinned; equal to float64 rounding."""
    plain = fpnlite().double()
    assert any(isinstance(m, nn.ReLU6) and m.inplace for m in plain.modules())
    fast = copy.deepcopy(plain).to(memory_format=torch.channels_last)
    images = _images()
    out_a, grads_a = _run(plain, images)
    out_b, grads_b = _run(fast, images.contiguous(memory_format=torch.channels_last))
    for key in out_a:
        torch.testing.assert_close(out_b[key], out_a[key], rtol=1e-9, atol=1e-12, msg=key)
    _assert_gradients_near(grads_b, grads_a, tol=1e-9, floor=1e-12)
    for (name, a), (_, b) in zip(plain.named_buffers(), fast.named_buffers(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-12, msg=name)  # BN running statistics


def test_in_place_activations_change_nothing():
    fast = fpnlite()
    in_place = [m for m in fast.modules() if isinstance(m, (nn.ReLU, nn.ReLU6)) and m.inplace]
    # MobileNetV2: the stem, 17 inverted residuals (the first without expansion: 1 ReLU6, the other 16:
    # 2 each), the last 1x1 conv = 35; then the FPN's 2 smoothing and 2 extra levels and the shared
    # tower's one (conv_hyperparams' RELU_6): all 40 in place.
    assert sum(isinstance(m, nn.ReLU6) for m in fast.backbone.modules()) == 1 + 1 + 16 * 2 + 1
    assert len(in_place) == 35 + 2 + 2 + 1
    assert all(type(m) is ReLU6 for m in in_place)  # torch's hardtanh_ copies; ours clamps in place
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

    def act(name: str, inplace: bool) -> nn.Module:
        return conv_hyperparams({"activation": name}).act(inplace=inplace)

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
