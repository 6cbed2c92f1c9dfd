"""CenterNet's ResNet v2 extractor (modeling/resnet_v2.py) against the TF OD API's own: parameter counts
of resnet_v2_50 / resnet_v2_101 (tests/fixtures/center_net_extractors/counts.json, written by
make_counts.py from the TF extractors), and the outputs of a narrow network built from Keras'
ResNet v2 code and the TF OD API's upsampling stages, with its weights loaded by the documented name
mapping (resnet_v2_tiny.npz, written by make_parity.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from raredet.modeling import resnet_v2
from raredet.modeling.backbones import KerasFixedPaddingConv2d
from raredet.modeling.tf_compat import use_tf_same_padding

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "center_net_extractors"
COUNTS = json.loads((FIXTURES / "counts.json").read_text())
LEAVES = {"kernel": "weight", "bias": "bias", "gamma": "weight", "beta": "bias",
          "moving_mean": "running_mean", "moving_variance": "running_var"}


def torch_key(tf_name: str) -> str:
    """The module docstring's mapping of a Keras weight name onto a state-dict key."""
    layer, leaf = tf_name.split("/")
    if layer == "conv1_conv":
        module = "conv1"
    elif block := re.fullmatch(r"conv(\d)_block(\d+)_(preact_bn|(\d)_(conv|bn))", layer):
        part = block[3] if block[4] is None else f"{block[5]}{block[4]}"
        module = f"conv{block[1]}.{int(block[2]) - 1}.{part}"
    else:
        stage = re.fullmatch(r"upsample_(\d)_(conv|conv_bn|deconv|deconv_bn)", layer)
        assert stage is not None, tf_name
        module = f"upsample.{stage[1]}.{stage[2]}"
    return f"{module}.{LEAVES[leaf]}"


def counts_of(module: torch.nn.Module) -> tuple[int, int]:
    """(trainable, non-trainable) as Keras counts: parameters; batch-norm moving means and variances."""
    trainable = sum(p.numel() for p in module.parameters())
    moving = sum(b.numel() for n, b in module.named_buffers() if n.endswith(("running_mean", "running_var")))
    return trainable, moving


def test_narrow_network_computes_as_keras_and_the_tf_od_api():
    arrays = dict(np.load(FIXTURES / "resnet_v2_tiny.npz"))
    network = resnet_v2.CenterNetResNetV2(blocks=(2, 2, 2, 2), stage_filters=(4, 4, 8, 8),
                                          upsample_filters=(8, 8, 4))
    state = {}
    for key, value in arrays.items():
        if key.startswith("w/"):
            tensor = torch.from_numpy(value)
            state[torch_key(key[2:])] = tensor.permute(3, 2, 0, 1) if tensor.ndim == 4 else tensor
    assert set(state) == {k for k in network.state_dict() if not k.endswith("num_batches_tracked")}
    network.load_state_dict(state, strict=False)
    network.eval()
    with torch.no_grad():
        (out,) = network(torch.from_numpy(arrays["input"]).permute(0, 3, 1, 2))  # pixels 0..255
    torch.testing.assert_close(out, torch.from_numpy(arrays["output_0"]).permute(0, 3, 1, 2),
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["resnet_v2_50", "resnet_v2_101"])
def test_counts_and_shape(name):
    network = getattr(resnet_v2, name)().eval()
    reference = COUNTS[name]
    # The weights the TF extractor runs; Keras' post_bn (after conv5_block3_out, never run) is not built.
    assert counts_of(network) == (reference["used_trainable"], reference["used_non_trainable"])
    assert reference["trainable"] + reference["non_trainable"] - sum(counts_of(network)) == 4 * 2048
    with torch.no_grad():
        outputs = network(torch.zeros(1, 3, 128, 128))
    assert [list(o.shape) for o in outputs] == [[b, c, h, w] for b, h, w, c in reference["output_shape_128"]]
    assert (network.num_outputs, network.out_channels) == (1, 64)


def test_small_input_and_batch():
    network = resnet_v2.CenterNetResNetV2(blocks=(2, 2, 2, 2), stage_filters=(4, 4, 8, 8),
                                          upsample_filters=(8, 8, 4)).eval()
    with torch.no_grad():
        (out,) = network(torch.zeros(3, 3, 64, 96))
    assert out.shape == (3, 4, 16, 24)


def test_size_not_a_multiple_of_32_is_refused():
    network = resnet_v2.CenterNetResNetV2(blocks=(2, 2, 2, 2), stage_filters=(4, 4, 8, 8))
    with pytest.raises(ValueError, match="multiples of 32, got 64x80"):
        network(torch.zeros(1, 3, 64, 80))


def test_transposed_conv_is_tfs_same():
    # One input pixel of value 1 at (0, 0), a kernel numbered 0..8: TF's 'same' output 2n keeps the
    # full transposed output's first rows and columns, so output (0, 0) is the kernel's (0, 0) entry and
    # output (1, 1) the centre, 4.
    deconv = resnet_v2.TFSameConvTranspose2d(1, 1, 3, stride=2, bias=False)
    with torch.no_grad():
        deconv.weight.copy_(torch.arange(9.0).reshape(1, 1, 3, 3))
        out = deconv(torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]]))
    assert out.shape == (1, 1, 4, 4)
    assert out[0, 0, :3, :3].tolist() == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert out[0, 0, 3].abs().sum() == 0 and out[0, 0, :, 3].abs().sum() == 0


def test_strided_convs_keep_kerass_explicit_padding():
    network = resnet_v2.CenterNetResNetV2(blocks=(2, 2, 2, 2), stage_filters=(4, 4, 8, 8))
    strided = [m for m in network.modules() if isinstance(m, torch.nn.Conv2d) and m.stride[0] > 1]
    assert all(isinstance(m, KerasFixedPaddingConv2d) for m in strided)
    assert use_tf_same_padding(network) == 0


def test_batch_norm_epsilons_as_keras():
    network = resnet_v2.CenterNetResNetV2(blocks=(2, 2, 2, 2), stage_filters=(4, 4, 8, 8))
    assert network.conv2[0].preact_bn.eps == pytest.approx(1.001e-5)
    assert network.upsample[0].conv_bn.eps == pytest.approx(1e-3)
    assert network.upsample[0].conv_bn.momentum == pytest.approx(0.01)  # Keras' momentum 0.99


def test_unknown_shape_refused():
    with pytest.raises(ValueError, match="4 stages"):
        resnet_v2.CenterNetResNetV2(blocks=(3, 4, 6))


def test_trains_and_traces():
    network = resnet_v2.CenterNetResNetV2(blocks=(2, 2, 2, 2), stage_filters=(4, 4, 8, 8),
                                          upsample_filters=(8, 8, 4))
    (out,) = network(torch.rand(2, 3, 64, 64) * 255)
    out.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in network.parameters())
    traced = torch.jit.trace(network.eval(), torch.rand(1, 3, 64, 64), check_trace=False, strict=False)
    assert traced(torch.rand(1, 3, 96, 64))[0].shape == (1, 4, 24, 16)
