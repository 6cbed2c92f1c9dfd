"""`configure_allocator`: freed large blocks are reused instead of being unmapped and faulted in again."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

SCRIPT = """
import resource, sys
import torch
from raredet.engine.train import configure_allocator
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
