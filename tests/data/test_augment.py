"""Augmentations and resizers: boxes by hand, per-box fields aligned, TF OD API names and defaults."""

from __future__ import annotations

import colorsys

import numpy as np
import pytest
from tests.helpers.examples import make_example

from raredet.data.augment import (
    AUGMENTATIONS,
    RandomCropImage,
    RandomHorizontalFlip,
    RandomRotation90,
    RandomVerticalFlip,
    adjust_brightness,
    adjust_contrast,
    build_augmentation,
    crop_example,
    hsv_to_rgb,
    rgb_to_hsv,
)


class AlwaysRng:
    """An rng whose random() is 0: every probability-gated op fires."""

    def random(self, size=None):
        return 0.0 if size is None else np.zeros(size)


def box_pixels(example: dict, index: int) -> np.ndarray:
    """The image pixels under box ``index`` (integer boxes only)."""
    x0, y0, x1, y1 = example["boxes"][index].astype(int)
    return example["image"][y0:y1, x0:x1]


def test_horizontal_flip_by_hand():
    ex = make_example()
    out = RandomHorizontalFlip()(ex, AlwaysRng())
    # width 6: x -> 6 - x, so (1, 0, 3, 2) -> (3, 0, 5, 2)
    np.testing.assert_array_equal(out["boxes"], [[3, 0, 5, 2], [0, 1, 6, 4]])
    np.testing.assert_array_equal(box_pixels(out, 0), box_pixels(ex, 0)[:, ::-1])


def test_vertical_flip_by_hand():
    ex = make_example()
    out = RandomVerticalFlip()(ex, AlwaysRng())
    np.testing.assert_array_equal(out["boxes"], [[1, 2, 3, 4], [0, 0, 6, 3]])
    np.testing.assert_array_equal(box_pixels(out, 0), box_pixels(ex, 0)[::-1])


def test_rotation90_moves_content_with_box():
    ex = make_example()
    out = RandomRotation90()(ex, AlwaysRng())
    assert out["image"].shape == (6, 4, 3)
    # Counter-clockwise: (x, y) -> (y, W - x); box (1, 0, 3, 2) -> (0, 3, 2, 5).
    np.testing.assert_array_equal(out["boxes"][0], [0, 3, 2, 5])
    np.testing.assert_array_equal(box_pixels(out, 0), np.rot90(box_pixels(ex, 0)))


def test_probability_zero_is_identity():
    ex = make_example()
    out = RandomHorizontalFlip(probability=0.0)(ex, np.random.default_rng(0))
    assert out is ex


def test_crop_drops_boxes_with_their_fields():
    ex = make_example(10, 10, boxes=((0, 0, 2, 2), (4, 4, 8, 8), (6, 6, 10, 10)))
    out = crop_example(ex, np.array([3, 3, 9, 9]), overlap_thresh=0.5, clip_boxes=True)
    # box 0 is outside; box 1 is inside whole; box 2 keeps 3x3 of 4x4 = 0.5625 >= 0.5
    np.testing.assert_array_equal(out["boxes"], [[1, 1, 5, 5], [3, 3, 6, 6]])
    assert out["labels"].tolist() == [1, 2]
    assert out["weights"].tolist() == [2.0, 3.0]
    assert out["is_crowd"].tolist() == [True, False]  # box 1 was the crowd box
    assert out["image"].shape == (6, 6, 3)
    out = crop_example(ex, np.array([3, 3, 9, 9]), overlap_thresh=0.6, clip_boxes=True)
    assert out["labels"].tolist() == [1]


def test_random_crop_respects_area_and_aspect_and_keeps_alignment():
    ex = make_example(50, 80, boxes=((10, 10, 30, 30), (50, 20, 70, 45)))
    op = RandomCropImage(min_object_covered=0.0, min_area=0.3, max_area=0.6, overlap_thresh=0.0)
    for seed in range(20):
        out = op(ex, np.random.default_rng(seed))
        h, w = out["image"].shape[:2]
        assert 0.3 * 4000 - 150 <= h * w <= 0.6 * 4000 + 150  # rounding of the sides
        assert 0.75 - 0.1 <= w / h <= 1.33 + 0.1
        # label i always has weight i + 1, whatever was dropped
        np.testing.assert_array_equal(out["weights"], out["labels"] + 1)
        assert (out["boxes"][:, 2:] <= [w, h]).all() and (out["boxes"] >= 0).all()


def test_pad_keeps_pixels_under_boxes():
    ex = make_example()
    out = build_augmentation("random_pad_image")(ex, np.random.default_rng(3))
    assert out["image"].shape[0] >= 4 and out["image"].shape[1] >= 6
    for i in range(2):
        np.testing.assert_array_equal(box_pixels(out, i), box_pixels(ex, i))


def test_hsv_matches_colorsys():
    rgb = np.random.default_rng(0).random((50, 3))
    hsv = rgb_to_hsv(rgb)
    expected = np.array([colorsys.rgb_to_hsv(*p) for p in rgb])
    np.testing.assert_allclose(hsv, expected, atol=1e-6)
    np.testing.assert_allclose(hsv_to_rgb(hsv), rgb, atol=1e-6)


def test_brightness_and_contrast_by_hand():
    img = np.array([[[0.2, 0.4, 0.6], [0.4, 0.6, 0.8]]])
    np.testing.assert_allclose(adjust_brightness(img, 0.1), img + 0.1)
    # per-channel means 0.3, 0.5, 0.7; factor 2 doubles the distance to them
    np.testing.assert_allclose(adjust_contrast(img, 2.0), [[[0.1, 0.3, 0.5], [0.5, 0.7, 0.9]]])


@pytest.mark.parametrize("name", sorted(AUGMENTATIONS))
def test_every_op_runs_and_keeps_fields_aligned(name):
    ex = make_example(32, 48, boxes=((4, 4, 20, 20), (24, 8, 44, 28)))
    out = build_augmentation(name)(ex, np.random.default_rng(1))
    assert out["image"].dtype == np.uint8 and out["image"].ndim == 3
    n = len(out["boxes"])
    assert all(len(out[k]) == n for k in ("labels", "weights", "is_crowd", "difficult"))
    np.testing.assert_array_equal(out["weights"], out["labels"] + 1)


def test_tf_od_api_defaults():
    assert build_augmentation("random_horizontal_flip").probability == 0.5
    crop = build_augmentation("random_crop_image")
    assert (crop.min_object_covered, crop.aspect_ratio_range, crop.area_range, crop.overlap_thresh) == (
        1.0,
        (0.75, 1.33),
        (0.1, 1.0),
        0.3,
    )
    assert build_augmentation("random_adjust_brightness").max_delta == 0.2
    assert build_augmentation("random_adjust_hue").max_delta == 0.02
    assert len(build_augmentation("ssd_random_crop").crops) == 7


def test_unknown_op_and_field_are_refused():
    with pytest.raises(ValueError, match="not supported; supported: .*random_horizontal_flip"):
        build_augmentation("random_zoom")
    with pytest.raises(ValueError, match="random_adjust_hue"):
        build_augmentation("random_adjust_hue", {"max_deltaa": 0.1})


def test_every_step_builds_from_its_proto_message_with_all_fields():
    """The constructors accept every field of the schema's messages (as builders pass them)."""
    from google.protobuf import text_format

    from raredet.builders import message_kwargs
    from raredet.protos import preprocessor_pb2

    texts = {
        "random_pad_image": "min_image_height: 40 min_image_width: 50 max_image_height: 60 "
        "max_image_width: 70 pad_color: [0.5, 0.5, 0.5]",
        "ssd_random_crop": "operations { min_object_covered: 0.0 min_aspect_ratio: 0.5 max_aspect_ratio: 2.0 "
        "min_area: 0.2 max_area: 1.0 overlap_thresh: 0.0 random_coef: 0.0 }",
        "random_jitter_boxes": "ratio: 0.1 jitter_mode: SHRINK",
    }
    for name, fields in texts.items():
        step = text_format.Parse(f"{name} {{ {fields} }}", preprocessor_pb2.PreprocessingStep())
        op = build_augmentation(name, message_kwargs(getattr(step, name)))
        out = op(make_example(32, 48, boxes=((4, 4, 20, 20),)), np.random.default_rng(0))
        assert out["image"].dtype == np.uint8
    assert op.range == (-1.0, 0.0)  # SHRINK
    for name in AUGMENTATIONS:  # empty messages: every default from the constructor
        build_augmentation(name, message_kwargs(getattr(preprocessor_pb2.PreprocessingStep(), name)))


def test_pad_color_is_in_pixel_units():
    ex = make_example()  # 4 x 6, box 1 is (0, 1, 6, 4)
    params = {
        "min_image_height": 8,
        "max_image_height": 8,
        "min_image_width": 10,
        "max_image_width": 10,
        "pad_color": [10.0, 20.0, 30.0],
    }
    out = build_augmentation("random_pad_image", params)(ex, np.random.default_rng(0))
    assert out["image"].shape == (8, 10, 3)
    ox, oy = int(out["boxes"][1, 0]), int(out["boxes"][1, 1]) - 1
    inside = np.zeros((8, 10), dtype=bool)
    inside[oy : oy + 4, ox : ox + 6] = True
    np.testing.assert_array_equal(out["image"][inside].reshape(4, 6, 3), ex["image"])
    assert (out["image"][~inside] == [10, 20, 30]).all()
