"""Evaluate COCO-format detections and write every output: metrics, table, plots, report.

Shared by `raredet evaluate-detections` (files from any detector) and `engine.evaluate` (a raredet
model on its eval loader). Outputs into `out_dir`: metrics.json, per_class.{json,csv,md},
operating_points.{json,md}, pr_curves.png, confusion_matrix.png, score_histograms.png, report.html.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from faster_coco_eval import COCO
from PIL import Image

from raredet.errors import ConfigError, DataError
from raredet.evaluation import operating_points as ops
from raredet.evaluation import per_class, plots
from raredet.evaluation.coco import (
    CATEGORY_KEYS,
    KEYPOINT_STAT_NAMES,
    MASK_CATEGORY_KEYS,
    CocoResult,
    check_coco,
    evaluate_coco,
    evaluate_coco_keypoints,
    evaluate_coco_masks,
    load_json,
    prepare_coco,
)
from raredet.evaluation.options import (
    COCO_SET,
    KEYPOINT_SET,
    MASK_SET,
    METRICS_SETS,
    VOC_SET,
    EvalOptions,
    KeypointMetric,
)
from raredet.evaluation.report import Example, write_report
from raredet.evaluation.voc import voc_ap_per_class
from raredet.fileio import atomic_write_json

VOC_MAP = "PascalBoxes_Precision/mAP@0.5IOU"
VOC_PER_CATEGORY = "PascalBoxes_PerformanceByCategory/AP@0.5IOU"


def check_metrics_sets(metrics_set: str | Sequence[str]) -> list[str]:
    """The requested metric sets as a list (empty means COCO, the TF OD API default)."""
    sets = [metrics_set] if isinstance(metrics_set, str) else list(metrics_set)
    for name in sets:
        if name not in METRICS_SETS:
            raise ValueError(f"unknown '{name}'; valid: {', '.join(METRICS_SETS)}")
    return sets or [COCO_SET]


def _coco_metrics(result: CocoResult, names: dict[int, str], per_category: bool,
                  keys: Mapping[str, str] = CATEGORY_KEYS) -> dict[str, Any]:
    out: dict[str, Any] = dict(result.stats)
    if per_category:
        for cat, values in result.per_category.items():
            for key, prefix in keys.items():
                out[f"{prefix}/{names[cat]}"] = values[key]
    return out


def super_category_metrics(result: CocoResult, names: dict[int, str],
                           super_categories: Mapping[str, Sequence[str]],
                           prefix: str) -> dict[str, float | None]:
    """``<prefix>_PerformanceBySuperCategory/<name>``: the mean AP of the super category's classes, as the
    TF OD API's `ComputeMetrics` reports it; raredet averages over the listed classes that have ground
    truth (None if none has), where TF divides the sum over the classes present (-1 for no ground truth)
    by the number of names listed: the same number when every listed class is there with ground truth."""
    by_name = {name: cat for cat, name in names.items()}
    out: dict[str, float | None] = {}
    for key, members in super_categories.items():
        aps = [result.per_category[by_name[m]]["AP"] for m in members if m in by_name]
        valid = [ap for ap in aps if ap is not None]
        out[f"{prefix}_PerformanceBySuperCategory/{key}"] = float(np.mean(valid)) if valid else None
    return out


def keypoint_metrics(gt: dict, detections: list, metrics: Sequence[KeypointMetric]) -> dict[str, float]:
    """COCO keypoint AP / AR of each class of `metrics`, under the TF OD API's names
    (``Keypoints_Precision/mAP ByCategory/<class>``, ...)."""
    out: dict[str, float] = {}
    for m in metrics:
        picked = {**gt, "annotations": _picked_keypoints(gt["annotations"], m)}
        stats = evaluate_coco_keypoints(picked, _picked_keypoints(detections, m), m.category_id,
                                        np.asarray(m.sigmas))
        out.update({f"Keypoints_{name} ByCategory/{m.class_name}": v
                    for name, v in zip(KEYPOINT_STAT_NAMES, stats, strict=True)})
    return out


def _picked_keypoints(records: list[dict], metric: KeypointMetric) -> list[dict]:
    """The records of the metric's class with only its keypoints (``keypoints`` [x, y, v] * J, the
    triples of `metric.keypoint_indices`)."""
    picked = []
    for rec in records:
        if rec["category_id"] != metric.category_id:
            continue
        values = rec.get("keypoints") or [0.0] * 3 * (max(metric.keypoint_indices) + 1)  # none: unlabelled
        triples = [values[3 * j:3 * j + 3] for j in metric.keypoint_indices]
        if any(len(t) != 3 for t in triples):
            raise DataError(f"keypoint metrics of '{metric.class_name}': a record of image "
                            f"{rec.get('image_id')} has {len(values) // 3} keypoints, fewer than keypoint "
                            f"{max(metric.keypoint_indices)} the metric scores")
        copy = {k: v for k, v in rec.items() if k != "num_keypoints"}
        picked.append({**copy, "keypoints": [v for t in triples for v in t]})
    return picked


def _voc_metrics(ap: dict[int, float | None], names: dict[int, str], per_category: bool) -> dict[str, Any]:
    valid = [v for v in ap.values() if v is not None]
    out: dict[str, Any] = {VOC_MAP: float(np.mean(valid)) if valid else None}
    if per_category:
        out.update({f"{VOC_PER_CATEGORY}/{names[c]}": v for c, v in ap.items()})
    return out


def _metrics(coco: CocoResult | None, voc: dict[int, float | None] | None, names: dict[int, str],
             per_category: bool, extra: dict[str, Any] | None) -> dict[str, Any]:
    """metrics.json: `extra` (validation losses), then the requested metric sets."""
    metrics: dict[str, Any] = dict(extra or {})
    if coco is not None:
        metrics.update(_coco_metrics(coco, names, per_category))
    if voc is not None:
        metrics.update(_voc_metrics(voc, names, per_category))
    return metrics


def _markers(points: Sequence[ops.OperatingPoint]) -> dict[str, list[tuple[float, float, str]]]:
    """Per class: its operating point, review threshold and global threshold on the PR curve."""
    out: dict[str, list[tuple[float, float, str]]] = {}
    for p in points:
        at = ((p.at_threshold, "operating point"), (p.review, "review"), (p.at_global, "global threshold"))
        marks = [(c.recall, c.precision, kind) for c, kind in at
                 if c is not None and c.recall is not None and c.precision is not None]
        out[p.class_name] = marks
    return out


def _plots(gt: dict, detections: list, matches: per_class.Matches, coco: CocoResult,
           cats: list[dict], min_score: float, out: Path,
           prepared: tuple[COCO, COCO] | None = None,
           points: Sequence[ops.OperatingPoint] = ()) -> dict[str, bytes]:
    ids, names = [c["id"] for c in cats], [c["name"] for c in cats]
    curves = {c["name"]: coco.pr_precision[c["id"]] for c in cats}
    figures = {
        "pr_curves.png": plots.pr_curves_figure(coco.recall_thresholds, curves, _markers(points)),
        "confusion_matrix.png": plots.confusion_figure(
            plots.confusion_counts(gt, detections, matches, ids, min_score, prepared), names, min_score),
        "score_histograms.png": plots.score_histograms_figure(matches, ids, names, min_score),
    }
    for name, fig in figures.items():
        plots.save_figure(fig, out / name)
    return {name: (out / name).read_bytes() for name in figures}


@dataclass
class _Evaluated:
    """What `evaluate_detections` measured, before anything is written."""

    sets: list[str]
    cats: list[dict]  # gt's categories (copies, each with a name), by id
    prepared: tuple[COCO, COCO]
    coco_all: CocoResult  # with matches, whatever the metric sets
    matches: per_class.Matches
    metrics: dict[str, Any]
    rows: list[dict[str, Any]]
    content: dict[str, Any]  # operating_points.json
    points: list[ops.OperatingPoint]


def evaluate_detections(gt: dict, detections: list, *, out_dir: str | Path,
                        options: EvalOptions | None = None, class_weights: list[dict[str, Any]] | None = None,
                        examples: Sequence[Example] = (), title: str = "raredet evaluation",
                        extra_metrics: dict[str, Any] | None = None, check: bool = True) -> dict[str, Any]:
    """Evaluate `detections` (COCO results list) against `gt` (COCO dict) as `options` say (default
    `EvalOptions()`); write all outputs.

    Returns {"metrics", "per_class", "operating_points"}: the metrics dict (TF OD API names; None
    where a class has no ground truth, plus `OperatingPoint/...` scalars), which also goes to
    `out_dir/metrics.json` together with `extra_metrics` (e.g. validation losses); the table rows;
    the content of operating_points.json.
    `check=False` skips `check_coco` for a caller that has already checked (with file names).

    Operating points: chosen per class by `options.class_rules[name]` or `options.operating_point_rule`
    on these detections, or, with `options.operating_points_to_grade`, those thresholds graded here.
    """
    options = options or EvalOptions()
    sets = check_metrics_sets(options.metrics_set)
    if check:
        check_coco(gt, detections)
    done = _evaluate(gt, detections, options, sets, extra_metrics)
    _write_outputs(Path(out_dir), gt, detections, done, options.min_score_threshold, title, class_weights,
                   examples)
    return {"metrics": done.metrics, "per_class": done.rows, "operating_points": done.content}


def _evaluate(gt: dict, detections: list, options: EvalOptions, sets: list[str],
              extra_metrics: dict[str, Any] | None) -> _Evaluated:
    named = ({**c, "name": c.get("name", str(c["id"]))} for c in gt["categories"])  # copies: gt unchanged
    cats = sorted(named, key=lambda c: c["id"])
    prepared = prepare_coco(gt, detections)  # shared by the metrics and the table's matching
    coco_all = evaluate_coco(gt, detections, prepared, keep_matches=True)  # PR curves, table's matches
    coco = coco_all if COCO_SET in sets else None
    voc = voc_ap_per_class(gt, detections) if VOC_SET in sets else None
    masks = evaluate_coco_masks(gt, detections) if MASK_SET in sets else None
    names = {c["id"]: c["name"] for c in cats}
    metrics = _metrics(coco, voc, names, options.include_metrics_per_category, extra_metrics)
    if masks is not None:
        metrics.update(_coco_metrics(masks, names, options.include_metrics_per_category, MASK_CATEGORY_KEYS))
    for result, prefix in ((coco, "DetectionBoxes"), (masks, "DetectionMasks")):
        if result is not None:
            metrics.update(super_category_metrics(result, names, options.super_categories, prefix))
    if KEYPOINT_SET in sets and not options.keypoint_metrics:
        raise ConfigError(f"metrics set {KEYPOINT_SET} needs the class and the sigma of each keypoint, "
                          "which only a pipeline.config gives (eval_config.parameterized_metric { "
                          "coco_keypoint_metrics { class_label keypoint_label_to_sigmas } }); "
                          "leave it out here")
    metrics.update(keypoint_metrics(gt, detections, options.keypoint_metrics))
    matches = per_class.match_detections(gt, detections, prepared, coco_all)
    counts = per_class.class_counts(matches, [c["id"] for c in cats], options.min_score_threshold)
    rows = per_class.build_table(cats, counts, coco, voc, masks)
    content = _operating_points(matches, cats, len(gt["images"]), options)
    points = [ops.OperatingPoint.from_json(c) for c in content["classes"]]
    _add_operating_columns(rows, points)
    metrics.update(ops.scalars(points))
    return _Evaluated(sets, cats, prepared, coco_all, matches, metrics, rows, content, points)


def _write_outputs(out: Path, gt: dict, detections: list, done: _Evaluated, min_score: float, title: str,
                   class_weights: list[dict[str, Any]] | None, examples: Sequence[Example]) -> None:
    """operating_points.{json,md}, per_class.{json,csv,md}, metrics.json, the plots and report.html."""
    ops.write_operating_points(out, done.content)
    per_class.write_table(done.rows, out, {"metrics_set": done.sets, "min_score_threshold": min_score})
    atomic_write_json(out / "metrics.json", done.metrics)
    pngs = _plots(gt, detections, done.matches, done.coco_all, done.cats, min_score, out, done.prepared,
                  done.points)
    write_report(out / "report.html", title=title, metrics=done.metrics, rows=done.rows,
                 plots={k.removesuffix(".png").replace("_", " "): v for k, v in pngs.items()},
                 class_weights=class_weights or [], examples=examples,
                 names=[c["name"] for c in done.cats], min_score_threshold=min_score,
                 operating_points=(ops.where_sentence(done.content), *ops.table(done.points, min_score)))


def _operating_points(matches: per_class.Matches, cats: list[dict], num_images: int,
                      options: EvalOptions) -> dict[str, Any]:
    """operating_points.json's content: chosen here, or `options.operating_points_to_grade` graded here;
    with the one threshold for every class (`single_threshold`) next to the per-class ones."""
    described = options.images_description
    here = {"description": f"{num_images} images" + (f" of {described}" if described else ""),
            "images": num_images}
    curves = [ops.class_curve(matches, int(c["id"]), options.score_floor) for c in cats]
    if options.operating_points_to_grade is None:
        return _chosen_here(matches, cats, num_images, curves, here, options)
    return _graded_here(matches, cats, num_images, curves, here, options.operating_points_to_grade,
                        options.min_score_threshold)


def _chosen_here(matches: per_class.Matches, cats: list[dict], num_images: int, curves: list[ops.Curve],
                 here: dict[str, Any], options: EvalOptions) -> dict[str, Any]:
    rule, min_score = options.operating_point_rule, options.min_score_threshold
    score_floor = options.score_floor
    points = ops.operating_points(matches, cats, options.class_rules, rule, num_images, min_score,
                                  score_floor)
    content = ops.operating_points_json(points, min_score_threshold=min_score, chosen_on=here)
    content["single_threshold"] = ops.single_threshold_json(
        curves, [str(c["name"]) for c in cats], ops.single_threshold_target(rule), num_images, score_floor)
    return content


def _graded_here(matches: per_class.Matches, cats: list[dict], num_images: int, curves: list[ops.Curve],
                 here: dict[str, Any], chosen: Mapping[str, Any], min_score: float) -> dict[str, Any]:
    """`chosen` (a loaded operating_points.json) graded on these detections."""
    names = {c["id"]: c["name"] for c in cats}
    for p in chosen["classes"]:
        if names.get(p.class_id) != p.class_name:
            raise DataError(f"operating points: class {p.class_name!r} (id {p.class_id}) is not a class of "
                            f"these images ({names}); apply operating points chosen with the same label map")
    graded = ops.grade_operating_points(matches, chosen["classes"], num_images, min_score,
                                        chosen["chosen_on"].get("description", "other images"))
    content = ops.operating_points_json(graded, min_score_threshold=min_score,
                                        chosen_on=chosen["chosen_on"], graded_on=here)
    # The deployment maps stay those of the evaluation that chose them.
    content["calibration"] = {str(k): {"x": xs, "y": ys} for k, (xs, ys) in chosen["calibration"].items()}
    content["score_threshold"] = chosen["score_threshold"]
    content["review_score_threshold"] = chosen["review_score_threshold"]
    if chosen.get("single_threshold") is not None:  # files written before it have none
        single = ops.single_threshold_json(curves, [str(c["name"]) for c in cats], 0.0, num_images,
                                           chosen=chosen["single_threshold"])
        for c in cats:
            figures = single["classes"][c["name"]]
            if figures is not None:
                figures["precision_interval"] = ops.precision_interval(
                    matches, int(c["id"]), single["threshold"], num_images)
        content["single_threshold"] = single
    return content


def _add_operating_columns(rows: list[dict[str, Any]], points: Sequence[ops.OperatingPoint]) -> None:
    by_name = {p.class_name: p for p in points}
    for row in rows:
        p = by_name.get(str(row["class"]))
        if p is not None and p.at_threshold is not None:
            row.update(op_threshold=p.threshold, op_precision=p.at_threshold.precision,
                       op_recall=p.at_threshold.recall)


def _choose_examples(gt: dict, count: int) -> list[Any]:
    """Up to `count` image ids, those showing the rarest classes first."""
    n_per_cat: dict[Any, int] = {}
    for ann in gt["annotations"]:
        n_per_cat[ann["category_id"]] = n_per_cat.get(ann["category_id"], 0) + 1
    rarity: dict[Any, int] = {}
    for ann in gt["annotations"]:
        img = ann["image_id"]
        rarity[img] = min(rarity.get(img, 1 << 60), n_per_cat[ann["category_id"]])
    return sorted(rarity, key=lambda i: rarity[i])[:count]


def examples_from_files(gt: dict, detections: list, image_dir: str | Path, count: int) -> list[Example]:
    """Example panels for `count` images found under `image_dir` by their `file_name`."""
    index = {c["id"]: i for i, c in enumerate(sorted(gt["categories"], key=lambda c: c["id"]))}
    images = {img["id"]: img for img in gt["images"]}
    out = []
    for image_id in _choose_examples(gt, count):
        path = Path(image_dir) / str(images[image_id].get("file_name", ""))
        try:
            pixels = np.asarray(Image.open(path).convert("RGB"))
        except OSError as err:
            raise DataError(f"{path}: cannot read image {image_id} for the report ({err}); "
                            "check --image_dir or leave it out") from None
        out.append(_example(pixels, [a for a in gt["annotations"] if a["image_id"] == image_id],
                            [d for d in detections if d["image_id"] == image_id], index, path.name))
    return out


def _xywh_to_xyxy(records: list[dict]) -> np.ndarray:
    boxes = np.array([r["bbox"] for r in records], dtype=np.float64).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)


def _example(pixels: np.ndarray, anns: list[dict], dets: list[dict], index: dict[Any, int],
             title: str) -> Example:
    return Example(pixels, _xywh_to_xyxy(anns), np.array([index[a["category_id"]] for a in anns]),
                   _xywh_to_xyxy(dets), np.array([d["score"] for d in dets], dtype=np.float64),
                   np.array([index[d["category_id"]] for d in dets]), title)


def evaluate_detection_files(groundtruth: str | Path, detections: str | Path, *,
                             out_dir: str | Path, metrics_set: str | Sequence[str] = COCO_SET,
                             min_score_threshold: float = 0.5, image_dir: str | Path | None = None,
                             num_visualizations: int = 8,
                             echo: Callable[[str], None] | None = print,
                             operating_point_rule: ops.Rule | None = None,
                             operating_points_from: str | Path | None = None) -> dict[str, Any]:
    """`raredet evaluate-detections`: read COCO GT and results JSON files, evaluate, write outputs.
    Operating points by `operating_point_rule` (default max F1), or those of `operating_points_from`
    (another evaluation's operating_points.json) graded on these detections."""
    gt = load_json(groundtruth, "ground truth")
    dets = load_json(detections, "detections")
    if not isinstance(gt, dict):
        raise DataError(f"{groundtruth}: expected a COCO dataset object with images, annotations, categories")
    check_coco(gt, dets, str(groundtruth), str(detections))
    examples = examples_from_files(gt, dets, image_dir, num_visualizations) if image_dir else []
    chosen = ops.load_operating_points(operating_points_from) if operating_points_from is not None else None
    options = EvalOptions(metrics_set=metrics_set, min_score_threshold=min_score_threshold,
                          operating_point_rule=operating_point_rule or ops.Rule(),
                          operating_points_to_grade=chosen,
                          images_description=f"{groundtruth} with detections {detections}")
    result = evaluate_detections(gt, dets, out_dir=out_dir, options=options, examples=examples, check=False,
                                 title=f"raredet evaluation of {Path(detections).name}")
    if echo is not None:
        echo(per_class.to_markdown(result["per_class"]))
        echo(ops.where_sentence(result["operating_points"]) + "\n")
        echo(ops.to_markdown([ops.OperatingPoint.from_json(c) for c in result["operating_points"]["classes"]],
                             min_score_threshold))
        echo(_summary(result["metrics"]))
        echo(f"Wrote metrics, per-class table, plots and report.html into {out_dir}")
    return result


def _summary(metrics: dict[str, Any]) -> str:
    lines = [f"{k}: {v:.4f}" for k, v in metrics.items() if "PerformanceByCategory" not in k
             and isinstance(v, float)]
    return "\n".join(lines)

