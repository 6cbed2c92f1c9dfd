"""`raredet synth`: write the synthetic rare-defects dataset (`raredet.data.synth`) and say what it holds."""

from __future__ import annotations

from raredet.data.synth import CLASS_NAMES, make_synthetic_dataset
from raredet.errors import ConfigError


def parse_ratios(text: str) -> tuple[float, ...]:
    """``"100:20:3"`` → (100.0, 20.0, 3.0); one positive number per class."""
    try:
        ratios = tuple(float(p) for p in text.split(":"))
    except ValueError:
        ratios = ()
    if len(ratios) != len(CLASS_NAMES) or min(ratios) <= 0:
        raise ConfigError(
            f"--ratios {text!r}: give {len(CLASS_NAMES)} positive numbers a:b:c for "
            f"{':'.join(CLASS_NAMES)}, e.g. 100:20:3"
        )
    return ratios


def synth(out: str, images: int, seed: int, ratios: str, image_size: int, num_shards: int) -> str:
    """Write the dataset into `out`; return a one-paragraph summary of its box counts per split.
    `ratios` is the `--ratios` text, `scratch:dent:crack`."""
    try:
        summary = make_synthetic_dataset(out, images=images, seed=seed, ratios=parse_ratios(ratios),
                                         image_size=image_size, num_shards=num_shards)
    except ValueError as err:  # the flags' values (--images, --image_size): a user error, not a crash
        raise ConfigError(str(err)) from err
    lines = [
        f"wrote {out}: pipeline.config, label_map.pbtxt, train/val TFRecords, train.json/val.json, images/"
    ]
    for split in ("train", "val"):
        counts = ", ".join(f"{n} {c}" for c, n in summary[split]["boxes"].items())
        lines.append(f"  {split}: {summary[split]['images']} images, boxes: {counts}")
    return "\n".join(lines)
