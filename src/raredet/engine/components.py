"""What the training loop takes: `TrainComponents`, which `raredet.builders` fill from a config (and
tests by hand)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from raredet.engine import checkpoint as ckpt
from raredet.engine.optim import LearningRateSchedule, ModelEma
from raredet.losses.class_weights import ClassWeight

Criterion = Callable[[Mapping[str, torch.Tensor], Mapping[str, Any]], dict[str, torch.Tensor]]


@dataclass
class TrainComponents:
    """Everything `train` needs, built from a config by `raredet.builders` (or by hand in tests).

    `sampler` yields the dataset indices of one whole epoch (the same order on every rank; the loop
    shards each global batch) and has `set_epoch(epoch)`; `dataset` may have `set_epoch` too.
    `batch_size` is the global batch (all ranks together).
    `class_weights` is the resolved table the criterion applies (logged when training starts, and saved
    in every checkpoint as a list of dicts, the one place it is serialised). `config_text` (the effective
    pipeline.config) and `label_map_text` (the label map as .pbtxt) go into every checkpoint under those
    keys, for `raredet eval`, `predict` and `export` (commands/trained.py); one left None writes no key.
    """

    model: nn.Module
    criterion: Criterion
    optimizer: torch.optim.Optimizer
    schedule: LearningRateSchedule
    dataset: torch.utils.data.Dataset
    sampler: Any
    collate_fn: Callable[[list[Any]], dict[str, Any]]
    batch_size: int
    num_steps: int
    class_names: Sequence[str]
    ema: ModelEma | None = None
    evaluate_with_ema: bool = True  # eval_config.use_moving_averages
    gradient_clipping_by_norm: float = 0.0
    keep_checkpoint_max: int = ckpt.DEFAULT_KEEP_CHECKPOINT_MAX
    num_workers: int = 0
    sync_batch_norm: bool = False
    class_weights: list[ClassWeight] = field(default_factory=list)
    precision: str = "auto"  # one of runtime.PRECISIONS (raredet train --precision); train() resolves it
    use_bfloat16: bool = False  # train_config.use_bfloat16: bf16 on the CPU where it is native
    config_text: str | None = None
    label_map_text: str | None = None
