"""Per-class operating points for Faster R-CNN, end to end through the CLI: `raredet eval` writes
`pipeline.operating_points.config` (the thresholds as `second_stage_post_processing.calibration_config`,
where the TF OD API reads it for Faster R-CNN), `config check` accepts it, `predict` with it keeps
exactly the detections above each class's threshold, and the TorchScript and ONNX exports with the
calibration (or `--operating_points`) reproduce PyTorch's detections."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tests.helpers.faster_rcnn import scaled_checkpoint
from tests.helpers.operating_points import assert_exported_equal_pytorch, detection_key, predict_files

from raredet import config
from raredet.cli import main
from raredet.commands.trained import load_trained_model, set_operating_points_from_file
from raredet.evaluation import operating_points as ops

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::UserWarning")]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, Path]:
    """(data folder, config) with a checkpoint in data/run (tests/helpers/faster_rcnn.py's)."""
    data = tmp_path_factory.mktemp("frcnn_op")
    return data, scaled_checkpoint(data, images=8)[1]



@pytest.fixture(scope="module")
def chosen(run, tmp_path_factory):
    """Every raw detection (the zoo's NMS score_threshold 0, min_score 0), and the eval folder of a
    `raredet eval --operating_points_from` whose file puts each class's threshold between two of its
    raw scores near the median (an untrained model has no true positives to choose from)."""
    data, path = run
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


def test_eval_writes_the_config_and_config_check_accepts_it(run, chosen, capsys):
    _, eval_dir = chosen
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


def test_predict_with_the_written_config_keeps_exactly_the_detections_above_each_threshold(
        run, chosen, tmp_path):
    data, _ = run
    raw, eval_dir = chosen
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
def test_export_with_the_thresholds_matches_pytorch(run, chosen, tmp_path, fmt, source):
    """The thresholds from the written config (calibration_config) or from operating_points.json
    (`export --operating_points`) in the graph: the exported model's detections are PyTorch's."""
    data, _ = run
    _, eval_dir = chosen
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
