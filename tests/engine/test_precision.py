"""The precision choice: `train_config.use_bfloat16` and `--precision` pick the autocast; fp32 stays
fp32 on the CPU; thread and worker sizing."""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import pytest
import torch

from raredet import builders, config
from raredet.engine.train import autocast_for, default_num_workers, eval_workers
from raredet.errors import ConfigError

_spec = importlib.util.spec_from_file_location("tiny_pipeline",
                                               Path(__file__).resolve().parent / "tiny_pipeline.py")
tiny = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiny)


def _matmul_dtype(device: torch.device, precision: str) -> torch.dtype:
    a = torch.ones(4, 4)
    with autocast_for(device, precision):
        return (a @ a).dtype


def test_autocast_follows_the_precision_on_cpu():
    cpu = torch.device("cpu")
    assert _matmul_dtype(cpu, "fp32") == torch.float32
    assert _matmul_dtype(cpu, "auto") == torch.float32  # the CPU default keeps the numbers
    assert _matmul_dtype(cpu, "bf16") == torch.bfloat16
    with pytest.raises(ConfigError, match="precision must be one of auto, fp32, bf16; got 'fp16'"):
        autocast_for(cpu, "fp16")


def test_use_bfloat16_chooses_bf16_and_no_longer_warns(tmp_path):
    tiny.make_data(tmp_path)
    plain = tiny.write_config(tmp_path, "plain.config")
    bf16 = tiny.write_config(tmp_path, "bf16.config", train_extra="use_bfloat16: true")
    assert builders.build_training(config.load(plain)).precision == "auto"
    with warnings.catch_warnings():
        warnings.simplefilter("error", config.ConfigWarning)  # use_bfloat16 is acted on now
        loaded = config.load(bf16)
    assert builders.build_training(loaded).precision == "bf16"


def test_worker_sizing(monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(16)), raising=False)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert default_num_workers(cpu) == 4  # min(4, 16 // 2)
    assert default_num_workers(cuda) == 8  # min(8, 16 - 1)
    assert default_num_workers(cuda, local_world_size=4) == 3  # 16 // 4 - 1
    assert eval_workers(cpu) == 0 and eval_workers(cuda) == 8
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert default_num_workers(cpu) == 1 and default_num_workers(cuda) == 1
