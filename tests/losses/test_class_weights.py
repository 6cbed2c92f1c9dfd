"""Class weight resolution: schemes by hand, the total-box-weight invariant, clipping, overrides."""

import math

import pytest
import torch

from raredet.losses import (
    class_weight_tensor,
    format_class_weight_table,
    resolve_class_alpha,
    resolve_class_weights,
)

NAMES = ["part", "scratch", "crack"]
IDS = [1, 2, 5]
BOXES = [900, 90, 10]
IMAGES = [100, 40, 5]


def _weights(**kwargs):
    kwargs.setdefault("explicit", {})
    return resolve_class_weights(NAMES, IDS, BOXES, IMAGES, **kwargs)


def test_inverse_frequency_by_hand():
    # raw 1/n = (1/900, 1/90, 1/10); sum n*raw = 3; scale = 1000/3 -> (10/27, 100/27, 100/3).
    got = [w.weight for w in _weights(auto_scheme="INVERSE_FREQUENCY")]
    assert got == pytest.approx([10 / 27, 100 / 27, 100 / 3])


def test_sqrt_inverse_frequency_by_hand():
    # raw 1/sqrt(n); sum n/sqrt(n) = 30 + sqrt(90) + sqrt(10).
    s = 1000 / (30 + math.sqrt(90) + math.sqrt(10))
    got = [w.weight for w in _weights(auto_scheme="SQRT_INVERSE_FREQUENCY")]
    assert got == pytest.approx([s / 30, s / math.sqrt(90), s / math.sqrt(10)])


def test_effective_number_by_hand():
    beta = 0.99
    raw = [(1 - beta) / (1 - beta**n) for n in BOXES]
    s = 1000 / sum(n * r for n, r in zip(BOXES, raw, strict=True))
    got = [w.weight for w in _weights(auto_scheme="EFFECTIVE_NUMBER", beta=beta)]
    assert got == pytest.approx([r * s for r in raw])


@pytest.mark.parametrize("scheme", ["INVERSE_FREQUENCY", "SQRT_INVERSE_FREQUENCY", "EFFECTIVE_NUMBER"])
@pytest.mark.parametrize("count", ["BOXES", "IMAGES"])
def test_auto_weights_leave_total_box_weight_unchanged(scheme, count):
    weights = _weights(auto_scheme=scheme, count=count)
    total = sum(n * w.weight for n, w in zip(BOXES, weights, strict=True))
    assert total == pytest.approx(sum(BOXES))
    assert [w.source for w in weights] == [f"auto:{scheme}"] * 3
    assert weights[2].weight > weights[0].weight  # the rare class gains


def test_image_counts_drive_the_scheme():
    # raw 1/images = (1/100, 1/40, 1/5); scale so that boxes * w sums to 1000.
    raw = [1 / 100, 1 / 40, 1 / 5]
    s = 1000 / (900 / 100 + 90 / 40 + 10 / 5)
    weights = _weights(auto_scheme="INVERSE_FREQUENCY", count="IMAGES")
    assert [w.weight for w in weights] == pytest.approx([r * s for r in raw])
    assert [w.count for w in weights] == IMAGES


def test_max_weight_clips_after_rescale_and_explicit_overrides():
    weights = _weights(auto_scheme="INVERSE_FREQUENCY", max_weight=5.0, explicit={0: 0.5})
    assert [w.weight for w in weights] == pytest.approx([0.5, 100 / 27, 5.0])
    assert [w.source for w in weights] == ["explicit", "auto:INVERSE_FREQUENCY", "auto:INVERSE_FREQUENCY"]


def test_explicit_only_and_defaults():
    weights = _weights(explicit={2: 8.0})
    assert [(w.weight, w.source) for w in weights] == [(1.0, "default"), (1.0, "default"), (8.0, "explicit")]
    assert [(w.index, w.id, w.name) for w in weights] == [(0, 1, "part"), (1, 2, "scratch"), (2, 5, "crack")]
    assert torch.equal(class_weight_tensor(weights), torch.tensor([1.0, 1.0, 8.0]))


def test_class_without_boxes_warns_and_gets_one():
    with pytest.warns(UserWarning, match="'crack'"):
        weights = resolve_class_weights(NAMES, IDS, [900, 100, 0], [10, 5, 0], {}, "INVERSE_FREQUENCY")
    assert weights[2].weight == 1.0 and weights[2].source == "default"
    # the other two are rescaled among themselves: raw (1/900, 1/100), scale 1000/2.
    assert [weights[0].weight, weights[1].weight] == pytest.approx([500 / 900, 5.0])


def test_bad_inputs_raise_value_errors():
    with pytest.raises(ValueError, match="INVERSE_FREQUENCY"):
        _weights(auto_scheme="INVERSE")
    with pytest.raises(ValueError, match="beta"):
        _weights(auto_scheme="EFFECTIVE_NUMBER", beta=1.0)
    with pytest.raises(ValueError, match="'scratch'"):
        _weights(explicit={1: -2.0})
    with pytest.raises(ValueError, match="IMAGES"):
        _weights(auto_scheme="INVERSE_FREQUENCY", count="ANCHORS")


def test_table_lists_every_class():
    table = format_class_weight_table(_weights(auto_scheme="INVERSE_FREQUENCY", explicit={0: 2.0}))
    lines = table.splitlines()
    assert lines[0].split() == ["index", "id", "name", "count", "weight", "source"]
    assert len(lines) == 5
    assert lines[2].split() == ["0", "1", "part", "900", "2", "explicit"]
    assert lines[4].split()[2:] == ["crack", "10", "33.33", "auto:INVERSE_FREQUENCY"]


def test_class_alpha_resolution():
    alpha = resolve_class_alpha(3, {2: 0.75}, NAMES)
    assert torch.isnan(alpha[:2]).all() and alpha[2] == 0.75
    with pytest.raises(ValueError, match="'crack'"):
        resolve_class_alpha(3, {2: 1.5}, NAMES)
