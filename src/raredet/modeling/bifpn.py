"""BiFPN, the bidirectional feature pyramid of EfficientDet (Tan et al. 2020), as the TF OD API builds it
(``bidirectional_feature_pyramid_generators.KerasBiFpnFeatureMaps``; config ``bifpn { min_level
max_level num_iterations num_filters combine_method }``).

The network is a list of nodes, each ``(level, inputs)``, evaluated in order; node names follow the
TF OD API's ``{iteration}_{up|dn}_lvl_{level}``:

* ``0_up_lvl_L`` for ``L`` in ``min_level .. input_max_level`` are the backbone maps
  (``input_max_level = min(max_level, 5)``).
* ``0_up_lvl_L`` for ``L`` above ``input_max_level`` (the extra levels): the previous level resampled
  down, no combine, no post-combine.
* Each iteration ``i = 1 .. num_iterations``: a top-down pass ``i_dn_lvl_L`` for ``L = max_level - 1``
  down to ``min_level``, inputs ``[(i-1)_up_lvl_L, previous node]`` (the bottom level reads
  ``(i-1)_dn_lvl_min`` after the first iteration, since no ``up`` node exists there); then a
  bottom-up pass ``i_up_lvl_L`` for ``L = min_level + 1 .. max_level``, inputs
  ``[(i-1)_up_lvl_L, i_dn_lvl_L (not at max_level), previous node]``.
* The outputs are the last ``max_level - min_level + 1`` nodes: ``n_dn_lvl_min, n_up_lvl_min+1 ..``.

Every input of a node passes its own resample block: a 1x1 conv -> BN (no activation) when the input's
channel count differs from ``num_filters`` — always for a backbone map, whose count the TF OD API
does not compare — then max pooling (kernel 3, stride 2, TF 'SAME' padding) per level down, or
nearest-neighbour upsampling per level up. The resampled inputs are combined (``combine_method``):

* ``sum``: ``sum_i x_i``
* ``weighted_sum``: ``sum_i w_i x_i``
* ``attention``: ``sum_i softmax(w)_i x_i``
* ``fast_attention`` (default): ``sum_i relu(w_i) / (sum_j relu(w_j) + 1e-4) x_i``

with one learned weight per input, initialised to 1. After the combine: activation -> 3x3 separable
conv (depthwise, then pointwise) -> BN, in that order (the TF OD API's ``conv_bn_act_pattern=False``).
Convs, batch norm and activation follow the feature extractor's ``conv_hyperparams``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from raredet.modeling.layers import ConvHyperparams

COMBINE_METHODS = ("sum", "weighted_sum", "attention", "fast_attention")
# The coarsest level an EfficientNet (or any raredet backbone) produces: stride 32.
BACKBONE_MAX_LEVEL = 5
FAST_ATTENTION_EPSILON = 1e-4


Node = tuple[str, int, list[str]]  # (name, level, input names)


def bifpn_nodes(min_level: int, max_level: int, input_max_level: int, num_iterations: int) -> list[Node]:
    """The TF OD API's BiFPN node list ``[(name, level, input names)]`` after the input nodes
    ``0_up_lvl_{min_level..input_max_level}`` (see the module docstring)."""
    nodes: list[Node] = []
    for level in range(input_max_level + 1, max_level + 1):
        nodes.append((f"0_up_lvl_{level}", level, [f"0_up_lvl_{level - 1}"]))
    for i in range(1, num_iterations + 1):
        for level in range(max_level - 1, min_level - 1, -1):
            same = f"{i - 1}_up_lvl_{level}" if level > min_level or i == 1 else f"{i - 1}_dn_lvl_{level}"
            # Without extra levels the first top-down node reads the top input (where the TF OD API,
            # which always has extra levels in its configs, would fail).
            above = nodes[-1][0] if nodes else f"0_up_lvl_{max_level}"
            nodes.append((f"{i}_dn_lvl_{level}", level, [same, above]))
        for level in range(min_level + 1, max_level + 1):
            inputs = [f"{i - 1}_up_lvl_{level}"]
            if level < max_level:
                inputs.append(f"{i}_dn_lvl_{level}")
            inputs.append(nodes[-1][0])
            nodes.append((f"{i}_up_lvl_{level}", level, inputs))
    return nodes


def max_pool_same(x: Tensor, kernel: int, stride: int) -> Tensor:
    """Max pooling with TF's 'SAME' padding: output ``ceil(n / stride)``, the extra padding at the
    bottom/right (padded cells never win)."""
    pads = []
    for n in (x.shape[-1], x.shape[-2]):  # F.pad takes the last dimension first
        total = max((math.ceil(n / stride) - 1) * stride + kernel - n, 0)
        pads += [total // 2, total - total // 2]
    return F.max_pool2d(F.pad(x, pads, value=float("-inf")), kernel, stride)


class SeparableConv2d(nn.Sequential):
    """Keras' ``SeparableConv2D``: a kxk depthwise conv without bias (``0``), then a 1x1 pointwise
    conv (``1``) carrying the one bias (when the hyperparams ask for one)."""

    def __init__(self, hp: ConvHyperparams, in_ch: int, out_ch: int, kernel: int) -> None:
        depthwise = nn.Conv2d(in_ch, in_ch, kernel, 1, kernel // 2, groups=in_ch, bias=False)
        hp.initialize(depthwise)
        super().__init__(depthwise, hp.conv(in_ch, out_ch, 1))


class Resample(nn.Module):
    """An input's path into a node: optional 1x1 conv -> BN, then ``levels`` x max pooling (down,
    ``levels > 0``) or nearest upsampling to the node's size (up, ``levels < 0``)."""

    def __init__(
        self, hp: ConvHyperparams, in_ch: int, out_ch: int, levels: int, project: bool, freeze_batchnorm: bool
    ) -> None:
        super().__init__()
        self.levels = levels
        self.project = None
        if project:
            self.project = nn.Sequential(hp.conv(in_ch, out_ch, 1), hp.norm(out_ch, freeze_batchnorm))

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        if self.project is not None:
            x = self.project(x)
        if self.levels > 0:
            stride = 2**self.levels
            return max_pool_same(x, stride + 1, stride)
        if self.levels < 0:
            return F.interpolate(x, size=size, mode="nearest")
        return x


class Combine(nn.Module):
    """Fuse same-shaped inputs as ``method`` says (see the module docstring); ``weight`` holds one
    learned weight per input (none for ``sum``)."""

    weight: Tensor | None

    def __init__(self, num_inputs: int, method: str) -> None:
        super().__init__()
        if method not in COMBINE_METHODS:
            raise ValueError(f"bifpn.combine_method: unknown {method!r}; valid: {list(COMBINE_METHODS)}")
        self.method = method
        self.weight = None if method == "sum" else nn.Parameter(torch.ones(num_inputs))

    def normalized_weights(self) -> Tensor | None:
        """The factor each input is multiplied by (None for ``sum``)."""
        if self.weight is None or self.method == "weighted_sum":
            return self.weight
        if self.method == "attention":
            return torch.softmax(self.weight, dim=0)
        positive = F.relu(self.weight)
        return positive / (positive.sum() + FAST_ATTENTION_EPSILON)

    def forward(self, inputs: list[Tensor]) -> Tensor:
        weights = self.normalized_weights()
        if weights is None:
            return torch.stack(inputs).sum(0)
        # [n, B, C, H, W] x [n] -> [B, C, H, W]
        return torch.einsum("nbchw,n->bchw", torch.stack(inputs), weights.to(inputs[0].dtype))


class BiFpnNode(nn.Module):
    """One node: resample each input, combine, then activation -> separable 3x3 conv -> BN (the
    extra-level nodes, with a single input, have no combine and no post-combine layers)."""

    def __init__(
        self,
        hp: ConvHyperparams,
        in_channels: list[int],
        in_levels: list[int],
        project: list[bool],
        level: int,
        num_filters: int,
        combine_method: str,
        freeze_batchnorm: bool,
    ) -> None:
        super().__init__()
        self.inputs = nn.ModuleList(
            Resample(hp, c, num_filters, level - lv, p, freeze_batchnorm)
            for c, lv, p in zip(in_channels, in_levels, project, strict=True)
        )
        self.combine = Combine(len(in_channels), combine_method) if len(in_channels) > 1 else None
        self.post: nn.Module | None = None
        if self.combine is not None:
            self.post = nn.Sequential(
                hp.act(),
                SeparableConv2d(hp, num_filters, num_filters, 3),
                hp.norm(num_filters, freeze_batchnorm),
            )

    def forward(self, inputs: list[Tensor], size: tuple[int, int]) -> Tensor:
        resampled = [op(x, size) for op, x in zip(self.inputs, inputs, strict=True)]
        if self.combine is None:
            return resampled[0]
        assert self.post is not None
        return self.post(self.combine(resampled))


class BiFPN(nn.Module):
    """``forward({level: backbone map}) -> [map per level min_level..max_level]``, each with
    ``num_filters`` channels."""

    def __init__(
        self,
        in_channels: dict[int, int],
        conv_hyperparams: ConvHyperparams,
        min_level: int = 3,
        max_level: int = 7,
        num_iterations: int = 3,
        num_filters: int = 64,
        combine_method: str = "fast_attention",
        freeze_batchnorm: bool = False,
    ) -> None:
        super().__init__()
        self.input_max_level = min(max_level, BACKBONE_MAX_LEVEL)
        wanted = list(range(min_level, self.input_max_level + 1))
        if max_level <= min_level or not set(wanted) <= set(in_channels):
            raise ValueError(
                f"bifpn: min_level..max_level is {min_level}..{max_level}; max_level "
                f"must exceed min_level and the backbone must give levels {wanted} (it gives "
                f"{sorted(in_channels)})"
            )
        if num_iterations < 1 or num_filters < 1:
            raise ValueError(
                f"bifpn: num_iterations ({num_iterations}) and num_filters ({num_filters}) "
                "must be positive"
            )
        self.min_level, self.max_level = min_level, max_level
        self.names = [f"0_up_lvl_{lv}" for lv in wanted]
        self.levels = list(wanted)
        channels = [in_channels[lv] for lv in wanted]
        self.inputs: list[list[int]] = []
        nodes = []
        for name, level, inputs in bifpn_nodes(min_level, max_level, self.input_max_level, num_iterations):
            index = [self.names.index(i) for i in inputs]
            nodes.append(
                BiFpnNode(
                    conv_hyperparams,
                    [channels[j] for j in index],
                    [self.levels[j] for j in index],
                    # A backbone map always gets the 1x1 conv (TF leaves its channel count unknown).
                    [j < len(wanted) or channels[j] != num_filters for j in index],
                    level,
                    num_filters,
                    combine_method,
                    freeze_batchnorm,
                )
            )
            self.names.append(name)
            self.levels.append(level)
            channels.append(num_filters)
            self.inputs.append(index)
        self.nodes = nn.ModuleList(nodes)
        self.num_outputs = max_level - min_level + 1
        self.out_channels = [num_filters] * self.num_outputs

    def forward(self, features: dict[int, Tensor]) -> list[Tensor]:
        maps = [features[lv] for lv in range(self.min_level, self.input_max_level + 1)]
        sizes = {lv: (int(m.shape[-2]), int(m.shape[-1])) for lv, m in zip(self.levels, maps, strict=False)}
        first = len(maps)
        for k, (node, index) in enumerate(zip(self.nodes, self.inputs, strict=True)):
            level = self.levels[first + k]
            if level not in sizes:  # an extra level: TF 'SAME' pooling halves, rounding up
                below = sizes[level - 1]
                sizes[level] = (math.ceil(below[0] / 2), math.ceil(below[1] / 2))
            maps.append(node([maps[j] for j in index], sizes[level]))
        return maps[-self.num_outputs :]

    def l2_weights(self, l2_weight: float, prefix: str = "") -> dict[str, float]:
        """Every conv kernel, depthwise included (the TF OD API gives a BiFPN separable conv's depthwise
        and pointwise kernels the conv_hyperparams' regularizer); no biases, norms or fusion weights."""
        if l2_weight == 0.0:
            return {}
        dot = f"{prefix}." if prefix else ""
        return {
            f"{dot}{name}.weight": l2_weight
            for name, module in self.named_modules()
            if isinstance(module, nn.Conv2d)
        }
