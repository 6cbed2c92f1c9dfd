"""Under torch.distributed the normaliser is global: DDP gradient averaging equals one process.

Two gloo ranks each take one image. DDP averages parameter gradients, so each rank's gradient with
respect to its own outputs counts 1/world; that must equal a single process's gradient on the batch.
"""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from raredet.losses import DetectionLoss, weighted_sigmoid, weighted_smooth_l1
from raredet.modeling.box_coder import FasterRcnnBoxCoder
from raredet.modeling.matcher import ArgMaxMatcher

pytestmark = pytest.mark.slow  # two gloo ranks in subprocesses


def _scene():
    xs = torch.arange(0, 64, 8.0)
    grid = torch.stack(torch.meshgrid(xs, xs, indexing="xy"), -1).reshape(-1, 2)
    anchors = torch.cat([grid, grid + 16], -1)
    # Image 0: matched data weights 1 + 0.5; image 1: 1 + 1 + 0.5 -> the two ranks see different counts.
    batch = {
        "boxes": torch.tensor(
            [
                [[0.0, 0, 16, 16], [24, 24, 40, 40], [0, 0, 0, 0]],
                [[8.0, 8, 24, 24], [40, 8, 56, 24], [48, 48, 64, 64]],
            ]
        ),
        "labels": torch.tensor([[0, 1, -1], [1, 0, 0]]),
        "weights": torch.tensor([[1.0, 0.5, 0.0], [1.0, 1.0, 0.5]]),
    }
    g = torch.Generator().manual_seed(0)
    return anchors, batch, torch.randn(2, 64, 2, generator=g), torch.randn(2, 64, 4, generator=g)


def _grads(rows):
    anchors, batch, logits, deltas = _scene()
    logits, deltas = logits[rows].clone().requires_grad_(), deltas[rows].clone().requires_grad_()
    loss = DetectionLoss(
        matcher=ArgMaxMatcher(matched_threshold=0.99, unmatched_threshold=0.3),
        box_coder=FasterRcnnBoxCoder(),
        classification_loss=weighted_sigmoid,
        localization_loss=weighted_smooth_l1,
        normalize_loss_by_num_matches=True,
    )
    out = loss(
        {"cls_logits": logits, "box_deltas": deltas, "anchors": anchors},
        {k: v[rows] for k, v in batch.items()},
    )
    out["total_loss"].backward()
    return logits.grad, deltas.grad, out["normalizer"]


def _worker(rank, world, init_file, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        g_logits, g_deltas, normalizer = _grads(slice(rank, rank + 1))
        torch.save((g_logits, g_deltas, normalizer), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")
def test_ddp_two_ranks_match_single_process(tmp_path):
    mp.start_processes(
        _worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, start_method="fork"
    )
    single_logits, single_deltas, single_norm = _grads(slice(0, 2))
    assert single_norm.item() == 4.0
    for rank in range(2):
        g_logits, g_deltas, normalizer = torch.load(tmp_path / f"rank{rank}.pt")
        assert normalizer.item() == 2.0  # global 4, over 2 ranks
        # DDP averages parameter gradients over ranks, i.e. each rank's output gradient counts 1/world:
        # that must equal the single process's gradient for the same image.
        torch.testing.assert_close(g_logits / 2, single_logits[rank : rank + 1])
        torch.testing.assert_close(g_deltas / 2, single_deltas[rank : rank + 1])
