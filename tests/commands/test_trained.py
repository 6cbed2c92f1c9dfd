"""A trained model folder as eval, predict and export load it (`commands/trained.py`), with per-class
operating points end to end, for the SSD (a tiny trained run) and Faster R-CNN: `raredet eval` writes
them (figures recounted with pycocotools), the written config passes `config check`, `predict` with it
(or with the JSON, `set_operating_points_from_file`) keeps exactly the detections above each class's
threshold and marks the review band, and the TorchScript and ONNX exports with them reproduce PyTorch's
detections."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tests.helpers import tiny_pipeline as tiny
from tests.helpers.coco import assert_counts_at_threshold, reference_points
from tests.helpers.faster_rcnn import scaled_checkpoint
from tests.helpers.operating_points import assert_exported_equal_pytorch, detection_key, predict_files

from raredet import config
from raredet.cli import main
from raredet.commands.trained import load_trained_model, set_operating_points_from_file
from raredet.evaluation import operating_points as ops

# slow: trains, evaluates, predicts and exports through the CLI (about a minute on 2 CPU cores).
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

OPERATING_POINTS = ('eval_config { metrics_set: "coco_detection_metrics" operating_points { max_f1: true '
                    'class_rule { name: "crack" target_recall: 0.5 } } }')


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run trained for 60 steps, evaluated by the CLI; returns (data, config, eval dir, gt, detections).
    (At 30 steps whether a class reached its threshold depended on float rounding: the thread count.)"""
    data = tmp_path_factory.mktemp("op")
    tiny.make_data(data, images=24)
    cfg = tiny.write_config(data, lr=0.01, train_extra="  gradient_clipping_by_norm: 5.0")
    text = cfg.read_text().replace("class_prediction_bias_init: -4.6", "class_prediction_bias_init: -1.0")
    # Caps far above the candidates (252 anchors x 3 classes), so that they never decide what is kept.
    text = text.replace("max_detections_per_class: 20 max_total_detections: 20",
                        "max_detections_per_class: 300 max_total_detections: 900")
    # NMS keeps every candidate (score_threshold 0), so that the unfiltered predictions hold every
    # detection that a class threshold below 0.05 lets through once its map lifts it.
    text = text.replace("score_threshold: 0.05 iou_threshold", "score_threshold: 0.0 iou_threshold")
    text = text.replace("num_steps: 4", "num_steps: 60")
    # Anchors of 8 px at level 3 (5.7 x 11 and 11 x 5.7 with the aspect ratios), the size of most
    # synthetic defects at 64 px: a 12-step model then has correct detections to pick thresholds from,
    # whatever the random draw of the defects (with 16-px anchors only a few large boxes overlap one
    # at IoU 0.5, and whether the draw has any was luck).
    text = text.replace("anchor_scale: 2.0", "anchor_scale: 1.0")
    cfg.write_text(text.replace('eval_config { metrics_set: "coco_detection_metrics" }', OPERATING_POINTS))
    assert main(["train", "--pipeline_config_path", str(cfg), "--model_dir", str(data / "run")]) == 0
    seen = {}
    import raredet.engine.evaluate as engine_evaluate

    original = engine_evaluate.evaluate_detections

    def capture(gt, detections, **kwargs):
        seen["gt"], seen["detections"] = gt, detections
        return original(gt, detections, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(engine_evaluate, "evaluate_detections", capture)
        assert main(["eval", "--pipeline_config_path", str(cfg), "--checkpoint_dir", str(data / "run")]) == 0
    return data, cfg, data / "run" / "eval", seen["gt"], seen["detections"]


def test_eval_writes_operating_points_that_pycocotools_recounts(run):
    _, _, out, gt, dets = run
    content = json.loads((out / ops.JSON_NAME).read_text())
    chosen = content["chosen_on"]["description"]
    assert "val-*.tfrecord" in chosen and "ckpt-60.pt" in chosen
    assert content["chosen_on"]["images"] == len(gt["images"])
    points = [ops.OperatingPoint.from_json(c) for c in content["classes"]]
    assert [p.rule.describe() for p in points] == ["max F1", "max F1", "target recall 0.5"]
    assert any(p.threshold is not None for p in points)
    for p in points:
        ref, num_gt = reference_points(gt, dets, p.class_id)
        g_tp = sum(h for s, h in ref if s >= 0.5)
        g_fp = sum(not h for s, h in ref if s >= 0.5)
        assert (p.at_global.TP, p.at_global.FP, p.at_global.FN) == (g_tp, g_fp, num_gt - g_tp)
        if p.threshold is None:
            assert sum(h for _, h in ref) == 0 or num_gt == 0  # no TP anywhere (or no GT): no point
            continue
        tp, fp = assert_counts_at_threshold(p, ref, num_gt)
        assert p.at_threshold.FP_per_image == pytest.approx(fp / len(gt["images"]))
    # Seen where people look: table columns, markdown, report, TensorBoard-bound metrics.
    rows = json.loads((out / "per_class.json").read_text())["classes"]
    assert {"op_threshold", "op_precision", "op_recall"} <= set(rows[0])
    metrics = json.loads((out / "metrics.json").read_text())
    for p in points:
        if p.threshold is not None:
            assert metrics[f"OperatingPoint/recall/{p.class_name}"] == pytest.approx(p.at_threshold.recall)
    assert "Operating points" in (out / "report.html").read_text()


def test_written_config_passes_config_check(run, capsys):
    _, _, out, _, _ = run
    path = out / "pipeline.operating_points.config"
    assert main(["config", "check", "--check_paths", str(path)]) == 0
    out = capsys.readouterr().out
    assert "OK" in out and "NMS score_threshold 0.5" in out
    assert "calibration: class_id_function_approximations for class ids" in out


@pytest.fixture(scope="module")
def raw(run, tmp_path_factory):
    """Every detection of the plain config (min_score 0) on the val images."""
    return predict_files(tmp_path_factory.mktemp("raw"), run[0], "raw", "--min_score", "0")


def test_predict_keeps_exactly_the_detections_above_each_class_threshold(run, raw, tmp_path):
    data, _, out, _, _ = run
    content = json.loads((out / ops.JSON_NAME).read_text())
    thresholds = {c["class_id"]: c["threshold"] for c in content["classes"]}
    # Classes without a threshold keep the common one (0.5), as the identity map leaves them.
    limit = {k: 0.5 if v is None else v for k, v in thresholds.items()}
    want = {detection_key(d) for d in raw if d["score"] > limit[d["category_id"]]}
    dropped = {detection_key(d) for d in raw} - want
    assert want and dropped  # the check has something on both sides
    with_config = predict_files(tmp_path, data, "config", "--pipeline_config_path",
                           str(out / "pipeline.operating_points.config"), "--min_score", "0")
    assert {detection_key(d) for d in with_config} == want
    with_json = predict_files(tmp_path, data, "json", "--operating_points", str(out / ops.JSON_NAME))
    assert {detection_key(d) for d in with_json} == want
    assert all("review" not in d for d in with_json)  # no review band in this file


def test_predict_marks_the_review_band(run, raw, tmp_path):
    data, _, out, _, _ = run
    content = json.loads((out / ops.JSON_NAME).read_text())
    points = [ops.OperatingPoint.from_json(c) for c in content["classes"]]
    # A review band set by hand for the first class with a threshold: between 0.6 x and x.
    point = next(p for p in points if p.threshold is not None)
    point.review_threshold = float(np.float32(point.threshold * 0.6))
    banded = ops.operating_points_json(points, min_score_threshold=0.5, chosen_on=content["chosen_on"])
    path = tmp_path / "banded.json"
    path.write_text(json.dumps(banded))
    got = predict_files(tmp_path, data, "banded", "--operating_points", str(path))
    limits = {p.class_id: (p.threshold if p.threshold is not None else 0.5) for p in points}
    review = {detection_key(d) for d in raw if d["category_id"] == point.class_id
              and point.review_threshold < d["score"] <= point.threshold}
    accept = {detection_key(d) for d in raw if d["score"] > limits[d["category_id"]]}
    assert review  # the band holds detections
    assert {detection_key(d) for d in got if d["review"]} == review
    assert {detection_key(d) for d in got if not d["review"]} == accept


def test_onnx_export_with_operating_points_matches_pytorch(run, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    data, _, out, _, _ = run
    onnx_file = tmp_path / "model.onnx"
    assert main(["export", "--model_dir", str(data / "run"), "--format", "onnx", "--out", str(onnx_file),
                 "--operating_points", str(out / ops.JSON_NAME)]) == 0
    from PIL import Image

    files = sorted((data / "images").glob("val_*.jpg"))
    images = torch.from_numpy(np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files]))
    images = images.permute(0, 3, 1, 2).contiguous()
    trained = load_trained_model(data / "run")
    set_operating_points_from_file(trained, out / ops.JSON_NAME, review=False)
    with torch.no_grad():
        det = trained.model.postprocess(trained.model(images), torch.tensor([[64, 64]] * len(files)))
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    boxes, scores, classes, num = session.run(None, {"images": images.numpy()})
    assert_exported_equal_pytorch((boxes, scores, classes, num), det, trained.label_map.ids)


def test_tf_copy_has_the_same_calibration_and_no_raredet_field(run):
    """pipeline.operating_points.tf.config: the same calibration_config and NMS threshold, without
    `eval_config.operating_points` (a raredet field, named in its header)."""
    from raredet.config import parse_config

    _, _, out, _, _ = run
    full = parse_config((out / "pipeline.operating_points.config").read_text())
    text = (out / "pipeline.operating_points.tf.config").read_text()
    copy = parse_config(text)
    post, post_copy = full.model.ssd.post_processing, copy.model.ssd.post_processing
    assert post_copy.calibration_config == post.calibration_config
    assert post_copy.calibration_config.WhichOneof("calibrator") == "class_id_function_approximations"
    assert post_copy.batch_non_max_suppression.score_threshold == pytest.approx(0.5)
    assert full.eval_config.HasField("operating_points") and not copy.eval_config.HasField("operating_points")
    assert "#   eval_config.operating_points" in text.splitlines()


# ---- Faster R-CNN ------------------------------------------------------------------------------------------
# Per-class operating points for Faster R-CNN, end to end through the CLI: `raredet eval` writes
# `pipeline.operating_points.config` (the thresholds as `second_stage_post_processing.calibration_config`,
# where the TF OD API reads it for Faster R-CNN), `config check` accepts it, `predict` with it keeps
# exactly the detections above each class's threshold, and the TorchScript and ONNX exports with the
# calibration (or `--operating_points`) reproduce PyTorch's detections.


@pytest.fixture(scope="module")
def frcnn_run(tmp_path_factory) -> tuple[Path, Path]:
    """(data folder, config) with a checkpoint in data/run (tests/helpers/faster_rcnn.py's)."""
    data = tmp_path_factory.mktemp("frcnn_op")
    return data, scaled_checkpoint(data, images=8)[1]



@pytest.fixture(scope="module")
def frcnn_chosen(frcnn_run, tmp_path_factory):
    """Every raw detection (the zoo's NMS score_threshold 0, min_score 0), and the eval folder of a
    `raredet eval --operating_points_from` whose file puts each class's threshold between two of its
    raw scores near the median (an untrained model has no true positives to choose from)."""
    data, path = frcnn_run
    tmp = tmp_path_factory.mktemp("frcnn_op_eval")
    raw = predict_files(tmp, data, "raw", "--min_score", "0")
    assert main(["eval", "--pipeline_config_path", str(path), "--checkpoint_dir", str(data / "run"),
                 "--out", str(tmp / "first")]) == 0
    content = json.loads((tmp / "first" / ops.JSON_NAME).read_text())
    points = [ops.OperatingPoint.from_json(c) for c in content["classes"]]
    for point in points:
        scores = sorted({d["score"] for d in raw if d["category_id"] == point.class_id})
        assert len(scores) >= 4  # detections on both sides of the threshold
        mid = len(scores) // 2
        point.threshold = float(np.float32((scores[mid - 1] + scores[mid]) / 2))
    handmade = ops.operating_points_json(points, min_score_threshold=0.5, chosen_on=content["chosen_on"])
    (tmp / "chosen.json").write_text(json.dumps(handmade))
    assert main(["eval", "--pipeline_config_path", str(path), "--checkpoint_dir", str(data / "run"),
                 "--out", str(tmp / "eval"), "--operating_points_from", str(tmp / "chosen.json")]) == 0
    return raw, tmp / "eval"


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_faster_rcnn_eval_writes_the_config_and_config_check_accepts_it(frcnn_run, frcnn_chosen, capsys):
    _, eval_dir = frcnn_chosen
    path = eval_dir / "pipeline.operating_points.config"
    text = path.read_text()
    assert "second_stage_post_processing" in text and "class_id_function_approximations" in text
    loaded = config.load(path)
    post = loaded.pipeline.model.faster_rcnn.second_stage_post_processing
    assert sorted(post.calibration_config.class_id_function_approximations.class_id_xy_pairs_map) == [1, 2, 3]
    assert post.batch_non_max_suppression.score_threshold == pytest.approx(0.5)
    capsys.readouterr()
    assert main(["config", "check", "--check_paths", str(path)]) == 0
    out = capsys.readouterr().out
    assert "OK" in out and "SOFTMAX, NMS score_threshold 0.5" in out
    assert "calibration: class_id_function_approximations for class ids [1, 2, 3]" in out


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_faster_rcnn_predict_with_the_written_config_keeps_exactly_the_detections_above_each_threshold(
        frcnn_run, frcnn_chosen, tmp_path):
    data, _ = frcnn_run
    raw, eval_dir = frcnn_chosen
    content = json.loads((eval_dir / ops.JSON_NAME).read_text())
    thresholds = {c["class_id"]: c["threshold"] for c in content["classes"]}
    want = {detection_key(d) for d in raw if d["score"] > thresholds[d["category_id"]]}
    assert want and len(want) < len(raw)  # something on both sides
    got = predict_files(tmp_path, data, "config", "--pipeline_config_path",
                   str(eval_dir / "pipeline.operating_points.config"), "--min_score", "0")
    assert {detection_key(d) for d in got} == want
    with_json = predict_files(tmp_path, data, "json", "--operating_points", str(eval_dir / ops.JSON_NAME))
    assert {detection_key(d) for d in with_json} == want


@pytest.mark.parametrize("source", ["config", "json"])
@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_faster_rcnn_export_with_the_thresholds_matches_pytorch(frcnn_run, frcnn_chosen, tmp_path, fmt,
                                                                source):
    """The thresholds from the written config (calibration_config) or from operating_points.json
    (`export --operating_points`) in the graph: the exported model's detections are PyTorch's."""
    data, _ = frcnn_run
    _, eval_dir = frcnn_chosen
    written = eval_dir / "pipeline.operating_points.config"
    out = tmp_path / f"model.{fmt}"
    given = (["--pipeline_config_path", str(written)] if source == "config"
             else ["--operating_points", str(eval_dir / ops.JSON_NAME)])
    assert main(["export", "--model_dir", str(data / "run"), "--format", fmt, "--out", str(out), *given]) == 0
    from PIL import Image

    files = sorted((data / "images").glob("val_*.jpg"))
    images = torch.from_numpy(np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files]))
    images = images.permute(0, 3, 1, 2).contiguous()
    if source == "config":
        trained = load_trained_model(data / "run", written)
        assert trained.model.score_converter.calibration.mapped.all()  # the written maps, in the model
    else:
        trained = load_trained_model(data / "run")
        set_operating_points_from_file(trained, eval_dir / ops.JSON_NAME, review=False)
        assert trained.model.score_converter.thresholds.mapped.all()
    with torch.no_grad():
        det = trained.model.postprocess(trained.model(images), torch.tensor([[64, 64]] * len(files)))
    if fmt == "onnx":
        ort = pytest.importorskip("onnxruntime")
        session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        boxes, scores, classes, num = session.run(None, {"images": images.numpy()})
    else:
        with torch.no_grad():
            boxes, scores, classes, num = (t.numpy() for t in torch.jit.load(str(out))(images))
    assert_exported_equal_pytorch((boxes, scores, classes, num), det, trained.label_map.ids)
