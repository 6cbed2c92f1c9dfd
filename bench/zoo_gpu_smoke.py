"""Train the TF2 zoo's EfficientDet D5, D6 and D7 configs two steps each from the CLI, on a GPU.

Each zoo config (src/raredet/zoo/configs, verbatim) gets only what a user changes: `num_classes`
3, the synthetic rare-defects TFRecords and label map, `batch_size` (default 2) and no
`fine_tune_checkpoint` (a TF checkpoint cannot be loaded). The model runs at the config's native size
(1280, 1408, 1536: the `keep_aspect_ratio_resizer` and the `random_scale_crop_and_pad_to_square`
crop are left as they are) unless `--size` sets a smaller one. The synthetic images are
`--data_size` pixels (default 256) and are resized up by the config's own resizer, so writing the data
takes about a second; what the GPU sees is the native size.

Each config is trained by `raredet train` (`raredet.cli.main`, the function `python -m raredet` calls,
in this process so that the CUDA start-up is paid once) with `--device`, `--num_train_steps 2`. One line
per config: the loss logged at each step, the seconds of the `raredet train` call (model build, data,
two steps and the final checkpoint) and, on CUDA, the peak GPU memory.

    python -m bench.zoo_gpu_smoke                       # the GPU run: D5, D6, D7 at native size, cuda
    python -m bench.zoo_gpu_smoke --device cpu --size 128 --configs d5   # the CPU check of the script

Exit code 0 when every config trained with finite losses, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import tempfile
import time
import warnings
from pathlib import Path

CONFIGS = {
    "d5": "ssd_efficientdet_d5_1280x1280_coco17_tpu-32.config",
    "d6": "ssd_efficientdet_d6_1408x1408_coco17_tpu-32.config",
    "d7": "ssd_efficientdet_d7_1536x1536_coco17_tpu-32.config",
}


def small_copy(name: str, data_dir: Path, batch: int, size: int | None) -> Path:
    """The zoo config `name` as a user edits it (`bench.common.zoo_user_copy`), absolute data paths."""
    from bench.common import zoo_user_copy

    return zoo_user_copy(name, data_dir, batch=batch, size=size, absolute_paths=True)


def native_size(name: str) -> int:
    return int(re.search(r"_(\d+)x\d+_", name).group(1))  # type: ignore[union-attr]


def train_one(key: str, data_dir: Path, work: Path, args: argparse.Namespace) -> tuple[bool, str]:
    """`raredet train` two steps on one config; returns (finite losses, the line to print)."""
    import torch

    from raredet import cli

    name = CONFIGS[key]
    path = small_copy(name, data_dir, args.batch, args.size)
    model_dir = work / f"run_{key}"
    argv = ["train", "--pipeline_config_path", str(path), "--model_dir", str(model_dir),
            "--device", args.device, "--num_train_steps", str(args.steps), "--precision", args.precision]
    cuda = args.device == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the zoo's TPU fields, which raredet parses but does not act on
        code = cli.main(argv)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    log = model_dir / "train" / "log.jsonl"
    records = [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []
    losses = [r.get("Loss/total_loss", math.nan) for r in records]
    ok = code == 0 and len(records) == args.steps and all(math.isfinite(x) for x in losses)
    size = args.size or native_size(name)
    reg = records[0].get("Loss/regularization_loss", math.nan) if records else math.nan
    memory = f", peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if cuda else ""
    line = (f"{key} {name} {size}x{size} batch {args.batch} {args.device}: "
            f"Loss/total_loss {' '.join(f'{x:.4f}' for x in losses) or '-'} "
            f"(regularization {reg:.4f}), {seconds:.1f} s{memory}, {'ok' if ok else f'FAILED (exit {code})'}")
    return ok, line


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--size", type=int, default=None, help="image side for every config (default: native)")
    p.add_argument("--data_size", type=int, default=256, help="side of the synthetic images (default 256)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    p.add_argument("--work", help="directory for the data and runs (default: a temporary one)")
    args = p.parse_args(argv)

    import torch

    from raredet.data.synth import make_synthetic_dataset

    if args.device == "cuda" and not torch.cuda.is_available():
        print("zoo_gpu_smoke: --device cuda but torch sees no CUDA device", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        data_dir = work / "data"
        start = time.perf_counter()
        make_synthetic_dataset(data_dir, images=8, image_size=args.data_size, num_shards=1, min_val_boxes=1,
                               val_fraction=0.25)
        device = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
        print(f"data: 8 images of {args.data_size}px in {time.perf_counter() - start:.1f} s; "
              f"device {device}; torch {torch.__version__}", flush=True)
        results = []
        for key in args.configs:
            ok, line = train_one(key, data_dir, work, args)
            print(line, flush=True)
            results.append(ok)
    return 0 if all(results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
