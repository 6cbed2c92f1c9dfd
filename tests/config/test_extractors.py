"""config.extractors: the names the config parser lists are exactly the ones the model builders build."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

import pytest

from raredet.config import parse_config
from raredet.config.extractors import FASTER_RCNN_FEATURE_EXTRACTORS, SSD_FEATURE_EXTRACTORS
from raredet.errors import ConfigError


def _registry(*modules: str) -> Mapping[str, Any]:
    """The `FEATURE_EXTRACTORS` dict the model is built from, in the first of `modules` that has it: the
    registries move from modeling/ to builders/ (issue #30 item 1), and this test follows them."""
    for name in modules:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError:
            continue
        if hasattr(module, "FEATURE_EXTRACTORS"):
            return module.FEATURE_EXTRACTORS
    raise AssertionError(f"no FEATURE_EXTRACTORS in {modules}")


SSD_REGISTRY = _registry("raredet.builders.ssd", "raredet.modeling.ssd")
FASTER_RCNN_REGISTRY = _registry("raredet.builders.faster_rcnn", "raredet.modeling.faster_rcnn")


def test_names_are_the_registries_keys() -> None:
    assert sorted(SSD_FEATURE_EXTRACTORS) == sorted(SSD_REGISTRY)
    assert sorted(FASTER_RCNN_FEATURE_EXTRACTORS) == sorted(FASTER_RCNN_REGISTRY)
    # b0-b7, five ResNets, three MobileNets; no name twice
    assert len(set(SSD_FEATURE_EXTRACTORS)) == len(SSD_FEATURE_EXTRACTORS) == 16
    assert len(set(FASTER_RCNN_FEATURE_EXTRACTORS)) == len(FASTER_RCNN_FEATURE_EXTRACTORS) == 6


@pytest.mark.parametrize("model", ["center_net", "yolo"])
def test_parse_error_lists_every_extractor(model: str, tmp_path) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(f"model {{ {model} {{ }} }}", tmp_path / "p.config")
    text = str(caught.value)
    assert text.startswith(f"{tmp_path / 'p.config'}:1:9: model.{model}: '{model}' ")
    ssd = ", ".join(sorted(SSD_REGISTRY))
    frcnn = ", ".join(sorted(FASTER_RCNN_REGISTRY))
    assert (f"feature_extractor.type one of {ssd}, and Faster R-CNN: model {{ faster_rcnn {{ ... }} }} "
            f"with one of {frcnn} (a _keras suffix is accepted)") in text
