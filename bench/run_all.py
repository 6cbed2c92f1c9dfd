"""`make bench`: run every benchmark, save bench/results/<name>.json and bench/results/SUMMARY.md
(<name> without the `bench_` prefix: the file each module also writes when run on its own).

Each benchmark module exposes `run(quick: bool) -> dict` with a `summary` list of Markdown lines.
`--quick` makes every benchmark small (a smoke run) and writes into bench/results/quick/ instead, so a
smoke run never overwrites the figures the docs quote. With `--only`, the summary still lists the other
benchmarks, from their last saved results (marked as such).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import RESULTS_DIR, machine
from raredet.fileio import atomic_write_json, atomic_write_text

BENCHMARKS = ["bench_zoo", "bench_tfrecord", "bench_model", "bench_loss", "bench_postprocess", "bench_train",
              "bench_eval", "imbalance"]


def _run_one(name: str, quick: bool, out_dir: Path) -> tuple[list[str], bool]:
    """Run one benchmark and save its JSON; returns its summary section and whether it succeeded."""
    print(f"== {name}", flush=True)
    start = time.perf_counter()
    try:
        result = importlib.import_module(f"bench.{name}").run(quick=quick)
    except Exception:  # report every benchmark, then fail at the end
        import traceback

        traceback.print_exc()
        return [f"## {name}", "", "FAILED (see the console output)", ""], False
    seconds = time.perf_counter() - start
    print("\n".join(result.get("summary", [])), flush=True)  # e.g. bench_zoo's table next to issue 15's
    atomic_write_json(_result_path(out_dir, name), {"machine": machine(), "seconds": seconds, **result})
    return [f"## {name} ({seconds:.0f} s)", "", *result.get("summary", []), ""], True


def _result_path(out_dir: Path, name: str) -> Path:
    """results/<name without bench_>.json: the same file the module writes when run on its own."""
    return out_dir / f"{name.removeprefix('bench_')}.json"


def _saved_section(name: str, out_dir: Path) -> list[str]:
    """The summary of a benchmark not run this time, from its saved JSON (if any)."""
    path = _result_path(out_dir, name)
    if not path.exists():
        return [f"## {name}", "", "not run yet", ""]
    saved: dict[str, Any] = json.loads(path.read_text())
    return [f"## {name} (saved results, not re-run by this command)", "", *saved.get("summary", []), ""]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small smoke-sized runs (into results/quick/)")
    parser.add_argument("--only", nargs="*", choices=BENCHMARKS, help="run only these benchmarks")
    args = parser.parse_args(argv)
    out_dir = RESULTS_DIR / "quick" if args.quick else RESULTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = ["# raredet benchmark results", "", f"Machine: `{machine()}`", ""]
    failed = []
    for name in BENCHMARKS:
        if args.only and name not in args.only:
            lines += _saved_section(name, out_dir)
            continue
        section, ok = _run_one(name, args.quick, out_dir)
        lines += section
        failed += [] if ok else [name]
    atomic_write_text(out_dir / "SUMMARY.md", "\n".join(lines) + "\n")
    print(f"wrote {out_dir / 'SUMMARY.md'}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
