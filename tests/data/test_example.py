"""checked_annotations: boxes within 1 % of the image's size are rounding noise and clipped, anything
further out, inverted or not finite is an error naming the object; unmapped classes and bad weights too."""

from __future__ import annotations

import numpy as np
import pytest

from raredet.data.example import checked_annotations
from raredet.errors import DataError


def _check(boxes, labels=None, weights=None, label_desc=None):
    n = len(boxes)
    return checked_annotations(
        boxes=np.asarray(boxes, dtype=np.float32), labels=np.zeros(n, np.int64) if labels is None else labels,
        weights=np.ones(n, np.float32) if weights is None else np.asarray(weights, np.float32),
        is_crowd=np.zeros(n, bool), difficult=np.zeros(n, bool), height=100, width=200,
        where="f.json, image 7", label_desc=label_desc)


def test_boxes_within_the_tolerance_are_clipped_to_the_image():
    # 200 x 100 image: 1 % is 2 px in x and 1 px in y, so x may reach -2..202 and y -1..101.
    got = _check([[-2.0, -1.0, 202.0, 101.0], [-1.5, -0.5, 150.0, 100.5], [10, 20, 30, 40]])
    np.testing.assert_array_equal(got["boxes"], [[0, 0, 200, 100], [0, 0, 150, 100], [10, 20, 30, 40]])
    assert got["labels"].dtype == np.int64 and got["weights"].tolist() == [1.0, 1.0, 1.0]


@pytest.mark.parametrize(("box", "message"), [
    ([-2.5, 0, 10, 10], r"f\.json, image 7: bbox of object 1 .* lies outside the 200x100 image"),
    ([0, 0, 10, 101.5], r"bbox of object 1 .* lies outside the 200x100 image"),
    ([30, 0, 10, 10], r"bbox of object 1 has xmin > xmax or ymin > ymax \(\[30\.0, 0\.0, 10\.0, 10\.0\]"),
    ([0, float("nan"), 10, 10], r"bbox of object 1 is not finite"),
])
def test_boxes_beyond_the_tolerance_inverted_or_not_finite_name_the_object(box, message):
    with pytest.raises(DataError, match=message):
        _check([[0, 0, 5, 5], box])


def test_unmapped_classes_and_bad_weights_name_the_object():
    with pytest.raises(DataError, match=r"image 7: object 1 has class 'crak', which is not in the label map"):
        _check([[0, 0, 5, 5]] * 2, labels=np.array([0, -1]), label_desc=np.array(["dent", "crak"]))
    with pytest.raises(DataError, match=r"object 0 has class id 9, which is not in the label map"):
        _check([[0, 0, 5, 5]], labels=np.array([-1]), label_desc=np.array([9]))
    with pytest.raises(DataError, match=r"field 'weight' of object 1 is -1\.0; per-box weights must be"):
        _check([[0, 0, 5, 5]] * 2, weights=[1.0, -1.0])
    assert _check([[0, 0, 5, 5]], weights=[0.0])["weights"].tolist() == [0.0]  # 0: an ignore region
