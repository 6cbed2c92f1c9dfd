"""raredet demo: the --quick run end to end, its configs, the strategy really applied, the screen read
from the runs' own evaluations (val chose, test counted), fresh reruns. The table's counts against a
hand recount: test_demo_table.py."""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from pathlib import Path

import pytest
import torch

from raredet import cli, config
from raredet.commands import demo
from raredet.commands.demo import (
    MARKER,
    QUICK,
    RUNS,
    TEST_CONFIG,
    TEST_EVAL,
    StepWatcher,
    found_table,
    prepare_out_dir,
    run_both,
)
from raredet.errors import ConfigError, RaredetError
from raredet.evaluation import operating_points as ops

pytestmark = pytest.mark.slow  # runs `raredet demo --quick` end to end (child processes)

# The strategy under test, fixed here so that these tests do not depend on the one the imbalance study
# picks for demo.RAREDET_STRATEGY.
STRATEGY = "model { ssd { loss { class_weights { auto { scheme: EFFECTIVE_NUMBER beta: 0.999 } } } } }"


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    """`raredet demo --quick` once; (output folder, what it printed)."""
    out = tmp_path_factory.mktemp("demo") / "demo_out"
    buffer = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(buffer):
        patch.setattr(demo, "RAREDET_STRATEGY", STRATEGY)
        code = cli.main(["demo", "--quick", "--out", str(out)])
    assert code == 0, buffer.getvalue()
    return out, buffer.getvalue()


def _load(path: Path) -> config.LoadedConfig:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the demo's configs use no field raredet ignores
        return config.load(path)


def test_configs_are_real_pipeline_configs_differing_only_in_class_weights(quick_demo):
    out, _ = quick_demo
    base, raredet = (_load(out / run / "pipeline.config").pipeline for run in RUNS)
    focal = base.model.ssd.loss.classification_loss.weighted_sigmoid_focal
    assert (round(focal.alpha, 6), focal.gamma) == (0.25, 2.0)  # the zoo's RetinaNet recipe
    assert not base.model.ssd.loss.HasField("class_weights")
    assert base.train_config.num_steps == QUICK.num_steps and base.train_config.batch_size == QUICK.batch_size
    auto = raredet.model.ssd.loss.class_weights.auto
    assert auto.Scheme.Name(auto.scheme) == "EFFECTIVE_NUMBER"
    raredet.model.ssd.loss.ClearField("class_weights")
    assert raredet == base
    assert round(base.eval_config.operating_points.target_precision, 6) == 0.9  # what the screen counts at


def test_the_test_config_differs_only_in_the_split_it_evaluates(quick_demo):
    out, _ = quick_demo
    for run in RUNS:
        val, test = (_load(out / run / name) for name in ("pipeline.config", TEST_CONFIG))
        for loaded, split in ((val, "val"), (test, "test")):
            paths = loaded.pipeline.eval_input_reader[0].tf_record_input_reader.input_path
            assert [Path(p).name for p in paths] == [f"{split}-?????-of-*.tfrecord"]
        test.pipeline.eval_input_reader[0].CopyFrom(val.pipeline.eval_input_reader[0])
        assert test.pipeline == val.pipeline


def test_the_raredet_run_trained_with_effective_number_weights(quick_demo):
    """Weights recomputed by hand from the training box counts: w ~ (1 - b) / (1 - b^n), rescaled so
    that the weights summed over all training boxes equal the box count."""
    out, _ = quick_demo
    counts = json.loads((out / "data" / "summary.json").read_text())["train"]["boxes"]
    beta = 0.999
    raw = {c: (1 - beta) / (1 - beta ** n) for c, n in counts.items()}
    scale = sum(counts.values()) / sum(counts[c] * raw[c] for c in counts)
    state = torch.load(out / "raredet" / f"ckpt-{QUICK.num_steps}.pt", weights_only=True)
    used = {w["name"]: w["weight"] for w in state["class_weights"]}
    assert used == pytest.approx({c: raw[c] * scale for c in counts}, rel=1e-4)
    base = torch.load(out / "baseline" / f"ckpt-{QUICK.num_steps}.pt", weights_only=True)
    assert {w["weight"] for w in base["class_weights"]} == {1.0}


def test_prints_the_stats_the_block_and_the_table_read_from_the_runs_evaluations(quick_demo):
    out, printed = quick_demo
    assert "imbalance ratio" in printed
    assert STRATEGY in printed  # whatever the block, the screen shows it
    table = found_table({run: out / run / "eval" for run in RUNS},
                        {run: out / run / TEST_EVAL for run in RUNS}, ["crack", "dent", "scratch"])
    assert table in printed  # the table printed is the one the runs' val and test evaluations give
    rows = [line.split()[0] for line in table.splitlines()[5:-1]]
    assert rows == ["crack", "dent", "scratch"]  # ratios 3 : 20 : 100
    summary = json.loads((out / "data" / "summary.json").read_text())
    assert [summary[split]["images"] for split in ("train", "val", "test")] == \
        [QUICK.train_images, QUICK.val_images, QUICK.test_images]
    for run in RUNS:  # thresholds chosen on val, graded on test, the reports of both
        val, test = (json.loads((out / run / d / ops.JSON_NAME).read_text()) for d in ("eval", TEST_EVAL))
        assert "val-" in val["chosen_on"]["description"] and "test-" in test["graded_on"]["description"]
        assert test["chosen_on"] == val["chosen_on"]
        assert test["single_threshold"]["threshold"] == val["single_threshold"]["threshold"]
        for folder in ("eval", TEST_EVAL):
            assert (out / run / folder / "report.html").is_file()
    config_path = out / "raredet" / "eval" / "pipeline.operating_points.config"
    *_, config_line, closing = printed.rstrip().splitlines()
    assert config_path.is_file() and config_line.endswith(str(config_path))
    assert "raredet init DATA --model" in closing  # the way on for a user with real data (issue #29)


def test_rerun_starts_fresh_only_in_a_demo_folder(tmp_path):
    assert prepare_out_dir(tmp_path / "new") is None
    stale = tmp_path / "new" / "baseline" / "ckpt-99.pt"
    stale.parent.mkdir()
    stale.write_bytes(b"old")
    mine = tmp_path / "new" / "my_notes.txt"
    mine.write_text("keep")
    assert "starting fresh" in prepare_out_dir(tmp_path / "new")
    assert not stale.exists() and mine.exists() and (tmp_path / "new" / MARKER).exists()
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "thesis.tex").write_text("precious")
    with pytest.raises(ConfigError, match="not made by raredet demo"):
        prepare_out_dir(tmp_path / "theirs")
    assert (tmp_path / "theirs" / "thesis.tex").read_text() == "precious"


def test_step_watcher_reads_only_complete_lines(tmp_path):
    log = tmp_path / "train" / "log.jsonl"
    watcher = StepWatcher(tmp_path)
    assert watcher.poll() == 0  # no log yet
    log.parent.mkdir()
    log.write_text('{"step": 1}\n{"step": 2}\n{"st')
    assert watcher.poll() == 2
    with open(log, "a") as f:
        f.write('ep": 3}\n')
    assert watcher.poll() == 3


def test_a_failed_run_is_reported_with_its_log(tmp_path):
    for run in RUNS:
        (tmp_path / run).mkdir()
    configs = {run: tmp_path / "missing.config" for run in RUNS}
    with pytest.raises(RaredetError, match=r"run failed .*run\.log"):
        run_both(configs, tmp_path, num_steps=1, seed=0)
    assert "missing.config" in (tmp_path / "baseline" / "run.log").read_text()
