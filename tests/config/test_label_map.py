import numpy as np
import pytest

from raredet.config import LabelMap
from raredet.errors import ConfigError

TEXT = """
item { id: 7 name: "scratch" display_name: "Scratch" }
item { id: 2 name: "crack" }
item { name: "dent" id: 3 display_name: "Dent mark" }
"""


def test_index_order_follows_ascending_id():
    lm = LabelMap.parse(TEXT, "lm.pbtxt")
    assert lm.num_classes == 3
    assert lm.ids == [2, 3, 7]
    assert lm.names == ["crack", "dent", "scratch"]
    assert lm.display_names == ["crack", "Dent mark", "Scratch"]


def test_single_conversions():
    lm = LabelMap.parse(TEXT, "lm.pbtxt")
    assert lm.index_of_id(7) == 2
    assert lm.index_of_name("dent") == 1
    assert lm.index_of_name("Dent mark") == 1  # display_name is the second way in
    assert lm.id_of_index(0) == 2
    assert lm.name_of_index(2) == "scratch"


def test_unknown_lookups_raise_with_names():
    lm = LabelMap.parse(TEXT, "lm.pbtxt")
    with pytest.raises(ConfigError, match=r"lm\.pbtxt.*id 5.*\[2, 3, 7\]"):
        lm.index_of_id(5)
    with pytest.raises(ConfigError, match="did you mean 'crack'"):
        lm.index_of_name("crak")
    with pytest.raises(ConfigError, match="outside 0..2"):
        lm.name_of_index(3)


def test_vectorised_conversions_mark_unknown_minus_one():
    lm = LabelMap.parse(TEXT, "lm.pbtxt")
    got = lm.ids_to_indices(np.array([[7, 2], [0, 99]]))
    np.testing.assert_array_equal(got, [[2, 0], [-1, -1]])
    assert got.dtype == np.int64
    np.testing.assert_array_equal(lm.names_to_indices(["dent", "nope", "Scratch"]), [1, -1, 2])
    assert lm.names_to_indices([]).shape == (0,)


def test_from_names_and_round_trip(tmp_path):
    lm = LabelMap.from_names(["a", "b"])
    assert lm.ids == [1, 2]
    path = lm.save(tmp_path / "sub" / "lm.pbtxt")
    assert LabelMap.load(path) == lm
    original = LabelMap.parse(TEXT)
    assert LabelMap.parse(original.to_pbtxt()) == original


def test_name_falls_back_to_display_name():
    lm = LabelMap.parse('item { id: 1 display_name: "person" }')
    assert lm.names == ["person"]


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ('item { id: 0 name: "background" }', "ids must be >= 1"),
        ('item { id: -3 name: "x" }', "ids must be >= 1"),
        ('item { id: 1 name: "a" } item { id: 1 name: "b" }', "id 1 appears more than once"),
        ('item { id: 1 name: "a" } item { id: 2 name: "a" }', "name 'a' appears more than once"),
        ('item { name: "a" }', "has no id"),
        ("item { id: 1 }", "neither name nor display_name"),
        ("", "no items"),
        ('item { id: 1 nmae: "a" }', r'lm\.pbtxt:1:14: .*"nmae"; did you mean .name.'),
        ('item { id: 1 name: "a" ', r"lm\.pbtxt:1:\d+"),
    ],
)
def test_bad_label_maps(text, pattern):
    with pytest.raises(ConfigError, match=pattern) as info:
        LabelMap.parse(text, "lm.pbtxt")
    assert "lm.pbtxt" in str(info.value)


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        LabelMap.load(tmp_path / "nope.pbtxt")


def test_tf_od_api_extras_parse_and_are_not_kept():
    text = """item { id: 1 name: "person" keypoints { id: 0 label: "nose" } frequency: RARE
                      instance_count: 12 ancestor_ids: 5 }"""
    lm = LabelMap.parse(text)
    assert lm.names == ["person"]
    assert "keypoints" not in lm.to_pbtxt()


def test_class_index_resolves_ids_names_and_display_names_with_the_field_in_errors():
    from raredet.config import class_index
    from raredet.protos import losses_pb2

    lm = LabelMap.parse('item { id: 2 name: "dent" }\nitem { id: 5 name: "crack" display_name: "Crack" }\n',
                        "lm.pbtxt")
    assert class_index(losses_pb2.ClassWeight(id=5), lm, "w[0]") == 1
    assert class_index(losses_pb2.ClassWeight(name="dent"), lm, "w[0]") == 0
    assert class_index(losses_pb2.ClassWeight(name="Crack"), lm, "w[0]") == 1
    expected = r"^w\[1\]\.id: 3 is not in the label map lm\.pbtxt; its ids are \[2, 5\]"
    with pytest.raises(ConfigError, match=expected):
        class_index(losses_pb2.ClassWeight(id=3), lm, "w[1]")
    with pytest.raises(ConfigError, match=r"^w\[1\]\.name: 'crak' is not in .*did you mean 'crack'"):
        class_index(losses_pb2.ClassWeight(name="crak"), lm, "w[1]")
    with pytest.raises(ConfigError, match=r"^w\[2\]: names no class"):
        class_index(losses_pb2.ClassWeight(value=1.0), lm, "w[2]")
