"""engine/runtime.py. The precision choice: `train_config.use_bfloat16` and `--precision` pick the
autocast; fp32 stays fp32 on the CPU, and `use_bfloat16` is acted on there only where the CPU runs bf16
natively; thread and worker sizing; `configure_allocator`: freed large blocks are reused instead of
being unmapped and faulted in again."""

from __future__ import annotations

import platform
import subprocess
import sys
import warnings

import pytest
import torch
from tests.helpers import tiny_pipeline as tiny

from raredet import builders, config
from raredet.engine import runtime
from raredet.engine import train as engine_train
from raredet.engine.runtime import autocast_for, default_num_workers, eval_workers, resolve_precision
from raredet.errors import ConfigError


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


def test_use_bfloat16_reaches_the_components_and_no_longer_warns(tmp_path):
    tiny.make_data(tmp_path)
    plain = tiny.write_config(tmp_path, "plain.config")
    bf16 = tiny.write_config(tmp_path, "bf16.config", train_extra="use_bfloat16: true")
    built = builders.build_training(config.load(plain))
    assert (built.precision, built.use_bfloat16) == ("auto", False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", config.ConfigWarning)  # use_bfloat16 is acted on now
        loaded = config.load(bf16)
    built = builders.build_training(loaded)
    assert (built.precision, built.use_bfloat16) == ("auto", True)


@pytest.mark.parametrize("native", [True, False])
def test_resolve_precision(monkeypatch, native):
    monkeypatch.setattr(runtime, "cpu_runs_bf16_natively", lambda: native)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    # Forced precisions are kept; bf16 on a CPU without native bf16 says it will be slow.
    assert resolve_precision("fp32", cpu, use_bfloat16=True) == ("fp32", "")
    assert resolve_precision("fp32", cuda) == ("fp32", "")
    chosen, note = resolve_precision("bf16", cpu)
    assert chosen == "bf16" and (note == "") == native
    # auto: bf16 on CUDA whatever the config says; fp32 on the CPU unless use_bfloat16 and native.
    assert resolve_precision("auto", cuda) == ("bf16", "")
    assert resolve_precision("auto", cuda, use_bfloat16=True) == ("bf16", "")
    assert resolve_precision("auto", cpu) == ("fp32", "")
    chosen, note = resolve_precision("auto", cpu, use_bfloat16=True)
    assert chosen == ("bf16" if native else "fp32")
    assert ("is not acted on" in note) == (not native)
    with pytest.raises(ConfigError, match="precision must be one of auto, fp32, bf16; got 'fp16'"):
        resolve_precision("fp16", cpu)


def test_use_bfloat16_on_a_cpu_without_native_bf16_trains_in_fp32(tmp_path, monkeypatch, capsys):
    # A zoo config with use_bfloat16 (21 of the 40) on an AVX2-only CPU: fp32, and the log says why.
    monkeypatch.setattr(runtime, "cpu_runs_bf16_natively", lambda: False)
    tiny.make_data(tmp_path)
    components = builders.build_training(
        config.load(tiny.write_config(tmp_path, "bf16.config", train_extra="use_bfloat16: true")),
        num_train_steps=1)
    seen = []
    real = engine_train.autocast_for
    monkeypatch.setattr(engine_train, "autocast_for",
                        lambda device, precision: seen.append(precision) or real(device, precision))
    engine_train.train(components, tmp_path / "run", device="cpu", progress=False)
    assert seen == ["fp32"] and components.precision == "fp32"
    assert "train_config.use_bfloat16 is not acted on" in capsys.readouterr().out


def test_worker_sizing(monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(16)), raising=False)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert default_num_workers(cpu) == 4  # min(4, 16 // 2)
    assert default_num_workers(cuda) == 8  # min(8, 16 - 1)
    assert default_num_workers(cuda, local_world_size=4) == 3  # 16 // 4 - 1
    assert eval_workers(cpu) == 0 and eval_workers(cuda) == 8
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert default_num_workers(cpu) == 1 and default_num_workers(cuda) == 1


SCRIPT = """
import resource, sys
import torch
import raredet.engine.train  # as in `raredet train`: in a bare process (torch alone) a small object
# allocated after the block can land above it at the heap's top, and the block is then not reused
from raredet.engine.runtime import configure_allocator
applied = configure_allocator() if sys.argv[1] == "1" else False
def faults_of_one_step():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.ones(64 * 1024 * 1024 // 4)  # 64 MiB: above glibc's largest mmap threshold (32 MiB)
    del x
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
for _ in range(3):  # the first steps pay in any case (an aligned request may not fit the freed block
    faults_of_one_step()  # until two freed blocks have merged)
print(applied, faults_of_one_step())
"""


def _faults(configure: bool) -> tuple[bool, int]:
    out = subprocess.run([sys.executable, "-c", SCRIPT, "1" if configure else "0"], capture_output=True,
                         text=True, check=True).stdout.split()
    return out[0] == "True", int(out[1])


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_a_freed_64_mib_block_is_reused_without_faulting_its_pages_in_again():
    pages = 64 * 1024 * 1024 // 4096
    applied, faults = _faults(configure=True)
    assert applied
    assert faults < pages // 20  # reused: (almost) no page touched for the first time
    _, default_faults = _faults(configure=False)
    assert default_faults > pages // 2  # glibc's default: a fresh mmap, every page faulted again
