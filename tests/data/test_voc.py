"""VocReader: boxes, labels, difficult flags and weights by hand; bad input named by file and object."""

from __future__ import annotations

import numpy as np
import pytest
from tests.helpers.voc import VOC_OBJECTS, write_voc

from raredet.data.voc import VocReader
from raredet.errors import DataError


def test_voc_by_hand(tmp_path, label_map, encode_image):
    write_voc(tmp_path, encode_image, VOC_OBJECTS)
    ex = VocReader(tmp_path, label_map, split="train").example(0)
    np.testing.assert_allclose(ex["boxes"], [[5, 2, 15, 12], [20, 0, 40, 20]])
    assert ex["labels"].tolist() == [0, 1] and ex["difficult"].tolist() == [True, False]
    assert ex["weights"].tolist() == [1.0, 3.0] and ex["source_id"] == "0001"


@pytest.mark.parametrize(
    ("objects", "message"),
    [
        (VOC_OBJECTS.replace("<name>cat", "<name>cow"), r"0001\.xml: object 0 has class 'cow'"),
        (VOC_OBJECTS.replace("<xmax>15", "<xmax>3"), r"0001\.xml: bbox of object 0 has xmin > xmax"),
        (VOC_OBJECTS.replace("<ymin>2</ymin>", ""), r"0001\.xml, object 0: field 'bndbox/ymin' is missing"),
        (VOC_OBJECTS + "<object", r"0001\.xml: not valid XML"),
    ],
)
def test_voc_bad_input(tmp_path, label_map, encode_image, objects, message):
    write_voc(tmp_path, encode_image, objects)
    with pytest.raises(DataError, match=message):
        VocReader(tmp_path, label_map).annotations(0)


def test_voc_missing_image(tmp_path, label_map, encode_image):
    write_voc(tmp_path, encode_image, VOC_OBJECTS)
    (tmp_path / "JPEGImages" / "0001.png").unlink()
    with pytest.raises(DataError, match=r"0001\.xml: image file .* does not exist"):
        VocReader(tmp_path, label_map).example(0)
