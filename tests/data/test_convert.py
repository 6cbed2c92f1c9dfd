"""raredet.data.convert: the checks `raredet init` applies (each kind of bad annotation, by hand) and its
stratified split (counts by hand from the round-half-up rule)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from raredet.data import convert


def _annotated(tmp_path: Path, names: list[str], boxes: list[list[float]], *, name: str = "a.jpg",
               size: tuple[int, int] = (40, 50)) -> convert.Annotated:
    return convert.Annotated(where=f"ann/{name}.xml", source_id=name, image_path=tmp_path / name,
                             height=size[0], width=size[1], names=names,
                             boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
                             difficult=np.zeros(len(names), bool))


def _jpeg(path: Path, height: int = 40, width: int = 50, value: int = 0) -> Path:
    Image.new("RGB", (width, height), (value, 0, 0)).save(path, format="JPEG")
    return path


def test_boxes_outside_are_clipped_zero_area_unknown_and_repeated_ones_dropped(tmp_path):
    issues = convert.DataIssues()
    ann = _annotated(tmp_path, ["a", "a", "b", "zzz", "a", "a", "a"], [
        [-5, 2, 10, 60],  # outside at left and bottom (50 wide, 40 high): clipped to [0, 2, 10, 40]
        [3, 3, 3, 9],  # zero width: dropped
        [1, 1, 5, 5],  # fine
        [1, 1, 5, 5],  # unknown class: dropped
        [1, 1, 5, 5],  # fine ('a', differs from 'b' by class)
        [1, 1, 5, 5],  # repeats the previous one: dropped
        [60, 0, 70, 10],  # wholly outside: clipped to [50, 0, 50, 10], then no area: dropped
    ])
    boxes, names = convert.check_boxes(ann, 40, 50, {"a", "b"}, issues)
    np.testing.assert_array_equal(boxes, [[0, 2, 10, 40], [1, 1, 5, 5], [1, 1, 5, 5]])
    assert names == ["a", "b", "a"]
    assert issues.counts() == {"unknown_class": 1, "box_outside_image": 2, "zero_area_box": 2,
                               "duplicate_box": 1}
    assert issues.found["duplicate_box"] == ["ann/a.jpg.xml: object 5 ('a') repeats object 4"]
    assert all(w.startswith("ann/a.jpg.xml: object ") for k in issues.found for w in issues.found[k])


def test_no_class_list_accepts_every_name(tmp_path):
    issues = convert.DataIssues()
    _, names = convert.check_boxes(_annotated(tmp_path, ["x", "y"], [[0, 0, 1, 1], [0, 0, 2, 2]]), 40, 50,
                                   None, issues)
    assert names == ["x", "y"] and issues.counts() == {}


def test_images_missing_unreadable_repeated_resized_empty_and_without_extension(tmp_path):
    _jpeg(tmp_path / "a.jpg")
    (tmp_path / "b.jpg").write_bytes((tmp_path / "a.jpg").read_bytes())  # same bytes: a duplicate
    (tmp_path / "c.jpg").write_bytes(b"not an image")
    _jpeg(tmp_path / "d.jpg", 30, 30, value=200)
    _jpeg(tmp_path / "e.jpg", value=100)
    box = [[1, 1, 5, 5]]
    annotated = [
        _annotated(tmp_path, ["a"], box, name="a.jpg"),
        _annotated(tmp_path, ["a"], box, name="b.jpg"),
        _annotated(tmp_path, ["a"], box, name="c.jpg"),
        _annotated(tmp_path, ["a"], box, name="d.jpg"),  # annotated 50x40, the file is 30x30
        _annotated(tmp_path, [], [], name="e"),  # no extension, e.jpg beside it; no boxes
        _annotated(tmp_path, ["a"], box, name="gone.jpg"),
    ]
    issues = convert.DataIssues()
    checked = convert.check_images(annotated, ["a"], issues)
    assert [c.filename for c in checked] == ["a.jpg", "d.jpg", "e.jpg"]
    assert [(c.height, c.width) for c in checked] == [(40, 50), (30, 30), (40, 50)]
    assert all(c.image_format == "jpeg" for c in checked)
    assert issues.counts() == {"image_name_without_extension": 1, "missing_image": 1, "unreadable_image": 1,
                               "duplicate_image": 1, "size_mismatch": 1, "image_without_annotations": 1}
    assert "b.jpg repeats ann/a.jpg.xml" in issues.found["duplicate_image"][0]
    assert "gone.jpg does not exist" in issues.found["missing_image"][0]


def test_other_formats_are_written_as_png(tmp_path):
    Image.new("RGB", (8, 6)).save(tmp_path / "a.bmp", format="BMP")
    checked = convert.check_images([_annotated(tmp_path, ["a"], [[0, 0, 2, 2]], name="a.bmp", size=(6, 8))],
                                   None, convert.DataIssues())
    assert checked[0].image_format == "png"
    assert Image.open(io.BytesIO(checked[0].encoded)).format == "PNG"


def test_stratified_split_counts_by_hand():
    # class boxes over the set: 0 -> 20 + 10 = 30, 1 -> 10, 2 -> 2; strata by the rarest class present
    images = ([np.array([0])] * 20 + [np.array([0, 1])] * 10 + [np.array([2, 0])] * 2
              + [np.zeros(0, np.int64)] * 3)
    split = convert.stratified_split(images, 3, seed=0)
    strata = {"0": slice(0, 20), "1": slice(20, 30), "2": slice(30, 32), "none": slice(32, 35)}
    counts = {k: np.bincount(split[s], minlength=3).tolist() for k, s in strata.items()}
    # n=20: test (20*15+50)//100 = 3, val 3; n=10: 2, 2; n=2: (30+50)//100 = 0; n=3: (45+50)//100 = 0
    assert counts == {"0": [14, 3, 3], "1": [6, 2, 2], "2": [2, 0, 0], "none": [3, 0, 0]}
    assert np.array_equal(split, convert.stratified_split(images, 3, seed=0))
    assert not np.array_equal(split, convert.stratified_split(images, 3, seed=1))


def test_unknown_issue_kind_is_refused():
    with pytest.raises(ValueError, match="unknown data issue kind"):
        convert.DataIssues().add("typo", "x")
