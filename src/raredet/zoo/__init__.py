"""The 40 configs of the TF2 detection model zoo, verbatim (configs/, provenance and licence in its
README.md), and their names as the zoo names its models.

A model's *name* is its config's stem without the COCO-17 training suffix, as the zoo's table and its
checkpoint tarballs name it: ``ssd_mobilenet_v2_fpnlite_320x320`` for
``ssd_mobilenet_v2_fpnlite_320x320_coco17_tpu-8.config``. The full stem is accepted too.
"""

from __future__ import annotations

import re
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
_TRAINING_SUFFIX = re.compile(r"_coco17_(?:tpu|gpu)-\d+$")


def model_name(stem: str) -> str:
    """The zoo's model name for a config stem: the stem less its `_coco17_tpu-8`-like suffix."""
    return _TRAINING_SUFFIX.sub("", stem)


def model_names() -> dict[str, Path]:
    """Model name -> its zoo config, for every config in CONFIG_DIR, sorted by name."""
    configs = {model_name(p.stem): p for p in CONFIG_DIR.glob("*.config")}
    return dict(sorted(configs.items()))


def config_path(name: str) -> Path:
    """The zoo config of model `name` (a model name or a full config stem, `.config` optional).

    Raises ValueError naming every valid model name when `name` is not one."""
    names = model_names()
    stem = name.removesuffix(".config")
    if stem in names:
        return names[stem]
    by_stem = {p.stem: p for p in names.values()}
    if stem in by_stem:
        return by_stem[stem]
    raise ValueError(f"unknown zoo model {name!r}; the TF2 zoo's models are: " + ", ".join(names))
