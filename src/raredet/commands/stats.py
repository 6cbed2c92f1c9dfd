"""`raredet stats`: the training input's per-class counts, imbalance, automatic class weights and repeat
factors, as a table, JSON and a bar chart (the counting itself is `raredet.data.stats.compute_stats`)."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from raredet import builders
from raredet import config as config_lib
from raredet.builders.messages import field_value
from raredet.data.sampling import class_repeat_factors, image_repeat_factors
from raredet.data.stats import DatasetStats
from raredet.errors import ConfigError
from raredet.fileio import atomic_write, atomic_write_json, atomic_write_text
from raredet.losses import class_weights as class_weights_lib
from raredet.losses.class_weights import ClassWeight, format_class_weight_table, resolve_class_weights

AUTO_SCHEMES = tuple(class_weights_lib.AUTO_SCHEMES)  # the schemes the loss knows, in its order


def scheme_weights(stats: DatasetStats, beta: float = 0.999) -> dict[str, list[float]]:
    """The weight each automatic scheme would give each class (counts by boxes), via the losses'
    resolver so that what `stats` shows is exactly what training would use."""
    out = {}
    for scheme in AUTO_SCHEMES:
        resolved = resolve_class_weights(
            stats.names,
            stats.ids,
            stats.box_counts.tolist(),
            stats.image_counts.tolist(),
            {},
            auto_scheme=scheme,
            beta=beta,
        )
        out[scheme] = [w.weight for w in sorted(resolved, key=lambda w: w.index)]
    return out


def stats_summary(stats: DatasetStats, threshold: float = 0.001, beta: float = 0.999) -> dict[str, Any]:
    """A JSON-ready summary: per-class rows, totals, scheme weights (effective number with ``beta``)
    and repeat factors at ``threshold``."""
    weights = scheme_weights(stats, beta)
    class_r = class_repeat_factors(stats.image_counts, stats.num_images, threshold)
    image_r = image_repeat_factors(stats.image_classes, len(stats.names), threshold)
    total = max(stats.num_boxes, 1)
    rows = [
        {
            "index": c,
            "id": stats.ids[c],
            "name": stats.names[c],
            "boxes": int(stats.box_counts[c]),
            "images": int(stats.image_counts[c]),
            "share": float(stats.box_counts[c] / total),
            "median_box_size": None
            if np.isnan(stats.median_box_size[c])
            else float(stats.median_box_size[c]),
            "repeat_factor": float(class_r[c]),
            **{f"weight_{s.lower()}": weights[s][c] for s in AUTO_SCHEMES},
        }
        for c in range(len(stats.names))
    ]
    ratio = stats.imbalance_ratio
    return {
        "num_images": stats.num_images,
        "num_boxes": stats.num_boxes,
        "ignored_boxes": stats.ignored_boxes,
        "imbalance_ratio": None if not math.isfinite(ratio) else ratio,
        "empty_classes": [r["name"] for r in rows if r["boxes"] == 0],
        "repeat_factor_threshold": threshold,
        "effective_number_beta": beta,
        "images_per_epoch_with_repeat_factors": float(image_r.sum()),
        "classes": rows,
    }


def format_stats(summary: dict[str, Any], class_weights: Sequence[ClassWeight] = (),
                 weights_field: str = "model.ssd.loss.class_weights") -> str:
    """A plain-text table of :func:`stats_summary`, rarest class first; then ``class_weights`` (the
    table training will use) when given."""
    head = (
        f"{'class':<20}{'id':>5}{'boxes':>9}{'images':>9}{'share':>8}{'size':>7}{'repeat':>8}"
        f"{'w_inv':>8}{'w_sqrt':>8}{'w_eff':>8}"
    )
    lines = [head, "-" * len(head)]
    for r in sorted(summary["classes"], key=lambda r: r["boxes"]):
        size = "-" if r["median_box_size"] is None else f"{r['median_box_size']:.1f}"
        lines.append(
            f"{r['name'][:19]:<20}{r['id']:>5}{r['boxes']:>9}{r['images']:>9}{r['share']:>8.1%}{size:>7}"
            f"{r['repeat_factor']:>8.2f}{r['weight_inverse_frequency']:>8.3f}"
            f"{r['weight_sqrt_inverse_frequency']:>8.3f}{r['weight_effective_number']:>8.3f}"
        )
    ratio = summary["imbalance_ratio"]
    lines.append(
        f"{summary['num_images']} images, {summary['num_boxes']} boxes ({summary['ignored_boxes']} ignore "
        f"regions not counted); imbalance ratio {'inf' if ratio is None else f'{ratio:.1f}'} (most/least)"
    )
    lines.append(
        "size: median sqrt(w*h) in pixels; repeat: class repeat factor at threshold "
        f"{summary['repeat_factor_threshold']:g}; automatic weights from box counts, mean over boxes 1 "
        f"(w_inv: INVERSE_FREQUENCY, w_sqrt: SQRT_INVERSE_FREQUENCY, w_eff: EFFECTIVE_NUMBER (beta "
        f"{summary['effective_number_beta']:g}))"
    )
    if summary["empty_classes"]:
        lines.append(f"warning: no training boxes for: {', '.join(summary['empty_classes'])}")
    if class_weights:
        lines += ["", f"class weights training will use ({weights_field}):",
                  format_class_weight_table(class_weights)]
    return "\n".join(lines)


def plot_counts(summary: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Bar chart of boxes and images per class on a log scale, written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(summary["classes"], key=lambda r: -r["boxes"])
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * len(rows) + 2), 3.5))
    ax.bar(x - 0.2, [max(r["boxes"], 0.5) for r in rows], 0.4, label="boxes")
    ax.bar(x + 0.2, [max(r["images"], 0.5) for r in rows], 0.4, label="images")
    ax.set_yscale("log")
    ax.set_xticks(x, [r["name"] for r in rows], rotation=45, ha="right")
    ax.set_ylabel("count (log scale)")
    ax.legend()
    fig.tight_layout()
    try:
        return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    finally:
        plt.close(fig)


def write_stats(summary: dict[str, Any], out_dir: str | os.PathLike[str],
                class_weights: Sequence[ClassWeight] = (),
                weights_field: str = "model.ssd.loss.class_weights") -> list[Path]:
    """stats.json, stats.txt and class_counts.png into ``out_dir``; ``class_weights`` (the table
    training will use), when given, is in stats.json under "class_weights" and in stats.txt."""
    out = Path(out_dir)
    saved = dict(summary)
    if class_weights:
        saved["class_weights"] = [dataclasses.asdict(w) for w in class_weights]
    return [
        atomic_write_json(out / "stats.json", saved),
        atomic_write_text(out / "stats.txt", format_stats(summary, class_weights, weights_field) + "\n"),
        plot_counts(summary, out / "class_counts.png"),
    ]


def stats_for_config(
    pipeline_config_path: str | os.PathLike[str], out_dir: str | os.PathLike[str] | None
) -> str:
    """``raredet stats``: statistics of the training input of a pipeline.config, as a printable table;
    with ``out_dir``, also stats.json, stats.txt and class_counts.png there. When the config sets
    ``model.ssd.loss.class_weights``, the report ends with the table training will use (resolved by the
    same builder as ``raredet train``, on the same counts)."""
    loaded = config_lib.load(pipeline_config_path)
    reader_config = loaded.pipeline.train_input_reader
    if loaded.label_map is None:
        raise ConfigError(f"{pipeline_config_path}: train_input_reader.label_map_path is not set or missing")
    stats = builders.training_stats(loaded)
    if stats is None:
        raise ConfigError(f"{pipeline_config_path}: train_input_reader has no input reader; add one")
    sampling = reader_config.repeat_factor_sampling
    # Unset: the proto's default as written (0.001, not float32's 0.0010000000475), as before.
    threshold = sampling.threshold if reader_config.HasField("repeat_factor_sampling") \
        else field_value(sampling, "threshold")
    model = builders.model_message(loaded.pipeline)
    class_weights, weights_field, weights_set = builders.class_weights_field(model)
    auto = class_weights.auto
    beta = auto.beta if auto.HasField("beta") else field_value(auto, "beta")  # default as written: 0.999
    summary = stats_summary(stats, threshold, beta)
    table = builders.resolve_class_weight_table(loaded, stats) if weights_set else []
    if out_dir is not None:
        write_stats(summary, out_dir, table, weights_field)
    return format_stats(summary, table, weights_field)
