"""`raredet demo`: the main job end to end on the synthetic rare-defects dataset, in minutes on a CPU.

1. Write the dataset (`raredet.data.synth`: scratch : dent : crack boxes = 100 : 20 : 3) and print its
   class statistics.
2. Write two real `pipeline.config` files: the **baseline**, the TF OD API model zoo's RetinaNet recipe
   (focal loss alpha 0.25, gamma 2, no class weights), and **raredet**, the same plus
   `RAREDET_STRATEGY`, the class-weighting block that the imbalance study (`bench/imbalance.py`,
   `docs/imbalance.md`) found to work best.
3. Train both with the same seed (so they differ only in the strategy) side by side, one process and
   one CPU thread each — for a model this small, two threads in one process mostly wait for each other,
   while two processes keep both cores busy — then evaluate each on the validation split.
4. Print the per-class comparison, rarest class first, and the paths of the HTML reports.

Each run is exactly `raredet train` + `raredet eval` on its config (the same library calls), so the
numbers printed are measurements of that run, and every step can be rerun by hand.
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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import text_format

from raredet import builders, config
from raredet.commands.evaluate import eval_from_config
from raredet.commands.stats import stats_for_config
from raredet.commands.train import train_from_config
from raredet.config import parse_config
from raredet.data.synth import make_synthetic_dataset
from raredet.errors import ConfigError, RaredetError
from raredet.fileio import atomic_write_text
from raredet.losses import format_class_weight_table

# The raredet run's strategy: a pipeline.config fragment merged into the baseline config (oneof members
# replace, sub-messages merge, repeated fields append). The imbalance study decides it: paste its best
# block from docs/imbalance.md here (the demo trains at the study's budget with the study's base config,
# so the study's seed-0 run of that block is what the demo reproduces). The study's best so far:
# explicit weights (the automatic schemes with crack weights above ~10 made this small model collapse).
RAREDET_STRATEGY = """
model { ssd { loss {
  class_weights {
    weight { name: "crack" value: 8.0 }
    weight { name: "dent" value: 2.0 }
  }
} } }
"""


@dataclass(frozen=True)
class DemoBudget:
    """Dataset size and training length; the model is the synthetic set's default config."""

    images: int  # train + val
    image_size: int
    num_steps: int
    batch_size: int
    min_val_boxes: int  # validation boxes of every class at least, so the rare class's AP means something


# Calibrated (docs/imbalance.md, "The data and the budget"): at 128 px a crack is visibly not a scratch,
# and one run of 900 steps takes ~2.6 min on one idle core (0.17 s/step measured), so two side by side
# fit `make demo`'s 10 minutes with the installation. The imbalance study trains at this same budget.
FULL = DemoBudget(images=1000, image_size=128, num_steps=900, batch_size=16, min_val_boxes=60)
QUICK = DemoBudget(images=24, image_size=64, num_steps=4, batch_size=4, min_val_boxes=2)
# Both runs: trained from scratch at the synthetic config's learning rate, an occasional exploding step
# would otherwise end a run (TrainingDiverged); clipping the gradient norm keeps both runs alive.
GRADIENT_CLIPPING_BY_NORM = 10.0
RUNS = ("baseline", "raredet")
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
    make_synthetic_dataset(data, images=budget.images, seed=seed, image_size=budget.image_size,
                           num_shards=1, min_val_boxes=budget.min_val_boxes, num_steps=budget.num_steps)
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
    "raredet": "the baseline plus the class-weighting block RAREDET_STRATEGY of raredet/commands/demo.py",
}


def write_configs(out: Path, data: Path, budget: DemoBudget) -> dict[str, Path]:
    """`out/<run>/pipeline.config` for both runs; returns run name -> path."""
    base_path = data / "pipeline.config"
    base = parse_config(base_path.read_text(encoding="utf-8"), base_path)
    base.train_config.batch_size = budget.batch_size
    base.train_config.gradient_clipping_by_norm = GRADIENT_CLIPPING_BY_NORM
    paths = {}
    for run in RUNS:
        cfg = type(base)()
        cfg.CopyFrom(base)
        if run == "raredet":
            text_format.Merge(RAREDET_STRATEGY, cfg)
        run_dir = out / run
        _relative_inputs(cfg, run_dir, data)
        header = (f"# raredet demo, run '{run}': {CONFIG_HEADERS[run]}.\n# Rerun: raredet train "
                  f"--pipeline_config_path {run_dir / 'pipeline.config'} --model_dir {run_dir}\n")
        paths[run] = atomic_write_text(run_dir / "pipeline.config", header + text_format.MessageToString(cfg))
    return paths


def class_weight_table(config_path: Path) -> str:
    """The class weights a config resolves to on its training data (what training will use)."""
    return format_class_weight_table(builders.resolve_class_weight_table(config.load(config_path)))


# ---- the runs ------------------------------------------------------------------------------------


def train_and_eval(config_path: str, run_dir: str, seed: str) -> None:
    """One run in this process and one CPU thread: `raredet train`, then `raredet eval`."""
    import torch

    torch.set_num_threads(1)
    result = train_from_config(config_path, run_dir, seed=int(seed), device="cpu", num_workers=0)
    if result.interrupted:  # stopped by a signal (checkpoint written): no evaluation of a partial run
        raise SystemExit(130)
    eval_from_config(config_path, run_dir, device="cpu")


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


# ---- the whole demo ------------------------------------------------------------------------------


def _overall(run_dir: Path) -> str:
    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text(encoding="utf-8"))
    metrics = metrics.get("metrics", metrics)
    return ", ".join(f"{name} {metrics[key]:.3f}" for key, name in (
        ("DetectionBoxes_Precision/mAP", "mAP"), ("DetectionBoxes_Precision/mAP@.50IOU", "mAP@.50"))
        if isinstance(metrics.get(key), int | float))


def run_demo(out_dir: str | os.PathLike[str] = "demo_out", *, quick: bool = False, seed: int = 0,
             budget: DemoBudget | None = None) -> Path:
    """`raredet demo`: everything in the module docstring, printed as it goes; returns the comparison's
    HTML page."""
    from raredet.evaluation.compare import compare_runs

    budget = budget or (QUICK if quick else FULL)
    out, start = Path(out_dir), time.perf_counter()
    note = prepare_out_dir(out)
    print(f"raredet demo{' --quick' if quick else ''}: rare defects on manufactured parts -> {out}/")
    if note:
        print(f"note: {note}")
    print(f"\n[1/4] synthetic dataset ({budget.images} images of {budget.image_size} px) in {out / 'data'}")
    print(make_data(out / "data", budget, seed))
    configs = write_configs(out, out / "data", budget)
    print(f"\n[2/4] configs (both: {budget.num_steps} steps of batch {budget.batch_size}, seed {seed})")
    for run in RUNS:
        print(f"  {configs[run]}: {CONFIG_HEADERS[run]}")
    strategy = RAREDET_STRATEGY.strip().replace("\n", "\n    ")
    print(f"  the raredet run adds:\n    {strategy}\n  which resolves to:")
    print("    " + class_weight_table(configs["raredet"]).replace("\n", "\n    "))
    print("\n[3/4] training both runs side by side (one CPU thread each), then evaluating on the val split")
    train_start = time.perf_counter()
    run_both(configs, out, budget.num_steps, seed)
    train_seconds = time.perf_counter() - train_start
    for run in RUNS:
        print(f"  {run}: {_overall(out / run)}")
    print("\n[4/4] per-class comparison, rarest class first (Δ: raredet minus baseline)")
    print(compare_runs([out / run for run in RUNS], out / "compare"), end="")
    _print_footer(out, time.perf_counter() - start, train_seconds)
    return out / "compare" / "compare.html"


def _print_footer(out: Path, total: float, train_seconds: float) -> None:
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(f"\ntime: {total / 60:.1f} min in all, {train_seconds / 60:.1f} min of it training and evaluating "
          f"(CPU time of the runs: {(children.ru_utime + children.ru_stime) / 60:.1f} min)")
    print("reports (open in a browser):")
    for run in RUNS:
        print(f"  {run}: {out / run / 'eval' / 'report.html'}")
    print(f"  comparison: {out / 'compare' / 'compare.html'}")
