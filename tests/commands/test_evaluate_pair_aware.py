"""`raredet eval` of a run trained with a pair-aware loss: its validation loss uses the checkpoint's
statistics, not fresh ones."""

from __future__ import annotations

import json

import pytest
import torch
from tests.helpers.tiny_pipeline import make_data, write_config

from raredet import builders, config
from raredet.commands.evaluate import eval_from_config
from raredet.engine.checkpoint import save_checkpoint
from raredet.errors import CheckpointError

EFL = """
      classification_loss { equalized_focal { } }
      localization_loss { weighted_smooth_l1 { } }
"""
WEIGHTS = [{"index": i, "id": i + 1, "name": n, "count": 3, "weight": 1.0, "source": "default"}
           for i, n in enumerate(["scratch", "dent", "crack"])]


def _eval_loss(tmp_path, name, loss_state):
    cfg = write_config(tmp_path, loss=EFL)
    torch.manual_seed(0)
    model, _ = builders.build_model(config.load(cfg).pipeline.model.ssd)
    run = tmp_path / name
    save_checkpoint(run, 4, {"model": model.state_dict(), "class_weights": WEIGHTS, "loss": loss_state})
    eval_from_config(cfg, run, out_dir=run / "eval", device="cpu")
    return json.loads((run / "eval" / "metrics.json").read_text())["Loss/classification_loss"]


def test_eval_loss_uses_the_checkpoint_statistics(tmp_path):
    make_data(tmp_path, images=6)
    # g = 0 for every class (gamma 6, weight 3) against fresh statistics (g = 1: plain focal loss).
    skewed = {"classification_statistics": {"positive": torch.zeros(3, dtype=torch.float64),
                                            "negative": torch.ones(3, dtype=torch.float64)}}
    with_state = _eval_loss(tmp_path, "trained", skewed)
    fresh = _eval_loss(tmp_path, "fresh", {})
    assert with_state != pytest.approx(fresh, rel=1e-3)
    wrong = {"classification_statistics": {"class_counts": torch.zeros(3, dtype=torch.int64)}}
    with pytest.raises(CheckpointError, match="positive"):
        _eval_loss(tmp_path, "wrong", wrong)
