"""The training loop with a pair-aware loss: its statistics go into the checkpoint, a resumed run equals
an uninterrupted one bit for bit (CPU), and each class's statistic is logged as ClassBalance/<stat>/<name>."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from tests.helpers.pair_aware import pair_aware_detection_loss
from torch import nn

from raredet.data.sampling import RepeatFactorSampler
from raredet.engine import checkpoint as ckpt
from raredet.engine import optim
from raredet.engine.components import TrainComponents
from raredet.engine.train import train
from raredet.errors import ConfigError
from raredet.losses import (
    DetectionLoss,
    confusion_gated_focal,
    equalized_focal,
    seesaw_sigmoid_focal,
    weighted_sigmoid_focal,
    weighted_smooth_l1,
)
from raredet.modeling.box_coder import FasterRcnnBoxCoder
from raredet.modeling.matcher import ArgMaxMatcher

K = 3
LOSSES = {
    "seesaw": (seesaw_sigmoid_focal, {"compensation_score_floor": 0.01}, {}),
    "gated": (confusion_gated_focal, {"gate_threshold": 0.2}, {"warmup_steps": 3}),
    "efl": (equalized_focal, {}, {}),
}


def _anchors() -> torch.Tensor:
    xs = torch.arange(0, 32, 8.0)
    grid = torch.stack(torch.meshgrid(xs, xs, indexing="xy"), -1).reshape(-1, 2)
    return torch.cat([grid, grid + 16], -1)  # 16 anchors


class Head(nn.Module):
    """features [B, 6] -> cls_logits [B, 16, K], box_deltas [B, 16, 4]; dropout makes the RNG matter."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(6, 16 * (K + 4))
        self.drop = nn.Dropout(0.2)

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        y = self.linear(self.drop(features)).view(len(features), 16, K + 4)
        return {"cls_logits": y[..., :K] - 2.0, "box_deltas": y[..., K:], "anchors": _anchors()}


class Boxes(torch.utils.data.Dataset):
    """10 examples, one box on an anchor each; class 0 frequent (6), class 1 rare (1), class 2 (3)."""

    labels = [0, 0, 2, 0, 1, 0, 2, 0, 2, 0]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        g = torch.Generator().manual_seed(i)
        x, y = 8.0 * (i % 3), 8.0 * (i % 2)
        return {"features": torch.randn(6, generator=g) + self.labels[i],
                "box": torch.tensor([x, y, x + 16, y + 16]), "label": self.labels[i]}


def collate(examples: list[dict]) -> dict:
    return {"images": torch.stack([e["features"] for e in examples]),
            "boxes": torch.stack([e["box"] for e in examples])[:, None],
            "labels": torch.tensor([[e["label"]] for e in examples]),
            "weights": torch.ones(len(examples), 1)}


def components(name: str, steps: int) -> TrainComponents:
    fn, params, options = LOSSES[name]
    torch.manual_seed(7)
    model = Head()
    loss = pair_aware_detection_loss(fn, params, options, torch.tensor([1.0, 4.0, 2.0]))
    dataset = Boxes()
    return TrainComponents(
        model=model, criterion=loss, optimizer=optim.momentum_optimizer(optim.weight_decay_groups(
            optim.trainable_parameters(model), {})),
        schedule=optim.ConstantLearningRate(learning_rate=0.2), dataset=dataset,
        sampler=RepeatFactorSampler(np.ones(len(dataset)), seed=0), collate_fn=collate, batch_size=2,
        num_steps=steps, class_names=["scratch", "crack", "dent"],
    )


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_resume_equals_uninterrupted_run_bit_for_bit(name, tmp_path):
    straight = components(name, 8)
    train(straight, tmp_path / "a", progress=False)
    train(components(name, 4), tmp_path / "b", progress=False)
    saved = ckpt.load_checkpoint(tmp_path / "b" / "ckpt-4.pt")["loss"]["classification_statistics"]
    # The checkpoint holds statistics a fresh run would not have (so dropping them would show).
    assert {"seesaw": lambda: saved["class_counts"].sum() == 8, "gated": lambda: saved["step"] == 4,
            "efl": lambda: (saved["negative"] > 0).all()}[name]()
    resumed = components(name, 8)
    assert train(resumed, tmp_path / "b", progress=False).step == 8
    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    a = straight.criterion.state_dict()["classification_statistics"]
    b = resumed.criterion.state_dict()["classification_statistics"]
    for key in a:
        assert torch.equal(torch.as_tensor(a[key]), torch.as_tensor(b[key])), key


def test_class_balance_is_logged_per_class(tmp_path):
    train(components("efl", 3), tmp_path, progress=False)
    records = [json.loads(line) for line in (tmp_path / "train" / "log.jsonl").read_text().splitlines()]
    for name in ("scratch", "crack", "dent"):
        assert records[0][f"ClassBalance/efl_gamma/{name}"] == 2.0  # no gradient seen before step 1
        assert 2.0 <= records[-1][f"ClassBalance/efl_gamma/{name}"] <= 6.0
    assert any(records[-1][f"ClassBalance/efl_gamma/{n}"] > 2.0 for n in ("scratch", "crack", "dent"))


def test_resume_with_another_classification_loss_is_a_clear_error(tmp_path):
    train(components("seesaw", 2), tmp_path, progress=False)
    other = components("seesaw", 4)
    other.criterion = DetectionLoss(
        matcher=ArgMaxMatcher(matched_threshold=0.99, unmatched_threshold=0.3),
        box_coder=FasterRcnnBoxCoder(), classification_loss=weighted_sigmoid_focal,
        localization_loss=weighted_smooth_l1)
    with pytest.raises(ConfigError, match="classification loss changed"):
        train(other, tmp_path, progress=False)
