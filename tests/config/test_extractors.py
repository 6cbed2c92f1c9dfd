"""config.extractors: the names the config parser lists are exactly the ones the model builders build."""

from __future__ import annotations

import pytest

# The registries the builders dispatch `feature_extractor.type` on.
from raredet.builders.center_net import FEATURE_EXTRACTORS as CENTER_NET_REGISTRY
from raredet.builders.faster_rcnn import FEATURE_EXTRACTORS as FASTER_RCNN_REGISTRY
from raredet.builders.ssd import FEATURE_EXTRACTORS as SSD_REGISTRY
from raredet.config import parse_config
from raredet.config.extractors import (
    CENTER_NET_FEATURE_EXTRACTORS,
    FASTER_RCNN_FEATURE_EXTRACTORS,
    SSD_FEATURE_EXTRACTORS,
)
from raredet.errors import ConfigError


def test_names_are_the_registries_keys() -> None:
    assert sorted(SSD_FEATURE_EXTRACTORS) == sorted(SSD_REGISTRY)
    assert sorted(FASTER_RCNN_FEATURE_EXTRACTORS) == sorted(FASTER_RCNN_REGISTRY)
    assert sorted(CENTER_NET_FEATURE_EXTRACTORS) == sorted(CENTER_NET_REGISTRY)
    # b0-b7, five ResNets, three MobileNets; no name twice
    assert len(set(SSD_FEATURE_EXTRACTORS)) == len(SSD_FEATURE_EXTRACTORS) == 16
    assert len(set(FASTER_RCNN_FEATURE_EXTRACTORS)) == len(FASTER_RCNN_FEATURE_EXTRACTORS) == 7


@pytest.mark.parametrize("model", ["experimental_model", "yolo"])
def test_parse_error_lists_every_extractor(model: str, tmp_path) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(f"model {{ {model} {{ }} }}", tmp_path / "p.config")
    text = str(caught.value)
    assert text.startswith(f"{tmp_path / 'p.config'}:1:9: model.{model}: '{model}' ")
    ssd = ", ".join(sorted(SSD_REGISTRY))
    frcnn = ", ".join(sorted(FASTER_RCNN_REGISTRY))
    assert (f"feature_extractor.type one of {ssd}; Faster R-CNN: model {{ faster_rcnn {{ ... }} }} "
            f"with one of {frcnn} (a _keras suffix is accepted)") in text
    center_net = ", ".join(sorted(CENTER_NET_FEATURE_EXTRACTORS))
    assert f"and CenterNet: model {{ center_net {{ ... }} }} with one of {center_net}" in text
