"""StepRecord: a step's figures packed into one vector and read back in order, by hand (one process)."""

from __future__ import annotations

import math

import torch

from raredet.engine.step_record import StepRecord


def _optimizer() -> torch.optim.Optimizer:
    decayed = torch.nn.Parameter(torch.tensor([3.0, 4.0]))  # ||w||^2 = 25
    plain = torch.nn.Parameter(torch.tensor([100.0]))  # no weight decay: not in the regularization loss
    return torch.optim.SGD([{"params": [decayed], "weight_decay": 0.1}, {"params": [plain]}], lr=0.1)


def test_launch_then_read_gives_every_figure_back() -> None:
    losses = {"classification_loss": torch.tensor(0.5), "localization_loss": torch.tensor(0.25),
              "total_loss": torch.tensor(0.75), "class_balance/crack": torch.tensor([1.0, 2.0])}
    record = StepRecord.launch(7, 0.02, losses, torch.tensor(1.5), _optimizer(), stop_flag=True)
    assert record.ready is None and record.step == 7 and record.learning_rate == 0.02  # CPU: no copy
    terms, per_class, stop = record.read()
    assert terms == {"classification_loss": 0.5, "localization_loss": 0.25, "total_loss": 0.75,
                     "grad_norm": 1.5, "regularization_loss": 0.5 * 0.1 * 25}  # 1.25, exact in float32
    assert per_class == {"class_balance/crack": [1.0, 2.0]} and stop is True


def test_finite_looks_at_the_losses_and_the_gradient_norm_only() -> None:
    good = {"classification_loss": 1.0, "localization_loss": 1.0, "total_loss": 2.0, "grad_norm": 3.0,
            "regularization_loss": math.inf}
    assert StepRecord.finite(good)
    assert not StepRecord.finite({**good, "grad_norm": math.nan})
    assert not StepRecord.finite({**good, "total_loss": math.inf})
