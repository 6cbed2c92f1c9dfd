"""Two nodes of one CPU process each (torchrun --nnodes 2, gloo, rendezvous on 127.0.0.1) train to the
same parameters as one node with two processes: the multi-node command of docs/benchmarks.md, run."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tests.helpers import toy_training

TOY_SCRIPT = str(Path(toy_training.__file__).resolve())
STEPS, BATCH = 6, 4


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _params(model_dir: Path, rank: int) -> dict[str, torch.Tensor]:
    saved = torch.load(model_dir / f"final_params_rank{rank}.pt", weights_only=True)
    return dict(saved["params"])


@pytest.mark.slow  # starts four torchrun processes (about ten seconds)
def test_two_nodes_match_one_node_with_two_processes(tmp_path):
    script = [TOY_SCRIPT]
    port = _free_port()
    nodes = [
        subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(rank),
             "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port", str(port),
             *script, str(tmp_path / "nodes"), str(STEPS), "--batch_size", str(BATCH)],
            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for rank in (0, 1)
    ]
    outputs = [node.communicate(timeout=180)[0] for node in nodes]
    for rank, (node, out) in enumerate(zip(nodes, outputs, strict=True)):
        assert node.returncode == 0, f"node {rank}:\n{out[-3000:]}"
    one_node = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *script,
         str(tmp_path / "one_node"), str(STEPS), "--batch_size", str(BATCH)],
        env=_env(), capture_output=True, text=True, timeout=180,
    )
    assert one_node.returncode == 0, one_node.stderr[-3000:]
    log = (tmp_path / "nodes" / "train" / "log.jsonl").read_text().splitlines()
    steps = [json.loads(line)["step"] for line in log]
    assert steps == list(range(1, STEPS + 1))  # rank 0 (node 0) logged every step of the 2-node run
    reference = _params(tmp_path / "one_node", 0)
    for rank in (0, 1):
        got = _params(tmp_path / "nodes", rank)
        assert got.keys() == reference.keys()
        for key, value in reference.items():
            # the same two gradients summed by the same gloo all-reduce: the same bits
            assert torch.equal(got[key], value), (rank, key)
