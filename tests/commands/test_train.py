"""`raredet train` through the CLI: trains, checkpoints, logs and resumes with an evaluation at its last
step; a bad config is one line naming the field."""

from __future__ import annotations

import json
import math

import pytest
import torch
from tests.helpers import tiny_pipeline as tiny

from raredet import cli
from raredet.engine import checkpoint as ckpt

pytestmark = pytest.mark.slow  # trains an SSD through the CLI


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny_ssd")
    tiny.make_data(out)
    return out


def test_cli_trains_then_resumes(data_dir, tmp_path):
    cfg = tiny.write_config(data_dir, "cli.config")
    model_dir = tmp_path / "run"
    args = ["train", "--pipeline_config_path", str(cfg), "--model_dir", str(model_dir), "--device", "cpu",
            "--checkpoint_every_n", "2", "--num_train_steps", "2"]
    assert cli.main(args) == 0
    # The resumed run also evaluates at its last step, on every 2nd validation image.
    assert cli.main(args[:-1] + ["3", "--eval_every_n_steps", "3", "--sample_1_of_n_eval_examples", "2"]) == 0
    metrics = json.loads((model_dir / "eval" / "metrics.json").read_text())
    assert "DetectionBoxes_Precision/mAP" in json.dumps(metrics)
    assert [s for s, _ in ckpt.list_checkpoints(model_dir)] == [2, 3]
    records = [json.loads(x) for x in (model_dir / "train" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    assert all(math.isfinite(r["Loss/total_loss"]) for r in records)
    assert records[0]["Loss/regularization_loss"] > 0  # the config's L2 weight 0.0004
    state = ckpt.load_checkpoint(model_dir / "ckpt-3.pt")
    assert 'name: "scratch"' in state["label_map_text"]
    assert "ssd_resnet18_v1_fpn" in state["config_text"]
    assert [row["name"] for row in state["class_weights"]] == ["scratch", "dent", "crack"]
    assert not ckpt.non_finite_tensors(state["model"])
    assert isinstance(state["optimizer"]["state"], dict) and state["optimizer"]["state"]
    assert torch.is_tensor(state["rng"]["torch"])


def test_cli_reports_bad_config_in_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.config"
    bad.write_text("model { ssd { num_clases: 3 } }")
    assert cli.main(["train", "--pipeline_config_path", str(bad), "--model_dir", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert "raredet train: error:" in err and "num_clases" in err
