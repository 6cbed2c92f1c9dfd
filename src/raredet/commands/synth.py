"""`raredet synth`: write the synthetic rare-defects dataset (`raredet.data.synth`) and say what it holds."""

from __future__ import annotations

from raredet.data.synth import make_synthetic_dataset, parse_ratios


def synth(out: str, images: int, seed: int, ratios: str, image_size: int, num_shards: int) -> str:
    """Write the dataset into `out`; return a one-paragraph summary of its box counts per split.
    `ratios` is the `--ratios` text, `scratch:dent:crack`."""
    summary = make_synthetic_dataset(
        out,
        images=images,
        seed=seed,
        ratios=parse_ratios(ratios),
        image_size=image_size,
        num_shards=num_shards,
    )
    lines = [
        f"wrote {out}: pipeline.config, label_map.pbtxt, train/val TFRecords, train.json/val.json, images/"
    ]
    for split in ("train", "val"):
        counts = ", ".join(f"{n} {c}" for c, n in summary[split]["boxes"].items())
        lines.append(f"  {split}: {summary[split]['images']} images, boxes: {counts}")
    return "\n".join(lines)
