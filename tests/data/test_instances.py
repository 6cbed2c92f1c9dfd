"""Instance masks and keypoints: read from TF records and COCO JSON, moved by flips, crops, pads and
resizes, padded by collate. Every expected pixel and coordinate is worked out by hand in the comments.

The image is 8x8 with one object: its mask is the 4x4 square of rows 2..5, columns 1..4; its three
keypoints are (x, y) = (1, 2), (5, 6) and an unlabelled one (visibility 0).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format
from PIL import Image
from pycocotools import mask as pycoco_mask

from raredet.builders.data import build_augmentations, build_reader
from raredet.data import augment, instances
from raredet.data.coco import CocoReader
from raredet.data.dataset import collate
from raredet.data.resize import FixedShapeResizer, KeepAspectRatioResizer
from raredet.data.tfrecord import TFRecordReader, encode_example, write_tfrecord
from raredet.errors import ConfigError, DataError
from raredet.protos import input_reader_pb2, train_pb2

SQUARE = np.zeros((8, 8), dtype=np.uint8)
SQUARE[2:6, 1:5] = 1


def _png(mask: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(mask * 255).save(buffer, format="PNG")
    return buffer.getvalue()


def _record(encode_image, **overrides) -> bytes:
    features = {
        "image/encoded": encode_image(8, 8),
        "image/format": "png",
        "image/height": 8,
        "image/width": 8,
        "image/object/bbox/xmin": [1 / 8], "image/object/bbox/ymin": [2 / 8],
        "image/object/bbox/xmax": [5 / 8], "image/object/bbox/ymax": [6 / 8],
        "image/object/class/label": [1],
        "image/object/mask": [_png(SQUARE)],
        # Normalised: (1, 2) and (5, 6) pixels are (1/8, 2/8) and (5/8, 6/8); the third is unlabelled.
        "image/object/keypoint/x": [1 / 8, 5 / 8, 0.0],
        "image/object/keypoint/y": [2 / 8, 6 / 8, 0.0],
        "image/object/keypoint/visibility": [2, 1, 0],
    }
    features.update(overrides)
    return encode_example(features)


def _reader(tmp_path, label_map, record: bytes, **kwargs) -> TFRecordReader:
    path = write_tfrecord(tmp_path / "a.tfrecord", [record])
    kwargs = {"load_instance_masks": True, "mask_type": "PNG_MASKS", "num_keypoints": 3, **kwargs}
    return TFRecordReader([path], label_map, **kwargs)


NAN = np.nan
KEYPOINTS = np.array([[[1, 2], [5, 6], [NAN, NAN]]], dtype=np.float32)


def test_tfrecord_png_masks_and_keypoints(tmp_path, label_map, encode_image) -> None:
    example = _reader(tmp_path, label_map, _record(encode_image)).example(0)
    assert example["masks"].dtype == np.uint8
    np.testing.assert_array_equal(example["masks"], SQUARE[None])
    np.testing.assert_array_equal(example["keypoints"], KEYPOINTS)  # NaN compares equal here
    # Visibility 2 and 1 are both "labelled" (TF's decoder); 0 is not.
    np.testing.assert_array_equal(example["keypoint_visibilities"], [[True, True, False]])


def test_tfrecord_numerical_masks(tmp_path, label_map, encode_image) -> None:
    values = (SQUARE * 0.7).ravel().tolist()  # any value > 0 is in the mask
    record = _record(encode_image, **{"image/object/mask": values})
    example = _reader(tmp_path, label_map, record, mask_type="NUMERICAL_MASKS").example(0)
    np.testing.assert_array_equal(example["masks"], SQUARE[None])


def test_nothing_asked_nothing_read(tmp_path, label_map, encode_image) -> None:
    path = write_tfrecord(tmp_path / "a.tfrecord", [_record(encode_image)])
    example = TFRecordReader([path], label_map).example(0)
    assert not set(instances.INSTANCE_KEYS) & set(example)


def test_keypoints_without_visibility_are_labelled_unless_nan(tmp_path, label_map, encode_image) -> None:
    record = _record(encode_image, **{"image/object/keypoint/visibility": np.zeros(0, dtype=np.int64),
                                      "image/object/keypoint/x": [1 / 8, 5 / 8, float("nan")]})
    example = _reader(tmp_path, label_map, record).annotations(0)
    np.testing.assert_array_equal(example["keypoint_visibilities"], [[True, True, False]])


@pytest.mark.parametrize(("overrides", "message"), [
    ({"image/object/mask": [_png(np.zeros((4, 8), dtype=np.uint8))]},
     r"a.tfrecord, record 0: field 'image/object/mask' value 0 is 8x4 pixels, the image is 8x8"),
    ({"image/object/mask": [b"not a png"]}, r"record 0: field 'image/object/mask' value 0 cannot be decoded"),
    ({"image/object/mask": [_png(SQUARE), _png(SQUARE)]},
     r"record 0: field 'image/object/mask' has 2 PNG masks for 1 boxes"),
    ({"image/object/keypoint/x": [0.1, 0.2]},
     r"record 0: field 'image/object/keypoint/x' has 2 values; 1 objects with num_keypoints 3 need 3"),
    ({"image/object/mask": [0.0] * 10},
     r"record 0: field 'image/object/mask' is a float_list but the input reader's mask_type is PNG_MASKS"),
])
def test_bad_records_name_the_record_and_field(tmp_path, label_map, encode_image, overrides, message) -> None:
    reader = _reader(tmp_path, label_map, _record(encode_image, **overrides))
    with pytest.raises(DataError, match=message):
        reader.example(0)


# ---- COCO JSON -------------------------------------------------------------------------------------


def _coco(tmp_path, label_map, annotations: list[dict], **kwargs) -> CocoReader:
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    data = {"images": [{"id": 7, "file_name": "a.png", "height": 8, "width": 8}],
            "categories": [{"id": 1, "name": "cat"}],
            "annotations": [{"id": k + 1, "image_id": 7, "category_id": 1, "bbox": [1, 2, 4, 4], **a}
                            for k, a in enumerate(annotations)]}
    (tmp_path / "a.json").write_text(json.dumps(data))
    return CocoReader(tmp_path / "a.json", label_map, **kwargs)


def test_coco_polygon_rle_and_crowd_rle(tmp_path, label_map) -> None:
    # The square's outline as a polygon, and the same square as an uncompressed RLE (column-major runs,
    # zeros first): column 0 and rows 0..1 of column 1 are 10 zeros, then rows 2..5 are 4 ones; rows
    # 6..7 of one column and 0..1 of the next are 4 zeros, 4 ones, ... up to column 4; the rest, rows
    # 6..7 of column 4 and columns 5..7, is 2 + 24 = 26 zeros (10 + 4*4 + 3*4 + 26 = 64 pixels).
    counts = [10, 4, 4, 4, 4, 4, 4, 4, 26]
    # The compressed form of the same runs, as COCO writes it (pycocotools' encoding, an independent one).
    compressed = pycoco_mask.encode(np.asfortranarray(SQUARE))["counts"].decode()
    anns = [{"segmentation": [[1, 2, 5, 2, 5, 6, 1, 6]]},
            {"segmentation": {"size": [8, 8], "counts": counts}, "iscrowd": 1},
            {"segmentation": {"size": [8, 8], "counts": compressed}}]
    example = _coco(tmp_path, label_map, anns, load_instance_masks=True).example(0)
    np.testing.assert_array_equal(example["masks"], np.stack([SQUARE, SQUARE, SQUARE]))
    assert example["is_crowd"].tolist() == [False, True, False]


def test_coco_keypoints(tmp_path, label_map) -> None:
    anns = [{"keypoints": [1, 2, 2, 5, 6, 1, 0, 0, 0]}, {}]  # the second object has none
    example = _coco(tmp_path, label_map, anns, num_keypoints=3).annotations(0)
    np.testing.assert_array_equal(example["keypoints"], np.concatenate([KEYPOINTS, np.full((1, 3, 2), NAN)]))
    np.testing.assert_array_equal(example["keypoint_visibilities"], [[True, True, False], [False] * 3])


@pytest.mark.parametrize(("ann", "kwargs", "message"), [
    ({"keypoints": [1, 2, 2]}, {"num_keypoints": 3},
     r"a.json, image id 7: annotation 1: field 'keypoints' has 3 values; num_keypoints 3 needs 9"),
    ({}, {"load_instance_masks": True},
     r"image id 7: annotation 1: field 'segmentation' is missing or not polygons / RLE"),
    ({"segmentation": {"size": [4, 4], "counts": [16]}}, {"load_instance_masks": True},
     r"annotation 1: field 'segmentation' is an RLE of size \[4, 4\]; the image is 8x8"),
])
def test_bad_coco_names_the_annotation(tmp_path, label_map, ann, kwargs, message) -> None:
    reader = _coco(tmp_path, label_map, [ann], **kwargs)
    with pytest.raises(DataError, match=message):
        reader.example(0)


# ---- moved with the image ------------------------------------------------------------------------


def _example(tmp_path, label_map, encode_image) -> dict:
    return _reader(tmp_path, label_map, _record(encode_image)).example(0)


def test_horizontal_flip_mirrors_and_permutes(tmp_path, label_map, encode_image) -> None:
    flipped = augment.RandomHorizontalFlip([0, 2, 1], probability=1.0)(
        _example(tmp_path, label_map, encode_image), np.random.default_rng(0))
    # Columns 1..4 of 8 mirror to 8-1-4 .. 8-1-1 = 3..6.
    expected = np.zeros((8, 8), dtype=np.uint8)
    expected[2:6, 3:7] = 1
    np.testing.assert_array_equal(flipped["masks"], expected[None])
    # x -> 8 - x, then keypoint j is the input's keypoint perm[j]: [kp0, kp2, kp1].
    np.testing.assert_array_equal(flipped["keypoints"], [[[7, 2], [NAN, NAN], [3, 6]]])
    np.testing.assert_array_equal(flipped["keypoint_visibilities"], [[True, False, True]])
    np.testing.assert_array_equal(flipped["boxes"], [[3, 2, 7, 6]])


def test_flip_permutation_of_the_wrong_length_is_refused(tmp_path, label_map, encode_image) -> None:
    op = augment.RandomHorizontalFlip([1, 0], probability=1.0)
    with pytest.raises(ValueError, match=r"keypoint_flip_permutation \[1, 0\] is not a permutation of the 3"):
        op(_example(tmp_path, label_map, encode_image), np.random.default_rng(0))
    train = text_format.Parse("data_augmentation_options { random_horizontal_flip { "
                              "keypoint_flip_permutation: [1, 0] } }", train_pb2.TrainConfig())
    with pytest.raises(ConfigError, match=r"random_horizontal_flip.keypoint_flip_permutation: \[1, 0\] "
                                          r"is not a permutation of the 3 keypoints \(train_input_reader"):
        build_augmentations(train, num_keypoints=3)


def test_resize_doubles_masks_and_keypoints(tmp_path, label_map, encode_image) -> None:
    resized = FixedShapeResizer(16, 16)(_example(tmp_path, label_map, encode_image))
    # Nearest as the TF OD API (no half-pixel centres): output row i reads input row floor(i / 2).
    expected = np.zeros((16, 16), dtype=np.uint8)
    expected[4:12, 2:10] = 1
    np.testing.assert_array_equal(resized["masks"], expected[None])
    np.testing.assert_array_equal(resized["keypoints"], [[[2, 4], [10, 12], [NAN, NAN]]])


def test_resize_by_three_quarters_masks_pick_nearest_rows(tmp_path, label_map, encode_image) -> None:
    # 8 -> 6: output index i reads floor(i * 8 / 6) = 0, 1, 2, 4, 5, 6 for i = 0..5.
    # Rows 2..5 are in the mask: outputs 2 (row 2), 3 (row 4), 4 (row 5); columns 1..4: outputs 1, 2, 3.
    resized = FixedShapeResizer(6, 6)(_example(tmp_path, label_map, encode_image))
    expected = np.zeros((6, 6), dtype=np.uint8)
    expected[2:5, 1:4] = 1
    np.testing.assert_array_equal(resized["masks"], expected[None])
    np.testing.assert_allclose(resized["keypoints"][0, :2], [[0.75, 1.5], [3.75, 4.5]])


GEOMETRY = Path(__file__).resolve().parents[1] / "fixtures" / "masks" / "geometry.json"


def _geometry_example() -> tuple[dict, dict]:
    """tests/fixtures/masks/make_geometry.py: the TF OD API's preprocessor on a 7 x 9 image."""
    ref = json.loads(GEOMETRY.read_text())
    kp_yx = np.array(ref["keypoints_yx"], dtype=np.float64).reshape(2, 3, 2)  # None -> NaN
    example = {"image": np.zeros((7, 9, 3), dtype=np.uint8), "masks": np.array(ref["masks"], dtype=np.uint8),
               "boxes": np.zeros((2, 4), dtype=np.float32), "labels": np.zeros(2, dtype=np.int64),
               "keypoints": (kp_yx[..., ::-1] * [9, 7]).astype(np.float32),
               "keypoint_visibilities": np.array(ref["visibilities"])}
    return example, ref


@pytest.mark.parametrize("key", ["resized_10x6", "resized_5x13", "resize_to_range_11_20"])
def test_mask_resizes_equal_the_tf_od_apis(key) -> None:
    example, ref = _geometry_example()
    expected = np.array(ref[key], dtype=np.uint8)
    if key.startswith("resize_to_range"):
        resized = KeepAspectRatioResizer(11, 20)(example)
    else:
        resized = FixedShapeResizer(*expected.shape[1:])(example)
    np.testing.assert_array_equal(resized["masks"], expected)


@pytest.mark.parametrize(("prefix", "op", "size"), [
    ("vflipped", augment.RandomVerticalFlip([1, 0, 2], probability=1.0), (9, 7)),
    ("rotated", augment.RandomRotation90([2, 0, 1], probability=1.0), (7, 9)),  # 9 x 7 after the turn
])
def test_vertical_flip_and_rotation_equal_the_tf_od_apis(prefix, op, size) -> None:
    example, ref = _geometry_example()
    out = op(example, np.random.default_rng(0))
    np.testing.assert_array_equal(out["masks"], np.array(ref[f"{prefix}_masks"], dtype=np.uint8))
    kp_yx = np.array(ref[f"{prefix}_keypoints_yx"], dtype=np.float64).reshape(2, 3, 2)
    np.testing.assert_allclose(out["keypoints"], kp_yx[..., ::-1] * size, rtol=1e-6, atol=1e-6)


def test_masks_back_to_the_original_size_as_tf_evaluation() -> None:
    _, ref = _geometry_example()
    back = instances.resize_masks(np.array(ref["resized_10x6"], dtype=np.uint8), 7, 9, align_corners=True)
    np.testing.assert_array_equal(back, np.array(ref["resized_10x6_back_to_7x9_align_corners"]))


def test_horizontal_flip_equals_the_tf_od_apis() -> None:
    example, ref = _geometry_example()
    flipped = augment.RandomHorizontalFlip([0, 2, 1], probability=1.0)(example, np.random.default_rng(0))
    np.testing.assert_array_equal(flipped["masks"], np.array(ref["flipped_masks"], dtype=np.uint8))
    kp_yx = np.array(ref["flipped_keypoints_yx"], dtype=np.float64).reshape(2, 3, 2)
    np.testing.assert_allclose(flipped["keypoints"], kp_yx[..., ::-1] * [9, 7], rtol=1e-6)
    np.testing.assert_array_equal(flipped["keypoint_visibilities"], ref["flipped_visibilities"])


def test_keep_aspect_ratio_pad_pads_masks(tmp_path, label_map, encode_image) -> None:
    resizer = KeepAspectRatioResizer(8, 10, pad_to_max_dimension=True)
    out = resizer(_example(tmp_path, label_map, encode_image))
    assert out["masks"].shape == (1, 10, 10)
    np.testing.assert_array_equal(out["masks"][0, :8, :8], SQUARE)
    assert out["masks"][0, 8:].sum() == 0 and out["masks"][0, :, 8:].sum() == 0


def test_crop_cuts_masks_and_drops_keypoints_outside(tmp_path, label_map, encode_image) -> None:
    # Window x 2..8, y 0..5 (6 wide, 5 high): the square keeps rows 2..4, columns 2..4 -> 0..2 in the crop.
    out = augment.crop_example(_example(tmp_path, label_map, encode_image), np.array([2, 0, 8, 5]),
                               overlap_thresh=0.0, clip_boxes=True)
    expected = np.zeros((5, 6), dtype=np.uint8)
    expected[2:5, 0:3] = 1
    np.testing.assert_array_equal(out["masks"], expected[None])
    # (1, 2) -> (-1, 2): left of the window; (5, 6) -> (3, 6): below it (height 5). Both become absent.
    np.testing.assert_array_equal(out["keypoints"], np.full((1, 3, 2), NAN))
    np.testing.assert_array_equal(out["keypoint_visibilities"], [[False] * 3])


def test_crop_keeps_keypoints_inside(tmp_path, label_map, encode_image) -> None:
    out = augment.crop_example(_example(tmp_path, label_map, encode_image), np.array([1, 1, 8, 8]),
                               overlap_thresh=0.0, clip_boxes=True)
    np.testing.assert_array_equal(out["keypoints"], [[[0, 1], [4, 5], [NAN, NAN]]])
    np.testing.assert_array_equal(out["keypoint_visibilities"], [[True, True, False]])


def test_dropped_boxes_take_their_masks_and_keypoints(tmp_path, label_map, encode_image) -> None:
    out = augment.keep_boxes(_example(tmp_path, label_map, encode_image), np.array([False]))
    assert out["masks"].shape == (0, 8, 8) and out["keypoints"].shape == (0, 3, 2)
    assert out["keypoint_visibilities"].shape == (0, 3)


def test_pad_moves_masks_and_keypoints(tmp_path, label_map, encode_image) -> None:
    op = augment.RandomPadImage(min_image_height=10, min_image_width=12, max_image_height=10,
                                max_image_width=12)
    rng = np.random.default_rng(3)
    out = op(_example(tmp_path, label_map, encode_image), rng)
    oy, ox = (int(v) for v in out["boxes"][0, [1, 0]] - np.array([2, 1]))  # the offset drawn
    assert out["masks"].shape == (1, 10, 12)
    expected = np.zeros((10, 12), dtype=np.uint8)
    expected[2 + oy:6 + oy, 1 + ox:5 + ox] = 1
    np.testing.assert_array_equal(out["masks"], expected[None])
    np.testing.assert_array_equal(out["keypoints"][0, :2], [[1 + ox, 2 + oy], [5 + ox, 6 + oy]])


def test_every_geometric_op_keeps_instances_aligned(tmp_path, label_map, encode_image) -> None:
    example = _example(tmp_path, label_map, encode_image)
    for name, op_class in augment.AUGMENTATIONS.items():
        out = op_class()(example, np.random.default_rng(1))
        n = len(out["labels"])
        assert out["masks"].shape == (n, *out["image"].shape[:2]), name
        assert out["keypoints"].shape == (n, 3, 2) and out["keypoint_visibilities"].shape == (n, 3), name
        # A visible keypoint is finite and inside the image; an absent one is NaN.
        kp, vis = out["keypoints"], out["keypoint_visibilities"]
        assert np.isfinite(kp[vis]).all() and np.isnan(kp[~vis]).all(), name


def test_collate_pads_masks_and_keypoints(tmp_path, label_map, encode_image) -> None:
    big = _example(tmp_path, label_map, encode_image)
    small = dict(big, image=big["image"][:6, :4], masks=big["masks"][:0, :6, :4],
                 keypoints=big["keypoints"][:0], keypoint_visibilities=big["keypoint_visibilities"][:0])
    for key in ("boxes", "labels", "weights", "is_crowd", "difficult"):
        small[key] = big[key][:0]
    batch = collate([small, big])
    assert batch["masks"].shape == (2, 1, 8, 8) and batch["masks"].dtype.is_floating_point is False
    assert batch["masks"][0].sum() == 0
    np.testing.assert_array_equal(batch["masks"][1].numpy(), SQUARE[None])
    assert batch["keypoints"].shape == (2, 1, 3, 2) and np.isnan(batch["keypoints"][0].numpy()).all()
    np.testing.assert_array_equal(batch["keypoints"][1].numpy(), KEYPOINTS)
    assert batch["keypoint_visibilities"].tolist() == [[[False] * 3], [[True, True, False]]]


def test_builder_passes_the_instance_fields(tmp_path, label_map, encode_image) -> None:
    path = write_tfrecord(tmp_path / "a.tfrecord", [_record(encode_image)])
    msg = text_format.Parse(f'load_instance_masks: true mask_type: PNG_MASKS num_keypoints: 3 '
                            f'tf_record_input_reader {{ input_path: "{path}" }}',
                            input_reader_pb2.InputReader())
    example = build_reader(msg, label_map, "train_input_reader").example(0)
    np.testing.assert_array_equal(example["masks"], SQUARE[None])
    assert example["keypoints"].shape == (1, 3, 2)
    voc = text_format.Parse('num_keypoints: 3 voc_input_reader { root: "x" }',
                            input_reader_pb2.InputReader())
    with pytest.raises(ConfigError, match="voc_input_reader: load_instance_masks / num_keypoints: "
                                          "Pascal VOC"):
        build_reader(voc, label_map, "train_input_reader")


def test_absolute_pad_stays_below_the_maximum_padding(tmp_path, label_map, encode_image) -> None:
    # max_height_padding 3, max_width_padding 1: heights 8..10 (padding 0, 1 or 2), width 8 (padding 0).
    op = augment.RandomAbsolutePadImage(max_height_padding=3, max_width_padding=1)
    example = _example(tmp_path, label_map, encode_image)
    shapes = {op(example, np.random.default_rng(seed))["masks"].shape for seed in range(40)}
    assert shapes == {(1, 8, 8), (1, 9, 8), (1, 10, 8)}


def test_masks_are_decoded_at_full_resolution(tmp_path, label_map, encode_image) -> None:
    # A JPEG with a draft size of 2x2 decodes at a quarter (Pillow's draft); with masks the reader
    # decodes the whole image instead, so the masks are resized once, from their stored size.
    record = _record(encode_image, **{"image/encoded": encode_image(8, 8, "JPEG"), "image/format": "jpeg"})
    boxes_only = _reader(tmp_path, label_map, record, load_instance_masks=False).example(0, draft_size=(2, 2))
    assert boxes_only["image"].shape[:2] == (2, 2)
    # Keypoints follow the reduced decode: (1, 2) and (5, 6) times 1/4.
    np.testing.assert_array_equal(boxes_only["keypoints"][0, :2], [[0.25, 0.5], [1.25, 1.5]])
    example = _reader(tmp_path, label_map, record).example(0, draft_size=(2, 2))
    assert example["image"].shape[:2] == (8, 8)
    np.testing.assert_array_equal(example["masks"], SQUARE[None])


def test_records_read_as_the_tf_od_api_decodes_them(label_map) -> None:
    # tests/fixtures/masks/make_decoded.py: TF 2.15.1's TfExampleDecoder on the same two records.
    fixtures = Path(__file__).resolve().parents[1] / "fixtures" / "masks"
    ref = json.loads((fixtures / "decoded.json").read_text())
    reader = TFRecordReader([fixtures / "decoded.tfrecord"], label_map, load_instance_masks=True,
                            mask_type="PNG_MASKS", num_keypoints=3)
    size = np.array([ref["width"], ref["height"]], dtype=np.float32)
    for i, expected in enumerate(ref["records"]):
        example = reader.example(i)
        np.testing.assert_array_equal(example["masks"], np.array(expected["masks"], dtype=np.uint8))
        yx = np.array(expected["keypoints_yx"], dtype=np.float64)  # None -> NaN
        np.testing.assert_allclose(example["keypoints"], yx[..., ::-1] * size, rtol=1e-6)
        np.testing.assert_array_equal(example["keypoint_visibilities"], expected["visibilities"])


def test_areas_are_read_with_instances(tmp_path, label_map, encode_image) -> None:
    with_area = _reader(tmp_path, label_map, _record(encode_image, **{"image/object/area": [12.5]}))
    assert with_area.annotations(0)["area"].tolist() == [12.5]
    assert _reader(tmp_path, label_map, _record(encode_image)).annotations(0)["area"].tolist() == [0.0]
    bad = _reader(tmp_path, label_map, _record(encode_image, **{"image/object/area": [1.0, 2.0]}))
    with pytest.raises(DataError, match=r"record 0: field 'image/object/area' has 2 values for 1 objects"):
        bad.annotations(0)
    coco = _coco(tmp_path, label_map, [{"area": 7.0}, {}], num_keypoints=3).annotations(0)
    assert coco["area"].tolist() == [7.0, 0.0]
    batch = collate([with_area.example(0)])
    assert batch["areas"].tolist() == [[12.5]]
