"""The config fixtures (tests/fixtures/configs) and variants of them, for the config and command tests."""

from __future__ import annotations

import warnings
from pathlib import Path

from raredet import config as cfg

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "configs"
WEIGHTED = FIXTURES / "weighted.config"


def load_quiet(path, **kw):
    """`config.load` without its not-acted-on warnings."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", cfg.ConfigWarning)
        return cfg.load(path, **kw)


def write_variant(tmp_path, old, new, name="pipeline.config"):
    """A copy of the weighted fixture (with its label map) where `old` is replaced by `new`."""
    text = WEIGHTED.read_text()
    assert old in text, old
    (tmp_path / "label_map.pbtxt").write_text((FIXTURES / "label_map.pbtxt").read_text())
    path = tmp_path / name
    path.write_text(text.replace(old, new, 1))
    return path
