"""`raredet eval`: evaluate checkpoints of a pipeline.config, one or each new one as it appears.

Besides the evaluation outputs, each evaluation writes the per-class operating points
(`operating_points.json`/`.md`, chosen by `eval_config.operating_points` or `--operating_point`, or
with `--operating_points_from` those of another evaluation graded here) and
`pipeline.operating_points.config`: the run's config whose `calibration_config` applies them, and
`pipeline.operating_points.tf.config`, the same without raredet's own fields, for the TF OD API.
For CenterNet only the first is written: raredet applies its calibration_config to the heatmap peaks'
scores, but the TF OD API ignores calibration_config for CenterNet (the file's comment says so).

The checkpoints are a raredet run's `ckpt-<step>.pt`, else those of a model the TF OD API trained
(`commands.trained`): an extracted TF2 zoo model folder's `checkpoint/ckpt-0`, or a TF `model_dir`'s
`ckpt-N`, loaded whole and computed with TF's conventions.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from google.protobuf import text_format
from torch.utils.tensorboard import SummaryWriter

from raredet import builders, config
from raredet.commands.trained import (
    find_tf_checkpoint,
    list_tf_checkpoints,
    model_weights,
    no_checkpoint_message,
    tf_checkpoint_step,
    warn_tf_moving_averages,
)
from raredet.config import LabelMap
from raredet.engine.checkpoint import list_checkpoints, load_checkpoint
from raredet.engine.evaluate import evaluate
from raredet.engine.runtime import eval_workers
from raredet.errors import CheckpointError, ConfigError
from raredet.evaluation import operating_points as ops
from raredet.evaluation.coco import load_json
from raredet.evaluation.options import EvalOptions
from raredet.fileio import atomic_write_text
from raredet.losses import ClassWeight
from raredet.modeling import load_checkpoint_weights
from raredet.protos import calibration_pb2, center_net_pb2, post_processing_pb2
from raredet.tfcheckpoint import is_tf_checkpoint

POLL_SECONDS = 5.0
OPERATING_CONFIG = "pipeline.operating_points.config"
# The same without raredet's own fields, for the TF OD API's config_util (config/tf_od_api.py).
OPERATING_CONFIG_TF = "pipeline.operating_points.tf.config"


def _class_weights(state: Mapping[str, Any]) -> list[ClassWeight] | None:
    """The class weights training used, as saved in the checkpoint (None if it has none); the one place
    they are read back (`engine.resume.checkpoint_state` is the one place they are written)."""
    saved = state.get("class_weights")
    return [ClassWeight(**w) for w in saved] if saved else None


class EvalJob:
    """Evaluates checkpoints of one pipeline.config; everything built once and reused per checkpoint."""

    def __init__(self, pipeline_config_path: str | Path, out_dir: Path, device: str | None,
                 sample_1_of_n: int | None = None, operating_point: ops.Rule | None = None,
                 review_precision: float | None = None,
                 operating_points_from: str | Path | None = None) -> None:
        self.loaded = config.load(pipeline_config_path)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        loader = builders.build_eval_loader(self.loaded, sample_1_of_n, num_workers=eval_workers(self.device))
        if loader is None or self.loaded.label_map is None:
            raise ConfigError(f"{pipeline_config_path}: eval_input_reader has no input reader or label map; "
                              "add one (it names the data to evaluate on)")
        self.loader: Iterable[Mapping[str, Any]] = loader
        self.label_map: LabelMap = self.loaded.label_map
        self.model = self._build_model(None)
        self.options = _with_flags(builders.eval_options(self.loaded, operating_point), review_precision,
                                   operating_points_from)
        self.out_dir = out_dir
        self.writer: SummaryWriter | None = None
        self.last_step = -1  # the training step of the checkpoint evaluated last

    def _build_model(self, weights_convention: str | None) -> Any:
        model, _ = builders.build_model(builders.model_message(self.loaded.pipeline), self.label_map.ids,
                                        weights_convention)
        return model.to(self.device)

    def _load(self, path: Path) -> Mapping[str, Any]:
        """Load `path` (a raredet checkpoint or a TF checkpoint prefix) into the model; its state (for a
        TF checkpoint only its step)."""
        if is_tf_path(path):
            warn_tf_moving_averages(self.loaded.pipeline, self.loaded.path, path)
            report = load_checkpoint_weights(self.model, path, "full")  # type: ignore[arg-type]
            print(f"TF checkpoint {path}: {report.summary()}")
            return {"step": tf_checkpoint_step(path)}
        state = load_checkpoint(path, map_location=self.device)
        recorded = state.get("weights_convention", "torchvision")  # what the run computed with
        if recorded != getattr(self.model, "weights_convention", "torchvision"):
            self.model = self._build_model(recorded)
        use_ema = self.loaded.pipeline.eval_config.use_moving_averages
        try:
            self.model.load_state_dict(model_weights(state, use_ema, path))
        except RuntimeError as err:
            raise CheckpointError(f"{path} does not fit the model of {self.loaded.path} ({err}); "
                                  "evaluate with the pipeline.config the run was trained with") from None
        return state

    def __call__(self, path: Path) -> dict[str, float]:
        state = self._load(path)
        self.last_step = int(state.get("step", 0))
        weights = _class_weights(state)
        loss_fn = (builders.build_loss(builders.model_message(self.loaded.pipeline), self.label_map, weights)
                   if weights is not None else None)
        if loss_fn is not None and state.get("loss"):  # a pair-aware loss: its statistics at this step
            try:
                loss_fn.load_state_dict(state["loss"])
            except ValueError as err:
                raise CheckpointError(f"{path}: {err}; evaluate with the pipeline.config the run was "
                                      "trained with") from None
        if self.writer is None:
            self.writer = SummaryWriter(log_dir=str(self.out_dir))
        described = f"{self.options.images_description}, checkpoint {path}"
        options = dataclasses.replace(self.options, images_description=described)
        metrics = evaluate(self.model, self.loader, self.label_map, out_dir=self.out_dir, options=options,
                           loss_fn=loss_fn, device=self.device, class_weights=weights,
                           writer=self.writer, step=self.last_step)
        self.writer.flush()
        self._write_operating_points_config()
        return metrics

    def _write_operating_points_config(self) -> None:
        """pipeline.operating_points.config next to operating_points.json (or say why not)."""
        content = load_json(self.out_dir / ops.JSON_NAME, "operating points", ops.OPERATING_POINTS_FIX)
        text, note = operating_points_config(self.loaded, content)
        path, tf_path = self.out_dir / OPERATING_CONFIG, self.out_dir / OPERATING_CONFIG_TF
        if text is None:
            print(f"{path.name}: {note}")
            for stale in (path, tf_path):  # an older one would not match these thresholds
                stale.unlink(missing_ok=True)
            return
        atomic_write_text(path, text)
        if is_center_net(self.loaded):  # TF ignores the calibration: no file "for the TF OD API"
            tf_path.unlink(missing_ok=True)
            print(f"{path.name}: for raredet only (the TF OD API ignores calibration_config for CenterNet); "
                  f"no {tf_path.name} written")
            return
        atomic_write_text(tf_path, builders.tf_od_api_config_text(text))


def _with_flags(options: EvalOptions, review_precision: float | None,
                operating_points_from: str | Path | None) -> EvalOptions:
    """`options` with `--review_precision` (added to, or replacing, every class's review band) and
    `--operating_points_from` (those thresholds graded instead of new ones chosen)."""
    if review_precision is not None:
        options = dataclasses.replace(
            options,
            operating_point_rule=dataclasses.replace(options.operating_point_rule,
                                                     review_precision=review_precision),
            class_rules={k: dataclasses.replace(r, review_precision=review_precision)
                         for k, r in options.class_rules.items()})
    if operating_points_from is not None:
        options = dataclasses.replace(options,
                                      operating_points_to_grade=ops.load_operating_points(operating_points_from))
    return options


def is_tf_path(path: Path) -> bool:
    """Whether `path` names a TF checkpoint (PREFIX, PREFIX.index) rather than a raredet ckpt-<step>.pt."""
    return path.suffix != ".pt" and is_tf_checkpoint(path)


def checkpoints(ckpt_dir: Path) -> list[tuple[int, Path]]:
    """(number, path) of the raredet checkpoints of `ckpt_dir`, else of its TF ones, oldest first."""
    return list_checkpoints(ckpt_dir) or list_tf_checkpoints(ckpt_dir)


def newest_checkpoint(ckpt_dir: Path) -> Path:
    """The newest raredet checkpoint of `ckpt_dir`, else its TF checkpoint (by the TF state file);
    CheckpointError saying what was looked for."""
    found = list_checkpoints(ckpt_dir)
    newest = found[-1][1] if found else find_tf_checkpoint(ckpt_dir)
    if newest is None:
        raise CheckpointError(f"{no_checkpoint_message(ckpt_dir)}; or pass --checkpoint")
    return newest


def _report(path: Path, metrics: Mapping[str, float], out_dir: Path) -> None:
    print(f"== {path.name}")
    print((out_dir / "per_class.md").read_text(), end="")
    if (out_dir / ops.MARKDOWN_NAME).is_file():
        print("\nOperating points (IoU 0.5). " + (out_dir / ops.MARKDOWN_NAME).read_text(), end="")
    for key in ("DetectionBoxes_Precision/mAP", "DetectionBoxes_Precision/mAP@.50IOU",
                "DetectionBoxes_Recall/AR@100", "PascalBoxes_Precision/mAP@0.5IOU", "Loss/total_loss"):
        if key in metrics:
            print(f"{key}: {metrics[key]:.4f}")
    print(f"outputs in {out_dir}")


def eval_from_config(pipeline_config_path: str | Path, checkpoint_dir: str | Path, *,
                     checkpoint: str | Path | None = None, wait: bool = False, eval_timeout: float = 3600.0,
                     out_dir: str | Path | None = None, device: str | None = None,
                     sample_1_of_n_eval_examples: int | None = None,
                     poll_seconds: float = POLL_SECONDS, operating_point: str | None = None,
                     review_precision: float | None = None,
                     operating_points_from: str | Path | None = None) -> dict[str, float]:
    """`raredet eval`: evaluate one checkpoint (given, or the newest), or with `wait` each new one
    as it appears (the TF OD API's continuous evaluation) until `eval_timeout` seconds pass without
    one or the final training step is evaluated. Returns the last metrics.

    `operating_point` (`max_f1`, `target_precision=P`, `target_recall=R`) and `review_precision`
    replace the config's operating-point rules; `operating_points_from` (another evaluation's
    operating_points.json) grades those thresholds here instead of choosing new ones."""
    ckpt_dir = Path(checkpoint_dir)
    out = Path(out_dir) if out_dir is not None else ckpt_dir / "eval"
    rule = None
    if operating_point is not None:
        try:
            rule = ops.parse_rule(operating_point)
        except ValueError as err:
            raise ConfigError(f"--operating_point {err}") from None
    if review_precision is not None and not 0.0 < review_precision <= 1.0:
        raise ConfigError(f"--review_precision must be in (0, 1], got {review_precision}")
    job = EvalJob(pipeline_config_path, out, device, sample_1_of_n_eval_examples, rule, review_precision,
                  operating_points_from)
    if not wait:
        path = Path(checkpoint) if checkpoint is not None else newest_checkpoint(ckpt_dir)
        metrics = job(path)
        _report(path, metrics, out)
        return metrics
    return _wait_loop(job, ckpt_dir, eval_timeout, out, poll_seconds)


def _wait_loop(job: EvalJob, ckpt_dir: Path, eval_timeout: float, out: Path,
               poll_seconds: float) -> dict[str, float]:
    final_step = job.loaded.pipeline.train_config.num_steps
    done, metrics, last_new = -1, {}, time.monotonic()
    while True:
        found = checkpoints(ckpt_dir)
        if found and found[-1][0] > done:
            done, path = found[-1]  # the newest: like the TF OD API, skip ones overtaken meanwhile
            try:
                metrics = job(path)
            except CheckpointError as err:  # pruned by training or cut short meanwhile: wait for the next
                warnings.warn(f"skipping checkpoint: {err}", stacklevel=2)
                continue
            _report(path, metrics, out)
            last_new = time.monotonic()
            # a TF model_dir numbers its saves ckpt-1, ckpt-2, ...: its step is the checkpoint's `step`
            reached = job.last_step if is_tf_path(path) else done
            if final_step and reached >= final_step:
                return metrics
        elif time.monotonic() - last_new > eval_timeout:
            print(f"no new checkpoint in {ckpt_dir} for {eval_timeout:g} s; stopping")
            return metrics
        else:
            time.sleep(poll_seconds)


def operating_points_config(loaded: config.LoadedConfig,
                            content: Mapping[str, Any]) -> tuple[str | None, str]:
    """(pipeline.config text, note): `loaded`'s config whose post-processing applies the per-class
    thresholds of `content` (operating_points.json) in the TF OD API's own terms: a per-class
    `calibration_config.class_id_function_approximations` map sending each class's threshold to the
    common `batch_non_max_suppression.score_threshold`. None (and why) where that cannot be written."""
    cfg = type(loaded.pipeline)()
    cfg.CopyFrom(loaded.pipeline)  # input paths are absolute here: the file works from any folder
    post, where = builders.post_processing_field(builders.model_message(cfg))
    if post.HasField("calibration_config"):
        kind = post.calibration_config.WhichOneof("calibrator")
        owner = where.removesuffix(".calibration_config")
        return None, (f"not written: {owner} already has calibration_config ({kind}), and "
                      "the TF OD API takes one calibrator; apply operating_points.json with "
                      "--operating_points")
    center_net = is_center_net(loaded)
    # CenterNet's peak scores are always sigmoids (its post_processing has no say in them)
    identity = not center_net and post.score_converter == post_processing_pb2.PostProcessing.IDENTITY
    if identity or not content.get("deployable", True):
        return None, ("not written: score_converter is IDENTITY, so scores are not in [0, 1] where "
                      "calibration maps work; use SIGMOID or SOFTMAX")
    notes = _center_net_notes(cfg.model.center_net) if center_net else []
    post.batch_non_max_suppression.score_threshold = float(content["score_threshold"])
    maps = post.calibration_config.class_id_function_approximations.class_id_xy_pairs_map
    for class_id, xy in content["calibration"].items():
        entry = maps[int(class_id)]
        entry.training_data_type = calibration_pb2.CLASS_SPECIFIC
        xs, ys = (xy["x"], xy["y"]) if isinstance(xy, Mapping) else xy
        for x, y in zip(xs, ys, strict=True):
            entry.x_y_pair.add(x=x, y=y)
    if not maps:  # no class has a threshold: an empty map is identity (and the oneof must be set)
        post.calibration_config.class_id_function_approximations.SetInParent()
    chosen = content["chosen_on"].get("description", "")
    review = content.get("review_score_threshold")
    band = (f"; its review threshold to {review:g} (lower score_threshold to that to see the review band)"
            if review is not None else "")
    header = [f"# Written by raredet eval: per-class operating points chosen on {chosen}.",
              f"# Each class's threshold maps to score_threshold {content['score_threshold']:g}{band}.",
              "# Classes without a map keep that threshold as it is.", *notes]
    return "\n".join(header) + "\n" + text_format.MessageToString(cfg), "written"


def is_center_net(loaded: config.LoadedConfig) -> bool:
    """Whether `loaded` is a CenterNet config (its operating points are for raredet only)."""
    return isinstance(builders.model_message(loaded.pipeline), center_net_pb2.CenterNet)


def _center_net_notes(msg: center_net_pb2.CenterNet) -> list[str]:
    """CenterNet: the TF OD API ignores the calibration (comment lines saying so); and, where the
    config has no NMS, one that suppresses nothing is added to `msg` to carry the score_threshold."""
    lines = ["# CenterNet: raredet's predict and export apply this calibration_config to the scores of the",
             "# heatmap peaks. The TF OD API itself IGNORES calibration_config for CenterNet (it builds only",
             "# the NMS of post_processing), so TF would apply score_threshold alike to every class's",
             "# uncalibrated score: deploy this file with raredet, not with the TF OD API."]
    post = msg.post_processing
    if not post.HasField("batch_non_max_suppression"):
        limit = msg.object_center_params.max_box_predictions
        nms = post.batch_non_max_suppression
        nms.iou_threshold = 1.0  # no two boxes overlap by more than IoU 1: nothing is suppressed
        nms.max_detections_per_class = nms.max_total_detections = limit
        lines += ["# batch_non_max_suppression is added only to carry score_threshold: with iou_threshold",
                  "# 1.0 and max_box_predictions detections per class it suppresses nothing."]
    return lines
