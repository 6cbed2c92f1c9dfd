"""`make bench`: run every benchmark, save bench/results/<name>.json and bench/results/SUMMARY.md.

Each benchmark module exposes `run(quick: bool) -> dict` with a `summary` list of Markdown lines.
`--quick` makes every benchmark small (a smoke run); the figures in docs come from a full run.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback

from bench.common import RESULTS_DIR, machine, save_result
from raredet.fileio import atomic_write_text

BENCHMARKS = ["bench_tfrecord", "bench_model", "bench_loss", "bench_train", "bench_eval", "imbalance"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small smoke-sized runs")
    parser.add_argument("--only", nargs="*", choices=BENCHMARKS, help="run only these benchmarks")
    args = parser.parse_args(argv)
    lines = ["# raredet benchmark results", "", f"Machine: `{machine()}`", ""]
    failed = []
    for name in args.only or BENCHMARKS:
        print(f"== {name}", flush=True)
        start = time.perf_counter()
        try:
            result = importlib.import_module(f"bench.{name}").run(quick=args.quick)
        except Exception:  # report every benchmark, then fail at the end
            traceback.print_exc()
            failed.append(name)
            lines += [f"## {name}", "", "FAILED (see the console output)", ""]
            continue
        save_result(name, result)
        lines += [f"## {name} ({time.perf_counter() - start:.0f} s)", "", *result.get("summary", []), ""]
    atomic_write_text(RESULTS_DIR / "SUMMARY.md", "\n".join(lines) + "\n")
    print(f"wrote {RESULTS_DIR / 'SUMMARY.md'}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
