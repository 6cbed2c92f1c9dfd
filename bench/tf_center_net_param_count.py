"""The TF OD API's trainable-variable count of the zoo's CenterNet Hourglass-104 block with 4 classes, the
reference for tests/bench/test_bench_model.py (bench_model's `centernet_hourglass104` row).

Run with the TF OD API (TF 2.15.1 here): never imported by raredet or its tests.

    PYTHONPATH=/work/peer/src/research /work/peer/venv/bin/python bench/tf_center_net_param_count.py

Printed on 7 Dec 2026: 191244944.
"""

from pathlib import Path

import tensorflow as tf
from google.protobuf import text_format
from object_detection.builders import model_builder
from object_detection.protos import pipeline_pb2

CONFIG = (Path(__file__).resolve().parents[1] / "src" / "raredet" / "zoo" / "configs"
          / "centernet_hourglass104_512x512_coco17_tpu-8.config")

cfg = text_format.Parse(CONFIG.read_text(), pipeline_pb2.TrainEvalPipelineConfig())
cfg.model.center_net.num_classes = 4  # bench_model.NUM_CLASSES
model = model_builder.build(cfg.model, is_training=True)
images, shapes = model.preprocess(tf.zeros((1, 128, 128, 3)))
model.predict(images, shapes)  # creates the variables
print(sum(int(tf.size(v)) for v in model.trainable_variables))
