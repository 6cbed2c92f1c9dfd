"""`raredet demo`: the main job end to end on the synthetic rare-defects dataset, in minutes on a CPU.

1. Write the dataset (`raredet.data.synth`: scratch : dent : crack boxes = 100 : 20 : 3; train, val
   and a held-out test split) and print its class statistics.
2. Write two real `pipeline.config` files: the **baseline**, the TF OD API model zoo's RetinaNet recipe
   (focal loss alpha 0.25, gamma 2, no class weights), and **raredet**, the same plus
   `RAREDET_STRATEGY`, raredet's best configuration as found by the imbalance study
   (`bench/imbalance.py`, `docs/imbalance.md`). Both evaluate with per-class operating points at
   precision 0.9 (`eval_config.operating_points.target_precision`).
3. Train both with the same seed (so they differ only in the strategy) side by side, one process and
   one CPU thread each — for a model this small, two threads in one process mostly wait for each other,
   while two processes keep both cores busy. Then evaluate each on the **val** split, which chooses the
   thresholds (`RUN/eval/`), and on the **test** split, which counts at them
   (`raredet eval --operating_points_from RUN/eval/operating_points.json`, into `RUN/eval_test/`).
4. Print one table, rarest class first: the test boxes found at precision >= 0.9 by (a) the baseline
   with ONE threshold for every class (the TF OD API's way: `single_threshold` of
   operating_points.json, the lowest threshold at which every class reaches precision 0.9 on val, or
   the one at which the most classes do), (b) the same trained model at its per-class operating
   points (each class's lowest threshold with precision >= 0.9 on val), (c) the raredet run at its
   per-class operating points; with each run's AP50 on test. Then the reports and the operating-points
   config of the raredet run.

Each run is exactly `raredet train` + `raredet eval` (twice) on its configs (the same library calls),
every figure printed is read from those evaluations' files (`found_table`), and every step can be
rerun by hand.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import text_format

from raredet.commands.evaluate import OPERATING_CONFIG, eval_from_config
from raredet.commands.stats import stats_for_config
from raredet.commands.train import train_from_config
from raredet.config import parse_config
from raredet.data.synth import make_synthetic_dataset
from raredet.errors import ConfigError, RaredetError
from raredet.evaluation import operating_points as ops
from raredet.evaluation.coco import CATEGORY_KEYS
from raredet.fileio import atomic_write_text

# raredet's best configuration: a pipeline.config fragment merged into the baseline config (oneof
# members replace, sub-messages merge, repeated fields append); any block works, the screen prints it.
# The imbalance study decides it (docs/imbalance.md; the demo trains at the study's budget with the
# study's base config, so the study's seed-0 run of this block is what the demo reproduces). Its best,
# 3 seeds: images with a crack repeated ~4.7x (repeat factors at threshold 1.0) and focal alpha per
# column (crack 0.75, dent 0.5; scratch keeps the zoo's 0.25): crack AP50 +49.5, crack recall at
# precision 0.9 +32.2 points, scratch +1.6, dent +19.9 over the zoo recipe.
RAREDET_STRATEGY = """
train_input_reader { repeat_factor_sampling { threshold: 1.0 } }
model { ssd { loss { classification_loss { weighted_sigmoid_focal { alpha: 0.25 gamma: 2.0
  class_alpha { name: "crack" value: 0.75 } class_alpha { name: "dent" value: 0.5 } } } } } }
"""


@dataclass(frozen=True)
class DemoBudget:
    """Dataset size and training length; the model is the synthetic set's default config."""

    train_images: int
    val_images: int  # the split the thresholds are chosen on
    test_images: int  # the held-out split the printed counts are measured on
    image_size: int
    num_steps: int
    batch_size: int
    min_val_boxes: int  # validation boxes of every class at least, so the rare class's AP means something
    min_test_boxes: int  # the same floor for the test split

    @property
    def images(self) -> int:
        """Train + val (`make_synthetic_dataset`'s `images`)."""
        return self.train_images + self.val_images


# Calibrated (docs/imbalance.md, "The data and the budget"): at 128 px a crack is visibly not a scratch,
# and one run of 900 steps takes ~2.6 min on one idle core (0.17 s/step measured), so two side by side
# fit `make demo`'s 10 minutes with the installation. The imbalance study trains at this same budget
# (the same 800 training images).
# Val and test are drawn alike, each class at least 30 % as many boxes as the split has images (180 in
# 600, 300 in 1000, as 60 in the study's 200). On 200 test images one crack threshold read anywhere in
# a band ~0.2 wide (the demo printed 0.66 to 0.96 over three seeds), on 1000 ~0.1; 600 val images
# place it more steadily than 200 (docs/imbalance.md, "How far a threshold chosen on val carries").
# The larger splits cost seconds of drawing and evaluation, and no training.
FULL = DemoBudget(train_images=800, val_images=600, test_images=1000, image_size=128, num_steps=900,
                  batch_size=16, min_val_boxes=180, min_test_boxes=300)
QUICK = DemoBudget(train_images=19, val_images=5, test_images=6, image_size=64, num_steps=4, batch_size=4,
                   min_val_boxes=2, min_test_boxes=2)
# Both runs: trained from scratch at the synthetic config's learning rate, an occasional exploding step
# would otherwise end a run (TrainingDiverged); clipping the gradient norm keeps both runs alive.
GRADIENT_CLIPPING_BY_NORM = 10.0
RUNS = ("baseline", "raredet")
TARGET_PRECISION = 0.9  # the precision the operating points and the one global threshold are chosen for
TEST_CONFIG = "pipeline.test.config"  # a run's config evaluating on the test split
TEST_EVAL = "eval_test"  # where a run's test evaluation goes (its val evaluation: eval/)
MARKER = ".raredet-demo"  # marks a folder the demo made, so that a rerun may clear it
POLL_SECONDS = 0.5


# ---- the output folder ---------------------------------------------------------------------------


def prepare_out_dir(out: Path) -> str | None:
    """Make `out` ready for a fresh demo; returns a note when an earlier demo's results were removed.

    Only folders the demo made (holding MARKER) are cleared, and only the demo's own entries in them:
    `--out` pointing at a folder of the user's by mistake is an error, not a deletion.
    """
    note = None
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).exists():
            raise ConfigError(f"--out {out}: the folder exists and was not made by raredet demo; "
                              "choose a new or empty folder")
        for name in ("data", *RUNS, "compare"):
            shutil.rmtree(out / name, ignore_errors=True)
        note = f"{out} holds an earlier demo: starting fresh (its data, runs and comparison were removed)"
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("made by raredet demo; a rerun clears data/, baseline/, raredet/, compare/\n")
    return note


# ---- data and configs ----------------------------------------------------------------------------


def make_data(data: Path, budget: DemoBudget, seed: int) -> str:
    """Write the synthetic dataset; returns its class statistics as a printable table."""
    make_synthetic_dataset(data, images=budget.images, val_fraction=budget.val_images / budget.images,
                           seed=seed, image_size=budget.image_size, num_shards=1,
                           min_val_boxes=budget.min_val_boxes, num_steps=budget.num_steps,
                           test_images=budget.test_images, min_test_boxes=budget.min_test_boxes)
    return stats_for_config(data / "pipeline.config", data / "stats")


def _relative_inputs(cfg: Any, run_dir: Path, data: Path) -> None:
    """Point the input readers' paths (relative to `data`) at the same files from `run_dir`."""
    rel = Path(os.path.relpath(data, run_dir))
    for reader in [cfg.train_input_reader, *cfg.eval_input_reader]:
        reader.label_map_path = str(rel / reader.label_map_path)
        paths = list(reader.tf_record_input_reader.input_path)
        reader.tf_record_input_reader.input_path[:] = [str(rel / p) for p in paths]


CONFIG_HEADERS = {
    "baseline": "the TF OD API zoo's RetinaNet recipe: focal loss alpha 0.25, gamma 2, no class weights",
    "raredet": "the baseline plus raredet's best configuration, RAREDET_STRATEGY of raredet/commands/demo.py",
}


def write_configs(out: Path, data: Path, budget: DemoBudget) -> dict[str, Path]:
    """`out/<run>/pipeline.config` for both runs (evaluating on val) and `out/<run>/pipeline.test.config`
    (the same, evaluating on test); returns run name -> pipeline.config path."""
    base_path = data / "pipeline.config"
    base = parse_config(base_path.read_text(encoding="utf-8"), base_path)
    base.train_config.batch_size = budget.batch_size
    base.train_config.gradient_clipping_by_norm = GRADIENT_CLIPPING_BY_NORM
    base.eval_config.operating_points.target_precision = TARGET_PRECISION
    paths = {}
    for run in RUNS:
        cfg = type(base)()
        cfg.CopyFrom(base)
        if run == "raredet":
            text_format.Merge(RAREDET_STRATEGY, cfg)
        run_dir = out / run
        _relative_inputs(cfg, run_dir, data)
        config_path, test_path = run_dir / "pipeline.config", run_dir / TEST_CONFIG
        header = (f"# raredet demo, run '{run}': {CONFIG_HEADERS[run]}.\n# Rerun: raredet train "
                  f"--pipeline_config_path {config_path} --model_dir {run_dir}\n"
                  f"# then: raredet eval --pipeline_config_path {config_path} --checkpoint_dir {run_dir}\n")
        paths[run] = atomic_write_text(config_path, header + text_format.MessageToString(cfg))
        reader = cfg.eval_input_reader[0]
        reader.tf_record_input_reader.input_path[:] = [
            str(Path(os.path.relpath(data, run_dir)) / "test-?????-of-*.tfrecord")]
        test_header = (f"# raredet demo, run '{run}' evaluated on the held-out test split with the "
                       f"thresholds chosen on val:\n# raredet eval --pipeline_config_path {test_path} "
                       f"--checkpoint_dir {run_dir} --out {run_dir / TEST_EVAL} "
                       f"--operating_points_from {run_dir / 'eval' / ops.JSON_NAME}\n")
        atomic_write_text(test_path, test_header + text_format.MessageToString(cfg))
    return paths


# ---- the runs ------------------------------------------------------------------------------------


def train_and_eval(config_path: str, run_dir: str, seed: str) -> None:
    """One run in this process and one CPU thread: `raredet train`, then `raredet eval` on val (which
    chooses the thresholds) and on test (which is graded at them)."""
    import torch

    torch.set_num_threads(1)
    result = train_from_config(config_path, run_dir, seed=int(seed), device="cpu", num_workers=0)
    if result.interrupted:  # stopped by a signal (checkpoint written): no evaluation of a partial run
        raise SystemExit(130)
    eval_from_config(config_path, run_dir, device="cpu")
    eval_from_config(Path(config_path).with_name(TEST_CONFIG), run_dir, device="cpu",
                     out_dir=Path(run_dir) / TEST_EVAL,
                     operating_points_from=Path(run_dir) / "eval" / ops.JSON_NAME)


def _start(config_path: Path, run_dir: Path, seed: int) -> subprocess.Popen[bytes]:
    """A child process running `train_and_eval`, its output in `run_dir/run.log`."""
    code = "import sys; from raredet.commands.demo import train_and_eval; train_and_eval(*sys.argv[1:])"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}  # the parent draws the bars
    with open(run_dir / "run.log", "wb") as log:
        return subprocess.Popen([sys.executable, "-c", code, str(config_path), str(run_dir), str(seed)],
                                stdout=log, stderr=subprocess.STDOUT, env=env)


class StepWatcher:
    """The last step a run's `train/log.jsonl` records, read incrementally."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / "train" / "log.jsonl"
        self.offset = 0
        self.step = 0

    def poll(self) -> int:
        if self.path.exists():
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                chunk = f.read()
            complete = chunk[: chunk.rfind(b"\n") + 1]  # a line being written is read next time
            self.offset += len(complete)
            for line in complete.splitlines():
                self.step = max(self.step, int(json.loads(line)["step"]))
        return self.step


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM (e.g. `timeout`, `kill`) stops the demo like Ctrl-C does, so the runs are stopped too
    instead of being left training on their own."""
    try:
        previous = signal.signal(signal.SIGTERM, _interrupt)
    except ValueError:  # not the main thread: leave signals to the caller
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_both(configs: dict[str, Path], out: Path, num_steps: int, seed: int) -> None:
    """Train and evaluate every run side by side with one progress bar each; raise if one fails."""
    with _sigterm_interrupts():
        _run_both(configs, out, num_steps, seed)


def _run_both(configs: dict[str, Path], out: Path, num_steps: int, seed: int) -> None:
    from tqdm import tqdm

    procs = {run: _start(configs[run], out / run, seed) for run in RUNS}
    bars = {run: tqdm(total=num_steps, desc=f"{run:<8}", position=i, unit="step", dynamic_ncols=True)
            for i, run in enumerate(RUNS)}
    watchers = {run: StepWatcher(out / run) for run in RUNS}
    try:
        # Until both are done, or one has failed (then there is nothing to compare: stop the other).
        while any(p.poll() is None for p in procs.values()) and not any(p.poll() for p in procs.values()):
            _update_bars(bars, watchers, procs)
            time.sleep(POLL_SECONDS)
        _update_bars(bars, watchers, procs)
    finally:
        for p in procs.values():  # interrupted or failed: let the trainers checkpoint and stop
            if p.poll() is None:
                p.terminate()
                p.wait()
        for bar in bars.values():
            bar.close()
    stopped = (0, 130, -signal.SIGTERM)  # done, or stopped by us because the other run failed
    for run, p in procs.items():
        if p.returncode not in stopped:
            raise RaredetError(f"demo: the {run} run failed (exit code {p.returncode}); its output is in "
                               f"{out / run / 'run.log'}")


def _update_bars(bars: dict[str, Any], watchers: dict[str, StepWatcher],
                 procs: dict[str, subprocess.Popen[bytes]]) -> None:
    for run, bar in bars.items():
        step = watchers[run].poll()
        bar.update(step - bar.n)
        if step >= bar.total:
            bar.set_postfix_str("evaluating" if procs[run].poll() is None else "done", refresh=True)


# ---- the screen -------------------------------------------------------------------------------------


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise RaredetError(f"demo: cannot read {path} ({err}); the run's evaluation did not finish: "
                           "see its run.log") from None


def found_cell(reached_on_val: bool, graded: Mapping[str, Any] | None, target: float) -> str:
    """"N of M (p P, L-H)": the test boxes found (TP at IoU 0.5) of all (TP + FN) at a threshold chosen
    on val, with the precision measured on test and its 90 % interval over the test images (files
    without one: "(p P)"); or that the threshold choice never reached `target`."""
    if not reached_on_val or graded is None:
        return f"precision {target:g} not reached"
    kept = f"p {graded['precision']:.2f}" if graded["precision"] is not None else "none kept"
    interval = graded.get("precision_interval")
    if graded["precision"] is not None and interval is not None:
        kept += f", {interval[0]:.2f}-{interval[1]:.2f}"
    return f"{graded['TP']} of {graded['TP'] + graded['FN']} ({kept})"


def found_table(val_dirs: Mapping[str, Path], test_dirs: Mapping[str, Path], order: Sequence[str],
                target: float = TARGET_PRECISION) -> str:
    """The demo's result, read from the runs' evaluations: `val_dirs` / `test_dirs` map "baseline" and
    "raredet" to the folders of their val evaluation (which chose the thresholds) and test evaluation
    (`--operating_points_from` the val one); `order` lists the class names, rarest first.

    (a) the baseline at the one threshold for every class (operating_points.json `single_threshold`),
    (b) the baseline at its per-class operating points, (c) the raredet run at its per-class operating
    points; each run's AP50 on test."""
    val = {run: _read_json(d / ops.JSON_NAME) for run, d in val_dirs.items()}
    test = {run: _read_json(d / ops.JSON_NAME) for run, d in test_dirs.items()}
    metrics = {run: _read_json(d / "metrics.json") for run, d in test_dirs.items()}
    single_val, single_test = val["baseline"]["single_threshold"], test["baseline"]["single_threshold"]
    chose, counted = val["baseline"]["chosen_on"]["images"], test["baseline"]["graded_on"]["images"]
    threshold = single_val["threshold"]
    lines = [
        f"test boxes found at precision >= {target:g} (IoU 0.5), rarest class first: thresholds chosen on "
        f"the val split ({chose} images), boxes counted on the test split ({counted} images)",
        "  (a) TF OD API recipe (baseline run), ONE threshold for every class: "
        + (f"{threshold:.3f}, {single_val['note']} on val" if threshold is not None
           else f"none ({single_val['note']} on val)"),
        f"  (b) the same trained model, a threshold per class: each class's lowest with precision >= "
        f"{target:g} on val",
        "  (c) raredet's best configuration (raredet run, the block above), per-class thresholds chosen the "
        "same way",
    ]
    table = []
    for name in order:
        cells = []
        for run in RUNS:
            point_val = {c["class_name"]: c for c in val[run]["classes"]}[name]
            point_test = {c["class_name"]: c for c in test[run]["classes"]}[name]
            if run == "baseline":
                cells.append(found_cell(name in single_val["classes_reaching"],
                                        single_test["classes"][name], target))
            cells.append(found_cell(bool(point_val["reached"]), point_test["at_threshold"], target))
            ap50 = metrics[run].get(f"{CATEGORY_KEYS['AP50']}/{name}")
            cells.append(f"{ap50:.3f}" if isinstance(ap50, int | float) and ap50 >= 0 else "-")
        boxes = {c["class_name"]: c for c in test["baseline"]["classes"]}[name]["at_global"]
        table.append((name, boxes["TP"] + boxes["FN"], cells))
    width = max([len(f"precision {target:g} not reached"), 18]
                + [len(cells[i]) for _, _, cells in table for i in (0, 1, 3)])
    rows = [f"  {'class':<10}{'boxes':>6}  {'(a) one threshold':<{width}}  "
            f"{'(b) per class':<{width}}  {'AP50':>5}  {'(c) per class':<{width}}  {'AP50':>5}"]
    for name, m, cells in table:
        rows.append(f"  {name:<10}{m:>6}  {cells[0]:<{width}}  {cells[1]:<{width}}  {cells[2]:>5}  "
                    f"{cells[3]:<{width}}  {cells[4]:>5}")
    lines += rows
    lines.append(f"  found N of M (p P, L-H): N of the M test boxes detected above the threshold, at "
                 f"precision P on test (chosen on val, it may miss {target:g} here), L-H its 90 % interval "
                 "over the test images; AP50 on test")
    return "\n".join(lines) + "\n"


# ---- the whole demo ------------------------------------------------------------------------------


def run_demo(out_dir: str | os.PathLike[str] = "demo_out", *, quick: bool = False, seed: int = 0,
             budget: DemoBudget | None = None) -> Path:
    """`raredet demo`: everything in the module docstring, printed as it goes; returns the raredet
    run's operating-points config."""
    from raredet.evaluation.compare import compare_runs

    budget = budget or (QUICK if quick else FULL)
    out, start = Path(out_dir), time.perf_counter()
    note = prepare_out_dir(out)
    print(f"raredet demo{' --quick' if quick else ''}: rare defects on manufactured parts -> {out}/")
    if note:
        print(f"note: {note}")
    print(f"\n[1/4] synthetic dataset ({budget.train_images} train, {budget.val_images} val and "
          f"{budget.test_images} test images of {budget.image_size} px) in {out / 'data'}; the training "
          "split:")
    print(make_data(out / "data", budget, seed))
    configs = write_configs(out, out / "data", budget)
    print(f"\n[2/4] two runs, {budget.num_steps} steps of batch {budget.batch_size}, seed {seed}")
    for run in RUNS:
        print(f"  {run:<8} {configs[run]}: {CONFIG_HEADERS[run]}")
    strategy = RAREDET_STRATEGY.strip().replace("\n", "\n    ")
    print(f"  raredet's best configuration, merged into the baseline:\n    {strategy}")
    print("\n[3/4] training both side by side (one CPU thread each); evaluating each on val (choosing "
          "thresholds) and test (counting)")
    train_start = time.perf_counter()
    run_both(configs, out, budget.num_steps, seed)
    train_seconds = time.perf_counter() - train_start
    print("\n[4/4] " + found_table({run: out / run / "eval" for run in RUNS},
                                   {run: out / run / TEST_EVAL for run in RUNS},
                                   _rarest_first(out / "data")), end="")
    compare_runs([out / run for run in RUNS], out / "compare")
    return _print_footer(out, time.perf_counter() - start, train_seconds)


def _rarest_first(data: Path) -> list[str]:
    """Class names by training box count, rarest first (val and test have a floor per class)."""
    boxes = _read_json(data / "summary.json")["train"]["boxes"]
    return sorted(boxes, key=lambda name: boxes[name])


def _print_footer(out: Path, total: float, train_seconds: float) -> Path:
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(f"\ntime: {total / 60:.1f} min in all, {train_seconds / 60:.1f} min of it training and evaluating "
          f"(CPU time of the runs: {(children.ru_utime + children.ru_stime) / 60:.1f} min)")
    print("reports (open in a browser): test split, where the table's figures come from:")
    for run in RUNS:
        print(f"  {run}: {out / run / TEST_EVAL / 'report.html'}")
    print(f"  val split (where the thresholds were chosen): {out / RUNS[0] / 'eval' / 'report.html'}, "
          f"{out / RUNS[1] / 'eval' / 'report.html'}")
    print(f"  both runs side by side (val): {out / 'compare' / 'compare.html'}")
    config_path = out / "raredet" / "eval" / OPERATING_CONFIG
    print("operating-points config (the raredet run with its per-class thresholds, for raredet "
          f"predict/export and the TF OD API):\n  {config_path}")
    if not config_path.is_file():  # e.g. a block with its own calibration_config: raredet eval said why
        run_dir = out / "raredet"
        print(f"  (not written: see {run_dir / 'run.log'}; {run_dir / 'eval' / ops.JSON_NAME} holds the "
              "thresholds)")
    print("with your own data (a VOC folder, a COCO JSON or TFRecords): raredet init DATA --model "
          "ssd_mobilenet_v2_fpnlite_320x320 --out DIR writes the config, TFRecords and class statistics")
    return config_path
