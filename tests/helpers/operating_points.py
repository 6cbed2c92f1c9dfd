"""Operating points end to end: `raredet predict` of a model folder, and the exported model's detections
against PyTorch's (the SSD and Faster R-CNN operating-point tests share them)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from raredet.cli import main


def predict_files(tmp: Path, data: Path, name: str, *args: str) -> list[dict]:
    """`raredet predict` of the model in data/run on data's val images, into tmp/name; the detections
    with their image's file name."""
    images = sorted(str(p) for p in (data / "images").glob("val_*.jpg"))
    out = tmp / name
    argv = ["predict", "--model_dir", str(data / "run"), "--images", *images, "--out", str(out), *args]
    assert main(argv) == 0
    files = {e["id"]: e["file_name"] for e in json.loads((out / "images.json").read_text())}
    return [{**d, "file": files[d["image_id"]]} for d in json.loads((out / "detections.json").read_text())]


def assert_exported_equal_pytorch(exported, det, ids) -> None:
    """The exported model's (boxes, scores, classes as label-map ids, num_detections) equal PyTorch's
    post-processed `det`, and every kept detection is above the common threshold 0.5 (where the
    per-class maps put each class's own threshold)."""
    boxes, scores, classes, num = exported
    assert num.tolist() == det["num_detections"].tolist() and num.sum() > 0
    ids = np.asarray(ids)
    for b, n in enumerate(num):
        np.testing.assert_array_equal(classes[b, :n], ids[det["detection_classes"][b, :n].numpy()])
        np.testing.assert_allclose(scores[b, :n], det["detection_scores"][b, :n].numpy(), atol=1e-5)
        np.testing.assert_allclose(boxes[b, :n], det["detection_boxes"][b, :n].numpy(), atol=1e-3)
        assert (scores[b, :n] > 0.5).all()


def detection_key(d: dict) -> tuple:
    return d["file"], d["category_id"], tuple(d["bbox"])
