"""engine/distributed.py: DDP wrapping (the multi-process runs are in test_train.py and test_multinode.py)."""

from __future__ import annotations

import torch
from torch import nn

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
