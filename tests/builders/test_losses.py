"""builders/losses.py with the pair-aware losses from a pipeline.config: functions, parameters and
statistics wired; validation errors; `raredet config check`; the built loss trains a batch."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from google.protobuf import text_format
from tests.helpers.configs import write_variant

from raredet import builders
from raredet import config as cfg
from raredet.commands.config import check
from raredet.data.stats import DatasetStats
from raredet.errors import ConfigError
from raredet.losses import (
    ConfusionGateSchedule,
    GradientRatioStatistics,
    SeesawStatistics,
    confusion_gated_focal,
    equalized_focal,
    seesaw_sigmoid_focal,
)
from raredet.protos import ssd_pb2

FOCAL = 'weighted_sigmoid_focal { gamma: 2.0 alpha: 0.25 class_alpha { name: "crack" value: 0.75 } }'


def variant(tmp_path: Path, block: str) -> Path:
    """The weighted fixture with its focal loss replaced by `block`."""
    return write_variant(tmp_path, FOCAL, block)


def build(path: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", cfg.ConfigWarning)
        loaded = cfg.load(path)
    ssd, lm = loaded.pipeline.model.ssd, loaded.label_map
    return builders.build_loss(ssd, lm, builders.build_class_weights(ssd.loss, lm, None))


@pytest.mark.parametrize(
    ("block", "fn", "params", "stats_type"),
    [
        ("seesaw_sigmoid_focal { mitigation_power: 0.5 compensation_score_floor: 0.01 }",
         seesaw_sigmoid_focal, {"mitigation_power": 0.5, "compensation_score_floor": 0.01}, SeesawStatistics),
        ("confusion_gated_focal { gate_threshold: 0.6 warmup_steps: 100 gate_sharpness: 20 }",
         confusion_gated_focal, {"gate_threshold": 0.6, "gate_sharpness": 20.0}, ConfusionGateSchedule),
        ("equalized_focal { scale: 8 alpha: 0.5 gradient_decay: 0.99 }", equalized_focal,
         {"scale": 8.0, "alpha": 0.5}, GradientRatioStatistics),
        ("equalized_focal { }", equalized_focal, {}, GradientRatioStatistics),
    ],
)
def test_builders_wire_function_params_and_statistics(tmp_path, block, fn, params, stats_type):
    loss = build(variant(tmp_path, block))
    assert loss.classification_loss is fn
    assert loss.classification_loss_params == params  # fields that set up statistics are not passed on
    stats = loss.classification_statistics
    assert isinstance(stats, stats_type)
    if isinstance(stats, ConfusionGateSchedule):
        assert stats.warmup_steps == 100
    if isinstance(stats, GradientRatioStatistics):
        assert stats.decay == pytest.approx(0.99 if "decay" in block else 1.0)
    if isinstance(stats, SeesawStatistics):
        assert stats.class_counts.shape == (3,)
    # The fixture's miner and class weights (crack 8, dent 2) stay as they are.
    assert loss.hard_example_miner is not None
    assert loss.class_weights.tolist() == [1.0, 2.0, 8.0]


@pytest.mark.parametrize(
    ("block", "field", "allowed"),
    [
        ("seesaw_sigmoid_focal { mitigation_power: -1 }", "seesaw_sigmoid_focal.mitigation_power", ">= 0"),
        ("seesaw_sigmoid_focal { alpha: 1.5 }", "seesaw_sigmoid_focal.alpha", "[0, 1]"),
        ("seesaw_sigmoid_focal { compensation_score_floor: 1 }",
         "seesaw_sigmoid_focal.compensation_score_floor", "[0, 1)"),
        ("confusion_gated_focal { gate_threshold: 1.2 }", "confusion_gated_focal.gate_threshold", "[0, 1]"),
        ("confusion_gated_focal { warmup_steps: -5 }", "confusion_gated_focal.warmup_steps", ">= 0"),
        ("confusion_gated_focal { gate_sharpness: -1 }", "confusion_gated_focal.gate_sharpness", ">= 0"),
        ("equalized_focal { gamma_base: 0 }", "equalized_focal.gamma_base", "> 0"),
        ("equalized_focal { scale: -2 }", "equalized_focal.scale", ">= 0"),
        ("equalized_focal { gradient_decay: 0 }", "equalized_focal.gradient_decay", "(0, 1]"),
        ("equalized_focal { gradient_decay: 1.5 }", "equalized_focal.gradient_decay", "(0, 1]"),
    ],
)
def test_bad_parameters_are_config_errors_with_the_field_path(tmp_path, block, field, allowed):
    path = variant(tmp_path, block)
    with pytest.raises(ConfigError) as err:
        check(path)
    message = str(err.value)
    assert f"model.ssd.loss.classification_loss.{field}" in message and str(path) in message
    assert allowed in message


def test_config_check_shows_the_loss_and_every_parameter_in_effect(tmp_path):
    summary = check(variant(tmp_path, "confusion_gated_focal { warmup_steps: 500 }"))
    assert ("classification confusion_gated_focal { gate_threshold: 0.7 gamma: 2 alpha: 0.25 "
            "warmup_steps: 500 gate_sharpness: 0 }") in summary
    summary = check(variant(tmp_path, "equalized_focal { }"))
    assert ("classification equalized_focal { gamma_base: 2 scale: 4 alpha: 0.25 gradient_decay: 1 }"
            in summary)
    summary = check(variant(tmp_path, "seesaw_sigmoid_focal { }"))
    assert ("classification seesaw_sigmoid_focal { gamma: 2 alpha: 0.25 mitigation_power: 0.8 "
            "compensation_power: 2 compensation_score_floor: 0.01 }") in summary


def test_built_loss_trains_on_a_batch_with_miner_and_class_weights(tmp_path):
    loss = build(variant(tmp_path, "seesaw_sigmoid_focal { }"))
    anchors = torch.tensor([[0.0, 0, 16, 16], [16, 16, 32, 32], [0, 16, 16, 32], [40, 40, 60, 60]])
    logits = torch.zeros(1, 4, 3, requires_grad=True)
    batch = {"boxes": torch.tensor([[[0.0, 0, 16, 16], [16, 16, 32, 32]]]), "labels": torch.tensor([[0, 2]]),
             "weights": torch.ones(1, 2)}
    out = loss({"cls_logits": logits, "box_deltas": torch.zeros(1, 4, 4), "anchors": anchors}, batch)
    out["total_loss"].backward()
    assert torch.isfinite(logits.grad).all()
    assert loss.classification_statistics.class_counts.tolist() == [1, 0, 1]


def _ssd_loss(loss: str) -> ssd_pb2.Ssd:
    return text_format.Parse(f"""matcher {{ argmax_matcher {{ }} }}
        similarity_calculator {{ iou_similarity {{ }} }} box_coder {{ faster_rcnn_box_coder {{ }} }}
        loss {{ {loss} }}""", ssd_pb2.Ssd())


SIGMOID_L1 = "classification_loss { weighted_sigmoid { } } localization_loss { weighted_smooth_l1 { } }"


@pytest.mark.parametrize(("loss", "message"), [
    (f"{SIGMOID_L1} hard_example_miner {{ min_negatives_per_image: -1 }}",
     "hard_example_miner.min_negatives_per_image must be >= 0, got -1"),
    ('classification_loss { weighted_sigmoid_focal { class_alpha { name: "crack" value: 1.5 } } } '
     "localization_loss { weighted_smooth_l1 { } }",
     "class_alpha for class 'crack' is 1.5; give a value in [0, 1]"),
    ('classification_loss { custom { name: "my_loss" module: "no_such_pkg.losses" } } '
     "localization_loss { weighted_smooth_l1 { } }",
     "classification_loss.custom: cannot import module 'no_such_pkg.losses' for loss 'my_loss' (No module "
     "named 'no_such_pkg'); make it importable (install it or add its directory to PYTHONPATH)"),
    ('classification_loss { weighted_sigmoid { } } localization_loss { custom { name: "box_loss" '
     'module: "raredet.losses" } }',
     "localization_loss.custom: module 'raredet.losses' registered no localization loss named 'box_loss'; "
     "registered: none (decorate it with raredet.losses.register_localization_loss)"),
])
def test_loss_parts_refusals_name_the_field(loss: str, message: str) -> None:
    labels = cfg.LabelMap.from_names(["scratch", "dent", "crack"])
    with pytest.raises(ConfigError) as caught:
        builders.build_loss(_ssd_loss(loss), labels, [])
    assert str(caught.value) == message


@pytest.mark.parametrize(("class_weights", "message"), [
    ('weight { name: "dent" value: -2 }',
     "class_weights.weight for class 'dent' is -2.0; give a finite value >= 0"),
    ("auto { scheme: EFFECTIVE_NUMBER beta: 1.0 }",
     "class_weights.auto.beta must be in [0, 1) for EFFECTIVE_NUMBER, got 1.0"),
    ("auto { scheme: INVERSE_FREQUENCY max_weight: -1 }",
     "class_weights.auto.max_weight must be > 0 (or unset), got -1.0"),
])
def test_class_weight_refusals_name_the_field(class_weights: str, message: str) -> None:
    labels = cfg.LabelMap.from_names(["scratch", "dent", "crack"])
    ssd = _ssd_loss(f"{SIGMOID_L1} class_weights {{ {class_weights} }}")
    counts = np.array([9, 3, 1])
    stats = DatasetStats(labels.names, labels.ids, counts, counts, np.full(3, 10.0), 9, 0, [])
    with pytest.raises(ConfigError) as caught:
        builders.build_class_weights(ssd.loss, labels, stats)
    assert str(caught.value) == message
