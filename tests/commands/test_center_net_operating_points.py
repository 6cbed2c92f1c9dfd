"""`raredet eval`'s pipeline.operating_points.config for CenterNet: the per-class maps as
`model.center_net.post_processing.calibration_config` and the common threshold as its NMS score_threshold
(an NMS that suppresses nothing is added where the config has none), with comments saying that the TF
OD API ignores calibration_config for CenterNet; the model raredet builds from it applies both to the
heatmap peaks (hand-computed scores below)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from tests.helpers.instance_models import center_net_model_dir

from raredet import builders, config
from raredet.cli import main
from raredet.commands.evaluate import operating_points_config
from raredet.commands.predict import predict
from raredet.evaluation import operating_points as ops
from raredet.modeling.calibration import Calibration

OPERATING = "pipeline.operating_points.config"
CONFIG = """
model { center_net {
  num_classes: 2
  feature_extractor { type: "hourglass_10" }
  image_resizer { fixed_shape_resizer { height: 16 width: 16 } }
  object_detection_task { localization_loss { l1_localization_loss { } } }
  object_center_params { max_box_predictions: 4
    classification_loss { penalty_reduced_logistic_focal_loss { alpha: 2.0 beta: 4.0 } } }
  NMS
} }
train_input_reader { label_map_path: "label_map.pbtxt" tf_record_input_reader { input_path: "t.tfrecord" } }
eval_input_reader { label_map_path: "label_map.pbtxt" tf_record_input_reader { input_path: "v.tfrecord" } }
"""

# operating_points.json as `raredet eval` writes it (only the fields the config writer reads): class id
# 1 (crack) has threshold 0.3, sent to the common threshold 0.5 by the map (0, 0) (0.3, 0.5) (1, 1);
# class id 2 (scratch) has none and keeps 0.5 as it is.
CONTENT = {"deployable": True, "score_threshold": 0.5, "review_score_threshold": None,
           "chosen_on": {"description": "2 images of v.tfrecord"},
           "calibration": {"1": {"x": [0.0, 0.3, 1.0], "y": [0.0, 0.5, 1.0]}}}


def _loaded(tmp_path: Path, nms: str = "") -> config.LoadedConfig:
    labels = 'item { name: "crack" id: 1 }\nitem { name: "scratch" id: 2 }\n'
    (tmp_path / "label_map.pbtxt").write_text(labels)
    path = tmp_path / "pipeline.config"
    path.write_text(CONFIG.replace("NMS", nms))
    return config.load(path)


def _written(tmp_path: Path, nms: str = "") -> tuple[str, config.LoadedConfig]:
    text, note = operating_points_config(_loaded(tmp_path, nms), CONTENT)
    assert note == "written" and text is not None
    path = tmp_path / "pipeline.operating_points.config"
    path.write_text(text)
    return text, config.load(path)


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def _outputs() -> dict[str, torch.Tensor]:
    """A 4x4 map (16 px input): class 0 peaks of 0.6 at (y 1, x 1) and 0.25 at (3, 3), a class-1 peak of
    0.55 at (1, 3), logit -10 elsewhere; boxes 2 x 2 cells (8 px) centred on their pixel."""
    heat = torch.full((1, 1, 2, 4, 4), -10.0)
    heat[0, 0, 0, 1, 1], heat[0, 0, 0, 3, 3] = _logit(0.6), _logit(0.25)
    heat[0, 0, 1, 1, 3] = _logit(0.55)
    return {"object_center": heat, "box/scale": torch.full((1, 1, 2, 4, 4), 2.0),
            "box/offset": torch.zeros((1, 1, 2, 4, 4))}


def _detections(loaded: config.LoadedConfig, operating_points: bool = False) -> dict[str, torch.Tensor]:
    """The hand-made outputs post-processed by the model of `loaded`; with `operating_points`, after
    `set_operating_points` with CONTENT's maps (what `predict --operating_points` does)."""
    model, _ = builders.build_model(builders.model_message(loaded.pipeline), loaded.label_map.ids)
    if operating_points:
        lm = loaded.label_map
        maps = {lm.index_of_id(int(i)): (xy["x"], xy["y"]) for i, xy in CONTENT["calibration"].items()}
        model.set_operating_points(Calibration.piecewise_linear(2, maps), CONTENT["score_threshold"])
    return model.postprocess(_outputs(), torch.tensor([[16, 16]]))


def test_written_config_says_tf_ignores_it_and_carries_the_maps_and_threshold(tmp_path):
    text, loaded = _written(tmp_path)
    header = [line for line in text.splitlines() if line.startswith("#")]
    assert ("# heatmap peaks. The TF OD API itself IGNORES calibration_config for CenterNet (it builds "
            "only") in header
    post = loaded.pipeline.model.center_net.post_processing
    pairs = post.calibration_config.class_id_function_approximations.class_id_xy_pairs_map
    assert sorted(pairs) == [1]
    assert [(p.x, p.y) for p in pairs[1].x_y_pair] == [(0.0, 0.0), (pytest.approx(0.3), 0.5), (1.0, 1.0)]
    nms = post.batch_non_max_suppression  # added: the config had none
    assert (nms.score_threshold, nms.iou_threshold) == (0.5, 1.0)
    assert nms.max_detections_per_class == nms.max_total_detections == 4  # max_box_predictions
    assert any("added only to carry score_threshold" in line for line in header)


def test_the_model_built_from_it_keeps_each_class_above_its_own_threshold(tmp_path):
    """Calibrated by hand: class 0's 0.6 -> 0.5 + (0.6 - 0.3) / 0.7 * 0.5 = 0.714286 (kept), its 0.25 ->
    0.25 / 0.3 * 0.5 = 0.416667 (at most 0.5: dropped); class 1's 0.55 unmapped (kept). Without the file
    all four peaks (the fourth a logit -10 background pixel, 4.54e-5) are kept (scores > 0)."""
    before = _detections(_loaded(tmp_path))
    assert before["num_detections"].tolist() == [4]
    torch.testing.assert_close(before["detection_scores"][0, :3], torch.tensor([0.6, 0.55, 0.25]))
    _, loaded = _written(tmp_path)
    after = _detections(loaded)
    assert after["num_detections"].tolist() == [2]
    torch.testing.assert_close(after["detection_scores"][0, :2], torch.tensor([0.5 + 0.3 / 0.7 * 0.5, 0.55]))
    assert after["detection_classes"][0, :2].tolist() == [0, 1]
    # boxes: 2 x 2 cells around the peak pixel, x 4 px, clipped to the 16 px image
    boxes = torch.tensor([[0.0, 0, 8, 8], [8.0, 0, 16, 8]])
    torch.testing.assert_close(after["detection_boxes"][0, :2], boxes)
    # the same as the json's thresholds set on the model built from the original config
    with_json = _detections(_loaded(tmp_path), operating_points=True)
    for key, value in after.items():
        torch.testing.assert_close(with_json[key], value)


def test_an_existing_nms_keeps_its_settings(tmp_path):
    nms = "post_processing { batch_non_max_suppression { iou_threshold: 0.4 max_detections_per_class: 3 } }"
    text, loaded = _written(tmp_path, nms)
    got = loaded.pipeline.model.center_net.post_processing.batch_non_max_suppression
    settings = (got.score_threshold, got.iou_threshold, got.max_detections_per_class)
    assert settings == (0.5, pytest.approx(0.4), 3)
    assert "added only to carry" not in text and "IGNORES calibration_config for CenterNet" in text


def test_a_config_with_its_own_calibration_is_not_overwritten(tmp_path):
    calibration = "post_processing { calibration_config { temperature_scaling_calibration { scaler: 2.0 } } }"
    text, note = operating_points_config(_loaded(tmp_path, calibration), CONTENT)
    assert text is None and "already has calibration_config (temperature_scaling_calibration)" in note


def _split(scores: list[float]) -> float | None:
    """A threshold between two of the sorted (5-decimal) `scores` near their median, where neighbours
    are more than 1e-4 apart (so that rounding in detections.json cannot put a score on it)."""
    gaps = [i for i in range(1, len(scores)) if scores[i] - scores[i - 1] > 1e-4]
    if not gaps:
        return None
    i = min(gaps, key=lambda g: abs(g - len(scores) // 2))
    return float(np.float32((scores[i - 1] + scores[i]) / 2))


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_eval_writes_it_and_predict_with_it_keeps_the_detections_of_the_json(tmp_path):
    """`raredet eval --operating_point max_f1` on a tiny CenterNet run writes the config (and no
    .tf.config); with thresholds between each class's raw scores (`--operating_points_from` a file with
    them: an untrained model has no true positive to choose from), `predict` with the written config
    keeps exactly the raw detections above their class's threshold, as `predict --operating_points`."""
    run, data = center_net_model_dir(tmp_path, tasks=False)
    # Every peak a detection (a 16 x 16 map has at most 3 x 64 peaks): a calibration reorders classes
    # before the top max_box_predictions, so with fewer the raw list would lack some that it lets in.
    path = data / "center_net.config"
    path.write_text(path.read_text().replace("max_box_predictions: 6", "max_box_predictions: 256"))
    images = [str(p) for p in sorted((data / "images").glob("*.jpg"))]
    eval_args = ["eval", "--pipeline_config_path", str(path), "--checkpoint_dir", str(run)]
    assert main([*eval_args, "--out", str(tmp_path / "first"), "--operating_point", "max_f1"]) == 0
    assert "IGNORES calibration_config for CenterNet" in (tmp_path / "first" / OPERATING).read_text()
    assert not (tmp_path / "first" / "pipeline.operating_points.tf.config").exists()
    predict(run, images, tmp_path / "raw", min_score=0.0, pipeline_config_path=path)
    raw = json.loads((tmp_path / "raw" / "detections.json").read_text())
    content = json.loads((tmp_path / "first" / ops.JSON_NAME).read_text())
    points = [ops.OperatingPoint.from_json(c) for c in content["classes"]]
    thresholds = {}
    for point in points:
        threshold = _split(sorted({d["score"] for d in raw if d["category_id"] == point.class_id}))
        if threshold is not None:
            point.threshold = thresholds[point.class_id] = threshold
    assert thresholds  # some class to split
    handmade = ops.operating_points_json(points, min_score_threshold=0.5, chosen_on=content["chosen_on"])
    (tmp_path / "chosen.json").write_text(json.dumps(handmade))
    out = tmp_path / "eval"
    chosen = str(tmp_path / "chosen.json")
    assert main([*eval_args, "--out", str(out), "--operating_points_from", chosen]) == 0
    predict(run, images, tmp_path / "config", pipeline_config_path=out / OPERATING, min_score=0.0)
    predict(run, images, tmp_path / "json", operating_points=out / ops.JSON_NAME, pipeline_config_path=path)
    got, by_json = (json.loads((tmp_path / n / "detections.json").read_text()) for n in ("config", "json"))
    want = {(d["image_id"], d["category_id"], tuple(d["bbox"])) for d in raw
            if d["score"] > thresholds.get(d["category_id"], 0.5)}
    assert 0 < len(want) < len(raw)  # the thresholds dropped some, kept some
    for found in (got, by_json):
        assert {(d["image_id"], d["category_id"], tuple(d["bbox"])) for d in found} == want
