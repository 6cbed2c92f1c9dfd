"""`raredet compare`: several runs' per-class tables side by side (`raredet.evaluation.compare`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from raredet.evaluation.compare import compare_runs


def compare(run_dirs: Sequence[str | Path], out_dir: str | Path | None = None,
            precision: float | None = None) -> str:
    """Compare `run_dirs` (the first is the baseline); write compare.{md,html,png} into `out_dir` if
    given; return the Markdown table. `precision`: where each class's recall is compared."""
    return compare_runs(list(run_dirs), out_dir, precision)
