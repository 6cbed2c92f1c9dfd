"""The hourglass networks of the TF OD API's CenterNet (``models/keras_models/hourglass_network.py``), in
plain torch: ``hourglass_104`` (two stacked hourglasses, CenterNet's COCO backbone), the single-hourglass
``hourglass_10/20/32/52/100`` and the two DeepMAC variants ``hourglass_20_uniform_size`` and
``hourglass_20_no_shortcut`` (DeepMAC builds its mask networks from them with ``initial_downsample=False``).

Every module is named after the attribute of the TF layer it replaces, so a TF checkpoint's object path
maps onto a state-dict key one to one (Keras lists become ``nn.Sequential`` / ``nn.ModuleList`` indices):

=====================================================  ================================================
TF object path (under the extractor's ``_network``)    raredet state-dict key
=====================================================  ================================================
``downsample_input/conv_block/conv/kernel``            ``downsample_input.conv_block.conv.weight``
``downsample_input/conv_block/norm/gamma, beta,``      ``downsample_input.conv_block.norm.weight, bias,``
``moving_mean, moving_variance``                       ``running_mean, running_var``
``downsample_input/residual_block/{conv_block,conv,``  ``downsample_input.residual_block.{...}``
``norm,skip}/...``
``hourglass_network/<i>/encoder_block1/<j>/...``       ``hourglass_network.<i>.encoder_block1.<j>....``
``hourglass_network/<i>/inner_block/0/...`` (nested)   ``hourglass_network.<i>.inner_block.0....``
``output_conv/<i>/{conv,norm}``                        ``output_conv.<i>.{conv,norm}``
``intermediate_{conv1,conv2,residual}/<i>/...``        ``intermediate_{conv1,conv2,residual}.<i>....``
=====================================================  ================================================

In a TF2 checkpoint the paths sit under ``feature_extractor/_network/`` (as
``tf.train.Checkpoint(feature_extractor=extractor)`` writes them with TF 2.15.1; a CenterNet model's
checkpoint puts its own prefix before). TF kernels are ``[kh, kw, in, out]``; torch weights
``[out, in, kh, kw]``. TF's ``IdentityLayer`` (a skip without a conv, ReLU off) has no weights and is
``nn.Identity`` / absent here.

Facts kept from the TF code:

* Every conv has no bias and is followed by batch norm with epsilon 1e-5 and Keras momentum 0.1 (the
  moving average keeps 10% of its old value per step), i.e. torch ``momentum=0.9``.
* A conv with a kernel over 1 pads ``k // 2`` zeros on each side and then convolves 'valid' (TF's
  ``ZeroPadding2D``), stride 2 included: symmetric padding, not TF's 'SAME' (``KerasFixedPaddingConv2d``
  keeps ``use_tf_same_padding`` off these). 1x1 convs do not pad.
* A residual block is ``relu(bn(conv3x3(relu(bn(conv3x3_s(x))))) + skip(x))``, ``skip`` a 1x1 conv +
  batch norm where the stride or the width changes.
* An encoder-decoder stage: ``encoder_block1`` (kept resolution) + ``upsample(decoder(inner(
  encoder_block2(x))))``, nearest-neighbour upsampling by 2; ``inner`` is the next stage, or at the
  bottom a run of residual blocks.
* Between two stacked hourglasses: ``residual(relu(bn(conv1x1(x_in)) + bn(conv1x1(out))))`` where
  ``x_in`` is the stacked hourglass's input and ``out`` its output (after ``output_conv``).
* ``forward`` returns every hourglass's ``output_conv`` output (2 for hourglass_104), each used by the
  CenterNet loss; with ``initial_downsample`` (the default) they are at stride 4.

Small images: the deepest stage is ``H / size_divisor`` pixels high. Where it is 1x1 and the batch is 2,
its batch norms see two values per channel; their training-mode gradient is then rounding noise divided
by a vanishing deviation (hourglass_104 at 128 px, batch 2: an infinite gradient norm, as in TF). Train
at 256 px or more (the zoo's 512 gives 4x4), or on larger batches.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from raredet.modeling.backbones import KerasFixedPaddingConv2d
from raredet.modeling.layers import batch_norm, keras_default_init

BATCH_NORM_EPSILON = 1e-5
# Keras' BatchNormalization(momentum=0.1) keeps 0.1 of the old moving average: torch's momentum is 0.9.
BATCH_NORM_MOMENTUM = 1.0 - 0.1


class ConvolutionalBlock(nn.Module):
    """TF ``ConvolutionalBlock``: conv (no bias, padded ``k // 2`` each side) -> batch norm -> ReLU
    (``relu=False``: none; TF's ``SkipConvolution`` is this with a 1x1 kernel and no ReLU)."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, relu: bool = True,
        frozen_bn: bool = False,
    ) -> None:
        super().__init__()
        conv_cls = KerasFixedPaddingConv2d if stride > 1 else nn.Conv2d
        self.conv = conv_cls(in_channels, out_channels, kernel_size, stride, kernel_size // 2, bias=False)
        keras_default_init(self.conv)
        self.norm = batch_norm(out_channels, frozen_bn, BATCH_NORM_EPSILON, BATCH_NORM_MOMENTUM)
        self.relu = relu

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm(self.conv(x))
        return x.relu_() if self.relu else x


class ResidualBlock(nn.Module):
    """TF ``ResidualBlock``: ``conv_block`` (3x3, strided) -> ``conv`` (3x3) -> ``norm``, plus ``skip``
    (a 1x1 conv + batch norm with ``skip_conv``, else the identity), then ReLU."""

    def __init__(
        self, in_channels: int, out_channels: int, stride: int = 1, skip_conv: bool = False,
        frozen_bn: bool = False,
    ) -> None:
        super().__init__()
        if not skip_conv and (stride > 1 or in_channels != out_channels):
            raise ValueError(f"a residual block {in_channels} -> {out_channels} with stride {stride} "
                             "needs skip_conv")
        self.conv_block = ConvolutionalBlock(in_channels, out_channels, 3, stride, frozen_bn=frozen_bn)
        self.conv = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        keras_default_init(self.conv)
        self.norm = batch_norm(out_channels, frozen_bn, BATCH_NORM_EPSILON, BATCH_NORM_MOMENTUM)
        self.skip: nn.Module = (
            ConvolutionalBlock(in_channels, out_channels, 1, stride, relu=False, frozen_bn=frozen_bn)
            if skip_conv else nn.Identity()
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.norm(self.conv(self.conv_block(x)))
        return (out + self.skip(x)).relu_()


class InputBlock(nn.Module):
    """TF ``InputDownsampleBlock`` (``downsample``: 7x7 conv stride 2, then a residual block stride 2:
    stride 4 in all) or ``InputConvBlock`` (3x3 conv, residual block, both stride 1)."""

    def __init__(self, in_channels: int, conv_channels: int, out_channels: int, downsample: bool,
                 frozen_bn: bool = False) -> None:
        super().__init__()
        kernel, stride = (7, 2) if downsample else (3, 1)
        self.conv_block = ConvolutionalBlock(in_channels, conv_channels, kernel, stride, frozen_bn=frozen_bn)
        self.residual_block = ResidualBlock(conv_channels, out_channels, stride, skip_conv=True,
                                            frozen_bn=frozen_bn)

    def forward(self, x: Tensor) -> Tensor:
        return self.residual_block(self.conv_block(x))


def repeated_residual_blocks(
    in_channels: int, out_channels: int, num_blocks: int, initial_stride: int = 1,
    residual_channels: int | None = None, initial_skip_conv: bool = False, frozen_bn: bool = False,
) -> nn.Sequential:
    """TF ``_make_repeated_residual_blocks``: ``num_blocks - 1`` blocks of ``residual_channels`` (default
    ``out_channels``; the first strided, with a skip conv where strided or ``initial_skip_conv``), then
    one of ``out_channels`` (strided only when it is the only block; skip conv where the width changes)."""
    residual_channels = residual_channels or out_channels
    blocks = []
    channels = in_channels
    for i in range(num_blocks - 1):
        stride = initial_stride if i == 0 else 1
        skip_conv = stride > 1 or (i == 0 and initial_skip_conv)
        blocks.append(ResidualBlock(channels, residual_channels, stride, skip_conv, frozen_bn))
        channels = residual_channels
    if num_blocks == 1:
        stride, skip_conv = initial_stride, initial_stride > 1
    else:
        stride, skip_conv = 1, residual_channels != out_channels
    # TF decides the last block's skip from the widths it was asked for, not from its input's width;
    # a skip conv is also needed where the input's width differs (never in TF's own configurations).
    skip_conv = skip_conv or channels != out_channels
    blocks.append(ResidualBlock(channels, out_channels, stride, skip_conv, frozen_bn))
    return nn.Sequential(*blocks)


class EncoderDecoderBlock(nn.Module):
    """TF ``EncoderDecoderBlock``: one stage of an hourglass, recursive through ``inner_block``.

    ``channel_dims[0]`` is this stage's width (its input's and its output's), ``channel_dims[1]`` the
    downsampled width; ``blocks_per_stage[0]`` residual blocks per encoder / decoder run."""

    def __init__(
        self, num_stages: int, channel_dims: list[int], blocks_per_stage: list[int],
        stagewise_downsample: bool = True, encoder_decoder_shortcut: bool = True, frozen_bn: bool = False,
    ) -> None:
        super().__init__()
        channels, down_channels = channel_dims[0], channel_dims[1]
        self.encoder_block1: nn.Sequential | None = None
        if encoder_decoder_shortcut:
            self.encoder_block1 = repeated_residual_blocks(
                channels, channels, blocks_per_stage[0], frozen_bn=frozen_bn)
        stride = 2 if stagewise_downsample else 1
        self.encoder_block2 = repeated_residual_blocks(
            channels, down_channels, blocks_per_stage[0], initial_stride=stride,
            initial_skip_conv=channels != down_channels, frozen_bn=frozen_bn)
        self.inner_block: nn.Sequential
        if num_stages > 1:
            self.inner_block = nn.Sequential(EncoderDecoderBlock(
                num_stages - 1, channel_dims[1:], blocks_per_stage[1:], stagewise_downsample,
                encoder_decoder_shortcut, frozen_bn))
        else:
            self.inner_block = repeated_residual_blocks(
                down_channels, down_channels, blocks_per_stage[1], frozen_bn=frozen_bn)
        self.decoder_block = repeated_residual_blocks(
            down_channels, channels, blocks_per_stage[0], residual_channels=down_channels,
            frozen_bn=frozen_bn)
        up = nn.Upsample(scale_factor=2.0, mode="nearest")
        self.upsample: nn.Module = up if stride > 1 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = self.upsample(self.decoder_block(self.inner_block(self.encoder_block2(x))))
        return out if self.encoder_block1 is None else self.encoder_block1(x) + out


class HourglassNetwork(nn.Module):
    """TF ``HourglassNetwork``: an input block, ``num_hourglasses`` stacked encoder-decoders, each with
    an ``output_conv`` (3x3 conv-bn-relu), joined by the intermediate connections.

    ``forward(x [B, 3, H, W])`` returns ``num_outputs`` maps ``[B, out_channels, H / stride, W / stride]``
    (``stride`` 4 with ``initial_downsample``, else 1). ``H`` and ``W`` must be multiples of
    ``size_divisor``: each downsampling stage halves the map and the upsampled map is added back to it.
    """

    def __init__(
        self, num_stages: int, input_channel_dims: int, channel_dims_per_stage: list[int],
        blocks_per_stage: list[int], num_hourglasses: int, initial_downsample: bool = True,
        stagewise_downsample: bool = True, encoder_decoder_shortcut: bool = True, in_channels: int = 3,
        frozen_bn: bool = False,
    ) -> None:
        super().__init__()
        if len(channel_dims_per_stage) != num_stages + 1 or len(blocks_per_stage) != num_stages + 1:
            raise ValueError(f"an hourglass of {num_stages} stages takes {num_stages + 1} channel_dims and "
                             f"blocks_per_stage, got {channel_dims_per_stage} and {blocks_per_stage}")
        width = channel_dims_per_stage[0]
        self.out_channels = width
        self.num_outputs = num_hourglasses
        self.stride = 4 if initial_downsample else 1
        self.size_divisor = self.stride * (2 ** num_stages if stagewise_downsample else 1)
        block = InputBlock(in_channels, input_channel_dims, width, initial_downsample, frozen_bn)
        # TF names the input block after what it does; so does the state dict.
        self.downsample_input: InputBlock | None = block if initial_downsample else None
        self.conv_input: InputBlock | None = None if initial_downsample else block
        self.hourglass_network = nn.ModuleList(
            EncoderDecoderBlock(num_stages, channel_dims_per_stage, blocks_per_stage, stagewise_downsample,
                                encoder_decoder_shortcut, frozen_bn)
            for _ in range(num_hourglasses))
        self.output_conv = nn.ModuleList(
            ConvolutionalBlock(width, width, 3, frozen_bn=frozen_bn) for _ in range(num_hourglasses))
        between = range(num_hourglasses - 1)
        self.intermediate_conv1 = nn.ModuleList(
            ConvolutionalBlock(width, width, 1, relu=False, frozen_bn=frozen_bn) for _ in between)
        self.intermediate_conv2 = nn.ModuleList(
            ConvolutionalBlock(width, width, 1, relu=False, frozen_bn=frozen_bn) for _ in between)
        self.intermediate_residual = nn.ModuleList(
            ResidualBlock(width, width, frozen_bn=frozen_bn) for _ in between)

    def forward(self, x: Tensor) -> list[Tensor]:
        height, width = x.shape[-2:]
        if not torch.jit.is_tracing() and (height % self.size_divisor or width % self.size_divisor):
            raise ValueError(f"the hourglass network takes images whose height and width are multiples of "
                             f"{self.size_divisor}, got {height}x{width}: resize or pad to such a size")
        x = self.downsample_input(x) if self.downsample_input is not None else self._conv_input(x)
        outputs = []
        for i, hourglass in enumerate(self.hourglass_network):
            out = self.output_conv[i](hourglass(x))
            outputs.append(out)
            if i < len(self.intermediate_residual):
                joined = self.intermediate_conv1[i](x) + self.intermediate_conv2[i](out)
                x = self.intermediate_residual[i](joined.relu_())
        return outputs

    def _conv_input(self, x: Tensor) -> Tensor:
        assert self.conv_input is not None  # built when downsample_input is not
        return self.conv_input(x)


def hourglass_104(in_channels: int = 3, frozen_bn: bool = False) -> HourglassNetwork:
    """CenterNet's Hourglass-104 (TF ``hourglass_104``): two hourglasses of 5 stages, widths
    256, 256, 384, 384, 384, 512, two residual blocks per stage and four at the bottom; 256 output
    channels at stride 4, two outputs."""
    return HourglassNetwork(
        num_stages=5, input_channel_dims=128, channel_dims_per_stage=[256, 256, 384, 384, 384, 512],
        blocks_per_stage=[2, 2, 2, 2, 2, 4], num_hourglasses=2, in_channels=in_channels, frozen_bn=frozen_bn)


def single_stage_hourglass(
    input_channel_dims: int, channel_dims_per_stage: list[int], blocks_per_stage: list[int],
    initial_downsample: bool = True, stagewise_downsample: bool = True,
    encoder_decoder_shortcut: bool = True, in_channels: int = 3, frozen_bn: bool = False,
) -> HourglassNetwork:
    """TF ``single_stage_hourglass``: one hourglass with ``len(channel_dims_per_stage) - 1`` stages."""
    return HourglassNetwork(
        num_stages=len(channel_dims_per_stage) - 1, input_channel_dims=input_channel_dims,
        channel_dims_per_stage=channel_dims_per_stage, blocks_per_stage=blocks_per_stage, num_hourglasses=1,
        initial_downsample=initial_downsample, stagewise_downsample=stagewise_downsample,
        encoder_decoder_shortcut=encoder_decoder_shortcut, in_channels=in_channels, frozen_bn=frozen_bn)


# (blocks_per_stage, widths per stage as multiples of num_channels) of TF's single-hourglass variants.
SINGLE_HOURGLASS_SHAPES: dict[str, tuple[list[int], list[int]]] = {
    "hourglass_10": ([1, 1], [2, 2]),
    "hourglass_20": ([1, 2, 2], [2, 2, 3]),
    "hourglass_32": ([2, 2, 2, 2], [2, 2, 3, 3]),
    "hourglass_52": ([2, 2, 2, 2, 2, 4], [2, 2, 3, 3, 3, 4]),
    "hourglass_100": ([4, 4, 4, 4, 4, 8], [2, 2, 3, 3, 3, 4]),
}

# num_channels the TF OD API's CenterNet feature extractors give the single-hourglass variants
# (models/center_net_hourglass_feature_extractor.py); DeepMAC passes its own.
CENTER_NET_NUM_CHANNELS = {"hourglass_10": 32, "hourglass_20": 48, "hourglass_32": 48, "hourglass_52": 64}


def single_hourglass(
    name: str, num_channels: int, initial_downsample: bool = True, in_channels: int = 3,
    frozen_bn: bool = False,
) -> HourglassNetwork:
    """TF ``hourglass_10/20/32/52/100(num_channels, initial_downsample)`` by name (a key of
    ``SINGLE_HOURGLASS_SHAPES``): input block of ``num_channels``, stage widths multiples of it."""
    if name not in SINGLE_HOURGLASS_SHAPES:
        raise ValueError(f"unknown hourglass {name!r}; valid: {sorted(SINGLE_HOURGLASS_SHAPES)}")
    blocks, multiples = SINGLE_HOURGLASS_SHAPES[name]
    return single_stage_hourglass(num_channels, [m * num_channels for m in multiples], blocks,
                                  initial_downsample, in_channels=in_channels, frozen_bn=frozen_bn)


def hourglass_20_uniform_size(num_channels: int, in_channels: int = 3) -> HourglassNetwork:
    """TF ``hourglass_20_uniform_size`` (DeepMAC): hourglass_20's shape at stride 1 everywhere."""
    return single_stage_hourglass(num_channels, [2 * num_channels, 2 * num_channels, 3 * num_channels],
                                  [1, 2, 2], initial_downsample=False, stagewise_downsample=False,
                                  in_channels=in_channels)


def hourglass_20_no_shortcut(num_channels: int, in_channels: int = 3) -> HourglassNetwork:
    """TF ``hourglass_20_no_shortcut`` (DeepMAC): hourglass_20 at stride 1 without the encoder-decoder
    shortcuts."""
    return single_stage_hourglass(num_channels, [2 * num_channels, 2 * num_channels, 3 * num_channels],
                                  [1, 2, 2], initial_downsample=False, encoder_decoder_shortcut=False,
                                  in_channels=in_channels)


def center_net_hourglass(name: str, frozen_bn: bool = False) -> HourglassNetwork:
    """The hourglass the TF OD API's CenterNet ``feature_extractor.type`` ``name`` builds:
    ``hourglass_104`` or ``hourglass_10/20/32/52`` (widths of ``CENTER_NET_NUM_CHANNELS``)."""
    if name == "hourglass_104":
        return hourglass_104(frozen_bn=frozen_bn)
    if name not in CENTER_NET_NUM_CHANNELS:
        raise ValueError(f"unknown CenterNet hourglass {name!r}; valid: "
                         f"{sorted([*CENTER_NET_NUM_CHANNELS, 'hourglass_104'])}")
    return single_hourglass(name, CENTER_NET_NUM_CHANNELS[name], frozen_bn=frozen_bn)
