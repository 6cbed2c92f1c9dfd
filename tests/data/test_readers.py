"""make_reader: the input reader's oneof name picks the reader; unknown names and empty paths are
config errors that say what to use."""

from __future__ import annotations

import pytest
from tests.helpers.voc import VOC_OBJECTS, write_voc

from raredet.data.readers import make_reader


def test_make_reader_dispatch(tmp_path, label_map, encode_image):
    write_voc(tmp_path, encode_image, VOC_OBJECTS)
    assert (
        len(make_reader("voc_input_reader", {"root": str(tmp_path), "image_set": "train"}, label_map)) == 1
    )
    with pytest.raises(ValueError, match="use one of: tf_record_input_reader, coco_input_reader"):
        make_reader("csv_input_reader", {}, label_map)
    with pytest.raises(ValueError, match="input_path is empty"):
        make_reader("tf_record_input_reader", {}, label_map)
