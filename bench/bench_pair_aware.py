"""What the pair-aware classification losses cost next to plain focal loss, inside DetectionLoss.

DetectionLoss forward + backward (assignment, per-anchor weights, losses, normaliser; statistics
updated as in training) on random logits for the anchors of a RetinaNet at 640x640 (levels 3-7, 6
anchors per location: 51150 anchors), 3 classes, 12 random boxes per image. Each loss is timed in the
same run as the focal-loss reference, round robin; medians of the rounds. Run as
`python -m bench.bench_pair_aware [--quick]`.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable
from typing import Any

import torch

from bench.common import machine, median_seconds, save_result
from raredet.losses import (
    DetectionLoss,
    confusion_gated_focal,
    equalized_focal,
    seesaw_sigmoid_focal,
    statistics_for,
    weighted_sigmoid_focal,
    weighted_smooth_l1,
)
from raredet.modeling.box_coder import FasterRcnnBoxCoder
from raredet.modeling.matcher import ArgMaxMatcher

K = 3
LOSSES: dict[str, tuple[Callable[..., torch.Tensor], dict[str, Any]]] = {
    "weighted_sigmoid_focal": (weighted_sigmoid_focal, {"alpha": 0.25}),
    "seesaw_sigmoid_focal": (seesaw_sigmoid_focal, {}),
    "confusion_gated_focal": (confusion_gated_focal, {}),
    "equalized_focal": (equalized_focal, {}),
}


def anchors(size: int = 640) -> torch.Tensor:
    """6 anchors (3 ratios x 2 scales) per location of levels 3-7, xyxy pixels."""
    out = []
    for level in range(3, 8):
        stride = 2**level
        centres = (torch.arange(size // stride, dtype=torch.float32) + 0.5) * stride
        cy, cx = torch.meshgrid(centres, centres, indexing="ij")
        for scale in (4.0, 4.0 * 2**0.5):
            for ratio in (1.0, 2.0, 0.5):
                h, w = stride * scale / ratio**0.5, stride * scale * ratio**0.5
                out.append(torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1).reshape(-1, 4))
    return torch.cat(out)


def batch(batch_size: int, size: int = 640) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(batch_size, 12, 2, generator=g) * size * 0.8
    wh = 16 + torch.rand(batch_size, 12, 2, generator=g) * size * 0.2
    labels = torch.multinomial(torch.tensor([0.8, 0.15, 0.05]), batch_size * 12, True, generator=g)
    return {"boxes": torch.cat([xy, xy + wh], -1), "labels": labels.view(batch_size, 12),
            "weights": torch.ones(batch_size, 12)}


def run(quick: bool) -> dict[str, Any]:
    torch.set_num_threads(1)
    batch_size, repeats = (1, 3) if quick else (4, 7)
    grid, data = anchors(), batch(batch_size)
    g = torch.Generator().manual_seed(1)
    logits0 = torch.randn(batch_size, len(grid), K, generator=g) - 4.0
    deltas0 = torch.randn(batch_size, len(grid), 4, generator=g) * 0.1
    steps = {}
    for name, (fn, params) in LOSSES.items():
        loss = DetectionLoss(
            matcher=ArgMaxMatcher(matched_threshold=0.5, unmatched_threshold=0.4),
            box_coder=FasterRcnnBoxCoder(), classification_loss=fn, classification_loss_params=params,
            classification_statistics=statistics_for(fn, K), localization_loss=weighted_smooth_l1,
            class_weights=torch.tensor([1.0, 2.0, 8.0]), normalize_loss_by_num_matches=True,
        )

        def step(loss: DetectionLoss = loss) -> None:
            logits, deltas = logits0.clone().requires_grad_(), deltas0.clone().requires_grad_()
            loss({"cls_logits": logits, "box_deltas": deltas, "anchors": grid}, data)["total_loss"].backward()

        steps[name] = step
    # Round robin (one timed call of each loss per round) so that load changes on a shared machine
    # hit every loss alike; the median over rounds per loss.
    times: dict[str, list[float]] = {name: [] for name in steps}
    for step in steps.values():
        step()  # warm-up
    for _ in range(repeats):
        for name, step in steps.items():
            times[name].append(median_seconds(step, 1, warmup=0))
    rows = {name: statistics.median(t) for name, t in times.items()}
    reference = rows["weighted_sigmoid_focal"]
    summary = ["| loss | ms (median) | vs focal |", "|---|---|---|"] + [
        f"| {n} | {1e3 * s:.1f} | {s / reference:.2f}x |" for n, s in rows.items()
    ]
    return {"machine": machine(), "threads": 1, "batch": batch_size, "anchors": len(grid),
            "repeats": repeats, "seconds": rows, "summary": summary, "quick": quick}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    result = run(quick=parser.parse_args().quick)
    path = save_result("pair_aware", result)
    print("\n".join(result["summary"]))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
