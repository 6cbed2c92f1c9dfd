"""Custom losses named in the config: import, lookup, errors, and use inside DetectionLoss."""

import math
import sys
from pathlib import Path

import pytest
import torch

from raredet.losses import DetectionLoss, get_custom_loss, weighted_smooth_l1
from raredet.modeling.box_coder import FasterRcnnBoxCoder
from raredet.modeling.matcher import ArgMaxMatcher

HERE = str(Path(__file__).parent)


@pytest.fixture
def on_path(monkeypatch):
    monkeypatch.syspath_prepend(HERE)
    yield
    sys.modules.pop("custom_loss_module", None)


def test_custom_class_weighted_sigmoid_by_hand(on_path):
    fn = get_custom_loss("classification", "class_weighted_sigmoid", "custom_loss_module")
    anchors = torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]])
    batch = {
        "boxes": torch.tensor([[[0.0, 0, 10, 10], [20, 20, 30, 30]]]),
        "labels": torch.tensor([[1, 2]]),
        "weights": torch.tensor([[1.0, 1.0]]),
    }
    loss = DetectionLoss(
        matcher=ArgMaxMatcher(),
        box_coder=FasterRcnnBoxCoder(),
        classification_loss=fn,
        localization_loss=weighted_smooth_l1,
    )
    out = loss(
        {"cls_logits": torch.zeros(1, 3, 3), "box_deltas": torch.zeros(1, 3, 4), "anchors": anchors}, batch
    )
    # logits 0: 3 columns * log 2 per anchor, weighted 4 (class 1), 0.5 (class 2), 1 (background).
    assert out["classification_loss"].item() == pytest.approx(3 * math.log(2) * (4 + 0.5 + 1))


def test_wrong_module_names_module_and_loss():
    with pytest.raises(ValueError, match=r"'no_such_pkg\.losses'.*'my_loss'"):
        get_custom_loss("classification", "my_loss", "no_such_pkg.losses")


def test_wrong_name_lists_registered(on_path):
    with pytest.raises(ValueError, match=r"'nope'.*class_weighted_sigmoid"):
        get_custom_loss("classification", "nope", "custom_loss_module")
    with pytest.raises(ValueError, match="localization"):
        get_custom_loss("localization", "class_weighted_sigmoid", "custom_loss_module")


def test_custom_flags_background_column_and_decoded_boxes(on_path):
    cls_fn = get_custom_loss("classification", "plain_softmax", "custom_loss_module")
    loc_fn = get_custom_loss("localization", "center_distance", "custom_loss_module")
    anchors = torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30]])
    batch = {
        "boxes": torch.tensor([[[2.0, 0, 12, 10]]]),
        "labels": torch.tensor([[0]]),
        "weights": torch.tensor([[1.0]]),
    }
    loss = DetectionLoss(
        matcher=ArgMaxMatcher(),
        box_coder=FasterRcnnBoxCoder(),
        classification_loss=cls_fn,
        localization_loss=loc_fn,
    )
    out = loss(
        {"cls_logits": torch.zeros(1, 2, 2), "box_deltas": torch.zeros(1, 2, 4), "anchors": anchors}, batch
    )
    # 2 columns + background, logits 0: log 3 per anchor. Anchor 0 (IoU 8/12) is matched; decoded
    # box = the anchor, centre (5, 5) against (7, 5): squared distance 4.
    assert out["classification_loss"].item() == pytest.approx(2 * math.log(3))
    assert out["localization_loss"].item() == pytest.approx(4.0)
