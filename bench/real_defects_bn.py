"""Diagnostic for bench/real_defects.py (issue #29): a raredet run's test AP50 per class after its
batch-norm moving statistics are re-estimated on training images, no weight changed.

Why: after a short run from random weights (NEU-DET, 1500 steps, the zoo's decay 0.997) the moving
variances still hold 0.997^1500 = 1.1 % of their initial 1.0, which outweighs the small true variances
of some layers, and in inference mode both the TF OD API's and raredet's models give the same boxes on
every image (docs/imbalance.md, "Real defect images"). Re-estimating the statistics (a cumulative
average over `--images` training images in training mode, no gradient) shows whether the weights learned.

    .venv/bin/python -m bench.real_defects_bn OUT RUN [--images 320]   # OUT: its --out; RUN: raredet_0
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.real_defects import groundtruth, score_run
from raredet import builders
from raredet.commands.predict import coco_results, detect
from raredet.commands.trained import load_trained_model
from raredet.data.dataset import collate
from raredet.data.tfrecord import TFRecordReader


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("run")
    parser.add_argument("--images", type=int, default=320)
    args = parser.parse_args()
    data = args.out / "data"
    trained = load_trained_model(args.out / args.run, data / "pipeline.config")
    resizer = builders.build_resizer(builders.model_message(trained.pipeline))
    model = trained.model
    for bn in model.modules():
        if isinstance(bn, torch.nn.modules.batchnorm._BatchNorm):
            bn.reset_running_stats()
            bn.momentum = None  # cumulative average over the batches below
    train = TFRecordReader([data / "train.tfrecord"], trained.label_map)
    model.train()
    with torch.no_grad():
        for start in range(0, min(args.images, len(train)) - 7, 8):
            model(collate([resizer(train.example(i)) for i in range(start, start + 8)])["images"])
    model.eval()
    ids = np.asarray(trained.label_map.ids, dtype=np.int64)
    found: dict[str, list[dict[str, Any]]] = {}
    for split in ("val", "test"):
        reader = TFRecordReader([data / f"{split}.tfrecord"], trained.label_map)
        found[split] = []
        with torch.no_grad():
            for start in range(0, len(reader), 16):
                batch = [resizer(reader.example(i)) for i in range(start, min(start + 16, len(reader)))]
                for k, det in enumerate(detect(model, batch)):
                    found[split] += coco_results(start + k + 1, det, ids)
    gt = {s: groundtruth(data / f"{s}.tfrecord", trained.label_map) for s in ("val", "test")}
    rows = score_run(gt["val"], found["val"], gt["test"], found["test"], trained.label_map)
    for name, row in rows.items():
        print(f"{name:16s} AP50 {100 * row['ap50']:5.1f}  recall at p0.9 {100 * row['recall_at_p90']:5.1f}")


if __name__ == "__main__":
    main()
