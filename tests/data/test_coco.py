"""CocoReader: boxes by hand and equal to pycocotools' (every box of every image, no more); bad input
named by record and field."""

from __future__ import annotations

import json

import numpy as np
import pytest

from raredet.data.coco import CocoReader
from raredet.errors import DataError


def write_coco(tmp_path, encode_image, annotations=None, images=None):
    (tmp_path / "imgs").mkdir(exist_ok=True)
    (tmp_path / "imgs" / "a.png").write_bytes(encode_image(20, 40))
    (tmp_path / "imgs" / "b.png").write_bytes(encode_image(30, 30, seed=1))
    data = {
        "images": images
        or [
            {"id": 10, "file_name": "a.png", "height": 20, "width": 40},
            {"id": 11, "file_name": "b.png", "height": 30, "width": 30},
        ],
        "categories": [{"id": 5, "name": "dog"}, {"id": 6, "name": "cat"}],
        "annotations": annotations
        if annotations is not None
        else [
            {"id": 1, "image_id": 10, "category_id": 5, "bbox": [2, 3, 10, 5], "iscrowd": 0},
            {"id": 2, "image_id": 10, "category_id": 6, "bbox": [20, 0, 20, 20], "iscrowd": 1, "weight": 0.5},
        ],
    }
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    return path


def test_coco_boxes_classes_weights_by_hand(tmp_path, label_map, encode_image):
    reader = CocoReader(write_coco(tmp_path, encode_image), label_map, tmp_path / "imgs")
    assert len(reader) == 2
    ex = reader.example(0)
    np.testing.assert_allclose(ex["boxes"], [[2, 3, 12, 8], [20, 0, 40, 20]])
    assert ex["labels"].tolist() == [1, 0]  # matched by name: dog is label-map id 3 (index 1)
    assert ex["weights"].tolist() == [1.0, 0.5] and ex["is_crowd"].tolist() == [False, True]
    assert ex["source_id"] == "10" and ex["image"].shape == (20, 40, 3)
    assert len(reader.annotations(1)["labels"]) == 0  # an image without boxes is a negative


def test_coco_boxes_match_pycocotools(tmp_path, label_map, encode_image):
    from pycocotools.coco import COCO

    path = write_coco(tmp_path, encode_image)
    reference = COCO(str(path))
    reader = CocoReader(path, label_map, tmp_path / "imgs")
    names = {c["id"]: c["name"] for c in reference.loadCats(reference.getCatIds())}
    assert len(reader) == len(reference.getImgIds())
    for index, image_id in enumerate(sorted(reference.getImgIds())):  # 10: two boxes (one crowd); 11: none
        want = sorted(([x, y, x + w, y + h], names[a["category_id"]], bool(a["iscrowd"]))
                      for a in reference.loadAnns(reference.getAnnIds(imgIds=[image_id]))
                      for x, y, w, h in [a["bbox"]])
        got = reader.annotations(index)
        got_names = [label_map.names[i] for i in got["labels"].tolist()]
        assert sorted(zip(got["boxes"].tolist(), got_names, got["is_crowd"].tolist(), strict=True)) == want


@pytest.mark.parametrize(
    ("annotations", "message"),
    [
        (
            [{"id": 1, "image_id": 10, "category_id": 99, "bbox": [0, 0, 1, 1]}],
            "object 0 has class 'category_id 99'",
        ),
        (
            [{"id": 1, "image_id": 10, "category_id": 5, "bbox": [0, 0, 1]}],
            "annotation 1 has no valid 'bbox'",
        ),
        ([{"id": 1, "image_id": 10, "category_id": 5, "bbox": [0, 0, 90, 5]}], "bbox of object 0 .* outside"),
        (
            [{"id": 1, "image_id": 10, "category_id": 5, "bbox": [0, 0, 1, 1], "weight": -2}],
            "field 'weight' of object 0 is -2",
        ),
    ],
)
def test_coco_bad_annotations(tmp_path, label_map, encode_image, annotations, message):
    reader = CocoReader(write_coco(tmp_path, encode_image, annotations), label_map, tmp_path / "imgs")
    with pytest.raises(DataError, match=r"ann\.json, image id 10: " + message):
        reader.annotations(0)


@pytest.mark.parametrize(
    ("annotation", "message"),
    [
        ({"weight": "heavy"}, "annotation 1: field 'weight' is 'heavy', not a number"),
        ({"bbox": [0, "x", 1, 1]}, "annotation 1: field 'bbox' is .*, not 4 numbers"),
        ({"category_id": "dog"}, "annotation 1: field 'category_id' is 'dog', not an integer"),
        ({"iscrowd": "yes"}, "annotation 1: field 'iscrowd' is 'yes', not 0 or 1"),
    ],
)
def test_coco_non_numeric_fields_are_data_errors(tmp_path, label_map, encode_image, annotation, message):
    # json.load gives strings where a number is expected; a bare ValueError would not name the record.
    ann = {"id": 1, "image_id": 10, "category_id": 5, "bbox": [0, 0, 1, 1], **annotation}
    reader = CocoReader(write_coco(tmp_path, encode_image, [ann]), label_map, tmp_path / "imgs")
    with pytest.raises(DataError, match=r"ann\.json, image id 10: " + message):
        reader.annotations(0)


def test_coco_annotation_of_unknown_image_is_an_error(tmp_path, label_map, encode_image):
    # An annotation whose image_id is not in 'images' would otherwise vanish from training unseen.
    anns = [{"id": 7, "image_id": 99, "category_id": 5, "bbox": [0, 0, 1, 1]}]
    with pytest.raises(DataError, match=r"ann\.json: annotation 7 has image_id 99, which is not in 'images'"):
        CocoReader(write_coco(tmp_path, encode_image, anns), label_map, tmp_path / "imgs")


def test_coco_image_size_not_a_number(tmp_path, label_map, encode_image):
    images = [{"id": 10, "file_name": "a.png", "height": "twenty", "width": 40}]
    reader = CocoReader(write_coco(tmp_path, encode_image, [], images), label_map, tmp_path / "imgs")
    with pytest.raises(DataError, match=r"image id 10: fields 'height'/'width' are missing or not positive"):
        reader.annotations(0)


def test_coco_missing_and_corrupt_images(tmp_path, label_map, encode_image):
    images = [
        {"id": 1, "file_name": "gone.png", "height": 5, "width": 5},
        {"id": 2, "file_name": "bad.png", "height": 5, "width": 5},
    ]
    path = write_coco(tmp_path, encode_image, [], images)
    (tmp_path / "imgs" / "bad.png").write_bytes(b"garbage")
    reader = CocoReader(path, label_map, tmp_path / "imgs")
    with pytest.raises(DataError, match=r"image id 1: image file .*gone\.png does not exist"):
        reader.example(0)
    with pytest.raises(DataError, match=r"image id 2: field 'image' cannot be decoded"):
        reader.example(1)
