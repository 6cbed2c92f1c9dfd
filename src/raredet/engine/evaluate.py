"""Evaluate an SSD on the eval loader: COCO/VOC metrics, per-class table, plots, report, TensorBoard.

Detections come from `model.postprocess` in resized-image pixels and are mapped back to the original
image with the batch's `scales`, so that metrics are measured on the images as the user has them (and
COCO's small/medium/large areas mean what they mean in COCO). Ground truth is rebuilt from the same
batches: labels become label-map ids, crowd boxes stay crowd regions.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np
import torch
from torch import nn

from raredet.config import LabelMap
from raredet.data.instances import resize_masks
from raredet.engine.runtime import to_device
from raredet.evaluation.masks import box_masks_to_rle, coco_keypoints, encode_rle
from raredet.evaluation.options import EvalOptions
from raredet.evaluation.pipeline import evaluate_detections
from raredet.evaluation.report import Example
from raredet.losses import ClassWeight


class ScalarWriter(Protocol):
    """What `evaluate` needs of a TensorBoard SummaryWriter."""

    def add_scalar(self, tag: str, scalar_value: float, global_step: int | None = None) -> None: ...


LossFn = Callable[[Mapping[str, torch.Tensor], Mapping[str, Any]], Mapping[str, torch.Tensor]]


class Collector:
    """Accumulates COCO ground truth, detections and example images batch by batch (`evaluate` uses
    one; bench/threshold_transfer.py too, for the matches without the metrics)."""

    def __init__(self, label_map: LabelMap, num_visualizations: int) -> None:
        self.id_of_index = np.asarray(label_map.ids, dtype=np.int64)  # contiguous index -> label-map id
        self.images: list[dict[str, Any]] = []
        self.annotations: list[dict[str, Any]] = []
        self.detections: list[dict[str, Any]] = []
        self.examples: list[Example] = []
        self.num_visualizations = num_visualizations

    def add(self, batch: Mapping[str, Any], det: Mapping[str, torch.Tensor]) -> None:
        """One batch (docs/internals.md format) and its postprocessed detections [B, D, ...]."""
        scales = batch["scales"].cpu().numpy().astype(np.float64)  # [B, 2] (sy, sx)
        for b in range(len(batch["source_ids"])):
            image_id = len(self.images) + 1  # COCO wants integer ids; source ids may repeat
            h, w = (int(v) for v in batch["original_sizes"][b])
            self.images.append({"id": image_id, "height": h, "width": w,
                                "file_name": str(batch["source_ids"][b])})
            to_original = np.array([scales[b, 1], scales[b, 0]] * 2)  # xyxy divisors (sx, sy, sx, sy)
            self._add_gt(batch, b, image_id, to_original)
            self._add_det(det, b, image_id, to_original)
            if len(self.examples) < self.num_visualizations:
                self.examples.append(self._example(batch, det, b))

    def _add_gt(self, batch: Mapping[str, Any], b: int, image_id: int, to_original: np.ndarray) -> None:
        n = int(batch["num_boxes"][b])
        boxes = _xyxy_to_xywh(batch["boxes"][b, :n].cpu().numpy().astype(np.float64) / to_original)
        ids = self.id_of_index[batch["labels"][b, :n].cpu().numpy()]
        crowd = batch["is_crowd"][b, :n].cpu().numpy()
        difficult = batch["difficult"][b, :n].cpu().numpy()
        first = len(self.annotations) + 1
        anns = [
            {"id": first + i, "image_id": image_id, "category_id": int(c), "bbox": box,
             "area": box[2] * box[3], "iscrowd": int(cr), "difficult": bool(d)}
            for i, (box, c, cr, d) in enumerate(zip(boxes.tolist(), ids, crowd, difficult, strict=True))]
        _add_instances(anns, _gt_instances(batch, b, n, to_original, anns))
        self.annotations += anns

    def _add_det(self, det: Mapping[str, torch.Tensor], b: int, image_id: int,
                 to_original: np.ndarray) -> None:
        n = int(det["num_detections"][b])
        boxes = _xyxy_to_xywh(det["detection_boxes"][b, :n].detach().cpu().double().numpy() / to_original)
        ids = self.id_of_index[det["detection_classes"][b, :n].cpu().numpy()]
        scores = det["detection_scores"][b, :n].detach().cpu().double().numpy()
        dets = [{"image_id": image_id, "category_id": int(c), "bbox": box, "score": s}
                for box, c, s in zip(boxes.tolist(), ids, scores.tolist(), strict=True)]
        size = (int(self.images[-1]["height"]), int(self.images[-1]["width"]))
        _add_instances(dets, _det_instances(det, b, n, to_original, size))
        self.detections += dets

    @staticmethod
    def _example(batch: Mapping[str, Any], det: Mapping[str, torch.Tensor], b: int) -> Example:
        """The resized image (padding cropped off) with boxes in its own pixels."""
        h, w = (int(v) for v in batch["image_sizes"][b])
        n, d = int(batch["num_boxes"][b]), int(det["num_detections"][b])
        return Example(batch["images"][b, :, :h, :w].permute(1, 2, 0).cpu().numpy(),
                       batch["boxes"][b, :n].cpu().numpy(), batch["labels"][b, :n].cpu().numpy(),
                       det["detection_boxes"][b, :d].detach().cpu().numpy(),
                       det["detection_scores"][b, :d].detach().cpu().numpy(),
                       det["detection_classes"][b, :d].cpu().numpy(), str(batch["source_ids"][b]))


def _gt_instances(batch: Mapping[str, Any], b: int, n: int, to_original: np.ndarray,
                  anns: list[dict[str, Any]]) -> dict[str, list]:
    """COCO ``segmentation`` (RLE at the original image size, masks resized back nearest-neighbour
    with aligned corners, as the TF OD API's evaluation does) and ``keypoints`` / ``num_keypoints`` of
    image b's n objects (`anns`, their records so far), where the batch has masks / keypoints; and
    the annotated ``area`` where the batch has it (the box area where it is 0)."""
    out: dict[str, list] = {}
    if "areas" in batch:  # the annotated areas where the data gives them, as TF's groundtruth_area
        given = batch["areas"][b, :n].cpu().double().numpy()
        out["area"] = np.where(given > 0, given, [a["area"] for a in anns]).tolist()
    if "masks" in batch:
        h, w = (int(v) for v in batch["image_sizes"][b])
        oh, ow = (int(v) for v in batch["original_sizes"][b])
        masks = batch["masks"][b, :n, :h, :w].cpu().numpy()
        out["segmentation"] = encode_rle(resize_masks(masks, oh, ow, align_corners=True))
    if "keypoints" in batch:
        kp = batch["keypoints"][b, :n].cpu().double().numpy() / to_original[:2]
        out["keypoints"], out["num_keypoints"] = coco_keypoints(
            kp, batch["keypoint_visibilities"][b, :n].cpu().numpy())
    return out


def _det_instances(det: Mapping[str, torch.Tensor], b: int, n: int, to_original: np.ndarray,
                   size: tuple[int, int]) -> dict[str, list]:
    """COCO ``segmentation`` (box-relative ``detection_masks`` [B, D, h, w] pasted into the original
    image, > 0.5) and ``keypoints`` (``detection_keypoints`` [B, D, J, 2] pixels) of image b's n
    detections, where the model gives them."""
    out: dict[str, list] = {}
    if "detection_masks" in det:
        boxes = det["detection_boxes"][b, :n].detach().cpu().double().numpy() / to_original
        out["segmentation"] = box_masks_to_rle(det["detection_masks"][b, :n], boxes, *size)
    if "detection_keypoints" in det:
        kp = det["detection_keypoints"][b, :n].detach().cpu().double().numpy() / to_original[:2]
        out["keypoints"] = coco_keypoints(kp)[0]
    return out


def _add_instances(records: list[dict[str, Any]], fields: Mapping[str, list]) -> None:
    for key, values in fields.items():
        for record, value in zip(records, values, strict=True):
            record[key] = value


def _xyxy_to_xywh(boxes: np.ndarray) -> np.ndarray:
    """[N, 4] xyxy -> [N, 4] COCO xywh."""
    return np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)


def _mean_losses(totals: dict[str, float], count: int) -> dict[str, float]:
    """Validation losses under the TF OD API's `Loss/<name>` tags."""
    return {f"Loss/{k}": v / count for k, v in totals.items()} if count else {}


@torch.no_grad()
def evaluate(model: nn.Module, dataloader: Iterable[Mapping[str, Any]], label_map: LabelMap, *,
             out_dir: str | Path, options: EvalOptions | None = None, loss_fn: LossFn | None = None,
             device: str | torch.device = "cpu", class_weights: Sequence[ClassWeight] | None = None,
             writer: ScalarWriter | None = None, step: int | None = None) -> dict[str, float]:
    """Run `model` over `dataloader`, evaluate as `options` say (default `EvalOptions()`), write all
    outputs into `out_dir`.

    Returns the metrics that are defined (TF OD API names, floats; a class without ground truth has no
    entry here and shows as "no ground truth" in the table), plus `Loss/<name>` means when `loss_fn`
    (a DetectionLoss: `(outputs, batch) -> dict`) is given. Writes each as a scalar to `writer`.
    `class_weights` (the table training used) is shown in report.html.
    """
    options = options or EvalOptions()
    device = torch.device(device)
    was_training = model.training
    model.eval()
    collector = Collector(label_map, options.num_visualizations)
    totals: dict[str, float] = {}
    batches = 0
    for batch in dataloader:
        on_device = to_device(batch, device)  # NCHW images, as training by default
        outputs = model(on_device["images"])
        if loss_fn is not None:
            for key, value in loss_fn(outputs, on_device).items():
                if isinstance(value, torch.Tensor) and value.dim() == 0:  # per-class vectors stay out
                    totals[key] = totals.get(key, 0.0) + float(value)
        batches += 1
        collector.add(batch, cast(Any, model).postprocess(outputs, on_device["image_sizes"]))
    model.train(was_training)
    return _finish(collector, label_map, out_dir=out_dir, options=options,
                   class_weights=[dataclasses.asdict(w) for w in class_weights or []],
                   extra=_mean_losses(totals, batches), writer=writer, step=step)


def _finish(collector: Collector, label_map: LabelMap, *, out_dir: str | Path, options: EvalOptions,
            class_weights: list[dict[str, Any]], extra: dict[str, float], writer: ScalarWriter | None,
            step: int | None) -> dict[str, float]:
    gt = {"images": collector.images, "annotations": collector.annotations,
          "categories": [{"id": i, "name": n} for i, n in zip(label_map.ids, label_map.display_names,
                                                                  strict=True)]}
    title = "raredet evaluation" + (f" at step {step}" if step is not None else "")
    result = evaluate_detections(gt, collector.detections, out_dir=out_dir, options=options,
                                 class_weights=class_weights, examples=collector.examples, title=title,
                                 extra_metrics=extra)
    metrics = {k: float(v) for k, v in result["metrics"].items() if isinstance(v, int | float)}
    if writer is not None:
        for tag, value in metrics.items():
            writer.add_scalar(tag, value, step)
    return metrics
