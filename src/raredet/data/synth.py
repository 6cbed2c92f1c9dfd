"""Synthetic "rare defects on manufactured parts": the dataset of the demo, the tests and the benchmarks.

Each image shows one part (a plate, a disc with a bore, or an L-shaped bracket) in brushed metal with
a lighting gradient and sensor noise, carrying 0-4 defects of three classes:

- ``scratch`` (common): one thin straight line, bright or dark;
- ``dent`` (medium): a small elliptical hollow, shaded dark on one side and bright on the other;
- ``crack`` (rare): a thin dark jagged line with one or two side branches.

A crack is, to a model that has barely seen one, a dark scratch: a detector that ignores the rare class
will call it a scratch or miss it, which is what the class-weighted run is meant to fix.

Class counts follow ``ratios`` exactly (classes are dealt from a shuffled deck of quotas), and the
validation split is given at least ``min_val_boxes`` boxes of every class (taken from the most common
class) so that the rare class can be evaluated. Everything is drawn with vectorised numpy on small
images and is deterministic for a seed.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from raredet.data.tfrecord import detection_example, write_tfrecord
from raredet.fileio import atomic_write_bytes, atomic_write_json, atomic_write_text

CLASS_NAMES = ("scratch", "dent", "crack")
DEFAULT_RATIOS = (100.0, 20.0, 3.0)
DEFECTS_PER_IMAGE = np.array([0, 1, 2, 3, 4])
DEFECTS_PER_IMAGE_P = np.array([0.1, 0.35, 0.3, 0.15, 0.1])
# Calibrated at 128 px (docs/imbalance.md, "The data"): line widths in pixels; a crack is about twice as
# wide and darker than a scratch, and turns by up to CRACK_TURN radians per step; boxes are at least
# MIN_BOX_FRACTION of the image on a side.
SCRATCH_WIDTH = (0.7, 1.2)
CRACK_WIDTH = (1.6, 2.4)
CRACK_TURN = 0.9
MIN_BOX_FRACTION = 0.08


@dataclass
class SynthImage:
    image: np.ndarray  # uint8 [S, S, 3]
    boxes: np.ndarray  # float32 [N, 4] xyxy pixels
    labels: np.ndarray  # int64 [N] contiguous class index


# ---- drawing --------------------------------------------------------------------------------------


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    return xs + 0.5, ys + 0.5


def segments_alpha(starts: np.ndarray, ends: np.ndarray, width: float, size: int) -> np.ndarray:
    """Antialiased coverage [S, S] in [0, 1] of line segments starts/ends [M, 2] (x, y) of ``width``."""
    xs, ys = _grid(size)
    p = np.stack([xs, ys], axis=-1)[None]  # [1, S, S, 2]
    a, d = starts[:, None, None, :], (ends - starts)[:, None, None, :]
    t = np.clip(((p - a) * d).sum(-1) / np.maximum((d * d).sum(-1), 1e-6), 0.0, 1.0)
    dist = np.linalg.norm(p - (a + t[..., None] * d), axis=-1).min(axis=0)
    return np.clip(width / 2 + 0.5 - dist, 0.0, 1.0)


def _part_mask(rng: np.random.Generator, size: int) -> np.ndarray:
    xs, ys = _grid(size)
    c = size / 2 + rng.uniform(-0.05, 0.05, 2) * size
    kind = int(rng.integers(3))
    if kind == 0:  # plate
        hw = rng.uniform(0.32, 0.45, 2) * size
        return (np.abs(xs - c[0]) < hw[0]) & (np.abs(ys - c[1]) < hw[1])
    if kind == 1:  # disc with a bore
        r = np.hypot(xs - c[0], ys - c[1])
        return (r < rng.uniform(0.38, 0.47) * size) & (r > rng.uniform(0.06, 0.12) * size)
    t = rng.uniform(0.3, 0.4) * size  # bracket: an L of two bars
    lo, hi = 0.08 * size, 0.92 * size
    bar1 = (xs > lo) & (xs < lo + t) & (ys > lo) & (ys < hi)
    bar2 = (ys > hi - t) & (ys < hi) & (xs > lo) & (xs < hi)
    return np.rot90(bar1 | bar2, k=int(rng.integers(4)))


def _metal(rng: np.random.Generator, size: int) -> np.ndarray:
    """Brushed metal [S, S, 3] in [0, 1]: streaks along one axis, a lighting gradient, a tint."""
    noise = rng.normal(0.0, 1.0, (size, size + 16)).cumsum(axis=1)
    streaks = (noise[:, 16:] - noise[:, :-16]) / 16.0 * 0.05  # 16-pixel running mean along a row
    if rng.random() < 0.5:
        streaks = streaks.T
    xs, ys = _grid(size)
    angle = rng.uniform(0, 2 * np.pi)
    gradient = ((xs * np.cos(angle) + ys * np.sin(angle)) / size) * rng.uniform(0.15, 0.35)
    base = rng.uniform(0.45, 0.65) + gradient + streaks
    tint = np.array([1.0, 1.0, 1.0]) + rng.uniform(-0.06, 0.06, 3)
    return base[..., None] * tint


def draw_part(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A part on a dark bench: image [S, S, 3] float in [0, 1] and the part's mask [S, S] bool."""
    mask = _part_mask(rng, size)
    background = rng.uniform(0.08, 0.2) + rng.normal(0, 0.02, (size, size, 1))
    image = np.where(mask[..., None], _metal(rng, size), background)
    return image, mask


def _scratch(rng: np.random.Generator, center: np.ndarray, size: int) -> tuple[np.ndarray, float]:
    """A straight hairline, bright (a polished groove) or grey-dark: never as wide or as dark as a crack."""
    length = rng.uniform(0.1, 0.3) * size
    angle = rng.uniform(0, np.pi)
    d = np.array([np.cos(angle), np.sin(angle)]) * length / 2
    alpha = segments_alpha((center - d)[None], (center + d)[None], rng.uniform(*SCRATCH_WIDTH), size)
    return alpha, (0.95 if rng.random() < 0.5 else 0.22)


def _crack_path(
    rng: np.random.Generator, start: np.ndarray, angle: float, steps: int, step: float
) -> np.ndarray:
    turns = angle + np.cumsum(rng.uniform(-CRACK_TURN, CRACK_TURN, steps))
    moves = np.stack([np.cos(turns), np.sin(turns)], axis=1) * step
    return np.concatenate([start[None], start + np.cumsum(moves, axis=0)])


def _crack(rng: np.random.Generator, center: np.ndarray, size: int) -> tuple[np.ndarray, float]:
    """A jagged near-black line with one to three side branches, about twice a scratch's width."""
    step = size * 0.03
    angle = rng.uniform(0, 2 * np.pi)
    main = _crack_path(rng, center, angle, int(rng.integers(5, 9)), step)
    paths = [main]
    for _ in range(int(rng.integers(1, 4))):
        root = main[int(rng.integers(1, len(main) - 1))]
        branch_angle = angle + rng.choice([-1.0, 1.0]) * rng.uniform(0.6, 1.2)
        paths.append(_crack_path(rng, root, branch_angle, int(rng.integers(2, 4)), step))
    starts = np.concatenate([p[:-1] for p in paths])
    ends = np.concatenate([p[1:] for p in paths])
    return segments_alpha(starts, ends, rng.uniform(*CRACK_WIDTH), size), 0.04


def _dent(rng: np.random.Generator, center: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A dent's coverage [S, S] and its shading [S, S] (negative: shadow, positive: highlight)."""
    xs, ys = _grid(size)
    radii = rng.uniform(0.025, 0.055, 2) * size
    angle = rng.uniform(0, np.pi)
    dx, dy = xs - center[0], ys - center[1]
    u = (dx * np.cos(angle) + dy * np.sin(angle)) / radii[0]
    v = (-dx * np.sin(angle) + dy * np.cos(angle)) / radii[1]
    r = np.sqrt(u * u + v * v)
    alpha = np.clip((1.0 - r) * 3.0, 0.0, 1.0)
    light = rng.uniform(0, 2 * np.pi)
    shade = (dx * np.cos(light) + dy * np.sin(light)) / radii.mean()
    return alpha, np.clip(shade, -1, 1) * 0.35 - 0.12


def _alpha_box(alpha: np.ndarray) -> np.ndarray | None:
    """The box an inspector would draw: the defect's tight box (coverage > 0.3) grown to at least
    ``MIN_BOX_FRACTION`` of the image on each side, centred on the defect and clipped to the image.

    Why: a near-horizontal hairline's tight box is 2 px tall, so one pixel of error halves its IoU and
    no anchor overlaps it at 0.5; AP50 then measures pixel jitter, not whether the defect was found."""
    rows = np.flatnonzero((alpha > 0.3).any(axis=1))
    cols = np.flatnonzero((alpha > 0.3).any(axis=0))
    if rows.size == 0:
        return None
    size = alpha.shape[0]
    box = np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=np.float32)
    grow = np.maximum(MIN_BOX_FRACTION * size - (box[2:] - box[:2]), 0.0) / 2  # [2] (x, y)
    return np.clip(np.concatenate([box[:2] - grow, box[2:] + grow]), 0, size).astype(np.float32)


def _apply_defect(
    rng: np.random.Generator, image: np.ndarray, mask: np.ndarray, label: int, center: np.ndarray
) -> tuple[np.ndarray, np.ndarray | None]:
    """Draw one defect, confined to the part (``mask``), and return the image and its tight box."""
    size = image.shape[0]
    if CLASS_NAMES[label] == "dent":
        alpha, shade = _dent(rng, center, size)
        alpha = alpha * mask
        return image + (alpha * shade)[..., None], _alpha_box(alpha)
    alpha, tone = (_scratch if CLASS_NAMES[label] == "scratch" else _crack)(rng, center, size)
    alpha = alpha * mask
    return image * (1 - alpha[..., None]) + tone * alpha[..., None], _alpha_box(alpha)


def draw_image(rng: np.random.Generator, size: int, labels: np.ndarray) -> SynthImage:
    """One part with a defect of each class in ``labels`` [N] (contiguous indices) at random spots."""
    image, mask = draw_part(rng, size)
    spots = np.argwhere(mask[4:-4, 4:-4]) + 4  # keep centres off the border
    boxes, kept = [], []
    for label in labels:  # a handful of defects per image
        y, x = spots[int(rng.integers(len(spots)))]
        image, box = _apply_defect(rng, image, mask, int(label), np.array([x + 0.5, y + 0.5]))
        if box is not None:
            boxes.append(box)
            kept.append(label)
    image = image + rng.normal(0.0, 0.02, image.shape)
    pixels = (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)
    return SynthImage(
        pixels, np.asarray(boxes, dtype=np.float32).reshape(-1, 4), np.asarray(kept, dtype=np.int64)
    )


# ---- dealing classes to images -------------------------------------------------------------------


def class_quotas(total: int, ratios: np.ndarray, min_per_class: int = 0) -> np.ndarray:
    """Box counts per class summing to ``total``, proportional to ``ratios`` (largest remainders), each
    raised to ``min_per_class`` where possible by taking boxes from the most common class."""
    share = ratios / ratios.sum() * total
    quotas = np.floor(share).astype(np.int64)
    quotas[np.argsort(-(share - quotas))[: total - quotas.sum()]] += 1
    top = int(np.argmax(quotas))
    for c in range(len(quotas)):
        need = max(0, min(min_per_class, total // len(quotas)) - int(quotas[c]))
        quotas[c] += need
        quotas[top] -= need
    return quotas


def deal_labels(
    rng: np.random.Generator, num_images: int, ratios: np.ndarray, min_per_class: int = 0
) -> list[np.ndarray]:
    """Class indices of the defects of each image; counts per class exactly as :func:`class_quotas`."""
    counts = rng.choice(DEFECTS_PER_IMAGE, size=num_images, p=DEFECTS_PER_IMAGE_P)
    quotas = class_quotas(int(counts.sum()), ratios, min_per_class)
    deck = rng.permutation(np.repeat(np.arange(len(ratios)), quotas))
    return np.split(deck, np.cumsum(counts)[:-1])


# ---- writing -------------------------------------------------------------------------------------


def _encode_jpeg(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


def _split_records(
    rng: np.random.Generator, split: str, num_images: int, ratios: np.ndarray, size: int, min_per_class: int
) -> tuple[list[bytes], dict[str, Any], list[tuple[str, bytes]]]:
    """Draw one split: tf.Example records, the COCO dict of the same boxes, and (path, jpeg) pairs."""
    records, files = [], []
    coco: dict[str, Any] = {"images": [], "annotations": [], "categories": _categories()}
    for i, labels in enumerate(deal_labels(rng, num_images, ratios, min_per_class)):
        drawn = draw_image(rng, size, labels)
        jpeg = _encode_jpeg(drawn.image)
        name = f"{split}_{i:06d}.jpg"
        files.append((f"images/{name}", jpeg))
        records.append(
            detection_example(
                encoded=jpeg,
                image_format="jpeg",
                height=size,
                width=size,
                boxes=drawn.boxes,
                class_ids=drawn.labels + 1,
                class_texts=[CLASS_NAMES[c] for c in drawn.labels],
                source_id=str(i + 1),
                filename=name,
            )
        )
        _add_coco_image(coco, i + 1, name, size, drawn)
    return records, coco, files


def _categories() -> list[dict[str, Any]]:
    return [{"id": i + 1, "name": n, "supercategory": "defect"} for i, n in enumerate(CLASS_NAMES)]


def _add_coco_image(coco: dict[str, Any], image_id: int, name: str, size: int, drawn: SynthImage) -> None:
    coco["images"].append({"id": image_id, "file_name": name, "height": size, "width": size})
    for box, label in zip(drawn.boxes.tolist(), drawn.labels.tolist(), strict=True):
        w, h = box[2] - box[0], box[3] - box[1]
        coco["annotations"].append(
            {
                "id": len(coco["annotations"]) + 1,
                "image_id": image_id,
                "category_id": label + 1,
                "bbox": [box[0], box[1], w, h],
                "area": w * h,
                "iscrowd": 0,
            }
        )


def _write_shards(out: Path, split: str, records: list[bytes], num_shards: int) -> list[str]:
    names = []
    for s, chunk in enumerate(np.array_split(np.arange(len(records)), num_shards)):
        name = f"{split}-{s:05d}-of-{num_shards:05d}.tfrecord"
        write_tfrecord(out / name, (records[i] for i in chunk))
        names.append(name)
    return names


def make_synthetic_dataset(
    out_dir: str | os.PathLike[str],
    *,
    images: int = 1000,
    seed: int = 0,
    ratios: tuple[float, ...] = DEFAULT_RATIOS,
    image_size: int = 128,
    val_fraction: float = 0.2,
    num_shards: int = 2,
    min_val_boxes: int = 30,
    num_steps: int = 1500,
    test_images: int = 0,
    min_test_boxes: int | None = None,
) -> dict[str, Any]:
    """Write the dataset into ``out_dir``; returns (and saves as ``summary.json``) the box counts.

    ``test_images`` > 0 adds a held-out ``test`` split (``test-*.tfrecord``, ``test.json``) drawn like
    the validation split (with the floor ``min_test_boxes``, by default ``min_val_boxes``) from its own
    random stream, so that the train and val splits are the same with or without it: thresholds chosen
    on val can be graded on images that did not choose them (`raredet eval --operating_points_from`).
    """
    if images < 2 or not 0 < val_fraction < 1 or image_size < 32 or test_images < 0:
        raise ValueError(
            f"synth: need images >= 2 (got {images}), 0 < val_fraction < 1 (got {val_fraction}), "
            f"image_size >= 32 (got {image_size}) and test_images >= 0 (got {test_images})"
        )
    out = Path(out_dir)
    ratio_arr = np.asarray(ratios, dtype=np.float64)
    num_val = max(1, round(images * val_fraction))
    summary: dict[str, Any] = {"classes": list(CLASS_NAMES), "seed": seed, "image_size": image_size}
    splits = [("train", images - num_val, 0), ("val", num_val, min_val_boxes)]
    if test_images:
        splits.append(("test", test_images, min_val_boxes if min_test_boxes is None else min_test_boxes))
    for stream, (split, n, floor) in enumerate(splits):
        rng = np.random.default_rng([seed, stream])  # train 0, val 1, test 2: independent streams
        records, coco, files = _split_records(rng, split, n, ratio_arr, image_size, floor)
        shards = _write_shards(out, split, records, min(num_shards, n))
        for rel, data in files:
            atomic_write_bytes(out / rel, data)
        atomic_write_json(out / f"{split}.json", coco)
        counts = np.bincount([a["category_id"] - 1 for a in coco["annotations"]], minlength=3)
        summary[split] = {
            "images": n,
            "shards": shards,
            "boxes": dict(zip(CLASS_NAMES, counts.tolist(), strict=True)),
        }
    _write_label_map(out)
    atomic_write_text(out / "pipeline.config", pipeline_config_text(image_size, num_steps))
    atomic_write_json(out / "summary.json", summary)
    return summary


def _write_label_map(out: Path) -> None:
    items = "".join(f'item {{\n  id: {i + 1}\n  name: "{n}"\n}}\n' for i, n in enumerate(CLASS_NAMES))
    atomic_write_text(out / "label_map.pbtxt", items)


def pipeline_config_text(image_size: int, num_steps: int) -> str:
    """A RetinaNet-style SSD config for the synthetic set; paths relative to the config's directory."""
    return _PIPELINE_TEMPLATE.format(
        num_classes=len(CLASS_NAMES),
        size=image_size,
        num_steps=num_steps,
        warmup=max(1, num_steps // 20),
    )


_PIPELINE_TEMPLATE = """\
# raredet synthetic defects: RetinaNet-style SSD (ResNet-18 + FPN, focal loss) for small images on CPU.
model {{
  ssd {{
    num_classes: {num_classes}
    image_resizer {{ fixed_shape_resizer {{ height: {size} width: {size} }} }}
    feature_extractor {{
      type: "ssd_resnet18_v1_fpn"
      depth_multiplier: 0.25
      min_depth: 16
      # The TF OD API scales the FPN depth by depth_multiplier too: 256 x 0.25 = 64 channels.
      fpn {{ min_level: 3 max_level: 5 additional_layer_depth: 256 }}
      # The backbone keeps its own (torchvision) initialisation and no L2: no conv_hyperparams here.
      override_base_feature_extractor_hyperparams: true
    }}
    box_coder {{ faster_rcnn_box_coder {{ y_scale: 10.0 x_scale: 10.0 height_scale: 5.0 width_scale: 5.0 }} }}
    matcher {{
      argmax_matcher {{
        matched_threshold: 0.5
        unmatched_threshold: 0.4
        negatives_lower_than_unmatched: true
        force_match_for_each_row: true
      }}
    }}
    similarity_calculator {{ iou_similarity {{ }} }}
    encode_background_as_zeros: true
    anchor_generator {{
      multiscale_anchor_generator {{
        min_level: 3
        max_level: 5
        anchor_scale: 2.0
        aspect_ratios: [1.0, 2.0, 0.5]
        scales_per_octave: 2
      }}
    }}
    box_predictor {{
      weight_shared_convolutional_box_predictor {{
        depth: 64
        num_layers_before_predictor: 2
        kernel_size: 3
        class_prediction_bias_init: -4.6
      }}
    }}
    post_processing {{
      batch_non_max_suppression {{
        score_threshold: 0.05
        iou_threshold: 0.5
        max_detections_per_class: 50
        max_total_detections: 50
      }}
      score_converter: SIGMOID
    }}
    normalize_loss_by_num_matches: true
    normalize_loc_loss_by_codesize: true
    loss {{
      classification_loss {{ weighted_sigmoid_focal {{ alpha: 0.25 gamma: 2.0 }} }}
      localization_loss {{ weighted_smooth_l1 {{ }} }}
      classification_weight: 1.0
      localization_weight: 1.0
    }}
  }}
}}
train_config {{
  batch_size: 16
  num_steps: {num_steps}
  data_augmentation_options {{ random_horizontal_flip {{ }} }}
  data_augmentation_options {{ random_vertical_flip {{ }} }}
  optimizer {{
    momentum_optimizer {{
      learning_rate {{
        cosine_decay_learning_rate {{
          learning_rate_base: 0.02
          total_steps: {num_steps}
          warmup_learning_rate: 0.002
          warmup_steps: {warmup}
        }}
      }}
      momentum_optimizer_value: 0.9
    }}
    use_moving_average: false
  }}
  # Large class weights make some batches' losses ~10x the rest; clipping keeps such runs stable
  # (docs/imbalance.md: without it, effective-number weights diverged at step 85).
  gradient_clipping_by_norm: 10.0
}}
train_input_reader {{
  label_map_path: "label_map.pbtxt"
  tf_record_input_reader {{ input_path: "train-?????-of-*.tfrecord" }}
}}
eval_config {{
  metrics_set: "coco_detection_metrics"
  include_metrics_per_category: true
}}
eval_input_reader {{
  label_map_path: "label_map.pbtxt"
  shuffle: false
  num_epochs: 1
  tf_record_input_reader {{ input_path: "val-?????-of-*.tfrecord" }}
}}
"""
