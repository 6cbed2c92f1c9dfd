"""Box predictors: the TF OD API's ``weight_shared_convolutional_box_predictor`` (RetinaNet head) and
``convolutional_box_predictor`` (one head per level, the original SSD's).

Both return ``cls_logits [B, A, K]`` and ``box_deltas [B, A, box_code_size]`` with anchors flattened
in the order of ``anchors.MultiscaleAnchorGenerator``: level, row, column, anchor within the cell
(outputs ``[B, n * C, H, W]`` are read as ``[B, H, W, n, C]``, as the TF OD API reshapes NHWC maps).
"""

from __future__ import annotations

from typing import cast

import torch
from torch import Tensor, nn

from raredet.modeling.layers import ConvHyperparams, keras_default_init, l2_weights_of


def _head(
    hp: ConvHyperparams,
    in_ch: int,
    out_ch: int,
    kernel: int,
    depthwise: bool,
    bias: float,
    pointwise_hp: bool = False,
) -> nn.Module:
    """Prediction conv with a bias (``bias`` its initial value); depthwise-separable on request.

    Without ``depthwise`` the conv takes ``hp``'s initializer and L2 weight. With it, the TF OD API's
    Keras heads hand ``hp`` to neither kernel of the weight-shared head's ``SeparableConv2D`` and to the
    1x1 only of the per-level head (``pointwise_hp``); the others keep Keras' defaults."""
    conv = nn.Conv2d(in_ch, out_ch, 1 if depthwise else kernel, padding=0 if depthwise else kernel // 2)
    if depthwise and not pointwise_hp:
        keras_default_init(conv)
    else:
        hp.initialize(conv)
    nn.init.constant_(conv.bias, bias)  # type: ignore[arg-type]  # Conv2d(bias=True) has one
    if not depthwise:
        return conv
    spatial = nn.Conv2d(in_ch, in_ch, kernel, padding=kernel // 2, groups=in_ch, bias=False)
    keras_default_init(spatial)
    return nn.Sequential(spatial, conv)


def _uniform_count(counts: int | list[int]) -> int:
    if isinstance(counts, int):
        return counts
    if len(set(counts)) != 1:
        raise ValueError(
            f"weight_shared_convolutional_box_predictor needs the same number of anchors per cell on every "
            f"level, the anchor generator gives {counts} (ssd_anchor_generator: set "
            f"reduce_boxes_in_lowest_layer: false, or use convolutional_box_predictor)"
        )
    return counts[0]


def _flatten(maps: list[Tensor], code_size: int) -> Tensor:
    """``[B, n * C, H, W]`` per level -> ``[B, sum(H * W * n), C]`` (row, column, anchor order)."""
    flat = [m.permute(0, 2, 3, 1).reshape(m.shape[0], -1, code_size) for m in maps]
    return torch.cat(flat, dim=1)


class _Tower(nn.Module):
    """``num_layers`` convs shared across levels, each followed by a per-level BN and the activation
    (the TF OD API shares the conv kernels but not the batch norms)."""

    def __init__(
        self,
        hp: ConvHyperparams,
        in_ch: int,
        depth: int,
        num_layers: int,
        kernel: int,
        num_levels: int,
        use_depthwise: bool,
        freeze_batchnorm: bool,
        pointwise_hp: bool = False,
    ) -> None:
        super().__init__()
        convs: list[nn.Module] = []
        for i in range(num_layers):
            c_in = in_ch if i == 0 else depth
            if use_depthwise:  # the 1x1 takes hp only with apply_conv_hyperparams_pointwise
                convs.append(
                    nn.Sequential(
                        *hp.separable(c_in, depth, kernel, depthwise_hp=True, pointwise_hp=pointwise_hp)
                    )
                )
            else:
                convs.append(hp.conv(c_in, depth, kernel))
        self.convs = nn.ModuleList(convs)
        self.norms = nn.ModuleList(
            nn.ModuleList(hp.norm(depth, freeze_batchnorm) for _ in range(num_layers))
            for _ in range(num_levels)
        )
        self.act = hp.act(inplace=True)  # after a conv or a batch norm

    def forward(self, x: Tensor, level: int) -> Tensor:
        norms = cast(nn.ModuleList, self.norms[level])
        for conv, norm in zip(self.convs, norms, strict=True):
            x = self.act(norm(conv(x)))
        return x


class WeightSharedConvolutionalBoxPredictor(nn.Module):
    """RetinaNet's head: one box tower and one class tower applied to every level with shared weights.

    ``class_prediction_bias_init`` is the focal-loss prior, ``-log((1 - pi) / pi)`` for prior ``pi``
    (about -4.6 for 0.01). ``in_channels`` must be equal across levels (an FPN's are). With
    ``use_depthwise``, ``apply_conv_hyperparams_pointwise`` gives the towers' 1x1 kernels the
    conv_hyperparams' initializer and L2 weight (else Keras' defaults, as in the TF OD API).
    """

    def __init__(
        self,
        num_classes: int,
        num_anchors_per_location: int | list[int],
        in_channels: list[int],
        conv_hyperparams: ConvHyperparams | None = None,
        num_layers_before_predictor: int = 0,
        depth: int = 0,
        kernel_size: int = 3,
        box_code_size: int = 4,
        class_prediction_bias_init: float = 0.0,
        share_prediction_tower: bool = False,
        use_depthwise: bool = False,
        apply_conv_hyperparams_pointwise: bool = False,
        freeze_batchnorm: bool = False,
    ) -> None:
        super().__init__()
        self.hp = conv_hyperparams or ConvHyperparams()
        if len(set(in_channels)) != 1:
            raise ValueError(
                f"weight-shared predictor needs equal channels on every level, got {in_channels}"
            )
        if num_layers_before_predictor > 0 and depth <= 0:
            raise ValueError(
                "weight_shared_convolutional_box_predictor: num_layers_before_predictor is "
                f"{num_layers_before_predictor}, so depth must be positive (got {depth}); set depth"
            )
        self.num_classes, self.box_code_size = num_classes, box_code_size
        in_ch, levels = in_channels[0], len(in_channels)
        head_in = depth if num_layers_before_predictor > 0 else in_ch
        tower_args = (
            self.hp,
            in_ch,
            depth,
            num_layers_before_predictor,
            kernel_size,
            levels,
            use_depthwise,
            freeze_batchnorm,
            apply_conv_hyperparams_pointwise,
        )
        self.box_tower = _Tower(*tower_args)
        self.class_tower = None if share_prediction_tower else _Tower(*tower_args)
        n = _uniform_count(num_anchors_per_location)
        self.box_head = _head(self.hp, head_in, n * box_code_size, kernel_size, use_depthwise, 0.0)
        self.class_head = _head(
            self.hp, head_in, n * num_classes, kernel_size, use_depthwise, class_prediction_bias_init
        )

    def forward(self, features: list[Tensor]) -> tuple[Tensor, Tensor]:
        """One ``[B, C, H_l, W_l]`` per level -> ``cls_logits [B, A, K]``, ``box_deltas [B, A, 4]``."""
        boxes, classes = [], []
        for level, x in enumerate(features):
            box_x = self.box_tower(x, level)
            cls_x = box_x if self.class_tower is None else self.class_tower(x, level)
            boxes.append(self.box_head(box_x))
            classes.append(self.class_head(cls_x))
        return _flatten(classes, self.num_classes), _flatten(boxes, self.box_code_size)

    def l2_weights(self, prefix: str = "") -> dict[str, float]:
        return l2_weights_of(self, prefix)


class ConvolutionalBoxPredictor(nn.Module):
    """The original SSD's head: separate weights per level. Optional ``num_layers_before_predictor``
    1x1 convs to ``clamp(in_channels, min_depth, max_depth)`` channels, then a box and a class conv of
    ``kernel_size`` (depthwise-separable with ``use_depthwise``, SSDLite); dropout before the class conv
    when ``use_dropout``."""

    def __init__(
        self,
        num_classes: int,
        num_anchors_per_location: int | list[int],
        in_channels: list[int],
        conv_hyperparams: ConvHyperparams | None = None,
        min_depth: int = 0,
        max_depth: int = 0,
        num_layers_before_predictor: int = 0,
        use_dropout: bool = True,
        dropout_keep_probability: float = 0.8,
        kernel_size: int = 1,
        box_code_size: int = 4,
        class_prediction_bias_init: float = 0.0,
        use_depthwise: bool = False,
        freeze_batchnorm: bool = False,
    ) -> None:
        super().__init__()
        self.hp = conv_hyperparams or ConvHyperparams()
        self.num_classes, self.box_code_size = num_classes, box_code_size
        counts = num_anchors_per_location
        per_level = counts if isinstance(counts, list) else [counts] * len(in_channels)
        towers, box_heads, class_heads = [], [], []
        for in_ch, n in zip(in_channels, per_level, strict=True):
            depth = max(min(in_ch, max_depth), min_depth) if max_depth else max(in_ch, min_depth)
            layers = [
                self._tower_layer(in_ch if i == 0 else depth, depth, freeze_batchnorm)
                for i in range(num_layers_before_predictor)
            ]
            head_in = depth if num_layers_before_predictor else in_ch
            towers.append(nn.Sequential(*layers))
            box_heads.append(
                _head(self.hp, head_in, n * box_code_size, kernel_size, use_depthwise, 0.0, pointwise_hp=True)
            )
            class_heads.append(
                _head(
                    self.hp,
                    head_in,
                    n * num_classes,
                    kernel_size,
                    use_depthwise,
                    class_prediction_bias_init,
                    pointwise_hp=True,
                )
            )
        self.towers = nn.ModuleList(towers)
        self.box_heads, self.class_heads = nn.ModuleList(box_heads), nn.ModuleList(class_heads)
        self.dropout = nn.Dropout(1.0 - dropout_keep_probability) if use_dropout else nn.Identity()

    def _tower_layer(self, in_ch: int, out_ch: int, freeze_batchnorm: bool) -> nn.Module:
        return nn.Sequential(
            self.hp.conv(in_ch, out_ch, 1),
            self.hp.norm(out_ch, freeze_batchnorm),
            self.hp.act(inplace=True),
        )

    def forward(self, features: list[Tensor]) -> tuple[Tensor, Tensor]:
        """One ``[B, C_l, H_l, W_l]`` per level -> ``cls_logits [B, A, K]``, ``box_deltas [B, A, 4]``."""
        boxes, classes = [], []
        for x, tower, box_head, class_head in zip(
            features, self.towers, self.box_heads, self.class_heads, strict=True
        ):
            x = tower(x)
            boxes.append(box_head(x))
            classes.append(class_head(self.dropout(x)))
        return _flatten(classes, self.num_classes), _flatten(boxes, self.box_code_size)

    def l2_weights(self, prefix: str = "") -> dict[str, float]:
        return l2_weights_of(self, prefix)

