"""raredet predict: image discovery, COCO results, pixels of the original image, skipping unreadable files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from raredet import builders, cli, config
from raredet.commands.predict import coco_results, find_images, predict
from raredet.commands.trained import load_trained_model
from raredet.data.synth import make_synthetic_dataset
from raredet.engine.checkpoint import save_checkpoint
from raredet.errors import CheckpointError, ConfigError, DataError
from raredet.evaluation.report import PALETTE

# A tiny SSD on 64x64 inputs; NEAREST_NEIGHBOR resizing makes a 2x pixel-doubled image resize back to
# exactly the original, which lets a test check the mapping of boxes to the stored image's pixels.
CONFIG = """
model { ssd {
  num_classes: 3
  image_resizer { fixed_shape_resizer { height: 64 width: 64 resize_method: NEAREST_NEIGHBOR } }
  feature_extractor { type: "ssd_resnet18_v1_fpn" depth_multiplier: 0.25 min_depth: 8
                      fpn { min_level: 3 max_level: 5 additional_layer_depth: 16 } }
  box_coder { faster_rcnn_box_coder { } }
  matcher { argmax_matcher { matched_threshold: 0.5 unmatched_threshold: 0.4 } }
  similarity_calculator { iou_similarity { } }
  anchor_generator { multiscale_anchor_generator { min_level: 3 max_level: 5 anchor_scale: 2.0
                     aspect_ratios: [1.0, 2.0, 0.5] scales_per_octave: 1 } }
  box_predictor { weight_shared_convolutional_box_predictor { depth: 16 num_layers_before_predictor: 1
                  kernel_size: 3 class_prediction_bias_init: -4.6 } }
  post_processing { batch_non_max_suppression { score_threshold: 0.05 iou_threshold: 0.5
                    max_detections_per_class: 20 max_total_detections: 20 } score_converter: SIGMOID }
  loss { classification_loss { weighted_sigmoid_focal { alpha: 0.25 gamma: 2.0 } }
         localization_loss { weighted_smooth_l1 { } } }
} }
train_config { batch_size: 2 num_steps: 1 optimizer { momentum_optimizer { learning_rate {
  constant_learning_rate { learning_rate: 0.01 } } } } }
train_input_reader { label_map_path: "label_map.pbtxt"
                     tf_record_input_reader { input_path: "train-*.tfrecord" } }
eval_input_reader { label_map_path: "label_map.pbtxt"
                    tf_record_input_reader { input_path: "val-*.tfrecord" } }
"""


def make_model_dir(root: Path) -> tuple[Path, Path]:
    """(model_dir with one checkpoint, data dir with images/). The class head's bias is set to 0 so that
    the untrained model scores about 0.5 everywhere: plenty of detections to check."""
    data = root / "data"
    make_synthetic_dataset(data, images=8, image_size=64, num_shards=1, min_val_boxes=1, val_fraction=0.25)
    (data / "pipeline.config").write_text(CONFIG)
    loaded = config.load(data / "pipeline.config")
    torch.manual_seed(0)
    model, _ = builders.build_model(loaded.pipeline.model.ssd)
    state = model.state_dict()
    bias = next(k for k in state if k.endswith("class_head.bias"))
    state[bias] = torch.zeros_like(state[bias])
    model_dir = root / "run"
    save_checkpoint(model_dir, 1, {"model": state,
                                   "config_text": config.effective_config_text(loaded.pipeline),
                                   "label_map_text": loaded.label_map.to_pbtxt()})
    return model_dir, data


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
