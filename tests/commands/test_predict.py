"""raredet predict: image discovery, COCO results, pixels of the original image, skipping unreadable files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tests.helpers.faster_rcnn import scaled_checkpoint
from tests.helpers.predict import make_model_dir

from raredet import cli
from raredet.commands.predict import coco_results, find_images, predict
from raredet.commands.trained import load_trained_model
from raredet.errors import CheckpointError, ConfigError, DataError
from raredet.evaluation.report import PALETTE


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("predict"))


def test_find_images_folders_globs_files_in_order_without_repeats(tmp_path):
    for name in ("b.png", "a.jpg", "notes.txt", "sub/c.JPG"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    found, missing = find_images([str(tmp_path), f"{tmp_path}/sub/*.JPG", str(tmp_path / "a.jpg"),
                                  str(tmp_path / "nope.jpg"), f"{tmp_path}/*.gif",
                                  str(tmp_path / "notes.txt")])
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["a.jpg", "b.png", "sub/c.JPG", "notes.txt"]
    assert [(Path(p).name, reason) for p, reason in missing] == [
        ("nope.jpg", "no such file or folder"), ("*.gif", "the pattern matches no file")]


def test_coco_results_convert_to_xywh_and_label_map_ids():
    det = {"boxes": np.array([[10.0, 20.0, 30.0, 60.0], [0.0, 0.0, 1.5, 2.5]]),
           "scores": np.array([0.9, 0.25]), "classes": np.array([1, 0])}
    records = coco_results(7, det, class_ids=np.array([3, 8]))
    assert records == [{"image_id": 7, "category_id": 8, "bbox": [10.0, 20.0, 20.0, 40.0], "score": 0.9},
                       {"image_id": 7, "category_id": 3, "bbox": [0.0, 0.0, 1.5, 2.5], "score": 0.25}]


def _pixel_doubled(src: Path, dst: Path) -> None:
    image = np.asarray(Image.open(src).convert("RGB"))
    Image.fromarray(np.repeat(np.repeat(image, 2, axis=0), 2, axis=1)).save(dst)


def test_predict_writes_results_in_original_pixels_and_skips_unreadable(trained, tmp_path, capsys):
    model_dir, data = trained
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(data / "images" / "val_000000.jpg", images / "small.jpg")
    _pixel_doubled(images / "small.jpg", images / "big.png")
    (images / "broken.jpg").write_bytes(b"not a jpeg")
    result = predict(model_dir, [str(images)], tmp_path / "out", min_score=0.3)
    assert result.num_images == 2
    assert [Path(p).name for p, _ in result.skipped] == ["broken.jpg"]
    assert "broken.jpg" in capsys.readouterr().err
    entries = json.loads((tmp_path / "out" / "images.json").read_text())
    assert [(Path(e["file_name"]).name, e["height"], e["width"]) for e in entries] == [
        ("big.png", 128, 128), ("small.jpg", 64, 64)]
    records = json.loads((tmp_path / "out" / "detections.json").read_text())
    assert len(records) == result.num_detections > 0
    assert all(r["score"] >= 0.3 and r["category_id"] in (1, 2, 3) for r in records)
    big = np.array([r["bbox"] for r in records if r["image_id"] == 1])
    small = np.array([r["bbox"] for r in records if r["image_id"] == 2])
    # The doubled image resizes (nearest) to exactly the small one: same detections, twice the pixels.
    np.testing.assert_allclose(big, 2 * small, atol=0.02)


def test_drawn_images_are_enlarged_and_carry_the_class_colours(trained, tmp_path):
    model_dir, data = trained
    src = data / "images" / "val_000000.jpg"
    result = predict(model_dir, [str(src)], tmp_path, min_score=0.3)
    drawn = np.asarray(Image.open(tmp_path / "drawn" / "val_000000.png").convert("RGB"))
    assert drawn.shape == (256, 256, 3)  # 64 px enlarged 4x so labels stay readable
    classes = {r["category_id"] - 1 for r in json.loads((tmp_path / "detections.json").read_text())}
    assert result.num_detections > 0 and classes
    colours = {tuple(c) for c in drawn.reshape(-1, 3).tolist()}
    assert all(PALETTE[c] in colours for c in classes)


def test_config_and_label_map_come_from_the_checkpoint(trained, tmp_path):
    model_dir, data = trained
    moved = tmp_path / "run"
    shutil.copytree(model_dir, moved)
    model = load_trained_model(moved)
    assert model.label_map.names == ["scratch", "dent", "crack"]
    assert model.step == 1 and model.checkpoint.name == "ckpt-1.pt"
    assert model.pipeline.model.ssd.image_resizer.fixed_shape_resizer.resize_method == 1  # NEAREST_NEIGHBOR


def test_errors_name_what_to_do(trained, tmp_path):
    model_dir, _ = trained
    with pytest.raises(CheckpointError, match="train first"):
        predict(tmp_path / "empty", [str(tmp_path)], tmp_path / "out")
    with pytest.raises(DataError, match="no image files"):
        predict(model_dir, [str(tmp_path / "missing.jpg")], tmp_path / "out")
    with pytest.raises(ConfigError, match="min_score"):
        predict(model_dir, [str(tmp_path)], tmp_path / "out", min_score=1.5)


def test_cli_predict(trained, tmp_path, capsys):
    model_dir, data = trained
    code = cli.main(["predict", "--model_dir", str(model_dir), "--images", str(data / "images" / "val_*.jpg"),
                     "--out", str(tmp_path), "--min_score", "0.9"])
    assert code == 0
    assert "2 images" in capsys.readouterr().out  # val_fraction 0.25 of 8 images
    assert cli.main(["predict", "--model_dir", str(tmp_path / "none"), "--images", "x.jpg", "--out",
                     str(tmp_path)]) == 2


@pytest.mark.slow  # builds a ResNet-50 Faster R-CNN and runs it on CPU
@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")
def test_faster_rcnn_predict_writes_every_image_and_its_detections(tmp_path):
    run, path = scaled_checkpoint(tmp_path / "data", images=6)
    files = sorted((path.parent / "images").iterdir())
    result = predict(run, [str(path.parent / "images")], tmp_path / "pred", min_score=0.0)
    images = json.loads((tmp_path / "pred" / "images.json").read_text())
    detections = json.loads((tmp_path / "pred" / "detections.json").read_text())
    assert sorted(i["file_name"] for i in images) == [str(f) for f in files]
    assert (result.num_images, result.num_detections) == (len(files), len(detections)) and detections
    assert f"{len(files)} images, {len(detections)} detections" in result.summary()
    sizes = {i["id"]: (i["width"], i["height"]) for i in images}
    for d in detections:  # label-map ids, scores in [0, 1], boxes inside the stored image
        width, height = sizes[d["image_id"]]
        x, y, w, h = d["bbox"]
        assert d["category_id"] in (1, 2, 3) and 0.0 <= d["score"] <= 1.0
        assert -1e-3 <= x and -1e-3 <= y and w >= 0 and h >= 0
        assert x + w <= width + 1e-3 and y + h <= height + 1e-3
    per_image = np.bincount([d["image_id"] for d in detections])
    assert per_image.max() <= 100  # the zoo config's max_total_detections
