"""A toy detector, loss and dataset that follow the engine's contracts, for fast engine tests.

Also a script: `python toy_training.py MODEL_DIR STEPS [--sleep S] [--dropout P]` trains and writes
`MODEL_DIR/final_params.pt` (used by the signal test and, under torchrun, by the 2-process test).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from raredet.data.sampling import RepeatFactorSampler
from raredet.engine import optim
from raredet.engine.components import TrainComponents
from raredet.engine.train import train
from raredet.losses import ClassWeight

NUM_CLASSES = 3


class ToyDetector(nn.Module):
    """images [B, 3, 8, 8] -> cls_logits [B, 1, K], box_deltas [B, 1, 4], anchors [1, 4]."""

    def __init__(self, dropout: float = 0.0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(4, NUM_CLASSES + 4)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = torch.relu(self.conv(images.float() / 255.0)).mean(dim=(2, 3))
        y = self.head(self.drop(x))
        return {"cls_logits": y[:, None, :NUM_CLASSES], "box_deltas": y[:, None, NUM_CLASSES:],
                "anchors": torch.zeros(1, 4)}


class ToyLoss:
    """Sigmoid CE of the one anchor against the first box's class, L1 of its deltas against 0.1 * label.
    Normalised by the number of images (`num_matches`), like the DetectionLoss contract."""

    def __init__(self, nan_at_call: int | None = None, sleep: float = 0.0) -> None:
        self.calls = 0
        self.nan_at_call = nan_at_call
        self.sleep = sleep

    def __call__(self, outputs, batch):
        self.calls += 1
        time.sleep(self.sleep)
        labels = batch["labels"][:, 0]
        target = torch.nn.functional.one_hot(labels, NUM_CLASSES).float()
        logits = outputs["cls_logits"][:, 0]
        per_image = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
        deltas_target = 0.1 * labels[:, None].float().expand(-1, 4)
        loc = (outputs["box_deltas"][:, 0] - deltas_target).abs().sum()
        n = torch.tensor(float(len(labels)))
        if torch.distributed.is_initialized():  # DETR-style global normaliser, as DetectionLoss
            torch.distributed.all_reduce(n)
            n = n / torch.distributed.get_world_size()
        cls = per_image.sum() / n
        if self.nan_at_call is not None and self.calls >= self.nan_at_call:
            cls = cls * float("nan")
        share = target.T @ per_image.sum(dim=1)
        return {"classification_loss": cls, "localization_loss": loc / n, "total_loss": cls + loc / n,
                "num_matches": n, "matched_anchors": target.sum(0),
                "positive_cls_loss_share": share / share.sum().clamp(min=1e-12)}


class ToyDataset(torch.utils.data.Dataset):
    """`size` images of 8x8 whose colour encodes the label, so the toy model can learn it."""

    def __init__(self, size: int = 10) -> None:
        self.labels = np.arange(size) % NUM_CLASSES

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        image = np.zeros((3, 8, 8), dtype=np.uint8)
        image[self.labels[index]] = 200
        image[:, index % 8, :] += 20
        return {"image": torch.from_numpy(image), "label": int(self.labels[index])}


def collate(examples: list[dict]) -> dict:
    return {"images": torch.stack([e["image"] for e in examples]),
            "labels": torch.tensor([[e["label"]] for e in examples])}


def make_components(num_steps: int, *, dropout: float = 0.0,
                    loss: ToyLoss | None = None, batch_size: int = 2, seed: int = 0) -> TrainComponents:
    torch.manual_seed(1234)
    model = ToyDetector(dropout)
    params = optim.trainable_parameters(model)
    groups = optim.weight_decay_groups(params, {"conv.weight": 0.01})
    dataset = ToyDataset()
    return TrainComponents(
        model=model, criterion=loss or ToyLoss(), optimizer=optim.momentum_optimizer(groups),
        schedule=optim.CosineDecayLearningRate(learning_rate_base=0.05, total_steps=50, warmup_steps=2,
                                               warmup_learning_rate=0.01),
        dataset=dataset,
        sampler=RepeatFactorSampler(np.ones(len(dataset)), seed=seed),
        collate_fn=collate, batch_size=batch_size, num_steps=num_steps,
        class_names=["a", "b", "c"], ema=optim.ModelEma(model, 0.9), gradient_clipping_by_norm=10.0,
        class_weights=[ClassWeight(index=0, id=1, name="a", count=4, weight=1.0, source="default")],
        config_text="toy",
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model_dir")
    parser.add_argument("steps", type=int)
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--batch_size", type=int, default=2)
    parser.add_argument("--every", type=int, default=1000, help="checkpoint_every_n")
    args = parser.parse_args()
    import os

    rank = int(os.environ.get("RANK", 0))
    comps = make_components(args.steps, loss=ToyLoss(sleep=args.sleep),
                            batch_size=args.batch_size)
    result = train(comps, args.model_dir, device="cpu", checkpoint_every_n=args.every, progress=False)
    state = {k: v.detach().clone() for k, v in comps.model.state_dict().items()}
    torch.save({"params": state, "step": result.step, "interrupted": result.interrupted},
               Path(args.model_dir) / f"final_params_rank{rank}.pt")


if __name__ == "__main__":
    main()
