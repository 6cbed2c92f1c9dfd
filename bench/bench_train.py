"""Where a training step's time goes: data wait, forward, DetectionLoss, backward, optimizer.

Built from a pipeline.config through `raredet.builders`, as `raredet train` builds it: the synthetic
rare-defects TFRecords (written under bench/results/tmp/), a RetinaNet-style SSD (FPN levels 3-7, depth
128, 4 predictor layers, focal loss, momentum optimizer), for `ssd_resnet18_v1_fpn` and
`ssd_mobilenet_v2_fpn` at 320x320, batch 8. Each phase is the median over the timed steps (after one
untimed warm-up step); `faster_rcnn_resnet50` is the zoo's Faster R-CNN (the loss phase includes
both stages' target assignment and sampling); images/s is batch / median step time; data wait % is
the median data wait over the median step. Peak memory: CUDA allocator peak on GPU, the process's
peak resident set on CPU. As `raredet train` runs by default: channels-last model and batches,
`--precision` as `raredet train --precision` (default auto: bf16 autocast on CUDA, fp32 on CPU), the
loader's workers as `default_num_workers` sizes them, pinned memory and non-blocking copies on CUDA. Run as
`python -m bench.bench_train [--quick] [--device cuda] [--precision fp32|bf16]`.

`--device cuda` synchronises before each timestamp (so the phases add up to the step, unlike
`raredet train`, which never waits inside a step); run on an H200 on 28 Nov 2026 (docs/benchmarks.md,
"GPU").
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bench.common import RESULTS_DIR, save_result
from raredet import builders, config
from raredet.data.synth import make_synthetic_dataset
from raredet.engine.optim import set_learning_rate
from raredet.engine.runtime import autocast_for, default_num_workers, to_device
from raredet.engine.train import model_inputs

MODELS = ("ssd_resnet18_v1_fpn", "ssd_mobilenet_v2_fpn", "faster_rcnn_resnet50")
PHASES = ("data_wait", "forward", "loss", "backward", "optimizer")

# Both models train the same way: the zoo's momentum optimizer at a constant rate, flips only.
TRAIN_TAIL = """
train_config {{
  batch_size: {batch}
  num_steps: 100
  data_augmentation_options {{ random_horizontal_flip {{ }} }}
  optimizer {{ momentum_optimizer {{ learning_rate {{ constant_learning_rate {{ learning_rate: 0.01 }} }} }}
               use_moving_average: false }}
}}
train_input_reader {{ label_map_path: "label_map.pbtxt" tf_record_input_reader {{ input_path: "train-*" }} }}
"""

CONFIG = """
model {{ ssd {{
  num_classes: 3
  image_resizer {{ fixed_shape_resizer {{ height: {size} width: {size} }} }}
  feature_extractor {{ type: "{model}"
    conv_hyperparams {{ regularizer {{ l2_regularizer {{ weight: 0.00004 }} }} }}
    fpn {{ min_level: 3 max_level: 7 additional_layer_depth: 128 }} }}
  box_coder {{ faster_rcnn_box_coder {{ }} }}
  matcher {{ argmax_matcher {{ matched_threshold: 0.5 unmatched_threshold: 0.5 }} }}
  similarity_calculator {{ iou_similarity {{ }} }}
  anchor_generator {{ multiscale_anchor_generator {{ min_level: 3 max_level: 7 anchor_scale: 4.0
                      aspect_ratios: [1.0, 2.0, 0.5] scales_per_octave: 2 }} }}
  box_predictor {{ weight_shared_convolutional_box_predictor {{ depth: 128
                   num_layers_before_predictor: 4 kernel_size: 3 class_prediction_bias_init: -4.6 }} }}
  normalize_loss_by_num_matches: true
  loss {{ classification_loss {{ weighted_sigmoid_focal {{ alpha: 0.25 gamma: 2.0 }} }}
          localization_loss {{ weighted_smooth_l1 {{ }} }} }}
}} }}
"""

# The Faster R-CNN row: the zoo's faster_rcnn_resnet50_v1 settings (grid anchors, 300 proposals, 14x14
# crops, 256 / 64 sampled anchors / proposals) at the bench's size and batch.
FASTER_RCNN_CONFIG = """
model {{ faster_rcnn {{
  num_classes: 3
  image_resizer {{ fixed_shape_resizer {{ height: {size} width: {size} }} }}
  feature_extractor {{ type: "{model}_keras" batch_norm_trainable: true }}
  first_stage_anchor_generator {{ grid_anchor_generator {{ scales: [0.25, 0.5, 1.0, 2.0]
      aspect_ratios: [0.5, 1.0, 2.0] height_stride: 16 width_stride: 16 }} }}
  first_stage_box_predictor_conv_hyperparams {{ op: CONV
      initializer {{ truncated_normal_initializer {{ stddev: 0.01 }} }} }}
  first_stage_max_proposals: 300
  first_stage_localization_loss_weight: 2.0
  initial_crop_size: 14 maxpool_kernel_size: 2 maxpool_stride: 2
  second_stage_box_predictor {{ mask_rcnn_box_predictor {{ fc_hyperparams {{ op: FC
      initializer {{ variance_scaling_initializer {{ factor: 1.0 uniform: true mode: FAN_AVG }} }} }}
      share_box_across_classes: true }} }}
  second_stage_post_processing {{ batch_non_max_suppression {{ iou_threshold: 0.6
      max_detections_per_class: 100 max_total_detections: 300 }} score_converter: SOFTMAX }}
  second_stage_localization_loss_weight: 2.0
  clip_anchors_to_image: true
}} }}
"""


def _timer(device: torch.device) -> Callable[[], float]:
    """perf_counter after the device has finished its queued work."""

    def now() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()

    return now


def _step_times(comps: Any, loader_iter: Any, device: torch.device, precision: str) -> dict[str, float]:
    now = _timer(device)
    t0 = now()
    batch = to_device(next(loader_iter), device, channels_last=True)  # as the model above
    t1 = now()
    with autocast_for(device, precision):
        outputs = comps.model(*model_inputs(comps.model, batch))
    outputs = {k: v.float() if v.is_floating_point() else v for k, v in outputs.items()}
    t2 = now()
    losses = comps.criterion(outputs, batch)
    t3 = now()
    comps.optimizer.zero_grad(set_to_none=True)
    losses["total_loss"].backward()
    t4 = now()
    comps.optimizer.step()
    t5 = now()
    return dict(zip(PHASES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4), strict=True))


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def bench_model(data_dir: Path, model: str, size: int, batch: int, steps: int,
                device: torch.device, precision: str = "auto") -> dict[str, Any]:
    cfg_path = data_dir / f"{model}.config"
    template = (FASTER_RCNN_CONFIG if model.startswith("faster_rcnn") else CONFIG) + TRAIN_TAIL
    cfg_path.write_text(template.format(model=model, size=size, batch=batch))
    workers = default_num_workers(device)
    comps = builders.build_training(config.load(cfg_path), seed=0, num_workers=workers)
    comps.model.to(device, memory_format=torch.channels_last).train()
    set_learning_rate(comps.optimizer, comps.schedule(0))
    loader = torch.utils.data.DataLoader(comps.dataset, batch_size=batch, shuffle=True, drop_last=True,
                                         collate_fn=comps.collate_fn, num_workers=comps.num_workers,
                                         pin_memory=device.type == "cuda")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    it = iter(_forever(loader))
    _step_times(comps, it, device, precision)  # warm-up: allocator, kernels, worker start
    runs = [_step_times(comps, it, device, precision) for _ in range(steps)]
    medians = {p: statistics.median(r[p] for r in runs) for p in PHASES}
    step = statistics.median(sum(r.values()) for r in runs)
    return {"model": model, "size": size, "batch": batch, "steps": steps, "device": str(device),
            "precision": precision, "workers": workers, "data_wait_share": medians["data_wait"] / step,
            **{f"{p}_s": v for p, v in medians.items()}, "step_s": step, "images_per_s": batch / step,
            "peak_memory_mb": _peak_memory_mb(device),
            "parameters": sum(p.numel() for p in comps.model.parameters())}


def _forever(loader: Any) -> Any:
    while True:
        yield from loader


def _table(rows: list[dict[str, Any]]) -> list[str]:
    head = "| model | size | batch | device | precision | " + " | ".join(f"{p} ms" for p in PHASES)
    lines = [head + " | step ms | images/s | data wait % | peak MB |", "|" + "---|" * (len(PHASES) + 9)]
    for r in rows:
        phases = " | ".join(f"{1000 * r[f'{p}_s']:.0f}" for p in PHASES)
        lines.append(f"| {r['model']} | {r['size']} | {r['batch']} | {r['device']} | {r['precision']} | "
                     f"{phases} | {1000 * r['step_s']:.0f} | {r['images_per_s']:.1f} | "
                     f"{100 * r['data_wait_share']:.1f} | {r['peak_memory_mb']:.0f} |")
    return lines


def run(quick: bool, device: str | None = None, precision: str = "auto",
        only: list[str] | None = None) -> dict[str, Any]:
    """The models at 320x320, batch 8, 5 timed steps; `quick`: 128x128, batch 2, 2 steps; `only`:
    these models (in this order) instead of all of MODELS."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    size, batch, steps = (128, 2, 2) if quick else (320, 8, 5)
    data_dir = RESULTS_DIR / "tmp" / f"bench_train_{size}"
    if not (data_dir / "label_map.pbtxt").exists():
        make_synthetic_dataset(data_dir, images=4 * batch + 8, image_size=size, num_shards=1,
                               min_val_boxes=1)
    load_before = os.getloadavg()[0]
    rows = [bench_model(data_dir, m, size, batch, steps, dev, precision) for m in (only or MODELS)]
    load = (f"1-minute load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after; "
            f"{torch.get_num_threads()} threads")
    return {"rows": rows, "load": load, "summary": [load, "", *_table(rows)]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small smoke-sized run")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                        help="autocast precision (default auto: bf16 on CUDA, fp32 on CPU)")
    parser.add_argument("--only", nargs="+", choices=MODELS,
                        help="these models only (written to train_only.json)")
    args = parser.parse_args(argv)
    result = run(args.quick, args.device, args.precision, args.only)
    print("\n".join(result["summary"]))
    name = "train_only" if args.only else "train"
    print(f"wrote {save_result('quick/' + name if args.quick else name, result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
