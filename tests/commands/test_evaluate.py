"""`raredet eval` on the tiny synthetic pipeline: an untrained SSD saved as a checkpoint (one trained with a
pair-aware loss: its validation loss uses the checkpoint's statistics), and a Faster R-CNN."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from tests.helpers.faster_rcnn import scaled_checkpoint
from tests.helpers.tiny_pipeline import make_data, write_config

from raredet import builders, config
from raredet.cli import main
from raredet.commands.evaluate import eval_from_config
from raredet.commands.trained import model_weights
from raredet.engine.checkpoint import save_checkpoint
from raredet.errors import CheckpointError


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    data = tmp_path_factory.mktemp("data")
    make_data(data, images=8)
    cfg = write_config(data)
    torch.manual_seed(0)
    model, _ = builders.build_model(config.load(cfg).pipeline.model.ssd)
    model_dir = data / "run"
    weights = [{"index": 0, "id": 1, "name": "scratch", "count": 3, "weight": 2.0, "source": "explicit"}]
    save_checkpoint(model_dir, 4, {"model": model.state_dict(), "class_weights": weights})
    return cfg, model_dir


def test_eval_cli_writes_outputs(run_dir: tuple[Path, Path], capsys) -> None:
    cfg, model_dir = run_dir
    assert main(["eval", "--pipeline_config_path", str(cfg), "--checkpoint_dir", str(model_dir),
                 "--device", "cpu"]) == 0
    out = model_dir / "eval"
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["DetectionBoxes_Precision/mAP"] <= 1.0
    assert metrics["Loss/total_loss"] > 0  # validation loss, from the checkpoint's class weights
    assert any(p.name.startswith("events.out.tfevents") for p in out.iterdir())
    assert "scratch" in (out / "report.html").read_text()
    printed = capsys.readouterr().out
    assert "== ckpt-4.pt" in printed and "| class |" in printed


def test_wait_stops_after_the_final_step(run_dir: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    cfg, model_dir = run_dir  # num_steps is 4 and ckpt-4 exists: evaluate it, then stop at once
    metrics = eval_from_config(cfg, model_dir, wait=True, eval_timeout=0.5, out_dir=tmp_path, device="cpu",
                               poll_seconds=0.01)
    assert "DetectionBoxes_Recall/AR@100" in metrics
    printed = capsys.readouterr().out
    assert printed.count("== ckpt-4.pt") == 1
    # Without the final-step stop the loop would wait out eval_timeout and say so before returning.
    assert "no new checkpoint" not in printed


def test_missing_checkpoint_is_a_clear_error(run_dir: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    cfg, _ = run_dir
    assert main(["eval", "--pipeline_config_path", str(cfg), "--checkpoint_dir", str(tmp_path)]) == 2
    assert "no ckpt-<step>.pt checkpoint" in capsys.readouterr().err


def test_moving_averages_chosen_when_asked() -> None:
    state = {"model": {"w": 1}, "ema": {"w": 2}}
    assert model_weights(state, True, Path("c")) == {"w": 2}
    assert model_weights(state, False, Path("c")) == {"w": 1}
    with pytest.warns(UserWarning, match="no moving averages"):
        assert model_weights({"model": {"w": 1}, "ema": None}, True, Path("c")) == {"w": 1}


def test_wait_gives_up_after_eval_timeout(run_dir: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    cfg, model_dir = run_dir
    ckpts = tmp_path / "run"
    ckpts.mkdir()
    shutil.copy(model_dir / "ckpt-4.pt", ckpts / "ckpt-2.pt")  # step 2 < num_steps 4: keep waiting
    eval_from_config(cfg, ckpts, wait=True, eval_timeout=0.2, device="cpu", poll_seconds=0.01)
    printed = capsys.readouterr().out
    assert "== ckpt-2.pt" in printed and "no new checkpoint" in printed


# The COCO metrics raredet eval reports, named as the TF OD API names them.
_SIZES = ("", " (small)", " (medium)", " (large)")
COCO_METRICS = ({f"DetectionBoxes_Precision/mAP{s}" for s in ("@.50IOU", "@.75IOU", *_SIZES)}
                | {f"DetectionBoxes_Recall/AR@{s}" for s in ("1", "10", *(f"100{s}" for s in _SIZES))})


@pytest.mark.slow  # builds a ResNet-50 Faster R-CNN and evaluates it on CPU
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_faster_rcnn_eval_reports_every_coco_metric_and_writes_them(tmp_path):
    run, path = scaled_checkpoint(tmp_path / "data", images=6)
    metrics = eval_from_config(path, run, out_dir=tmp_path / "eval", device="cpu")
    assert COCO_METRICS <= set(metrics)
    for name in COCO_METRICS:  # COCOeval's -1 means no ground truth in that size range
        assert metrics[name] == -1.0 or 0.0 <= metrics[name] <= 1.0, (name, metrics[name])
    written = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert {k: written[k] for k in COCO_METRICS} == pytest.approx({k: metrics[k] for k in COCO_METRICS})


# ---- a pair-aware loss -------------------------------------------------------------------------------------
# `raredet eval` of a run trained with a pair-aware loss: its validation loss uses the checkpoint's
# statistics, not fresh ones.

EFL = """
      classification_loss { equalized_focal { } }
      localization_loss { weighted_smooth_l1 { } }
"""
WEIGHTS = [{"index": i, "id": i + 1, "name": n, "count": 3, "weight": 1.0, "source": "default"}
           for i, n in enumerate(["scratch", "dent", "crack"])]


def _eval_loss(tmp_path, name, loss_state):
    cfg = write_config(tmp_path, loss=EFL)
    torch.manual_seed(0)
    model, _ = builders.build_model(config.load(cfg).pipeline.model.ssd)
    run = tmp_path / name
    save_checkpoint(run, 4, {"model": model.state_dict(), "class_weights": WEIGHTS, "loss": loss_state})
    eval_from_config(cfg, run, out_dir=run / "eval", device="cpu")
    return json.loads((run / "eval" / "metrics.json").read_text())["Loss/classification_loss"]


def test_eval_loss_uses_the_checkpoint_statistics(tmp_path):
    make_data(tmp_path, images=6)
    # g = 0 for every class (gamma 6, weight 3) against fresh statistics (g = 1: plain focal loss).
    skewed = {"classification_statistics": {"positive": torch.zeros(3, dtype=torch.float64),
                                            "negative": torch.ones(3, dtype=torch.float64)}}
    with_state = _eval_loss(tmp_path, "trained", skewed)
    fresh = _eval_loss(tmp_path, "fresh", {})
    assert with_state != pytest.approx(fresh, rel=1e-3)
    wrong = {"classification_statistics": {"class_counts": torch.zeros(3, dtype=torch.int64)}}
    with pytest.raises(CheckpointError, match="positive"):
        _eval_loss(tmp_path, "wrong", wrong)
