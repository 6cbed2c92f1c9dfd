"""Evaluate an SSD on the eval loader: COCO/VOC metrics, per-class table, plots, report, TensorBoard.

Detections come from `model.postprocess` in resized-image pixels and are mapped back to the original
image with the batch's `scales`, so that metrics are measured on the images as the user has them (and
COCO's small/medium/large areas mean what they mean in COCO). Ground truth is rebuilt from the same
batches: labels become label-map ids, crowd boxes stay crowd regions.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np
import torch
from torch import nn

from raredet.config import LabelMap
from raredet.errors import CheckpointError, ConfigError
from raredet.evaluation.pipeline import COCO_SET, evaluate_detections
from raredet.evaluation.report import Example
from raredet.losses import ClassWeight


class ScalarWriter(Protocol):
    """What `evaluate` needs of a TensorBoard SummaryWriter."""

    def add_scalar(self, tag: str, scalar_value: float, global_step: int | None = None) -> None: ...


LossFn = Callable[[Mapping[str, torch.Tensor], Mapping[str, Any]], Mapping[str, torch.Tensor]]


class _Collector:
    """Accumulates COCO ground truth, detections and example images batch by batch."""

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
        self.annotations += [
            {"id": first + i, "image_id": image_id, "category_id": int(c), "bbox": box,
             "area": box[2] * box[3], "iscrowd": int(cr), "difficult": bool(d)}
            for i, (box, c, cr, d) in enumerate(zip(boxes.tolist(), ids, crowd, difficult, strict=True))]

    def _add_det(self, det: Mapping[str, torch.Tensor], b: int, image_id: int,
                 to_original: np.ndarray) -> None:
        n = int(det["num_detections"][b])
        boxes = _xyxy_to_xywh(det["detection_boxes"][b, :n].detach().cpu().double().numpy() / to_original)
        ids = self.id_of_index[det["detection_classes"][b, :n].cpu().numpy()]
        scores = det["detection_scores"][b, :n].detach().cpu().double().numpy()
        self.detections += [{"image_id": image_id, "category_id": int(c), "bbox": box, "score": s}
                            for box, c, s in zip(boxes.tolist(), ids, scores.tolist(), strict=True)]

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


def _xyxy_to_xywh(boxes: np.ndarray) -> np.ndarray:
    """[N, 4] xyxy -> [N, 4] COCO xywh."""
    return np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)


def _to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _mean_losses(totals: dict[str, float], count: int) -> dict[str, float]:
    """Validation losses under the TF OD API's `Loss/<name>` tags."""
    return {f"Loss/{k}": v / count for k, v in totals.items()} if count else {}


@torch.no_grad()
def evaluate(model: nn.Module, dataloader: Iterable[Mapping[str, Any]], label_map: LabelMap, *,
             out_dir: str | Path, metrics_set: str | Sequence[str] = COCO_SET,
             min_score_threshold: float = 0.5, include_metrics_per_category: bool = True,
             loss_fn: LossFn | None = None, device: str | torch.device = "cpu",
             class_weights: list[dict[str, Any]] | None = None, num_visualizations: int = 10,
             writer: ScalarWriter | None = None, step: int | None = None) -> dict[str, float]:
    """Run `model` over `dataloader`, evaluate, write all outputs into `out_dir`.

    Returns the metrics that are defined (TF OD API names, floats; a class without ground truth has no
    entry here and shows as "no ground truth" in the table), plus `Loss/<name>` means when `loss_fn`
    (a DetectionLoss: `(outputs, batch) -> dict`) is given. Writes each as a scalar to `writer`.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    collector = _Collector(label_map, num_visualizations)
    totals: dict[str, float] = {}
    batches = 0
    for batch in dataloader:
        on_device = _to_device(batch, device)
        outputs = model(on_device["images"])
        if loss_fn is not None:
            for key, value in loss_fn(outputs, on_device).items():
                if isinstance(value, torch.Tensor) and value.dim() == 0:  # per-class vectors stay out
                    totals[key] = totals.get(key, 0.0) + float(value)
        batches += 1
        collector.add(batch, cast(Any, model).postprocess(outputs, on_device["image_sizes"]))
    model.train(was_training)
    return _finish(collector, label_map, out_dir=out_dir, metrics_set=metrics_set,
                   min_score_threshold=min_score_threshold,
                   include_metrics_per_category=include_metrics_per_category,
                   class_weights=class_weights, extra=_mean_losses(totals, batches), writer=writer, step=step)


def _finish(collector: _Collector, label_map: LabelMap, *, extra: dict[str, float],
            writer: ScalarWriter | None, step: int | None, **options: Any) -> dict[str, float]:
    gt = {"images": collector.images, "annotations": collector.annotations,
          "categories": [{"id": i, "name": n} for i, n in zip(label_map.ids, label_map.display_names,
                                                                  strict=True)]}
    title = "raredet evaluation" + (f" at step {step}" if step is not None else "")
    result = evaluate_detections(gt, collector.detections, examples=collector.examples, title=title,
                                 extra_metrics=extra, **options)
    metrics = {k: float(v) for k, v in result["metrics"].items() if isinstance(v, int | float)}
    if writer is not None:
        for tag, value in metrics.items():
            writer.add_scalar(tag, value, step)
    return metrics


# ---- `raredet eval`: checkpoints of a pipeline.config ---------------------------------------------

POLL_SECONDS = 5.0


def _weights(state: Mapping[str, Any], use_moving_averages: bool, path: Path) -> Mapping[str, Any]:
    """The checkpoint's EMA weights when asked for and present, else its model weights."""
    if use_moving_averages:
        if state.get("ema") is not None:
            return state["ema"]
        warnings.warn(f"{path}: eval_config.use_moving_averages is set but the checkpoint has no moving "
                      "averages (train with optimizer.use_moving_average); using the raw weights",
                      stacklevel=3)
    return state["model"]


def _class_weights(state: Mapping[str, Any]) -> list[ClassWeight] | None:
    """The class weights training used, as saved in the checkpoint (None if it has none)."""
    saved = state.get("class_weights")
    return [ClassWeight(**w) for w in saved] if saved else None


class EvalJob:
    """Evaluates checkpoints of one pipeline.config; everything built once and reused per checkpoint."""

    def __init__(self, pipeline_config_path: str | Path, out_dir: Path, device: str | None,
                 sample_1_of_n: int | None = None) -> None:
        from raredet import builders, config

        self.loaded = config.load(pipeline_config_path)
        loader = builders.build_eval_loader(self.loaded, sample_1_of_n)
        if loader is None or self.loaded.label_map is None:
            raise ConfigError(f"{pipeline_config_path}: eval_input_reader has no input reader or label map; "
                              "add one (it names the data to evaluate on)")
        self.loader: Iterable[Mapping[str, Any]] = loader
        self.label_map: LabelMap = self.loaded.label_map
        self.model, _ = builders.build_model(self.loaded.config.model.ssd)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model.to(self.device)
        self.options = builders.eval_options(self.loaded)
        self.out_dir = out_dir
        self.writer: Any = None

    def __call__(self, path: Path) -> dict[str, float]:
        from raredet import builders
        from raredet.engine.checkpoint import load_checkpoint

        state = load_checkpoint(path, map_location=self.device)
        use_ema = self.loaded.config.eval_config.use_moving_averages
        try:
            self.model.load_state_dict(_weights(state, use_ema, path))
        except RuntimeError as err:
            raise CheckpointError(f"{path} does not fit the model of {self.loaded.path} ({err}); "
                                  "evaluate with the pipeline.config the run was trained with") from None
        weights = _class_weights(state)
        loss_fn = (builders.build_loss(self.loaded.config.model.ssd, self.label_map, weights)
                   if weights is not None else None)
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(self.out_dir))
        metrics = evaluate(self.model, self.loader, self.label_map, out_dir=self.out_dir,
                           loss_fn=loss_fn, device=self.device, class_weights=state.get("class_weights"),
                           writer=self.writer, step=int(state.get("step", 0)), **self.options)
        self.writer.flush()
        return metrics


def _report(path: Path, metrics: Mapping[str, float], out_dir: Path) -> None:
    print(f"== {path.name}")
    print((out_dir / "per_class.md").read_text(), end="")
    for key in ("DetectionBoxes_Precision/mAP", "DetectionBoxes_Precision/mAP@.50IOU",
                "DetectionBoxes_Recall/AR@100", "PascalBoxes_Precision/mAP@0.5IOU", "Loss/total_loss"):
        if key in metrics:
            print(f"{key}: {metrics[key]:.4f}")
    print(f"outputs in {out_dir}")


def eval_from_config(pipeline_config_path: str | Path, checkpoint_dir: str | Path, *,
                     checkpoint: str | Path | None = None, wait: bool = False, eval_timeout: float = 3600.0,
                     out_dir: str | Path | None = None, device: str | None = None,
                     sample_1_of_n_eval_examples: int | None = None,
                     poll_seconds: float = POLL_SECONDS) -> dict[str, float]:
    """`raredet eval`: evaluate one checkpoint (given, or the newest), or with `wait` each new one
    as it appears (the TF OD API's continuous evaluation) until `eval_timeout` seconds pass without
    one or the final training step is evaluated. Returns the last metrics."""
    from raredet.engine.checkpoint import list_checkpoints

    ckpt_dir = Path(checkpoint_dir)
    out = Path(out_dir) if out_dir is not None else ckpt_dir / "eval"
    job = EvalJob(pipeline_config_path, out, device, sample_1_of_n_eval_examples)
    if not wait:
        found = list_checkpoints(ckpt_dir)
        if checkpoint is None and not found:
            raise CheckpointError(f"{ckpt_dir}: no ckpt-<step>.pt checkpoint; train first "
                                  "or pass --checkpoint")
        path = Path(checkpoint) if checkpoint is not None else found[-1][1]
        metrics = job(path)
        _report(path, metrics, out)
        return metrics
    return _wait_loop(job, ckpt_dir, eval_timeout, out, poll_seconds)


def _wait_loop(job: EvalJob, ckpt_dir: Path, eval_timeout: float, out: Path,
               poll_seconds: float) -> dict[str, float]:
    from raredet.engine.checkpoint import list_checkpoints

    final_step = job.loaded.config.train_config.num_steps
    done, metrics, last_new = -1, {}, time.monotonic()
    while True:
        found = list_checkpoints(ckpt_dir)
        if found and found[-1][0] > done:
            done, path = found[-1]  # the newest: like the TF OD API, skip ones overtaken meanwhile
            try:
                metrics = job(path)
            except CheckpointError as err:  # pruned by training or cut short meanwhile: wait for the next
                warnings.warn(f"skipping checkpoint: {err}", stacklevel=2)
                continue
            _report(path, metrics, out)
            last_new = time.monotonic()
            if final_step and done >= final_step:
                return metrics
        elif time.monotonic() - last_new > eval_timeout:
            print(f"no new checkpoint in {ckpt_dir} for {eval_timeout:g} s; stopping")
            return metrics
        else:
            time.sleep(poll_seconds)
