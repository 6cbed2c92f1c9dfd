"""builders/losses.py: class weights (explicit, by name or id, and auto from the training counts) and each
classification loss choice wired with its parameters; with the pair-aware losses from a pipeline.config:
functions, parameters and statistics wired; validation errors; `raredet config check`; the built loss
trains a batch."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from google.protobuf import text_format
from tests.helpers import tiny_pipeline as tiny
from tests.helpers.builders import LABELS, parse
from tests.helpers.configs import write_variant

from raredet import builders, config
from raredet import config as cfg
from raredet.commands.config import check
from raredet.data.stats import DatasetStats
from raredet.errors import ConfigError
from raredet.losses import (
    ConfusionGateSchedule,
    GradientRatioStatistics,
    SeesawStatistics,
    bootstrapped_sigmoid,
    confusion_gated_focal,
    equalized_focal,
    l1_localization_loss,
    seesaw_sigmoid_focal,
    weighted_giou,
    weighted_sigmoid,
    weighted_sigmoid_focal,
    weighted_softmax,
)
from raredet.protos import losses_pb2, ssd_pb2

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


def test_explicit_class_weights_by_name_and_id():
    loss = parse('class_weights { weight { name: "crack" value: 8 } weight { id: 2 value: 2 } }',
                  losses_pb2.Loss())
    table = builders.build_class_weights(loss, LABELS, None)
    assert [(w.name, w.weight, w.source) for w in table] == [
        ("scratch", 1.0, "default"), ("dent", 2.0, "explicit"), ("crack", 8.0, "explicit")]


def test_unknown_class_name_is_an_error():
    loss = parse('class_weights { weight { name: "crak" value: 8 } }', losses_pb2.Loss())
    with pytest.raises(ConfigError, match=r"class_weights.weight\[0\].*crak"):
        builders.build_class_weights(loss, LABELS, None)


def test_auto_class_weights_from_training_counts(data_dir):
    # The synthetic training split has 10 scratch, 2 dent and 0 crack boxes (summary.json).
    cfg = tiny.write_config(data_dir, "auto.config", loss=tiny.LOSS_BLOCK + """
      class_weights { auto { scheme: INVERSE_FREQUENCY } weight { name: "scratch" value: 0.5 } }""")
    with pytest.warns(UserWarning, match="crack"):
        table = builders.resolve_class_weight_table(config.load(cfg))
    # raw 1/10, 1/2; rescaled so that 10 w_s + 2 w_d = 12: scale 6 -> 0.6, 3.0; scratch pinned at 0.5.
    assert [w.count for w in table] == [10, 2, 0]
    assert [w.weight for w in table] == pytest.approx([0.5, 3.0, 1.0])


@pytest.mark.parametrize(
    ("block", "fn", "params"),
    [
        ("weighted_sigmoid { }", weighted_sigmoid, {}),
        ("weighted_sigmoid_focal { gamma: 1.0 }", weighted_sigmoid_focal, {"gamma": 1.0}),
        ("weighted_softmax { logit_scale: 2.0 }", weighted_softmax, {"logit_scale": 2.0}),
        ("bootstrapped_sigmoid { alpha: 0.5 hard_bootstrap: true }", bootstrapped_sigmoid,
         {"alpha": 0.5, "hard_bootstrap": True}),
    ],
)
def test_classification_loss_choice(block, fn, params):
    ssd = parse(f"""matcher {{ argmax_matcher {{ }} }} similarity_calculator {{ iou_similarity {{ }} }}
        box_coder {{ faster_rcnn_box_coder {{ }} }}
        loss {{ classification_loss {{ {block} }} localization_loss {{ l1_localization_loss {{ }} }} }}""",
                 ssd_pb2.Ssd())
    loss = builders.build_loss(ssd, LABELS, [])
    assert loss.classification_loss is fn and loss.classification_loss_params == params
    assert loss.localization_loss is l1_localization_loss
    assert loss.class_weights is None and loss.hard_example_miner is None


def test_loss_with_miner_class_alpha_and_weights():
    ssd = parse("""matcher { argmax_matcher { matched_threshold: 0.6 unmatched_threshold: 0.3 } }
        similarity_calculator { iou_similarity { } } box_coder { faster_rcnn_box_coder { y_scale: 5 } }
        negative_class_weight: 0.5
        loss { classification_loss { weighted_sigmoid_focal { alpha: 0.25
                   class_alpha { name: "crack" value: 0.75 } } }
               localization_loss { weighted_giou { } } classification_weight: 2.0
               hard_example_miner { num_hard_examples: 16 max_negatives_per_positive: 3 }
               class_weights { weight { name: "dent" value: 4 } apply_to_localization: false } }""",
                 ssd_pb2.Ssd())
    table = builders.build_class_weights(ssd.loss, LABELS, None)
    loss = builders.build_loss(ssd, LABELS, table)
    assert loss.localization_loss is weighted_giou and loss.classification_weight == 2.0
    assert torch.equal(loss.class_weights, torch.tensor([1.0, 4.0, 1.0]))
    assert loss.apply_to_localization is False and loss.negative_class_weight == 0.5
    alpha = loss.classification_loss_params["class_alpha"]
    assert torch.isnan(alpha[:2]).all() and alpha[2] == 0.75
    assert loss.classification_loss_params["alpha"] == 0.25
    miner = loss.hard_example_miner
    assert (miner.num_hard_examples, miner.max_negatives_per_positive, miner.cls_loss_weight) == (16, 3, 2.0)
    assert loss.matcher.matched_threshold == pytest.approx(0.6)
    assert loss.box_coder.scales == (5.0, 10.0, 5.0, 5.0)
