"""engine/components.py: TrainComponents, filled by hand as a test would, with the defaults it documents."""

from __future__ import annotations

import torch
from torch import nn

from raredet.engine.components import TrainComponents
from raredet.losses.class_weights import ClassWeight


def _components(**overrides) -> TrainComponents:
    model = nn.Linear(2, 1)
    return TrainComponents(model=model, criterion=lambda out, batch: {},
                           optimizer=torch.optim.SGD(model.parameters()),
                           schedule=lambda step: 0.1, dataset=[], sampler=[], collate_fn=list, batch_size=2,
                           num_steps=5, class_names=["scratch", "dent"], **overrides)


def test_defaults_as_documented():
    comps = _components()
    assert (comps.ema, comps.evaluate_with_ema, comps.gradient_clipping_by_norm) == (None, True, 0.0)
    assert (comps.keep_checkpoint_max, comps.num_workers, comps.sync_batch_norm) == (7, 0, False)
    assert (comps.precision, comps.use_bfloat16, comps.config_text, comps.label_map_text) == (
        "auto", False, None, None)
    assert comps.class_weights == []


def test_each_instance_has_its_own_class_weight_table():
    first, second = _components(), _components()
    first.class_weights.append(ClassWeight(index=0, id=1, name="scratch", count=10, weight=0.5,
                                           source="explicit"))
    assert second.class_weights == [] and len(first.class_weights) == 1
