"""The TF OD API's own training loop, seeded, with its losses recorded at every step.

Run with the TF OD API's Python (never raredet's: TensorFlow is a reference here, not a dependency):

    PYTHONPATH=/work/peer/src/research /work/peer/venv/bin/python bench/tf_reference_train.py \\
        CONFIG MODEL_DIR --steps 200 --seed 0 --losses MODEL_DIR/losses.json

`model_main_tf2.py` logs its losses once every 100 steps, so one noisy step is all it shows at step 100;
this calls the same `model_lib_v2.train_loop` with `num_steps_per_iteration=1`, which records every
step's loss terms and learning rate as summaries (the training itself is the same function, step for
step), and TensorFlow's, NumPy's and Python's random generators seeded with `--seed` (the input
pipeline's shuffling and augmentation draw from TensorFlow's). `record_summaries=False` skips the image
and histogram summaries only. The losses are then read back from the event file into `--losses`:
`{"step": {"Loss/classification_loss": ..., ..., "learning_rate": ...}}`.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path


def read_scalars(train_dir: Path) -> dict[int, dict[str, float]]:
    import tensorflow as tf

    found: dict[int, dict[str, float]] = {}
    for path in sorted(train_dir.glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                if value.tag.startswith("Loss/") or value.tag == "learning_rate":
                    number = tf.make_ndarray(value.tensor) if value.HasField("tensor") else value.simple_value
                    found.setdefault(int(event.step), {})[value.tag] = float(number)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--losses", type=Path, required=True)
    args = parser.parse_args()

    import numpy as np
    import tensorflow as tf
    from object_detection import model_lib_v2

    random.seed(args.seed)
    np.random.seed(args.seed)
    tf.random.set_seed(args.seed)
    model_lib_v2.train_loop(pipeline_config_path=str(args.config), model_dir=str(args.model_dir),
                            train_steps=args.steps, checkpoint_every_n=args.steps, record_summaries=False,
                            num_steps_per_iteration=1)
    losses = read_scalars(args.model_dir / "train")
    args.losses.write_text(json.dumps({str(k): v for k, v in sorted(losses.items())}))
    print(f"{len(losses)} steps of losses -> {args.losses}")


if __name__ == "__main__":
    main()
