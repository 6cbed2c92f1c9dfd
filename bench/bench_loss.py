"""DetectionLoss time per batch (assignment + losses + miner) next to the model's forward+backward.

A small RetinaNet (ResNet-18 FPN, levels 3-7, 6 anchors per location, 3 classes) at 320x320 and
640x640 with 12 random boxes per image; the loss is timed on the model's detached outputs, once
with focal loss (the RetinaNet setting) and once with sigmoid loss plus the hard example miner (the
SSD setting), forward and backward. Run as `python -m bench.bench_loss [--quick]`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import torch
from google.protobuf import json_format

from bench.common import median_seconds, save_result
from raredet.builders.ssd import build_ssd
from raredet.losses import (
    DetectionLoss,
    HardExampleMiner,
    weighted_sigmoid,
    weighted_sigmoid_focal,
    weighted_smooth_l1,
)
from raredet.modeling.box_coder import FasterRcnnBoxCoder
from raredet.modeling.matcher import ArgMaxMatcher
from raredet.modeling.ssd import SSD
from raredet.protos import ssd_pb2

NUM_CLASSES = 3


def _model() -> SSD:
    return build_ssd(json_format.ParseDict(dict(
        num_classes=NUM_CLASSES,
        feature_extractor={"type": "ssd_resnet18_v1_fpn", "fpn": {"min_level": 3, "max_level": 7}},
        box_predictor={
            "weight_shared_convolutional_box_predictor": {"depth": 64, "num_layers_before_predictor": 2}
        },
        anchor_generator={
            "multiscale_anchor_generator": {
                "min_level": 3,
                "max_level": 7,
                "anchor_scale": 4.0,
                "aspect_ratios": [1.0, 2.0, 0.5],
                "scales_per_octave": 2,
            }
        },
    ), ssd_pb2.Ssd()))


def _batch(batch_size: int, size: int, device: torch.device) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(batch_size, 12, 2, generator=g) * size * 0.8
    wh = 16 + torch.rand(batch_size, 12, 2, generator=g) * size * 0.2
    return {
        "boxes": torch.cat([xy, xy + wh], -1).to(device),
        "labels": torch.randint(0, NUM_CLASSES, (batch_size, 12), generator=g).to(device),
        "weights": torch.ones(batch_size, 12, device=device),
    }


def _losses() -> dict[str, DetectionLoss]:
    common: dict[str, Any] = dict(
        matcher=ArgMaxMatcher(matched_threshold=0.5, unmatched_threshold=0.4),
        box_coder=FasterRcnnBoxCoder(),
        localization_loss=weighted_smooth_l1,
        class_weights=torch.tensor([1.0, 2.0, 8.0]),
        normalize_loss_by_num_matches=True,
    )
    miner = HardExampleMiner(
        num_hard_examples=64, iou_threshold=0.99, loss_type="CLASSIFICATION", max_negatives_per_positive=3
    )
    return {
        "focal": DetectionLoss(
            classification_loss=weighted_sigmoid_focal, classification_loss_params={"alpha": 0.25}, **common
        ),
        "sigmoid+miner": DetectionLoss(
            classification_loss=weighted_sigmoid, hard_example_miner=miner, **common
        ),
    }


def _sync(device: torch.device) -> Callable[[], None]:
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def _time_size(model: SSD, size: int, batch_size: int, repeats: int, device: torch.device) -> dict[str, Any]:
    images = torch.randint(0, 256, (batch_size, 3, size, size), dtype=torch.uint8, device=device)
    batch, sync = _batch(batch_size, size, device), _sync(device)

    def model_step() -> None:
        out = model(images)
        (out["cls_logits"].sum() + out["box_deltas"].sum()).backward()
        sync()

    row: dict[str, Any] = {
        "size": size,
        "batch": batch_size,
        "model_fwd_bwd_s": median_seconds(model_step, repeats),
    }
    with torch.no_grad():
        outputs = model(images)
    row["anchors"] = int(outputs["anchors"].shape[0])
    for name, loss in _losses().items():
        loss.class_weights = loss.class_weights.to(device)

        def loss_step(loss: DetectionLoss = loss) -> None:
            logits = outputs["cls_logits"].detach().requires_grad_()
            deltas = outputs["box_deltas"].detach().requires_grad_()
            loss({"cls_logits": logits, "box_deltas": deltas, "anchors": outputs["anchors"]}, batch)[
                "total_loss"
            ].backward()
            sync()

        row[f"loss_{name}_s"] = median_seconds(loss_step, repeats)
    return row


def run(quick: bool) -> dict[str, Any]:
    """Time both sizes; `quick` uses batch 1 and two repeats."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = _model().to(device).train()
    batch_size, repeats = (1, 2) if quick else (4, 5)
    rows = [_time_size(model, size, batch_size, repeats, device) for size in (320, 640)]
    header = "| size | batch | anchors | model fwd+bwd (ms) | loss focal (ms) | loss sigmoid+miner (ms) |"
    summary = [header, "|---|---|---|---|---|---|"] + [
        f"| {r['size']} | {r['batch']} | {r['anchors']} | {1e3 * r['model_fwd_bwd_s']:.1f} | "
        f"{1e3 * r['loss_focal_s']:.1f} | {1e3 * r['loss_sigmoid+miner_s']:.1f} |"
        for r in rows
    ]
    return {"device": str(device), "quick": quick, "rows": rows, "summary": summary}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    result = run(quick=parser.parse_args().quick)
    path = save_result("loss", result)
    print("\n".join(result["summary"]))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
