"""Side-by-side per-class results of several runs, deltas against the first, rare classes first.

Each run is a directory holding `eval/per_class.json` (as `raredet eval` writes) or `per_class.json`
(as `raredet evaluate-detections --out RUN` writes). Classes are matched by name.

Where a run has `operating_points.json` next to its table, the first column is each class's recall at
one precision for every run (`recall@P0.9`: the highest recall whose precision is at least 0.9, at
IoU 0.5): the figure an imbalance method should move, compared at the same precision. The precision is
`precision`, else the runs' common `target_precision` rule, else 0.9.
"""

from __future__ import annotations

import html
import io
import json
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from raredet.errors import DataError  # noqa: E402
from raredet.evaluation.operating_points import DEFAULT_COMPARE_PRECISION  # noqa: E402
from raredet.evaluation.report import STYLE, data_uri  # noqa: E402
from raredet.fileio import atomic_write_bytes, atomic_write_text  # noqa: E402

METRICS = ("AP", "AP50", "VOC_AP50", "recall", "missed")
CHART_METRICS = ("AP50", "VOC_AP50", "AP")  # the first one any run has is charted


def _load_run(run_dir: str | Path) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """(per-class rows, operating_points.json content or None) of one run directory."""
    run = Path(run_dir)
    for path in (run / "eval" / "per_class.json", run / "per_class.json"):
        if path.is_file():
            try:
                rows = list(json.loads(path.read_text(encoding="utf-8"))["classes"])
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise DataError(f"{path}: not a raredet per_class.json ({err}); "
                                "re-run raredet eval") from None
            ops_path = path.with_name("operating_points.json")
            ops = json.loads(ops_path.read_text(encoding="utf-8")) if ops_path.is_file() else None
            return rows, ops
    raise DataError(f"{run}: no eval/per_class.json or per_class.json; run `raredet eval` on it first")


def compare_precision(ops: list[dict[str, Any] | None], precision: float | None) -> float:
    """The precision to compare recall at (module docstring)."""
    if precision is not None:
        return precision
    targets = {c["rule"]["target"] for o in ops if o is not None for c in o.get("classes", [])
               if c["rule"].get("kind") == "target_precision"}
    return float(f"{targets.pop():.2f}") if len(targets) == 1 else DEFAULT_COMPARE_PRECISION


def add_recall_at_precision(rows: list[dict[str, Any]], ops: dict[str, Any] | None, precision: float) -> str:
    """Put each class's recall at `precision` into its row (None where the run has no operating
    points); returns the column name."""
    key = f"{round(precision, 2):g}"
    column = f"recall@P{key}"
    by_name = {c["class_name"]: c.get("recall_at_precision", {}) for c in (ops or {}).get("classes", [])}
    for row in rows:
        row[column] = by_name.get(str(row["class"]), {}).get(key)
    return column


def run_labels(run_dirs: list[str | Path]) -> list[str]:
    """Short unique labels: the directory names, numbered where two are equal."""
    names = [Path(r).resolve().name or str(r) for r in run_dirs]
    return [n if names.count(n) == 1 else f"{n}#{i + 1}" for i, n in enumerate(names)]


def combine(runs: list[list[dict[str, Any]]]) -> tuple[list[str], dict[str, list[dict | None]]]:
    """Class names in order (rarest in the first run first; classes only in later runs last) and,
    per class, its row in each run (None where the run lacks the class)."""
    by_name = [{r["class"]: r for r in rows} for rows in runs]
    order = [r["class"] for r in runs[0]]
    for rows in runs[1:]:
        order += [r["class"] for r in rows if r["class"] not in order]
    return order, {name: [b.get(name) for b in by_name] for name in order}


def _present(table: dict[str, list[dict | None]], extra: tuple[str, ...] = ()) -> list[str]:
    return [m for m in (*extra, *METRICS) if any(r is not None and r.get(m) is not None
                                                 for rows in table.values() for r in rows)]


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _delta(value: Any, base: Any) -> str:
    if value is None or base is None:
        return "-"
    d = value - base
    return f"{d:+.3f}" if isinstance(d, float) else f"{d:+d}"


def comparison_rows(labels: list[str], order: list[str], table: dict[str, list[dict | None]],
                    extra: tuple[str, ...] = ()) -> tuple[list[str], list[list[str]]]:
    """Header and text rows: per metric (`extra` ones first), each run's value, then each later run's
    delta to the first."""
    header = ["class", "GT"]
    metrics = _present(table, extra)
    for m in metrics:
        header += [f"{m} {lab}" for lab in labels] + [f"Δ{m} {lab}" for lab in labels[1:]]
    rows = []
    for name in order:
        runs = table[name]
        gt = next((r["gt_count"] for r in runs if r is not None), "-")
        line = [name, str(gt)]
        for m in metrics:
            vals = [None if r is None else r.get(m) for r in runs]
            line += [_cell(v) for v in vals] + [_delta(v, vals[0]) for v in vals[1:]]
        rows.append(line)
    return header, rows


def to_markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"


def _get(row: dict | None, key: str) -> Any:
    return None if row is None else row.get(key)


def bar_chart(labels: list[str], order: list[str], table: dict[str, list[dict | None]]) -> bytes:
    """Grouped bars, one group per class and one bar per run, of the first available chart metric."""
    metric = next((m for m in CHART_METRICS if m in _present(table)), "recall")
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(order) * math.sqrt(len(labels))), 4.5))
    width = 0.8 / len(labels)
    x = np.arange(len(order))
    for i, lab in enumerate(labels):
        vals = [_get(table[n][i], metric) for n in order]
        ax.bar(x + (i - (len(labels) - 1) / 2) * width,
               [np.nan if v is None else v for v in vals], width, label=lab)
    counts = [next((r["gt_count"] for r in table[n] if r is not None), "?") for n in order]
    ax.set_xticks(x, [f"{n} (n={c})" for n, c in zip(order, counts, strict=True)], rotation=30, ha="right")
    ax.set(ylabel=metric, ylim=(0, 1.05), title=f"{metric} per class (rarest first)")
    ax.legend(fontsize="small")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def to_html(labels: list[str], run_dirs: list[str], header: list[str], rows: list[list[str]],
            chart: bytes) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    runs = "".join(f"<li>{html.escape(lab)}: {html.escape(str(d))}</li>" for lab, d in zip(labels, run_dirs,
                                                                                            strict=True))
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>raredet compare</title>'
            f"<style>{STYLE}</style></head><body><h1>Per-class comparison (rarest first)</h1>"
            f"<ul>{runs}</ul><p>Deltas are against the first run.</p>"
            f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
            f'<img alt="per-class chart" src="{data_uri(chart)}"></body></html>\n')


def compare_runs(run_dirs: list[str | Path], out_dir: str | Path | None = None,
                 precision: float | None = None) -> str:
    """Compare runs; write compare.md, compare.html and compare.png into `out_dir` (if given).
    Returns the Markdown table. `precision`: where recall is compared (module docstring)."""
    if not run_dirs:
        raise DataError("compare: give at least one run directory")
    if precision is not None and not 0.01 <= precision <= 1.0:
        raise DataError(f"compare: --precision must be in [0.01, 1], got {precision}")
    labels = run_labels(run_dirs)
    loaded = [_load_run(r) for r in run_dirs]
    p = compare_precision([ops for _, ops in loaded], precision)
    columns = {add_recall_at_precision(rows, ops, p) for rows, ops in loaded}
    order, table = combine([rows for rows, _ in loaded])
    header, rows = comparison_rows(labels, order, table, tuple(columns))
    markdown = to_markdown(header, rows)
    if out_dir is not None:
        out = Path(out_dir)
        chart = bar_chart(labels, order, table)
        atomic_write_text(out / "compare.md", markdown)
        atomic_write_bytes(out / "compare.png", chart)
        page = to_html(labels, [str(r) for r in run_dirs], header, rows, chart)
        atomic_write_text(out / "compare.html", page)
    return markdown
