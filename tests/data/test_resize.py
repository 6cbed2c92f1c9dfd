"""Resizers: output sizes and boxes by hand, the TF OD API's methods, the fixed size export asks for."""

from __future__ import annotations

import numpy as np
import pytest
from tests.helpers.examples import make_example

from raredet.data.resize import make_resizer


def test_resizers_by_hand():
    ex = make_example(40, 100, boxes=((10, 10, 50, 30),))
    fixed = make_resizer("fixed_shape_resizer", {"height": 20, "width": 20})(ex)
    assert fixed["image"].shape == (20, 20, 3) and fixed["scale"] == (0.5, 0.2)
    np.testing.assert_allclose(fixed["boxes"], [[2, 5, 10, 15]])
    # short side 40 -> 60 would make the long side 150 > 120, so the long side sets the scale: 1.2
    keep = make_resizer("keep_aspect_ratio_resizer", {"min_dimension": 60, "max_dimension": 120})(ex)
    assert keep["image"].shape == (48, 120, 3) and keep["image_size"] == (48, 120)
    padded = make_resizer(
        "keep_aspect_ratio_resizer", {"min_dimension": 60, "max_dimension": 120, "pad_to_max_dimension": True}
    )(ex)
    assert padded["image"].shape == (120, 120, 3) and padded["image_size"] == (48, 120)
    assert (padded["image"][48:] == 0).all()
    assert make_resizer("identity_resizer")(ex)["image"].shape == (40, 100, 3)
    with pytest.raises(ValueError, match="supported: fixed_shape_resizer"):
        make_resizer("bilinear")


def test_resizer_grayscale_and_method():
    ex = make_example(2, 2, boxes=((0, 0, 1, 1),))
    ex["image"] = np.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [255, 255, 255]]], dtype=np.uint8)
    out = make_resizer(
        "fixed_shape_resizer",
        {"height": 4, "width": 4, "resize_method": "NEAREST_NEIGHBOR", "convert_to_grayscale": True},
    )(ex)
    # ITU-R 601 luma of pure red, green, blue: 76, 150, 29; nearest neighbour doubles each pixel
    assert out["image"][:, :, 0].tolist() == [[76, 76, 150, 150]] * 2 + [[29, 29, 255, 255]] * 2
    assert (out["image"][..., 0] == out["image"][..., 2]).all()
    with pytest.raises(ValueError, match="resize_method"):
        make_resizer("fixed_shape_resizer", {"resize_method": "LANCZOS"})


def test_fixed_size_is_the_input_size_whatever_the_image():
    fixed = make_resizer("fixed_shape_resizer", {"height": 96, "width": 128})
    keep = make_resizer("keep_aspect_ratio_resizer", {"min_dimension": 300, "max_dimension": 512})
    padded = make_resizer("keep_aspect_ratio_resizer", {"max_dimension": 512, "pad_to_max_dimension": True})
    assert fixed.fixed_size == (96, 128)
    assert keep.fixed_size is None  # 300 x 450 for a 200 x 300 image; 171 x 512 for 200 x 600 (512 / 600)
    assert keep.output_size(200, 300) == (300, 450) and keep.output_size(200, 600) == (171, 512)
    assert padded.fixed_size == (512, 512)
    assert make_resizer("identity_resizer").fixed_size is None
