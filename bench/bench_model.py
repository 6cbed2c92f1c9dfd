"""Model cost per feature extractor at 320x320: forward and forward+backward time per image, parameter
counts and FLOPs (``torch.utils.flop_counter.FlopCounterMode``, forward, one image; a multiply-add
counts as 2 FLOPs).

Each extractor uses its zoo-style head (FPN ones: 4-layer weight-shared predictor; FPN-lite and SSDLite:
depthwise). ``ssd_resnet18_v1_fpn@0.25`` is the narrow CPU-demo variant (``depth_multiplier: 0.25``).

    python -m bench.bench_model [--quick]     # writes bench/results/model.json and prints a table
    python -m bench.bench_model --only ssd_resnet152_v1_fpn ssd_mobilenet_v1_fpn ssd_resnet50_v1_fpn \
        --size 640 --batch 1 --repeats 2      # chosen extractors at another size -> model_640.json
    python -m bench.bench_model --native --batch 1 --max_train_gflops 100 --only \
        "ssd_efficientdet_d0 (b0)" ...        # each row at its zoo size -> model_native.json

The Faster R-CNN rows (``faster_rcnn_resnet50``, ``faster_rcnn_resnet50_fpn``: the zoo's settings, 300
proposals; timed without targets, so the second stage runs on every proposal, as at inference) are in
the full run.

The CenterNet and Mask R-CNN rows (``ZOO_ROWS``) are the TF2 zoo configs' model blocks as shipped, with
``NUM_CLASSES`` classes: ``centernet_resnet50_v1_fpn`` (the zoo's 512x512 ResNet-50 v1 FPN config, its
keypoint task left out: boxes only), ``centernet_hourglass104`` (512x512) and
``mask_rcnn_inception_resnet_v2`` (1024x1024, 300 proposals, 33x33 masks). They have no anchors (CenterNet:
"-" in the table; Mask R-CNN: its first stage's). Their post-processing is timed too (``fwd+post``): Mask
R-CNN's masks come from a third pass over the detections' crops there. They are not in the default
run (Hourglass-104 takes multiples of 128 px, not 320): name them with ``--only``, at ``--native`` size
or a small ``--size``. ``--proposals N`` runs the two-stage rows with N proposals (tiny test settings;
the rows are then named so)::

    python -m bench.bench_model --only centernet_resnet50_v1_fpn centernet_hourglass104 \
        mask_rcnn_inception_resnet_v2 --size 128 --proposals 4 --batch 1 --repeats 1 --warmup 0
    python -m bench.bench_model --native --only centernet_resnet50_v1_fpn ...   # 512 / 1024 (GPU)
"""

from __future__ import annotations

import argparse
import os
import statistics
from collections.abc import Callable
from typing import Any, cast

import torch
from google.protobuf import json_format
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from bench.common import run_times, save_result
from raredet import builders
from raredet.builders.faster_rcnn import build_faster_rcnn
from raredet.builders.ssd import build_ssd
from raredet.config.load import parse_config
from raredet.protos import center_net_pb2, faster_rcnn_pb2, ssd_pb2
from raredet.zoo import CONFIG_DIR

SIZE = 320
NUM_CLASSES = 4
HP = {
    "activation": "RELU_6",
    "regularizer": {"l2_regularizer": {"weight": 4e-5}},
    "initializer": {"random_normal_initializer": {"stddev": 0.01}},
    "batch_norm": {"decay": 0.97, "scale": True, "epsilon": 0.001},
}
ANCHORS = {"aspect_ratios": [1.0, 2.0, 0.5], "scales_per_octave": 2, "anchor_scale": 4.0}


def _fpn(
    extractor: str, depth: int, multiplier: float = 1.0, depthwise: bool = False, fpn_depth: int = 0
) -> dict[str, Any]:
    """``depth`` for the predictor; the FPN's is ``max(int(fpn_depth * multiplier), 16)`` (the TF OD API's
    rule), ``fpn_depth`` defaulting to ``depth``."""
    return dict(
        feature_extractor={
            "type": extractor,
            "depth_multiplier": multiplier,
            "conv_hyperparams": HP,
            "use_depthwise": depthwise,
            "fpn": {"min_level": 3, "max_level": 7, "additional_layer_depth": fpn_depth or depth},
        },
        box_predictor={
            "weight_shared_convolutional_box_predictor": {
                "conv_hyperparams": HP,
                "depth": depth,
                "num_layers_before_predictor": 4,
                "kernel_size": 3,
                "class_prediction_bias_init": -4.6,
                "share_prediction_tower": depthwise,
                "use_depthwise": depthwise,
            }
        },
        anchor_generator={"multiscale_anchor_generator": {"min_level": 3, "max_level": 7, **ANCHORS}},
    )


def _ssdlite() -> dict[str, Any]:
    return dict(
        feature_extractor={"type": "ssd_mobilenet_v2", "conv_hyperparams": HP, "use_depthwise": True},
        box_predictor={
            "convolutional_box_predictor": {"conv_hyperparams": HP, "kernel_size": 3, "use_depthwise": True}
        },
        anchor_generator={"multiscale_anchor_generator": {"min_level": 4, "max_level": 9, **ANCHORS}},
    )


CONFIGS = {
    "ssd_resnet18_v1_fpn@0.25": lambda: _fpn("ssd_resnet18_v1_fpn", 64, multiplier=0.25, fpn_depth=256),
    "ssd_resnet18_v1_fpn": lambda: _fpn("ssd_resnet18_v1_fpn", 256),
    "ssd_resnet34_v1_fpn": lambda: _fpn("ssd_resnet34_v1_fpn", 256),
    "ssd_resnet50_v1_fpn": lambda: _fpn("ssd_resnet50_v1_fpn", 256),
    "ssd_resnet101_v1_fpn": lambda: _fpn("ssd_resnet101_v1_fpn", 256),
    "ssd_resnet152_v1_fpn": lambda: _fpn("ssd_resnet152_v1_fpn", 256),
    "ssd_mobilenet_v1_fpn": lambda: _fpn("ssd_mobilenet_v1_fpn", 256),
    "ssd_mobilenet_v2_fpn (lite)": lambda: _fpn("ssd_mobilenet_v2_fpn_keras", 128, depthwise=True),
    "ssd_mobilenet_v2 (SSDLite)": _ssdlite,
}



def _frcnn(extractor: str, fpn: bool) -> dict[str, Any]:
    """The zoo's Faster R-CNN settings (grid anchors, or the FPN config's levels 2-6), 300 proposals."""
    anchors: dict[str, Any] = (
        {"multiscale_anchor_generator": {"min_level": 2, "max_level": 6, **ANCHORS}} if fpn else
        {"grid_anchor_generator": {"scales": [0.25, 0.5, 1.0, 2.0], "aspect_ratios": [0.5, 1.0, 2.0]}})
    extractor_cfg: dict[str, Any] = {"type": extractor, "batch_norm_trainable": True}
    if fpn:
        extractor_cfg.update(fpn={"min_level": 2, "max_level": 6}, conv_hyperparams=HP)
    return dict(feature_extractor=extractor_cfg, first_stage_anchor_generator=anchors,
                first_stage_max_proposals=300, initial_crop_size=14, maxpool_kernel_size=2, maxpool_stride=2,
                second_stage_box_predictor={"mask_rcnn_box_predictor": {"share_box_across_classes": not fpn}},
                second_stage_post_processing={"score_converter": "SOFTMAX"}, clip_anchors_to_image=True)


# Two-stage rows: the second stage runs on all 300 proposals per image (see docs/faster_rcnn.md).
FRCNN_CONFIGS = {
    "faster_rcnn_resnet50": lambda: _frcnn("faster_rcnn_resnet50_keras", fpn=False),
    "faster_rcnn_resnet50_fpn": lambda: _frcnn("faster_rcnn_resnet50_fpn_keras", fpn=True),
}


# row -> (zoo config, its image size): the model blocks as shipped (module docstring)
ZOO_ROWS = {
    "centernet_resnet50_v1_fpn": ("centernet_resnet50_v1_fpn_512x512_kpts_coco17_tpu-8", 512),
    "centernet_hourglass104": ("centernet_hourglass104_512x512_coco17_tpu-8", 512),
    "mask_rcnn_inception_resnet_v2": ("mask_rcnn_inception_resnet_v2_1024x1024_coco17_gpu-8", 1024),
}


def _zoo_model(name: str, proposals: int | None = None) -> nn.Module:
    """A ZOO_ROWS model with NUM_CLASSES classes; CenterNet without its keypoint task (which needs a
    keypoint label map); `proposals`: a two-stage model's first_stage_max_proposals (and second-stage
    batch, if larger)."""
    cfg = parse_config((CONFIG_DIR / f"{ZOO_ROWS[name][0]}.config").read_text(encoding="utf-8"))
    msg = builders.model_message(cfg)
    msg.num_classes = NUM_CLASSES
    if isinstance(msg, center_net_pb2.CenterNet):
        del msg.keypoint_estimation_task[:]
        msg.ClearField("keypoint_label_map_path")
    elif isinstance(msg, faster_rcnn_pb2.FasterRcnn) and proposals is not None:
        msg.first_stage_max_proposals = proposals
        msg.second_stage_batch_size = min(msg.second_stage_batch_size, proposals)
    return builders.build_model(msg)[0]


def row_name(name: str, proposals: int | None) -> str:
    """The result's row name: a two-stage row with `proposals` says how many it ran."""
    two_stage = name in FRCNN_CONFIGS or name.startswith("mask_rcnn")
    return f"{name} ({proposals} proposals)" if proposals is not None and two_stage else name


def _build(name: str, proposals: int | None = None) -> nn.Module:
    if name in ZOO_ROWS:
        return _zoo_model(name, proposals)
    if name in FRCNN_CONFIGS:
        msg = json_format.ParseDict({"num_classes": NUM_CLASSES, **FRCNN_CONFIGS[name]()},
                                    faster_rcnn_pb2.FasterRcnn())
        if proposals is not None:
            msg.first_stage_max_proposals = proposals
        return build_faster_rcnn(msg)
    return build_ssd(json_format.ParseDict({"num_classes": NUM_CLASSES, **CONFIGS[name]()}, ssd_pb2.Ssd()))

# The quick run (a smoke test on 2 shared cores) skips the large ResNets.
QUICK = ["ssd_resnet18_v1_fpn@0.25", "ssd_mobilenet_v2_fpn (lite)", "ssd_mobilenet_v2 (SSDLite)"]


# ---- EfficientDet D0-D7 as the TF2 zoo configs build them ----------------------------------------------
# (native size, EfficientNet variant, BiFPN iterations, BiFPN filters, combine, predictor layers);
# D7 is b6 with D6's BiFPN at a larger size.
EFFICIENTDETS = {
    "d0": (512, "b0", 3, 64, "fast_attention", 3),
    "d1": (640, "b1", 4, 88, "fast_attention", 3),
    "d2": (768, "b2", 5, 112, "fast_attention", 3),
    "d3": (896, "b3", 6, 160, "fast_attention", 4),
    "d4": (1024, "b4", 7, 224, "fast_attention", 4),
    "d5": (1280, "b5", 7, 288, "fast_attention", 4),
    "d6": (1408, "b6", 8, 384, "sum", 5),
    "d7": (1536, "b6", 8, 384, "sum", 5),
}
EFFDET_HP = {
    "force_use_bias": True,
    "activation": "SWISH",
    "regularizer": {"l2_regularizer": {"weight": 4e-5}},
    "initializer": {"truncated_normal_initializer": {"stddev": 0.03}},
    "batch_norm": {"scale": True, "decay": 0.99, "epsilon": 0.001},
}


def _efficientdet(d: str) -> dict[str, Any]:
    _, variant, iterations, filters, combine, layers = EFFICIENTDETS[d]
    head_hp = dict(EFFDET_HP, initializer={"random_normal_initializer": {"stddev": 0.01}})
    return dict(
        feature_extractor={
            "type": f"ssd_efficientnet-{variant}_bifpn",
            "conv_hyperparams": EFFDET_HP,
            "bifpn": {"min_level": 3, "max_level": 7, "num_iterations": iterations, "num_filters": filters,
                      "combine_method": combine},
        },
        box_predictor={
            "weight_shared_convolutional_box_predictor": {
                "conv_hyperparams": head_hp,
                "depth": filters,
                "num_layers_before_predictor": layers,
                "kernel_size": 3,
                "class_prediction_bias_init": -4.6,
                "use_depthwise": True,
            }
        },
        anchor_generator={
            "multiscale_anchor_generator": {"min_level": 3, "max_level": 7, "anchor_scale": 4.0,
                                            "aspect_ratios": [1.0, 2.0, 0.5], "scales_per_octave": 3}
        },
    )


# Rows "ssd_efficientdet_d0 (b0)" ...; time them at their native size (EFFICIENTDETS[d][0]).
CONFIGS.update(
    {f"ssd_efficientdet_{d} ({v[1]})": (lambda d=d: _efficientdet(d)) for d, v in EFFICIENTDETS.items()}
)


def _seconds(fn: Callable[[], None], repeats: int, warmup: int) -> tuple[float, float]:
    """(median, minimum) wall time of ``fn``. On a shared CPU the minimum is the steadier figure:
    other processes only ever add time."""
    times = run_times(fn, repeats, warmup)
    return statistics.median(times), min(times)


def _forward_flops(model: nn.Module, image: torch.Tensor) -> int:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(image)
    return int(counter.get_total_flops())


def native_size(name: str) -> int:
    """The zoo config's image size for a row: EfficientDet D<N> its own, ResNet-152 and MobileNetV1 FPN
    640 (their smaller zoo configs), the rest 320."""
    for d, spec in EFFICIENTDETS.items():
        if name.startswith(f"ssd_efficientdet_{d} "):
            return spec[0]
    if name in ZOO_ROWS:
        return ZOO_ROWS[name][1]
    return 640 if name in ("ssd_resnet152_v1_fpn", "ssd_mobilenet_v1_fpn") else SIZE


def _training_sum(out: dict[str, torch.Tensor]) -> torch.Tensor:
    """A scalar of every trained output, to time the backward pass: SSD's and the two-stage models'
    logits and box codes (and Mask R-CNN's mask logits), else (CenterNet) every map that has a gradient."""
    if "cls_logits" not in out:
        return sum((v.float().sum() for v in out.values() if v.requires_grad), torch.zeros(()))
    loss = out["cls_logits"].sum() + out["box_deltas"].sum()
    if "rpn_objectness" in out:  # two-stage: the first stage's outputs too
        loss = loss + out["rpn_objectness"].sum() + out["rpn_box_deltas"].sum()
    if "mask_logits" in out:
        loss = loss + out["mask_logits"].sum()
    return loss


def measure(
    name: str, batch: int, repeats: int, device: str, warmup: int = 1, size: int = SIZE,
    max_train_gflops: float | None = None, proposals: int | None = None,
) -> dict[str, Any]:
    """One row. ``max_train_gflops``: skip forward+backward (None in the row) for models whose forward
    needs more GFLOPs per image than this (the large EfficientDets at native size on a CPU).
    ``proposals``: two-stage rows' first_stage_max_proposals instead of the config's."""
    model = _build(name, proposals).to(device)
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device=device)
    sizes = torch.tensor([[size, size]] * batch, device=device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def forward() -> None:
        with torch.no_grad():
            model(images)
        sync()

    def forward_postprocess() -> None:
        with torch.no_grad():
            model.postprocess(model(images), sizes)  # type: ignore[operator]
        sync()

    def forward_backward() -> None:
        _training_sum(model(images)).backward()
        model.zero_grad(set_to_none=True)
        sync()

    model.eval()
    gflops = _forward_flops(model, images[:1]) / 1e9
    with torch.no_grad():
        found = model(images[:1]).get("anchors")
    anchors = int(found.shape[0]) if found is not None else None
    t_fwd, t_fwd_min = _seconds(forward, repeats, warmup)
    t_post, t_post_min = _seconds(forward_postprocess, repeats, warmup)
    train = max_train_gflops is None or gflops <= max_train_gflops
    if train:
        model.train()
        t_fwd_bwd, t_fwd_bwd_min = _seconds(forward_backward, repeats, warmup)
    return {
        "image_size": size,
        "parameters": sum(p.numel() for p in model.parameters()),
        "backbone_parameters": sum(p.numel() for p in cast(nn.Module, model.backbone).parameters()),
        "anchors": anchors,
        "gflops_forward_per_image": gflops,
        "forward_ms_per_image": 1000 * t_fwd / batch,
        "forward_postprocess_ms_per_image": 1000 * t_post / batch,
        "forward_postprocess_ms_per_image_min": 1000 * t_post_min / batch,
        "forward_backward_ms_per_image": 1000 * t_fwd_bwd / batch if train else None,
        "forward_ms_per_image_min": 1000 * t_fwd_min / batch,
        "forward_backward_ms_per_image_min": 1000 * t_fwd_bwd_min / batch if train else None,
    }


def run(
    quick: bool,
    device: str = "cpu",
    only: list[str] | None = None,
    size: int = SIZE,
    batch: int | None = None,
    repeats: int | None = None,
    native: bool = False,
    max_train_gflops: float | None = None,
    warmup: int | None = None,
    proposals: int | None = None,
) -> dict[str, Any]:
    """``native``: each row at its zoo config's size (``native_size``) instead of ``size``;
    ``proposals``: two-stage rows with that many proposals (named so)."""
    default_batch, default_repeats, default_warmup = (1, 1, 0) if quick else (2, 3, 1)
    batch, repeats = batch or default_batch, repeats or default_repeats
    warmup = default_warmup if warmup is None else warmup
    names = only or (QUICK if quick else list(CONFIGS) + list(FRCNN_CONFIGS))
    torch.manual_seed(0)
    load_before = os.getloadavg()[0]
    results = {}
    for name in names:
        row = row_name(name, proposals)
        results[row] = measure(name, batch, repeats, device, warmup, native_size(name) if native else size,
                               max_train_gflops, proposals)
        results[row]["load_average_after"] = os.getloadavg()[0]
    load_after = os.getloadavg()[0]
    where = "native sizes" if native else f"{size}x{size}"
    summary = [
        f"{where}, batch {batch}, median (min) of {repeats} after {warmup} warm-up, {device}, "
        f"{torch.get_num_threads()} threads; 1-minute load average {load_before:.1f} before, "
        f"{load_after:.1f} after (a shared CPU inflates times; the minimum is the steadier figure):",
        "",
        "| feature extractor | size | params (M) | backbone (M) | anchors | GFLOPs fwd | fwd ms/img "
        "| fwd+post ms/img | fwd+bwd ms/img |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        train = (f"{r['forward_backward_ms_per_image']:.0f} ({r['forward_backward_ms_per_image_min']:.0f})"
                 if r["forward_backward_ms_per_image"] is not None else "not timed")
        summary.append(
            f"| {name} | {r['image_size']} | {r['parameters'] / 1e6:.2f} "
            f"| {r['backbone_parameters'] / 1e6:.2f} | {'-' if r['anchors'] is None else r['anchors']} | "
            f"{r['gflops_forward_per_image']:.2f} | {r['forward_ms_per_image']:.0f} "
            f"({r['forward_ms_per_image_min']:.0f}) | {r['forward_postprocess_ms_per_image']:.0f} "
            f"({r['forward_postprocess_ms_per_image_min']:.0f}) | {train} |"
        )
    return {
        "native_sizes": native,
        "image_size": size,
        "batch": batch,
        "repeats": repeats,
        "device": device,
        "load_average_before": load_before,
        "load_average_after": load_after,
        "extractors": results,
        "summary": summary,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small extractors only, batch 1, one timed run")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--only", nargs="+", choices=list(CONFIGS) + list(FRCNN_CONFIGS) + list(ZOO_ROWS),
                        help="these extractors only")
    parser.add_argument("--proposals", type=int,
                        help="two-stage rows with this many proposals (tiny test settings; rows named so)")
    parser.add_argument("--size", type=int, default=SIZE, help=f"square image size (default {SIZE})")
    parser.add_argument("--batch", type=int, help="images per timed call (default 2; 1 with --quick)")
    parser.add_argument("--repeats", type=int, help="timed runs (default 3; 1 with --quick)")
    parser.add_argument("--warmup", type=int, help="untimed runs first (default 1; 0 with --quick)")
    parser.add_argument("--native", action="store_true",
                        help="each row at its zoo config's size (EfficientDet D<N>: its own; ResNet-152 and "
                             "MobileNetV1 FPN: 640; the rest 320) instead of --size")
    parser.add_argument("--max_train_gflops", type=float,
                        help="time forward+backward only for rows whose forward is at most this many GFLOPs")
    parser.add_argument("--name", help="results file bench/results/<name>.json (default: model, model_<size> "
                                       "or model_native)")
    args = parser.parse_args(argv)
    result = run(args.quick, args.device, args.only, args.size, args.batch, args.repeats, args.native,
                 args.max_train_gflops, args.warmup, args.proposals)
    name = args.name or ("model_native" if args.native else
                         "model" if args.size == SIZE and not args.only else f"model_{args.size}")
    print(f"wrote {save_result(name, result)}")
    print("\n".join(result["summary"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
