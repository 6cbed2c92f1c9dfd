"""One training step of raredet against the TF OD API's, from the same weights and batch (issue #32).

    .venv/bin/python -m bench.tf_train_step FOLDER [--json OUT]

FOLDER is what `tests/fixtures/tf_train_step/write_train_step.py` wrote with the TF OD API itself: the
initial weights (`checkpoint/`), the batch (`batch.npz`), TF's gradients (`grads/`) and weights after
one optimizer step (`after/`) as zoo-layout checkpoints, and TF's loss terms (`step.npz`). raredet
builds the model from FOLDER/pipeline.config, loads `checkpoint/ckpt-0` ("full"), runs the step the
way `raredet train` does (train mode, the config's loss, `optimizer.step()` at the schedule's rate for
step 0) and reports, against TF: each loss term, the gradient of every trainable tensor (raredet's
`p.grad` plus its L2 term `weight_decay * p`, which raredet's optimizer adds and TF's loss holds), and
every tensor after the step (weights and batch-norm moving statistics). Tensors are paired through
the same TF-name mapping the checkpoint loader uses, so `grads/` and `after/` load like weights.
"""

from __future__ import annotations

import argparse
import json
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from raredet import builders
from raredet.config import LabelMap, parse_config
from raredet.engine import optim
from raredet.modeling import load_checkpoint_weights

TERMS = {"classification_loss": "Loss/classification_loss", "localization_loss": "Loss/localization_loss"}


@dataclass
class StepResult:
    """raredet's step against TF's. Norms are Frobenius norms of whole tensors."""

    losses: dict[str, tuple[float, float]]  # term -> (raredet, TF)
    learning_rate: tuple[float, float]  # (raredet, TF) at step 0
    grad_norms: dict[str, tuple[float, float]]  # trainable tensor -> (|ours - TF|, |TF|)
    # tensor -> (|ours - TF| after the step, |TF's change| for weights or |TF| for batch-norm statistics)
    updates: dict[str, tuple[float, float]]
    weight_norms: dict[str, float]  # tensor -> |TF's value after the step|
    features: list[tuple[float, float]]  # training-mode feature maps: (max |ours - TF|, max |TF|)
    box_deltas_diff: float  # max |ours - TF| of the training-mode box encodings


def build(folder: Path) -> tuple[Any, Any, Any, Any, Any]:
    """(config, model loaded from folder/checkpoint, criterion, optimizer, schedule)."""
    cfg = parse_config((folder / "pipeline.config").read_text(), folder / "pipeline.config")
    message = builders.model_message(cfg)
    label_map = LabelMap.from_names([f"class_{i + 1}" for i in range(message.num_classes)])
    model, l2 = builders.build_model(message, label_map.ids)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        load_checkpoint_weights(model, folder / "checkpoint" / "ckpt-0", "full")
    criterion = builders.build_loss(message, label_map, [])
    optimizer, schedule, _ = builders.build_optimizer(cfg.train_config, model, l2)
    return cfg, model, criterion, optimizer, schedule


def tf_batch(folder: Path) -> dict[str, torch.Tensor]:
    """batch.npz as raredet's collated batch: uint8 NCHW images, pixel xyxy boxes, 0-based labels."""
    data = np.load(folder / "batch.npz")
    images = data["images"]
    height, width = images.shape[1:3]
    ymin, xmin, ymax, xmax = np.moveaxis(data["boxes"], -1, 0)
    boxes = np.stack([xmin * width, ymin * height, xmax * width, ymax * height], axis=-1)
    valid = np.arange(boxes.shape[1])[None] < data["num_boxes"][:, None]
    return {
        "images": torch.from_numpy(np.round(images).astype(np.uint8)).permute(0, 3, 1, 2),
        "boxes": torch.from_numpy(np.where(valid[..., None], boxes, 0.0).astype(np.float32)),
        "labels": torch.from_numpy(np.where(valid, data["classes"], -1).astype(np.int64)),
        "weights": torch.from_numpy(valid.astype(np.float32)),
        "num_boxes": torch.from_numpy(data["num_boxes"].astype(np.int64)),
        "image_sizes": torch.tensor([[height, width]] * len(images)),
    }


def loaded_copy(folder: Path, name: str) -> dict[str, torch.Tensor]:
    """The state dict of a fresh model loaded from FOLDER/name/ckpt-0 (TF's gradients or weights)."""
    _, model, _, _, _ = build(folder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        load_checkpoint_weights(model, folder / name / "ckpt-0", "full")
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _norm(t: torch.Tensor) -> float:
    return float(t.double().norm())


def _forward_and_losses(model: Any, criterion: Any, batch: dict[str, torch.Tensor],
                        record: Any) -> tuple[dict[str, torch.Tensor], list[tuple[float, float]], float]:
    """The training forward, its losses, and its feature maps / box encodings against TF's."""
    maps: list[torch.Tensor] = []
    hook = model.feature_extractor.register_forward_hook(lambda m, i, o: maps.extend(o))
    outputs = model(batch["images"])
    hook.remove()
    features = []
    for i, fm in enumerate(maps):
        tf_map = record[f"predict_0/feature_maps_{i}"]
        ours = fm.detach().permute(0, 2, 3, 1).numpy()
        features.append((float(np.abs(ours - tf_map).max()), float(np.abs(tf_map).max())))
    tf_boxes = record["predict_0/box_encodings_0"]
    box_diff = float(np.abs(outputs["box_deltas"].detach().numpy() - tf_boxes).max())
    return criterion(outputs, batch), features, box_diff


def run_step(folder: Path) -> StepResult:
    _, model, criterion, optimizer, schedule = build(folder)
    record = np.load(folder / "step.npz")
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.train()
    optimizer.zero_grad()
    losses, features, box_diff = _forward_and_losses(model, criterion, tf_batch(folder), record)
    losses["total_loss"].backward()
    ours = {term: float(losses[term].detach()) for term in TERMS}
    ours["regularization_loss"] = float(optim.regularization_loss_tensor(optimizer))
    theirs = {term: float(record[f"loss_0/{key}"]) for term, key in TERMS.items()}
    theirs["regularization_loss"] = float(record["loss_0/Loss/regularization_loss"])
    tf_grads = loaded_copy(folder, "grads")
    grad_norms = {}
    for group in optimizer.param_groups:  # TF's gradient holds the L2 term raredet's optimizer adds
        for name, p in zip(group["param_names"], group["params"], strict=True):
            if p.grad is not None:
                ours_grad = p.grad.detach() + group["weight_decay"] * p.detach()
                grad_norms[name] = (_norm(ours_grad - tf_grads[name]), _norm(tf_grads[name]))
    rate = float(schedule(0))
    optim.set_learning_rate(optimizer, rate)
    optimizer.step()
    tf_after = loaded_copy(folder, "after")
    updates, weight_norms = {}, {}
    for name, value in model.state_dict().items():
        if not value.is_floating_point() or name not in tf_after:
            continue
        scale = tf_after[name] if "running_" in name else tf_after[name] - before[name]
        updates[name] = (_norm(value - tf_after[name]), _norm(scale))
        weight_norms[name] = _norm(tf_after[name])
    return StepResult(losses={k: (ours[k], theirs[k]) for k in ours},
                      learning_rate=(rate, float(record["learning_rate_0"])),
                      grad_norms=grad_norms, updates=updates, weight_norms=weight_norms,
                      features=features, box_deltas_diff=box_diff)


def relative_worst(table: dict[str, tuple[float, float]]) -> tuple[str, float]:
    """The tensor with the largest |diff| / |TF|, among those above a millionth of the largest."""
    floor = 1e-6 * max(t for _, t in table.values())
    name = max(table, key=lambda k: table[k][0] / max(table[k][1], floor))
    return name, table[name][0] / max(table[name][1], floor)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = run_step(args.folder)
    print(f"learning rate: raredet {result.learning_rate[0]:.6g}, TF {result.learning_rate[1]:.6g}")
    for term, (ours, theirs) in result.losses.items():
        print(f"{term}: raredet {ours:.7g}, TF {theirs:.7g}, relative {abs(ours - theirs) / abs(theirs):.2e}")
    for what, table in (("gradient", result.grad_norms), ("after the step", result.updates)):
        name, worst = relative_worst(table)
        total = np.sqrt(sum(d * d for d, _ in table.values()) / sum(t * t for _, t in table.values()))
        print(f"{what}: {len(table)} tensors, |diff| / |TF| over all {total:.2e}; worst {name}: "
              f"{worst:.2e}")
    worst_map = max(d / s for d, s in result.features)
    print(f"training forward: feature maps within {worst_map:.2e} of their scale; box encodings "
          f"{result.box_deltas_diff:.2e}")
    if args.json:
        args.json.write_text(json.dumps(asdict(result), indent=1))


if __name__ == "__main__":
    main()
