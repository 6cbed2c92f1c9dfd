"""RNG and resume state: seeding, the per-image sampling seeds, the global RNG states, and the training
state a checkpoint holds (written by `save`, read back by `restore`).

What makes resume exact on CPU: the learning rate is a function of the step; the data position (epoch,
batch in epoch; engine/batches.py), the optimizer and EMA state and the global RNG states are in the
checkpoint; models that draw per image (Faster R-CNN's samplers) draw from generators seeded by (seed,
step, image index in the global batch), the batch's `sampling_seeds`, which also makes their draws
independent of the split over processes.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from raredet.engine import checkpoint as ckpt
from raredet.engine import distributed as dist_utils
from raredet.engine.components import Criterion, TrainComponents
from raredet.engine.distributed import unwrap
from raredet.errors import CheckpointError, ConfigError
from raredet.modeling.tf_compat import apply_weights_convention


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def sampling_seeds(seed: int, step: int, rank: int, count: int) -> torch.Tensor:
    """``[count]`` int64: a seed for each image of this rank's share of the global batch of ``step``,
    from (seed, step, the image's index in the global batch). Models that draw per image (Faster
    R-CNN's balanced samplers, ``modeling.sampling.random_keys``) so draw the same however the batch
    is split over processes, and a resumed run as an uninterrupted one (the step is in the checkpoint)."""
    first = rank * count  # every rank holds the same number of images (per_rank_batch)
    base = (seed * 1_000_003 + step) * 1_000_003
    return torch.tensor([(base + first + i) % 2**61 for i in range(count)], dtype=torch.int64)


def rng_state() -> dict[str, Any]:
    """Global RNG states in types `torch.load(weights_only=True)` accepts (no numpy objects)."""
    np_state = np.random.get_state()
    assert isinstance(np_state, tuple)  # the legacy MT19937 tuple, not a dict
    _, keys, pos, has_gauss, gauss = np_state
    py_version, py_state, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": py_version, "state": list(py_state), "gauss": py_gauss},
    }


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore `rng_state()`'s states. A checkpoint loaded with `map_location=cuda` holds them on the
    GPU, and torch takes RNG states only as CPU byte tensors: hence the `.cpu()` (found resuming on an
    H200)."""
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    npy = state["numpy"]
    keys = npy["keys"].cpu().numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, npy["pos"], npy["has_gauss"], npy["gauss"]))
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))


def checkpoint_state(
    components: TrainComponents, model: nn.Module, step: int, epoch: int, batch_in_epoch: int
) -> dict[str, Any]:
    return {
        "model": unwrap(model).state_dict(),
        # how the model computes ("tf" after loading TF OD API weights); rebuilt so by eval/predict/export
        "weights_convention": getattr(unwrap(model), "weights_convention", "torchvision"),
        "optimizer": components.optimizer.state_dict(),
        "scheduler": {"step": step},
        "ema": components.ema.state_dict() if components.ema is not None else None,
        "step": step,
        "rng": rng_state(),
        "sampler": {"epoch": epoch, "batch_in_epoch": batch_in_epoch},
        # The criterion's running statistics (pair-aware losses); {} for a stateless one.
        "loss": criterion_state(components.criterion),
        **_texts(components),
        **({"class_weights": [dataclasses.asdict(w) for w in components.class_weights]}
           if components.class_weights else {}),
    }


def _texts(components: TrainComponents) -> dict[str, str]:
    """The config and label map texts under their checkpoint keys, those that are set."""
    texts = {"config_text": components.config_text, "label_map_text": components.label_map_text}
    return {key: text for key, text in texts.items() if text is not None}


def criterion_state(criterion: Criterion) -> dict[str, Any]:
    state_dict = getattr(criterion, "state_dict", None)
    return state_dict() if callable(state_dict) else {}


def restore(components: TrainComponents, model: nn.Module, state: Mapping[str, Any]) -> tuple[int, int, int]:
    """Load a checkpoint's training state; returns (step, epoch, batch_in_epoch)."""
    recorded = state.get("weights_convention", "torchvision")
    current = getattr(unwrap(model), "weights_convention", "torchvision")
    if recorded == "tf":  # trained from TF weights or a TF zoo config: compute as TF does
        apply_weights_convention(unwrap(model), "tf")
    elif current == "tf":
        raise CheckpointError(
            "this run's checkpoints compute with torchvision's conventions (written before raredet built "
            "the TF zoo's *_keras feature extractors as the TF OD API does), but the config now builds the "
            "model with TF's; train into a new model_dir")
    unwrap(model).load_state_dict(state["model"])
    components.optimizer.load_state_dict(state["optimizer"])
    if components.ema is not None and state.get("ema") is not None:
        components.ema.load_state_dict(state["ema"])
    load_state = getattr(components.criterion, "load_state_dict", None)
    if callable(load_state):
        try:
            load_state(state.get("loss", {}))
        except ValueError as err:  # run-time data: the checkpoint being resumed against this config's loss
            raise ConfigError(f"cannot resume the loss from this checkpoint: {err}; train into a new "
                              "--model_dir or restore the checkpoint's classification loss") from None
    set_rng_state(state["rng"])
    return int(state["step"]), int(state["sampler"]["epoch"]), int(state["sampler"]["batch_in_epoch"])


def save(components: TrainComponents, model: nn.Module, model_dir: Path, step: int, epoch: int,
         batch_in_epoch: int, info: dist_utils.DistInfo) -> Path | None:
    path = None
    if info.is_main:
        state = checkpoint_state(components, model, step, epoch, batch_in_epoch)
        path = ckpt.save_checkpoint(model_dir, step, state, components.keep_checkpoint_max)
    dist_utils.barrier()
    return path
