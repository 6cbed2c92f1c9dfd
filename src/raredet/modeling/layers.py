"""Building blocks shared by the FPN, the extra SSD layers and the box predictors, set by
``ConvHyperparams``: the parts of a TF OD API ``conv_hyperparams`` message raredet acts on, which
``builders.hyperparams.build_conv_hyperparams`` reads from the message (its defaults are the message's:
``tests/test_builder_defaults.py``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class _ClampInPlace06(torch.autograd.Function):
    """ReLU6 that overwrites its input and saves its output for the backward: `hardtanh_backward` on the
    output (0 < out < 6 exactly where 0 < x < 6), as torch's own `hardtanh_` does, so the gradient is the
    same bit for bit. Why not `F.relu6(x, inplace=True)`: on CPU (torch 2.13) it clones its input and
    copies the result back, two extra passes over the activation (~0.2 s of a zoo FPN-lite step).

    The backward writes the gradient into the saved output's memory instead of a new tensor: when it
    runs, every consumer of the output has run its own backward (autograd orders it so), so nothing
    needs the activation any more, and the write touches memory the read has just brought into cache
    (a fresh tensor costs an allocation and a pass of first-touch writes; docs/benchmarks.md, wave 4).
    A second backward through the same graph (`retain_graph=True`) then fails loudly: the saved
    output's version changed. A view of part of a tensor keeps the allocating form."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        x.clamp_(0.0, 6.0)
        ctx.mark_dirty(x)
        ctx.save_for_backward(x)
        return x

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (out,) = ctx.saved_tensors
        if not _fills_its_storage(out):  # part of a larger tensor: leave the rest alone
            return torch.ops.aten.hardtanh_backward(grad, out, 0.0, 6.0)
        return torch.ops.aten.hardtanh_backward.grad_input(grad, out, 0.0, 6.0, grad_input=out)


def _fills_its_storage(t: Tensor) -> bool:
    """Whether `t` covers all of its storage, each element once (a view of part of a tensor does not)."""
    dense = t.is_contiguous() or (t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last))
    return dense and t.storage_offset() == 0 and t.untyped_storage().nbytes() == t.numel() * t.element_size()


class ReLU6(nn.ReLU6):
    """``nn.ReLU6`` whose in-place form clamps in place without torch's extra copies (`_ClampInPlace06`);
    same outputs and gradients, same (empty) state dict."""

    def forward(self, x: Tensor) -> Tensor:
        if self.inplace and x.requires_grad and torch.is_grad_enabled() and not torch.jit.is_tracing():
            return _ClampInPlace06.apply(x)  # (the JIT cannot trace a custom in-place Function)
        return super().forward(x)


def use_fast_relu6(model: nn.Module) -> nn.Module:
    """Every in-place ``nn.ReLU6`` of `model` (e.g. the MobileNet backbones' own) replaced by `ReLU6`;
    returns `model`."""
    for parent in model.modules():
        for name, child in parent.named_children():
            if type(child) is nn.ReLU6 and child.inplace:
                setattr(parent, name, ReLU6(inplace=True))
    return model


ACTIVATIONS: dict[str, type[nn.Module]] = {
    "NONE": nn.Identity,
    "RELU": nn.ReLU,
    "RELU_6": ReLU6,
    "SWISH": nn.SiLU,
}
# Activations whose backward needs only their output (the same mask), so they may overwrite their
# input. SiLU's backward needs its input: never in place.
IN_PLACE_ACTIVATIONS = (nn.ReLU, nn.ReLU6)


class FrozenBatchNorm2d(nn.BatchNorm2d):
    """Batch norm that always uses its running statistics and never trains (``freeze_batchnorm``).

    A subclass of ``nn.BatchNorm2d`` with the same parameter and buffer names, so state dicts saved
    with either load into the other.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__(num_features, eps=eps, momentum=momentum)
        self.weight.requires_grad_(False)
        self.bias.requires_grad_(False)

    def forward(self, x: Tensor) -> Tensor:
        return F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
        )


class BatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` that, given a single value per channel in training (batch 1 on a 1x1 map, e.g.
    the coarsest level of a small image), normalises with its running statistics instead of raising:
    one value has no variance to learn from."""

    def forward(self, x: Tensor) -> Tensor:
        if self.training and x.shape[0] * x.shape[2] * x.shape[3] == 1:
            return F.batch_norm(
                x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
            )
        return super().forward(x)


def batch_norm(channels: int, frozen: bool, eps: float = 1e-5, momentum: float = 0.1) -> nn.BatchNorm2d:
    """A ``BatchNorm2d`` or, when ``frozen``, a ``FrozenBatchNorm2d`` (both named as ``nn.BatchNorm2d``)."""
    cls = FrozenBatchNorm2d if frozen else BatchNorm2d
    return cls(channels, eps=eps, momentum=momentum)


@dataclass
class ConvHyperparams:
    """The parts of a TF OD API ``Hyperparams`` message raredet acts on (see the module docstring);
    ``initializer`` is a key of ``INITIALIZERS``, ``activation`` of ``ACTIVATIONS``."""

    activation: str = "RELU"
    l2_weight: float = 0.0
    initializer: str = ""  # "" = torch's default initialisation
    initializer_args: dict[str, Any] = field(default_factory=dict)
    use_batch_norm: bool = False
    bn_decay: float = 0.999
    bn_center: bool = True
    bn_scale: bool = False
    bn_epsilon: float = 0.001
    bn_train: bool = True
    force_use_bias: bool = False

    def act(self, inplace: bool = False) -> nn.Module:
        """The activation; ``inplace`` where the caller's input is not needed afterwards (after a conv or
        a batch norm, whose backward needs their input, not their output) and the activation allows."""
        cls = ACTIVATIONS[self.activation]
        return cls(inplace=True) if inplace and issubclass(cls, IN_PLACE_ACTIVATIONS) else cls()

    def norm(self, channels: int, freeze_batchnorm: bool) -> nn.Module:
        """The batch norm these hyperparams ask for (``Identity`` when none)."""
        if not self.use_batch_norm:
            return nn.Identity()
        bn = batch_norm(channels, freeze_batchnorm or not self.bn_train, self.bn_epsilon, 1.0 - self.bn_decay)
        # TF's scale: false / center: false mean no gamma / beta: keep them at 1 / 0, untrained.
        if not self.bn_scale:
            bn.weight.requires_grad_(False)
        if not self.bn_center:
            bn.bias.requires_grad_(False)
        return bn

    def conv(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
        """A 'same'-padded conv, initialised and L2-regularised as these hyperparams say; bias only
        without batch norm."""
        bias = self.force_use_bias or not self.use_batch_norm
        conv = nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, groups=groups, bias=bias)
        self.initialize(conv)
        return conv

    def initialize(self, conv: nn.Conv2d) -> None:
        """Apply the configured initializer to ``conv.weight``, zero its bias, and record this
        L2 weight on the conv (``L2_ATTR``) for ``l2_weights_of``: the hyperparams that build a kernel
        decide its regularisation, as Keras' ``kernel_regularizer`` does in the TF OD API."""
        if self.initializer:
            INITIALIZERS[self.initializer](conv.weight, **self.initializer_args, fans=keras_fans(conv))
        if conv.bias is not None:
            nn.init.zeros_(conv.bias)
        setattr(conv, L2_ATTR, self.l2_weight)

    def separable(
        self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, *, depthwise_hp: bool, pointwise_hp: bool
    ) -> list[nn.Conv2d]:
        """Depthwise ``kernel`` x ``kernel`` then pointwise 1x1 conv (Keras' ``SeparableConv2D``).

        Each of the two kernels gets these hyperparams' initializer and L2 weight only where the TF OD
        API hands them to it (``depthwise_hp`` / ``pointwise_hp``); the other keeps Keras' default,
        glorot_uniform and no regularizer (``keras_default_init``). See docs/models.md, "Parity"."""
        depthwise = nn.Conv2d(in_ch, in_ch, kernel, stride, kernel // 2, groups=in_ch, bias=False)
        pointwise = nn.Conv2d(in_ch, out_ch, 1, bias=self.force_use_bias or not self.use_batch_norm)
        for conv, configured in ((depthwise, depthwise_hp), (pointwise, pointwise_hp)):
            if configured:
                self.initialize(conv)
            else:
                keras_default_init(conv)
        return [depthwise, pointwise]


# Name of the attribute where a conv records the L2 weight of the hyperparams that built it.
L2_ATTR = "l2_weight"

Fans = tuple[float, float]


def keras_fans(conv: nn.Conv2d) -> Fans:
    """(fan_in, fan_out) of ``conv.weight`` as Keras computes them from its kernel shape
    ``[kh, kw, in, out]`` (``[kh, kw, in, multiplier]`` for a depthwise kernel): for a depthwise conv
    that is ``(C * kh * kw, kh * kw)``, the reverse of torch's reading of ``[C, 1, kh, kw]``."""
    receptive = conv.weight[0, 0].numel()
    if conv.groups > 1 and conv.groups == conv.in_channels:
        return float(conv.in_channels * receptive), float(conv.out_channels // conv.groups * receptive)
    return float(conv.in_channels // conv.groups * receptive), float(conv.out_channels * receptive)


def keras_default_init(conv: nn.Conv2d) -> None:
    """Keras' default for a kernel given no initializer (glorot_uniform, Keras fans), bias zero, no L2."""
    fan_in, fan_out = keras_fans(conv)
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    nn.init.uniform_(conv.weight, -limit, limit)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    setattr(conv, L2_ATTR, 0.0)


def _random_normal(weight: Tensor, mean: float = 0.0, stddev: float = 1.0, fans: Fans | None = None) -> None:
    nn.init.normal_(weight, float(mean), float(stddev))


def _truncated_normal(
    weight: Tensor, mean: float = 0.0, stddev: float = 1.0, fans: Fans | None = None
) -> None:
    # TF's truncated_normal_initializer: redraw beyond 2 stddev, stddev not rescaled.
    mean, stddev = float(mean), float(stddev)
    nn.init.trunc_normal_(weight, mean, stddev, mean - 2 * stddev, mean + 2 * stddev)


def _variance_scaling(
    weight: Tensor,
    factor: float = 2.0,
    uniform: bool = False,
    mode: str = "FAN_IN",
    fans: Fans | None = None,
) -> None:
    # Keras VarianceScaling, which the TF OD API's Keras builder uses: variance factor / n, n from
    # Keras' fans (``keras_fans``; torch's own reading when no conv is known).
    fan_in, fan_out = fans or nn.init._calculate_fan_in_and_fan_out(weight)
    by_mode = {"FAN_IN": fan_in, "FAN_OUT": fan_out, "FAN_AVG": (fan_in + fan_out) / 2}
    if mode not in by_mode:
        raise ValueError(f"variance_scaling_initializer.mode: unknown {mode!r}; valid: {sorted(by_mode)}")
    variance = float(factor) / max(1.0, by_mode[mode])
    if uniform:
        limit = math.sqrt(3.0 * variance)
        nn.init.uniform_(weight, -limit, limit)
    else:
        # 0.8796... is the stddev of a unit normal truncated at +-2: divide it out, as Keras does.
        std = math.sqrt(variance) / 0.87962566103423978
        nn.init.trunc_normal_(weight, 0.0, std, -2 * std, 2 * std)


INITIALIZERS: dict[str, Callable[..., None]] = {
    "truncated_normal_initializer": _truncated_normal,
    "variance_scaling_initializer": _variance_scaling,
    "random_normal_initializer": _random_normal,
}


class ConvNormAct(nn.Sequential):
    """conv (or depthwise + pointwise when ``depthwise``) -> batch norm -> activation.

    With ``depthwise``, which of the two kernels take the hyperparams' initializer and L2 weight is
    ``depthwise_hp`` / ``pointwise_hp`` (see ``ConvHyperparams.separable``): the TF OD API's FPN gives
    them to the depthwise kernel only, its SSD extra layers to the pointwise one only."""

    def __init__(
        self,
        hp: ConvHyperparams,
        in_ch: int,
        out_ch: int,
        kernel: int,
        stride: int = 1,
        depthwise: bool = False,
        freeze_batchnorm: bool = False,
        depthwise_hp: bool = True,
        pointwise_hp: bool = False,
    ) -> None:
        if depthwise:
            convs = hp.separable(
                in_ch, out_ch, kernel, stride, depthwise_hp=depthwise_hp, pointwise_hp=pointwise_hp
            )
        else:
            convs = [hp.conv(in_ch, out_ch, kernel, stride)]
        super().__init__(*convs, hp.norm(out_ch, freeze_batchnorm), hp.act(inplace=True))


def l2_weights_of(module: nn.Module, prefix: str = "") -> dict[str, float]:
    """``{parameter name: l2 weight}`` for the conv kernels in ``module`` that were built with a nonzero
    L2 weight (recorded by ``ConvHyperparams.initialize``). Biases and batch norms carry none; Keras
    ignores ``regularize_depthwise``, so whether a depthwise kernel is regularised depends only on
    whether the TF OD API hands it the hyperparams (see ``ConvHyperparams.separable``)."""
    weights = {}
    for name, sub in module.named_modules(prefix=prefix):
        l2 = float(getattr(sub, L2_ATTR, 0.0)) if isinstance(sub, nn.Conv2d) else 0.0
        if l2 != 0.0:
            weights[f"{name}.weight" if name else "weight"] = l2
    return weights
