"""Log scalars under the TF OD API's names; single-process distributed helpers; JSONL after a resume."""

from __future__ import annotations

import json

import pytest
import torch

from raredet.engine import distributed
from raredet.engine.logging import drop_records_after, scalars_for_step


def test_scalar_names_and_values():
    losses = {"classification_loss": torch.tensor(0.5), "localization_loss": 0.25, "total_loss": 0.75,
              "regularization_loss": 0.01, "matched_anchors": torch.tensor([3.0, 0.0]),
              "positive_cls_loss_share": torch.tensor([1.0, 0.0])}
    scalars = scalars_for_step(losses, 0.002, ["scratch", "crack"])
    assert scalars == {
        "Loss/classification_loss": 0.5, "Loss/localization_loss": 0.25, "Loss/regularization_loss": 0.01,
        "Loss/total_loss": 0.75, "learning_rate": 0.002,
        "ClassBalance/matched_anchors/scratch": 3.0, "ClassBalance/matched_anchors/crack": 0.0,
        "ClassBalance/positive_loss_share/scratch": 1.0, "ClassBalance/positive_loss_share/crack": 0.0,
    }


def test_per_class_vector_must_match_the_class_names():
    with pytest.raises(ValueError):
        scalars_for_step({"matched_anchors": torch.ones(3)}, 0.1, ["a", "b"])


def test_drop_records_after(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n{"step": 3}\n{"step": 4, "Loss/to')  # last line cut short
    drop_records_after(path, 2)
    assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [1, 2]


def test_single_process_helpers():
    info = distributed.init_distributed("cpu")
    assert (info.rank, info.world_size, info.is_main) == (0, 1, True)
    assert distributed.get_world_size() == 1 and distributed.get_rank() == 0
    x = torch.tensor([1.0, 2.0])
    assert torch.equal(distributed.all_reduce_sum(x), x)
