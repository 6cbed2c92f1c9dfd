"""`raredet train`: load a pipeline.config, build everything, run `engine.train.train` (resuming)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from raredet import builders, config
from raredet.config import LoadedConfig
from raredet.engine import distributed as dist_utils
from raredet.engine.components import TrainComponents
from raredet.engine.evaluate import evaluate
from raredet.engine.runtime import configure_allocator, configure_threads, default_num_workers, eval_workers
from raredet.engine.train import EvalFn, TrainResult, train
from raredet.errors import ConfigError


def _eval_fn(loaded: LoadedConfig, model_dir: Path, components: TrainComponents, sample_1_of_n: int | None,
             device: torch.device) -> EvalFn:
    """Validation loss and metrics on `eval_input_reader`, written under `model_dir/eval`."""
    loader = builders.build_eval_loader(loaded, sample_1_of_n, num_workers=eval_workers(device))
    label_map = loaded.label_map  # never None once the loader is built (builders require a label map)
    if loader is None or label_map is None:
        raise ConfigError(f"{loaded.path}: --eval_every_n_steps needs an eval_input_reader with an input; "
                          "add one or drop the flag")
    writer = None

    def run(model: nn.Module, step: int) -> Mapping[str, float]:
        nonlocal writer
        if writer is None:
            writer = SummaryWriter(log_dir=str(model_dir / "eval"))
        # Under DDP only rank 0 evaluates, and the loss would all-reduce its normaliser: no eval loss.
        loss_fn = components.criterion if dist_utils.get_world_size() == 1 else None
        return evaluate(model, loader, label_map, out_dir=model_dir / "eval",
                        loss_fn=loss_fn, device=device,
                        class_weights=components.class_weights, writer=writer, step=step,
                        options=builders.eval_options(loaded))

    return run


def train_from_config(
    pipeline_config_path: str | os.PathLike[str],
    model_dir: str | os.PathLike[str],
    *,
    num_train_steps: int | None = None,
    checkpoint_every_n: int | None = None,
    sample_1_of_n_eval_examples: int | None = None,
    seed: int = 0,
    device: str | None = None,
    eval_every_n_steps: int = 0,
    num_workers: int | None = None,
    precision: str | None = None,
    channels_last: bool | None = None,
) -> TrainResult:
    """`raredet train`: load the config, build everything, train (resuming from `model_dir`).

    Threads and data workers are sized to this process's share of the node (`engine.runtime.
    configure_threads`, `default_num_workers`); `precision` (see `engine.runtime.resolve_precision`)
    overrides the config's `train_config.use_bfloat16`; `channels_last` chooses NHWC memory order
    (default: on; `engine.train.train`).
    """
    loaded = config.load(pipeline_config_path)
    info = dist_utils.init_distributed(device)
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    configure_threads(local_world)
    configure_allocator()
    workers = num_workers if num_workers is not None else default_num_workers(info.device, local_world)
    components = builders.build_training(loaded, seed=seed, num_train_steps=num_train_steps,
                                         num_workers=workers)
    if precision is not None:
        components.precision = precision
    report = builders.load_fine_tune_checkpoint(components.model, loaded.pipeline.train_config)
    if report and components.ema is not None:
        components.ema.restart_from(components.model)  # the average starts at the loaded weights
    if report and info.is_main:
        print(report)
    every = checkpoint_every_n or loaded.pipeline.train_config.checkpoint_every_n or 1000
    eval_fn = None
    if eval_every_n_steps > 0:
        eval_fn = _eval_fn(loaded, Path(model_dir), components, sample_1_of_n_eval_examples, info.device)
    try:
        return train(components, model_dir, seed=seed, device=device, checkpoint_every_n=every,
                     eval_every_n_steps=eval_every_n_steps, eval_fn=eval_fn,
                     channels_last=channels_last)
    finally:
        dist_utils.shutdown()
