"""engine/distributed.py: DDP wrapping, and a Faster R-CNN trained by two processes equal to one (the
toy multi-process runs are in test_train.py and test_multinode.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tests.helpers.faster_rcnn import ZOO_NAME
from tests.helpers.tiny_pipeline import make_data
from tests.helpers.zoo import faster_rcnn_small_copy
from torch import nn

from raredet import builders
from raredet import config as config_lib
from raredet.engine.checkpoint import load_checkpoint
from raredet.engine.distributed import to_sync_batch_norm
from raredet.modeling.layers import FrozenBatchNorm2d


def test_to_sync_batch_norm_keeps_state_and_frozen_layers():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Sequential(FrozenBatchNorm2d(4)))
    with torch.no_grad():
        model[1].running_mean.fill_(0.5)
        model[1].weight.fill_(2.0)
    model[1].weight.requires_grad_(False)  # a `scale: false` batch norm: gamma stays fixed
    to_sync_batch_norm(model)
    assert type(model[1]) is nn.SyncBatchNorm and type(model[2][0]) is FrozenBatchNorm2d
    assert torch.equal(model[1].running_mean, torch.full((4,), 0.5))
    assert torch.equal(model[1].weight, torch.full((4,), 2.0)) and not model[1].weight.requires_grad


# ---- DDP end to end: Faster R-CNN ----------------------------------------------------------------------
# DDP: two gloo processes (torchrun, CPU) train a small Faster R-CNN to the same parameters as one
# process on the same global batch, although both stages' balanced samplers draw subsets (the draws come
# from per-image generators seeded by (seed, step, image index in the global batch), not from each
# rank's global generator). Batch norms are frozen (``batch_norm_trainable: false``), as their
# statistics would otherwise be per process on CPU.

STEPS = 3
ROOT = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT / "src"))
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def _config(data: Path) -> Path:
    """The zoo config's small copy, batch 4, with samplers that must choose: 8 of the 192 anchors
    (4 x 4 cells x 12) and 4 of the 16 proposals per image."""
    path = faster_rcnn_small_copy(ZOO_NAME, data)
    text = path.read_text().replace("train_config: {\n  batch_size: 2", "train_config: {\n  batch_size: 4")
    text = text.replace("batch_norm_trainable: true", "batch_norm_trainable: false")
    text = text.replace("use_bfloat16: true", "use_bfloat16: false")
    # An untrained ResNet under frozen batch norms has large activations: clipping keeps the 3 steps
    # finite, and a learning rate of 0.01 makes the updates large against float rounding.
    text = text.replace("warmup_learning_rate: .013333", "warmup_learning_rate: .01")
    text = text.replace("  batch_size: 4", "  batch_size: 4\n  gradient_clipping_by_norm: 1.0")
    assert text.count("gradient_clipping_by_norm") == 1
    text = text.replace("first_stage_max_proposals: 16", "first_stage_max_proposals: 16\n"
                        "    first_stage_minibatch_size: 8\n    second_stage_batch_size: 4")
    path.write_text(text)
    return path


def _train(config: Path, model_dir: Path, processes: int) -> dict[str, torch.Tensor]:
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                 str(processes)] if processes > 1 else [sys.executable])
    cmd = [*launcher, "-m", "raredet", "train", "--pipeline_config_path", str(config), "--model_dir",
           str(model_dir), "--num_train_steps", str(STEPS), "--device", "cpu", "--seed", "5"]
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600, cwd=config.parent)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return load_checkpoint(model_dir / f"ckpt-{STEPS}.pt")["model"]


@pytest.mark.slow  # three processes train a ResNet-50 Faster R-CNN for 3 steps (about a minute)
def test_faster_rcnn_two_processes_match_one_process_on_the_global_batch(tmp_path):
    data = tmp_path / "data"
    make_data(data, images=8)
    config = _config(data)
    two = _train(config, tmp_path / "two", 2)
    one = _train(config, tmp_path / "one", 1)
    initial = builders.build_training(config_lib.load(config), seed=5).model.state_dict()
    moved = 0
    for key, value in one.items():
        if not value.is_floating_point():
            continue
        step_one, step_two = value - initial[key], two[key] - initial[key]
        scale = float(step_one.abs().max())
        moved += scale > 0
        # The same updates up to the order of float sums (two ranks' means averaged by DDP): measured
        # at most 0.5 % of the largest change of any tensor; with each rank drawing from its own global
        # generator (raredet before the per-image seeds) 30-67 %.
        torch.testing.assert_close(step_two, step_one, rtol=0.0, atol=0.02 * scale, msg=key)
    assert moved >= 50  # the backbone, the RPN and the box classifier all trained
    for key in ("rpn.objectness.0.weight", "rpn.box.0.weight", "box_head.cls.weight"):
        assert not torch.equal(initial[key], one[key]), key
