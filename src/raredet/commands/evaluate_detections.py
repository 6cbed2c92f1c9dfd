"""`raredet evaluate-detections`: any detector's COCO-format results against COCO ground truth (metrics,
per-class table, operating points, plots, report.html), without a pipeline.config or a model."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from raredet.errors import ConfigError
from raredet.evaluation.operating_points import parse_rule
from raredet.evaluation.pipeline import evaluate_detection_files


def evaluate_detections_from_files(groundtruth: str | Path, detections: str | Path, *, out_dir: str | Path,
                                   metrics_set: Sequence[str] = (), min_score_threshold: float = 0.5,
                                   image_dir: str | Path | None = None, operating_point: str | None = None,
                                   operating_points_from: str | Path | None = None) -> dict[str, Any]:
    """Evaluate, write the outputs into `out_dir` and print the tables. `operating_point` is the
    `--operating_point` text (`max_f1`, `target_precision=P`, `target_recall=R`; default max F1)."""
    try:
        rule = parse_rule(operating_point) if operating_point else None
    except ValueError as err:
        raise ConfigError(f"--operating_point {err}") from None
    return evaluate_detection_files(groundtruth, detections, out_dir=out_dir, metrics_set=list(metrics_set),
                                    min_score_threshold=min_score_threshold, image_dir=image_dir,
                                    operating_point_rule=rule, operating_points_from=operating_points_from)
