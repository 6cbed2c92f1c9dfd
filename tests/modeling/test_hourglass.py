"""The hourglass networks (modeling/hourglass.py) against the TF OD API's own: parameter counts of every
CenterNet hourglass (tests/fixtures/center_net_extractors/counts.json, written by make_counts.py from the
TF extractors), and outputs of narrow networks with TF's weights loaded by the documented name mapping
(the *.npz written by make_parity.py from hourglass_network.py's layers)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from raredet.modeling import hourglass
from raredet.modeling.backbones import KerasFixedPaddingConv2d
from raredet.modeling.tf_compat import use_tf_same_padding

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "center_net_extractors"
COUNTS = json.loads((FIXTURES / "counts.json").read_text())
TF_TO_TORCH = {"kernel": "weight", "gamma": "weight", "beta": "bias", "moving_mean": "running_mean",
               "moving_variance": "running_var"}


def tf_state_dict(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """The mapping of the module docstring: TF object path -> state-dict key, kernels transposed."""
    state = {}
    for key, value in arrays.items():
        if not key.startswith("w/"):
            continue
        *path, leaf = key[2:].split("/")
        tensor = torch.from_numpy(value)
        tensor = tensor.permute(3, 2, 0, 1) if leaf == "kernel" else tensor
        state[".".join([*path, TF_TO_TORCH[leaf]])] = tensor
    return state


def counts_of(module: torch.nn.Module) -> tuple[int, int]:
    """(trainable, non-trainable) as Keras counts: parameters; batch-norm moving means and variances."""
    trainable = sum(p.numel() for p in module.parameters())
    moving = sum(b.numel() for n, b in module.named_buffers() if n.endswith(("running_mean", "running_var")))
    return trainable, moving


def assert_loads_and_matches(network: hourglass.HourglassNetwork, fixture: str) -> None:
    arrays = dict(np.load(FIXTURES / f"{fixture}.npz"))
    state = tf_state_dict(arrays)
    expected_keys = {k for k in network.state_dict() if not k.endswith("num_batches_tracked")}
    assert set(state) == expected_keys  # every TF weight has its place, and every place a TF weight
    network.load_state_dict(state, strict=False)
    network.eval()
    with torch.no_grad():
        outputs = network(torch.from_numpy(arrays["input"]).permute(0, 3, 1, 2))
    assert len(outputs) == network.num_outputs == sum(k.startswith("output_") for k in arrays)
    for i, out in enumerate(outputs):
        expected = torch.from_numpy(arrays[f"output_{i}"]).permute(0, 3, 1, 2)
        torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)


def test_stacked_hourglass_computes_as_tf():
    # Two hourglasses (output_conv, the intermediate connections), 2 stages, widths 8, 8, 12, stride 4.
    network = hourglass.HourglassNetwork(
        num_stages=2, input_channel_dims=4, channel_dims_per_stage=[8, 8, 12], blocks_per_stage=[1, 2, 2],
        num_hourglasses=2)
    assert_loads_and_matches(network, "hourglass_stacked")


def test_deepmac_variants_compute_as_tf():
    # initial_downsample=False (InputConvBlock, stride 1), no encoder-decoder shortcut, no stage downsampling.
    assert_loads_and_matches(hourglass.hourglass_20_no_shortcut(4), "hourglass_20_no_shortcut")
    assert_loads_and_matches(hourglass.hourglass_20_uniform_size(4), "hourglass_20_uniform_size")


@pytest.mark.parametrize("name", ["hourglass_10", "hourglass_20", "hourglass_32", "hourglass_52"])
def test_single_hourglass_counts_and_shapes(name):
    network = hourglass.center_net_hourglass(name).eval()
    reference = COUNTS[name]
    assert counts_of(network) == (reference["trainable"], reference["non_trainable"])
    with torch.no_grad():
        outputs = network(torch.zeros(1, 3, 128, 128))
    # TF's NHWC output shapes at 128 x 128, as NCHW.
    assert [list(o.shape) for o in outputs] == [[b, c, h, w] for b, h, w, c in reference["output_shape_128"]]
    assert network.out_channels == outputs[0].shape[1] and network.num_outputs == 1


def test_hourglass_104_counts_and_two_outputs_at_stride_4():
    network = hourglass.hourglass_104().eval()
    reference = COUNTS["hourglass_104"]  # 187,700,352 trainable + 117,504 moving statistics
    assert counts_of(network) == (reference["trainable"], reference["non_trainable"])
    assert network.num_outputs == 2 and network.out_channels == 256 and network.size_divisor == 128
    with torch.no_grad():
        outputs = network(torch.zeros(1, 3, 128, 128))
    assert [list(o.shape) for o in outputs] == [[1, 256, 32, 32]] * 2


def test_small_input_shapes():
    network = hourglass.center_net_hourglass("hourglass_10").eval()  # one stage: multiples of 8
    with torch.no_grad():
        (out,) = network(torch.zeros(2, 3, 64, 96))
    assert out.shape == (2, 64, 16, 24)


def test_size_not_a_multiple_is_refused_with_the_divisor():
    network = hourglass.center_net_hourglass("hourglass_20")  # two stages: multiples of 16
    with pytest.raises(ValueError, match="multiples of 16, got 64x72"):
        network(torch.zeros(1, 3, 64, 72))


def test_strided_convs_pad_symmetrically_even_under_tf_same_padding():
    # TF pads k // 2 zeros before its 'valid' strided convs (ZeroPadding2D), not 'SAME': the switch
    # that gives other networks TF's 'SAME' must leave these alone.
    network = hourglass.center_net_hourglass("hourglass_10")
    strided = [m for m in network.modules() if isinstance(m, torch.nn.Conv2d) and m.stride[0] > 1]
    assert strided and all(isinstance(m, KerasFixedPaddingConv2d) for m in strided)
    assert use_tf_same_padding(network) == 0


def test_batch_norm_as_tf():
    bn = hourglass.center_net_hourglass("hourglass_10").output_conv[0].norm
    # Keras BatchNormalization(epsilon=1e-5, momentum=0.1): new = 0.1 old + 0.9 batch, torch momentum 0.9.
    assert (bn.eps, bn.momentum) == (1e-5, 0.9)


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(ValueError, match="hourglass_104"):
        hourglass.center_net_hourglass("hourglass_100")
    with pytest.raises(ValueError, match="hourglass_100"):
        hourglass.single_hourglass("hourglass_7", 4)


def test_trains_and_traces():
    # Train mode (batch statistics, in-place ReLUs after batch norm) back-propagates into every weight;
    # torch.jit.trace (raredet export) keeps both outputs.
    network = hourglass.HourglassNetwork(2, 4, [8, 8, 12], [1, 2, 2], 2)
    outputs = network(torch.rand(2, 3, 32, 32))
    sum(o.square().mean() for o in outputs).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in network.parameters())
    traced = torch.jit.trace(network.eval(), torch.rand(1, 3, 32, 32), check_trace=False, strict=False)
    assert [o.shape for o in traced(torch.rand(1, 3, 48, 32))] == [(1, 8, 12, 8)] * 2
