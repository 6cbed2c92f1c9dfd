"""losses/center_net_keypoints.py: the keypoint offsets' and regressions' L1, elementwise, by hand."""

from __future__ import annotations

import torch

from raredet.losses.center_net_keypoints import l1_elementwise


def test_l1_is_elementwise_and_never_reduced() -> None:
    pred = torch.tensor([[[0.5, -1.0], [2.0, 0.0]]], requires_grad=True)  # [1, 2, (y, x)]
    target = torch.tensor([[[0.25, 1.0], [2.0, -3.0]]])
    loss = l1_elementwise(pred, target)
    torch.testing.assert_close(loss, torch.tensor([[[0.25, 2.0], [0.0, 3.0]]]))
    loss.sum().backward()
    # d|p - t|/dp = sign(p - t); 0 where they are equal (torch's sign(0) = 0)
    torch.testing.assert_close(pred.grad, torch.tensor([[[1.0, -1.0], [0.0, 1.0]]]))
