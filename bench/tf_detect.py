"""The TF OD API's detections of a trained model on a TFRecord, as COCO results (TF side of
bench/real_defects.py).

Run with the TF OD API's Python (TensorFlow is a reference here, never a raredet dependency):

    PYTHONPATH=/work/peer/src/research /work/peer/venv/bin/python bench/tf_detect.py \\
        CONFIG MODEL_DIR RECORDS.tfrecord OUT.json

Builds the model of CONFIG with `model_builder.build(..., is_training=False)`, restores the newest
checkpoint of MODEL_DIR (`tf.train.Checkpoint(model=...)`, as the TF OD API's exporter does), and runs
`preprocess -> predict -> postprocess` on each record's decoded image, one image at a time. Writes a COCO
results list: `image_id` = the record's position in the file + 1, `category_id` = the TF class index + 1
(the label-map id, as the TF OD API's label_id_offset), `bbox` [x, y, w, h] in the image's pixels (TF's
normalised boxes times the image size), `score`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("records", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--step_times", type=Path, help="also write the training's seconds per step (median "
                        "of the wall-time gaps between MODEL_DIR/train's per-step loss events) here")
    args = parser.parse_args()

    import tensorflow as tf
    from object_detection.builders import model_builder
    from object_detection.utils import config_util

    configs = config_util.get_configs_from_pipeline_file(str(args.config))
    model = model_builder.build(configs["model"], is_training=False)
    latest = tf.train.latest_checkpoint(str(args.model_dir))
    if latest is None:
        raise SystemExit(f"{args.model_dir}: no TF checkpoint")
    tf.train.Checkpoint(model=model).restore(latest).expect_partial()

    @tf.function
    def detect(image: tf.Tensor) -> dict[str, tf.Tensor]:
        preprocessed, shapes = model.preprocess(tf.cast(image[None], tf.float32))
        return model.postprocess(model.predict(preprocessed, shapes), shapes)

    results = []
    features = {"image/encoded": tf.io.FixedLenFeature([], tf.string)}
    for index, record in enumerate(tf.data.TFRecordDataset(str(args.records))):
        image = tf.io.decode_image(tf.io.parse_single_example(record, features)["image/encoded"], channels=3,
                                   expand_animations=False)
        height, width = int(image.shape[0]), int(image.shape[1])
        det = detect(image)
        n = int(det["num_detections"][0])
        boxes = det["detection_boxes"][0, :n].numpy()  # [n, 4] ymin, xmin, ymax, xmax normalised
        for (y0, x0, y1, x1), c, s in zip(boxes, det["detection_classes"][0, :n].numpy(),
                                          det["detection_scores"][0, :n].numpy(), strict=True):
            results.append({"image_id": index + 1, "category_id": int(c) + 1,
                            "bbox": [float(x0 * width), float(y0 * height), float((x1 - x0) * width),
                                     float((y1 - y0) * height)], "score": float(s)})
    args.out.write_text(json.dumps(results))
    if args.step_times is not None:
        args.step_times.write_text(json.dumps(step_seconds(args.model_dir / "train")))
    print(f"{index + 1} images, {len(results)} detections from {latest} -> {args.out}")


def step_seconds(train_dir: Path) -> dict[str, float | int]:
    """Median seconds between consecutive steps' Loss/total_loss events (the first 5 steps left out)."""
    import statistics

    import tensorflow as tf

    walls = {}
    for path in sorted(train_dir.glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            if any(v.tag == "Loss/total_loss" for v in event.summary.value):
                walls[int(event.step)] = event.wall_time
    steps = sorted(walls)
    gaps = [(walls[b] - walls[a]) / (b - a) for a, b in zip(steps, steps[1:], strict=False) if a >= 5]
    median = statistics.median(gaps) if gaps else float("nan")
    return {"steps_seen": len(steps), "median_seconds_per_step": median}


if __name__ == "__main__":
    main()
