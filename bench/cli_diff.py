"""Every CLI verb run by two checkouts of raredet on the same inputs, and what differs (for refactors).

    git worktree add /tmp/before <commit>
    .venv/bin/python -m bench.cli_diff /tmp/before . --work /tmp/cli_diff

Each checkout's `src` goes first on PYTHONPATH (the same virtual environment runs both). The verbs, in
order, each on the outputs of the ones before: `synth` (a small synthetic set), `config check`,
`config show`, `stats`, `train` (6 steps, then resumed to 8), `eval` (with `--operating_point`),
`predict`, `export` (TorchScript), `evaluate-detections` on predict's results, `compare` of the two
evaluations and `inspect-checkpoint` on a TF-written fixture. Compared: each verb's exit code and
output (paths and timings masked), and every file it wrote: JSON parsed (time fields dropped), torch
checkpoints tensor by tensor, TorchScript files by their outputs on one batch, text with the work
folders masked, the rest byte for byte (TensorBoard event files, named by time and host, are left out).
A refactor that moves code whole should leave nothing to report but timing-dependent files.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

FIXTURE = Path("tests/fixtures/tf_checkpoints/keras")
TIMING = re.compile(r"\d+(\.\d+)?\s*(s|ms|min|step/s|s/step|it/s|images/s|img/s)\b")


def verbs(data: Path, run: Path) -> list[tuple[str, list[str]]]:
    cfg = str(data / "pipeline.small.config")
    images = str(data / "images" / "train_00000[0-2].jpg")  # a glob: the files are written by synth
    return [
        ("synth", ["synth", "--out", str(data), "--images", "24", "--image_size", "64", "--num_shards", "1",
                   "--seed", "3"]),
        ("config_check", ["config", "check", cfg]),
        ("config_show", ["config", "show", cfg]),
        ("stats", ["stats", "--pipeline_config_path", cfg, "--out", str(run / "stats")]),
        ("train", ["train", "--pipeline_config_path", cfg, "--model_dir", str(run / "model"), "--seed", "0",
                   "--num_train_steps", "6"]),
        ("resume", ["train", "--pipeline_config_path", cfg, "--model_dir", str(run / "model"), "--seed", "0",
                    "--num_train_steps", "8"]),
        ("eval", ["eval", "--pipeline_config_path", cfg, "--checkpoint_dir", str(run / "model"),
                  "--out", str(run / "r1" / "eval"), "--operating_point", "target_precision=0.5"]),
        ("eval_again", ["eval", "--pipeline_config_path", cfg, "--checkpoint_dir", str(run / "model"),
                        "--out", str(run / "r2" / "eval"),
                        "--operating_points_from", str(run / "r1" / "eval" / "operating_points.json")]),
        ("predict", ["predict", "--model_dir", str(run / "model"), "--images", images, "--out",
                     str(run / "predict"), "--min_score", "0.0"]),
        ("export", ["export", "--model_dir", str(run / "model"), "--format", "torchscript", "--out",
                    str(run / "export")]),
        ("evaluate_detections", ["evaluate-detections", "--groundtruth", str(data / "train.json"),
                                 "--detections", str(run / "predict" / "detections.json"),
                                 "--out", str(run / "evaldet")]),
        ("compare", ["compare", str(run / "r1"), str(run / "r2"), "--out", str(run / "compare")]),
        ("inspect_checkpoint", ["inspect-checkpoint", str(FIXTURE)]),
    ]


def small_config(data: Path) -> None:
    text = (data / "pipeline.config").read_text()
    text = re.sub(r"batch_size: \d+", "batch_size: 4", text, count=1)
    (data / "pipeline.small.config").write_text(text)


def run_checkout(src: Path, work: Path) -> dict[str, dict[str, Any]]:
    data, run = work / "data", work / "run"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": str(src.resolve() / "src"), "OMP_NUM_THREADS": "1"}
    found = {}
    for name, args in verbs(data, run):
        if name == "config_check":
            small_config(data)
        proc = subprocess.run([sys.executable, "-m", "raredet.cli", *args], env=env, capture_output=True,
                              text=True, cwd=src, timeout=1800)
        masked = (proc.stdout + proc.stderr).replace(str(work), "WORK").replace(str(src.resolve()), "SRC")
        masked = "\n".join(TIMING.sub("TIME", line) for line in masked.splitlines() if "%|" not in line)
        found[name] = {"exit": proc.returncode, "output": masked}
        print(f"{src}: {name} exit {proc.returncode}", flush=True)
    return found


ROOTS: list[str] = []  # the two work folders, masked in what files say


def _masked(text: str) -> str:
    for root in ROOTS:
        text = text.replace(root, "WORK")
    return text


def _json(path: Path) -> Any:
    def clean(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items() if not re.search(r"time|second|date|wall", k)}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value
    return clean(json.loads(_masked(path.read_text())))


def _same_file(a: Path, b: Path) -> str | None:
    """None when the two files hold the same thing, else what differs."""
    import torch

    if a.suffix == ".json":
        return None if _json(a) == _json(b) else "JSON content differs"
    if a.suffix == ".jsonl":
        rows = [[_json_line(x) for x in _masked(p.read_text()).splitlines()] for p in (a, b)]
        return None if rows[0] == rows[1] else "JSON lines differ"
    if a.suffix == ".pt":
        sa, sb = (torch.load(p, map_location="cpu", weights_only=False) for p in (a, b))
        return _same_state(sa, sb)
    if a.name == "export":
        return _same_exported(a, b)
    if a.suffix in (".html", ".txt", ".md", ".config", ".pbtxt", ".csv"):
        ta, tb = (TIMING.sub("TIME", _masked(p.read_text(errors="replace"))) for p in (a, b))
        return None if ta == tb else "text differs"
    return None if a.read_bytes() == b.read_bytes() else "bytes differ"


def _same_exported(a: Path, b: Path) -> str | None:
    """Two TorchScript exports (their archives embed source paths): the same outputs on one batch."""
    import torch

    config = (Path(ROOTS[0]) / "data" / "pipeline.small.config").read_text()
    size = [int(re.search(rf"{side}: (\d+)", config).group(1)) for side in ("height", "width")]  # type: ignore
    generator = torch.Generator().manual_seed(0)
    batch = torch.randint(0, 256, (2, 3, *size), dtype=torch.uint8, generator=generator)
    outputs = [torch.jit.load(str(p))(batch) for p in (a, b)]
    return _same_state(dict(enumerate(outputs[0])), dict(enumerate(outputs[1])), "export outputs")


def _json_line(line: str) -> Any:
    return {k: v for k, v in json.loads(line).items() if not re.search(r"time|second|img/s|per_s", k)}


def _same_state(a: Any, b: Any, where: str = "") -> str | None:
    import torch

    if isinstance(a, str) and isinstance(b, str):
        return None if _masked(a) == _masked(b) else f"{where} differs"
    if isinstance(a, torch.Tensor):
        return None if isinstance(b, torch.Tensor) and torch.equal(a, b) else f"tensor {where} differs"
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return f"keys of {where or 'checkpoint'} differ: {sorted(set(a) ^ set(b))[:5]}"
        for key in a:
            if re.search(r"time|second", str(key)):
                continue
            if (found := _same_state(a[key], b[key], f"{where}.{key}")) is not None:
                return found
        return None
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            if (found := _same_state(x, y, f"{where}[{i}]")) is not None:
                return found
        return None
    return None if a == b else f"{where} differs: {str(a)[:60]} / {str(b)[:60]}"


def compare_trees(a: Path, b: Path) -> list[str]:
    files_a = {p.relative_to(a) for p in a.rglob("*") if p.is_file() and "tfevents" not in p.name}
    files_b = {p.relative_to(b) for p in b.rglob("*") if p.is_file() and "tfevents" not in p.name}
    lines = [f"only in the first: {p}" for p in sorted(files_a - files_b)]
    lines += [f"only in the second: {p}" for p in sorted(files_b - files_a)]
    for rel in sorted(files_a & files_b):
        if (what := _same_file(a / rel, b / rel)) is not None:
            lines.append(f"{rel}: {what}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before", type=Path, help="a checkout (its src/ is imported)")
    parser.add_argument("after", type=Path)
    parser.add_argument("--work", type=Path, default=Path("/tmp/cli_diff"))
    args = parser.parse_args()
    ROOTS.extend(str(args.work / tag) for tag in ("a", "b"))
    results = [run_checkout(src, args.work / tag) for tag, src in (("a", args.before), ("b", args.after))]
    report = []
    for name in results[0]:
        first, second = results[0][name], results[1].get(name)
        if second is None or first != second:
            report.append(f"{name}: exit {first['exit']} / {second and second['exit']}; output differs"
                          if second and first["exit"] == second["exit"] else f"{name}: exit codes differ")
            if second:
                report += [f"    - {x}" for x in sorted(set(first["output"].splitlines())
                                                        - set(second["output"].splitlines()))[:8]]
                report += [f"    + {x}" for x in sorted(set(second["output"].splitlines())
                                                        - set(first["output"].splitlines()))[:8]]
    report += compare_trees(args.work / "a", args.work / "b")
    print("\n".join(report) if report else "no difference")
    (args.work / "report.txt").write_text("\n".join(report) + "\n")


if __name__ == "__main__":
    main()
