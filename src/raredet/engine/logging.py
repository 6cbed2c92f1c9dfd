"""Training logs: a tqdm progress bar, TensorBoard scalars and JSON lines, under `model_dir/train/`.

Scalar names follow the TF OD API (`Loss/classification_loss`, `Loss/localization_loss`,
`Loss/regularization_loss`, `Loss/total_loss`, `learning_rate`), so dashboards made for it keep working.
raredet adds, per class, `ClassBalance/matched_anchors/<name>` and `ClassBalance/positive_loss_share/<name>`
so a user can see that a rare class is being heard, and for a pair-aware classification loss what it
does to each class (`ClassBalance/seesaw_mitigation/<name>`, `ClassBalance/efl_gamma/<name>`, ...: every
`class_balance/<stat>` entry of the loss dict).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from raredet.fileio import atomic_write_text

LOSS_TAGS = {
    "classification_loss": "Loss/classification_loss",
    "localization_loss": "Loss/localization_loss",
    "regularization_loss": "Loss/regularization_loss",
    "total_loss": "Loss/total_loss",
}


def scalars_for_step(
    losses: Mapping[str, Any], learning_rate: float, class_names: Sequence[str]
) -> dict[str, float]:
    """The TensorBoard scalars of one step, keyed by tag.

    `losses`: the DetectionLoss dict (scalar tensors or floats, plus `matched_anchors [K]`,
    `positive_cls_loss_share [K]` and any `class_balance/<stat> [K]`) and `regularization_loss`.
    """
    out = {tag: float(losses[key]) for key, tag in LOSS_TAGS.items() if key in losses}
    out["learning_rate"] = float(learning_rate)
    for key in per_class_keys(losses):
        prefix = PER_CLASS_PREFIX.get(key, key.removeprefix("class_balance/"))
        values = torch.as_tensor(losses[key]).detach().float().cpu().tolist()
        pairs = zip(class_names, values, strict=True)
        out.update({f"ClassBalance/{prefix}/{n}": float(v) for n, v in pairs})
    return out


PER_CLASS_PREFIX = {"matched_anchors": "matched_anchors", "positive_cls_loss_share": "positive_loss_share"}


def per_class_keys(losses: Mapping[str, Any]) -> list[str]:
    """The keys of `losses` logged as one scalar per class, in logging order."""
    balance = [k for k in losses if k.startswith("class_balance/")]
    return [k for k in PER_CLASS_PREFIX if k in losses] + balance


class TrainLogger:
    """Progress bar for every process that asks for it; TensorBoard and `log.jsonl` when `write`.

    Only rank 0 passes `write=True`, so several processes never write the same files.
    """

    def __init__(
        self,
        model_dir: str | os.PathLike[str],
        class_names: Sequence[str],
        num_steps: int,
        start_step: int = 0,
        write: bool = True,
        progress: bool = True,
    ) -> None:
        self.class_names = list(class_names)
        self.log_dir = Path(model_dir) / "train"
        self.write = write
        self.writer = None
        self.jsonl = None
        if write:
            from torch.utils.tensorboard import SummaryWriter  # heavy import, only where used

            self.log_dir.mkdir(parents=True, exist_ok=True)
            # purge_step hides events a crashed run wrote after the checkpoint it resumes from.
            purge = start_step + 1 if start_step else None
            self.writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=purge)
            drop_records_after(self.log_dir / "log.jsonl", start_step)
            self.jsonl = open(self.log_dir / "log.jsonl", "a", encoding="utf-8")
        self.bar = tqdm(total=num_steps, initial=start_step, disable=not (progress and write),
                        unit="step", dynamic_ncols=True)
        self._last_time = time.perf_counter()

    def log_step(self, step: int, losses: Mapping[str, Any], learning_rate: float, images: int) -> None:
        """Record step `step` (1-based count of finished steps) that consumed `images` images globally."""
        now = time.perf_counter()
        images_per_s = images / max(now - self._last_time, 1e-9)
        self._last_time = now
        scalars = scalars_for_step(losses, learning_rate, self.class_names)
        self.bar.set_postfix_str(self._postfix(scalars, images_per_s), refresh=False)
        self.bar.update(step - self.bar.n)
        if self.writer is not None and self.jsonl is not None:
            for tag, value in scalars.items():
                self.writer.add_scalar(tag, value, step)
            self.writer.add_scalar("images_per_second", images_per_s, step)
            record = {"step": step, "time": time.time(), "images_per_second": images_per_s, **scalars}
            self.jsonl.write(json.dumps(record) + "\n")
            self.jsonl.flush()

    @staticmethod
    def _postfix(scalars: Mapping[str, float], images_per_s: float) -> str:
        short = {"Loss/classification_loss": "cls", "Loss/localization_loss": "loc",
                 "Loss/total_loss": "total"}
        parts = [f"{name}={scalars[tag]:.4f}" for tag, name in short.items() if tag in scalars]
        parts.append(f"lr={scalars['learning_rate']:.3g}")
        parts.append(f"img/s={images_per_s:.1f}")
        return " ".join(parts)

    def message(self, text: str) -> None:
        """A line printed above the progress bar (rank 0 only)."""
        if self.write:
            tqdm.write(text)

    def text(self, tag: str, table: str) -> None:
        """A fixed-width table printed and stored as TensorBoard text (rank 0 only)."""
        if self.writer is not None:
            tqdm.write(f"{tag.replace('_', ' ')}:\n{table}")
            self.writer.add_text(tag, "    " + table.replace("\n", "\n    "), 0)  # Markdown code block

    def close(self) -> None:
        self.bar.close()
        if self.writer is not None:
            self.writer.close()
        if self.jsonl is not None:
            self.jsonl.close()


def drop_records_after(path: Path, step: int) -> None:
    """Keep the JSON lines of steps <= `step`: a resumed run redoes the steps after its checkpoint, and
    their first attempt (and a line cut short by a crash) must not stay in the log twice."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("step", 0) <= step:
            kept.append(line)
    atomic_write_text(path, "".join(f"{line}\n" for line in kept))
