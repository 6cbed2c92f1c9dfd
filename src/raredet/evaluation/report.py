"""One self-contained `report.html`: metrics, per-class table, plots, class weights, example detections.

Every image is embedded as a base64 data URI, so the file can be mailed or archived on its own.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from raredet.evaluation.per_class import format_cell, shown_columns
from raredet.fileio import atomic_write_text

# Distinct colours, one per class index (cycled past 12 classes).
PALETTE = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
           (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (170, 110, 40), (128, 0, 0))
MIN_PANEL_WIDTH = 256


@dataclass
class Example:
    """One evaluation image with its ground truth and detections, all in this image's pixels.

    image uint8 [H, W, 3]; gt_boxes float [N, 4] xyxy; gt_classes int [N] (contiguous index);
    det_boxes float [D, 4] xyxy; det_scores float [D]; det_classes int [D] (contiguous index).
    """

    image: np.ndarray
    gt_boxes: np.ndarray
    gt_classes: np.ndarray
    det_boxes: np.ndarray
    det_scores: np.ndarray
    det_classes: np.ndarray
    title: str = ""


def draw_boxes(image: np.ndarray, boxes: np.ndarray, classes: np.ndarray, names: Sequence[str],
               scores: np.ndarray | None = None) -> Image.Image:
    """The image with boxes [N, 4] xyxy drawn in their class colour and labelled with name (and score)."""
    img = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).convert("RGB")
    draw = ImageDraw.Draw(img)
    pairs = zip(np.asarray(boxes).tolist(), np.asarray(classes).tolist(), strict=True)
    for i, (box, cls) in enumerate(pairs):
        colour = PALETTE[int(cls) % len(PALETTE)]
        draw.rectangle(box, outline=colour, width=2)
        label = names[int(cls)] if 0 <= int(cls) < len(names) else str(cls)
        if scores is not None:
            label += f" {float(scores[i]):.2f}"
        draw.text((box[0] + 2, max(0.0, box[1] - 11)), label, fill=colour)
    return img


def example_panel(example: Example, names: Sequence[str], min_score: float) -> Image.Image:
    """Ground truth (left) beside the detections scoring at least `min_score` (right)."""
    keep = np.asarray(example.det_scores) >= min_score
    # Small training images (64 px) are enlarged (nearest neighbour) so that labels stay readable.
    zoom = int(min(4, max(1, MIN_PANEL_WIDTH // max(1, example.image.shape[1]))))
    image = np.repeat(np.repeat(np.asarray(example.image), zoom, axis=0), zoom, axis=1)
    left = draw_boxes(image, np.asarray(example.gt_boxes) * zoom, example.gt_classes, names)
    right = draw_boxes(image, np.asarray(example.det_boxes)[keep] * zoom,
                       np.asarray(example.det_classes)[keep], names, np.asarray(example.det_scores)[keep])
    panel = Image.new("RGB", (left.width * 2 + 6, left.height), (255, 255, 255))
    panel.paste(left, (0, 0))
    panel.paste(right, (left.width + 6, 0))
    return panel


def data_uri(png: bytes | Image.Image) -> str:
    """A `data:image/png;base64,...` URI for PNG bytes or a PIL image."""
    if isinstance(png, Image.Image):
        buf = io.BytesIO()
        png.save(buf, format="PNG")
        png = buf.getvalue()
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _metric_text(value: float) -> str:
    # COCOeval reports -1 where nothing can be averaged (e.g. no large boxes at all).
    return "undefined (no ground truth here)" if value == -1 else f"{value:.4f}"


def _metrics_section(metrics: dict[str, Any]) -> str:
    """Overall numbers; the per-category ones are in the per-class table below."""
    rows = [(k, _metric_text(float(v))) for k, v in metrics.items() if "PerformanceByCategory" not in k
            and isinstance(v, int | float) and not isinstance(v, bool)]
    return "<h2>Metrics</h2>" + (_table(("metric", "value"), rows) if rows else "<p>No metrics.</p>")


def per_class_html(rows: list[dict[str, Any]]) -> str:
    cols = shown_columns(rows)
    return _table(cols, [[format_cell(r[c], r["gt_count"], c) for c in cols] for r in rows])


def _weights_section(class_weights: list[dict[str, Any]]) -> str:
    if not class_weights:
        return "<h2>Class weights</h2><p>No class weights were set for this run (all classes weigh 1).</p>"
    header = list(class_weights[0].keys())
    return "<h2>Class weights</h2>" + _table(header, [[w.get(h, "") for h in header] for w in class_weights])


def _examples_section(examples: Sequence[Example], names: Sequence[str], min_score: float) -> str:
    if not examples:
        return "<h2>Example detections</h2><p>No example images were available.</p>"
    cells = "".join(
        f'<figure><img alt="example {i}" src="{data_uri(example_panel(ex, names, min_score))}">'
        f"<figcaption>{html.escape(ex.title)} — left: ground truth, right: detections "
        f"(score &ge; {min_score:g})</figcaption></figure>"
        for i, ex in enumerate(examples))
    return f'<h2>Example detections</h2><div class="grid">{cells}</div>'


STYLE = """body{font-family:sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin:1em 0}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#eee}
td:first-child{text-align:left}
.grid{display:flex;flex-wrap:wrap;gap:12px}figure{margin:0}img{max-width:100%}.plot img{max-width:900px}"""


def render_report(*, title: str, metrics: dict[str, Any], rows: list[dict[str, Any]],
                  plots: dict[str, bytes], class_weights: list[dict[str, Any]],
                  examples: Sequence[Example], names: Sequence[str], min_score_threshold: float,
                  operating_points: tuple[str, Sequence[str], Sequence[Sequence[str]]] | None = None) -> str:
    """The report as one HTML string. plots: caption -> PNG bytes. operating_points: (sentence,
    header, rows) of the operating-point table."""
    op_html = ""
    if operating_points is not None:
        sentence, header, op_rows = operating_points
        op_html = (f"<h2>Operating points (per-class thresholds, IoU 0.5)</h2><p>{html.escape(sentence)}</p>"
                   f"{_table(header, op_rows)}")
    plot_html = "".join(f'<div class="plot"><h3>{html.escape(cap)}</h3><img alt="{html.escape(cap)}" '
                        f'src="{data_uri(png)}"></div>' for cap, png in plots.items())
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}'
            f"</title><style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
            f"{_metrics_section(metrics)}<h2>Per-class results (rarest first)</h2>"
            f"<p>Counts at min_score_threshold = {min_score_threshold:g}, IoU 0.5; op_*: at the class's "
            f"operating point.</p>{per_class_html(rows)}{op_html}"
            f"<h2>Plots</h2>{plot_html}{_weights_section(class_weights)}"
            f"{_examples_section(examples, names, min_score_threshold)}</body></html>\n")


def write_report(path: str | Path, **kwargs: Any) -> Path:
    """Render (see `render_report`) and write atomically; returns the path."""
    atomic_write_text(path, render_report(**kwargs))
    return Path(path)
