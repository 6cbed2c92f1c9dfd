"""Post-processing (decode, clip, sigmoid, batch NMS) time per image at 12,804 and 51,150 anchors.

A RetinaNet-style SSD (FPN levels 3-7, 6 anchors per location) at 320x320 (12,804 anchors) and 640x640
(51,150 anchors), with the zoo RetinaNet's `batch_non_max_suppression` (score_threshold 1e-8, IoU 0.6,
100 detections per class and in total, SIGMOID). The model's outputs are drawn at random (logits
N(-4, 2): a few hundred anchors score above 0.1, as after training), so only `SSD.postprocess` is timed,
for 3 and for 90 classes, at batch 1 and batch 8 (reported per image). Then the setting of raredet's
synthetic configs (`raredet synth`, the demo): score_threshold 0.05, logits N(-8, 1.8) so that about a
hundred (anchor, class) pairs per 320x320 image pass it, as for the demo's trained model: NMS works on
those only, not on all `pre_nms_top_k` candidates. Run as `python -m bench.bench_postprocess [--quick]`.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
from google.protobuf import json_format

from bench.common import median_seconds, save_result
from raredet.builders.ssd import build_ssd
from raredet.modeling.ssd import SSD
from raredet.protos import ssd_pb2

POST_PROCESSING = {
    "batch_non_max_suppression": {"score_threshold": 1e-8, "iou_threshold": 0.6,
                                  "max_detections_per_class": 100, "max_total_detections": 100},
    "score_converter": "SIGMOID",
}


def _model(num_classes: int, score_threshold: float = 1e-8) -> SSD:
    return build_ssd(json_format.ParseDict(dict(
        num_classes=num_classes,
        feature_extractor={"type": "ssd_resnet18_v1_fpn", "depth_multiplier": 0.25, "min_depth": 16,
                           "fpn": {"min_level": 3, "max_level": 7, "additional_layer_depth": 128}},  # 32
        box_predictor={"weight_shared_convolutional_box_predictor": {"depth": 32,
                                                                     "num_layers_before_predictor": 1}},
        anchor_generator={"multiscale_anchor_generator": {
            "min_level": 3, "max_level": 7, "anchor_scale": 4.0, "aspect_ratios": [1.0, 2.0, 0.5],
            "scales_per_octave": 2}},
        post_processing={**POST_PROCESSING, "batch_non_max_suppression": {
            **POST_PROCESSING["batch_non_max_suppression"], "score_threshold": score_threshold}},
    ), ssd_pb2.Ssd())).eval()


def _outputs(model: SSD, size: int, batch: int, num_classes: int,
             logits: tuple[float, float] = (-4.0, 2.0)) -> dict[str, torch.Tensor]:
    """Random head outputs `cls_logits [B, A, K]`, `box_deltas [B, A, 4]` on the model's real anchors."""
    with torch.no_grad():
        anchors = model(torch.zeros(1, 3, size, size, dtype=torch.uint8))["anchors"]
    g = torch.Generator().manual_seed(0)
    num_anchors = anchors.shape[0]
    return {
        "cls_logits": torch.randn(batch, num_anchors, num_classes, generator=g) * logits[1] + logits[0],
        "box_deltas": torch.randn(batch, num_anchors, 4, generator=g) * 0.5,
        "anchors": anchors,
    }


def time_postprocess(size: int, num_classes: int, batch: int, repeats: int, score_threshold: float = 1e-8,
                     logits: tuple[float, float] = (-4.0, 2.0)) -> dict[str, Any]:
    model = _model(num_classes, score_threshold)
    outputs = _outputs(model, size, batch, num_classes, logits)
    passing = int((outputs["cls_logits"].sigmoid() > score_threshold).sum()) // batch
    image_sizes = torch.tensor([[size, size]] * batch)

    def step() -> None:
        with torch.no_grad():
            model.postprocess(outputs, image_sizes)

    seconds = median_seconds(step, repeats)
    return {"size": size, "anchors": int(outputs["anchors"].shape[0]), "classes": num_classes,
            "batch": batch, "batch_s": seconds, "per_image_ms": 1000 * seconds / batch,
            "score_threshold": score_threshold, "passing_per_image": passing}


def run(quick: bool) -> dict[str, Any]:
    """Both sizes, 3 and 90 classes, batch 1 and 8; `quick`: 320 only, 3 classes, 2 repeats."""
    sizes, classes, batches, repeats = ((320,), (3,), (1,), 2) if quick else ((320, 640), (3, 90), (1, 8), 5)
    rows = [time_postprocess(s, k, b, repeats) for s in sizes for k in classes for b in batches]
    rows += [time_postprocess(s, 3, b, repeats, 0.05, (-8.0, 1.8)) for s in sizes for b in batches]
    lines = [f"`SSD.postprocess` (decode, clip, sigmoid, batch NMS), median of {repeats}, "
             f"{torch.get_num_threads()} threads:", "",
             "| size | anchors | classes | score_threshold | pairs above it per image | batch "
             "| ms per image |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['size']} | {r['anchors']} | {r['classes']} | {r['score_threshold']:g} | "
              f"{r['passing_per_image']} | {r['batch']} | {r['per_image_ms']:.1f} |" for r in rows]
    return {"rows": rows, "summary": lines}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small smoke run")
    result = run(parser.parse_args(argv).quick)
    save_result("postprocess", result)
    print("\n".join(result["summary"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
