"""builders/messages.py: a message's set fields as keyword arguments, oneof dispatch, one field's value."""

from __future__ import annotations

import pytest
from tests.helpers.builders import parse

from raredet import builders
from raredet.builders.messages import field_value
from raredet.errors import ConfigError
from raredet.protos import losses_pb2


def test_message_kwargs_values():
    msg = parse("""classification_loss { weighted_sigmoid_focal { gamma: 1.5 alpha: 0.1 } }
                    hard_example_miner { loss_type: CLASSIFICATION num_hard_examples: 8 }""",
                 losses_pb2.Loss())
    kwargs = builders.message_kwargs(msg)
    assert kwargs["classification_loss"] == {"weighted_sigmoid_focal": {"gamma": 1.5, "alpha": 0.1}}
    assert kwargs["hard_example_miner"] == {"loss_type": "CLASSIFICATION", "num_hard_examples": 8}
    assert "localization_weight" not in kwargs  # unset fields keep the constructor's default


def test_oneof_choice_returns_the_set_field_and_its_constructor():
    loss = parse("classification_loss { weighted_softmax { logit_scale: 2.0 } }", losses_pb2.Loss())
    table = {"weighted_sigmoid": "sigmoid", "weighted_softmax": "softmax"}
    name, chosen, sub = builders.oneof_choice(loss.classification_loss, "classification_loss", table,
                                              "loss.classification_loss")
    assert (name, chosen) == ("weighted_softmax", "softmax")
    assert sub.logit_scale == 2.0


def test_oneof_choice_refuses_an_unset_or_unlisted_choice():
    unset = losses_pb2.ClassificationLoss()
    with pytest.raises(ConfigError, match="^loss.classification_loss: is not set; valid choices: "
                                          "weighted_sigmoid, weighted_softmax$"):
        builders.oneof_choice(unset, "classification_loss", {"weighted_sigmoid": 1, "weighted_softmax": 2},
                              "loss.classification_loss")
    focal = parse("weighted_sigmoid_focal { }", losses_pb2.ClassificationLoss())
    with pytest.raises(ConfigError, match="^x: 'weighted_sigmoid_focal' is not supported; "
                                          "valid choices: weighted_sigmoid$"):
        builders.oneof_choice(focal, "classification_loss", {"weighted_sigmoid": 1}, "x")


def test_field_value_gives_float32_as_written_enums_by_name_and_defaults():
    miner = parse("iou_threshold: 0.1 loss_type: LOCALIZATION", losses_pb2.HardExampleMiner())
    assert miner.iou_threshold != 0.1  # float32 in the message: 0.100000001...
    assert field_value(miner, "iou_threshold") == 0.1
    assert field_value(miner, "loss_type") == "LOCALIZATION"
    # Unset: the proto's default (losses.proto: num_hard_examples default 64).
    assert field_value(miner, "num_hard_examples") == 64
    assert "num_hard_examples" not in builders.message_kwargs(miner)
    assert builders.message_kwargs(miner, skip=["loss_type"]) == {"iou_threshold": 0.1}
