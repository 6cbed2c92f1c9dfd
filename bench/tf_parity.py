"""Forward parity with the TF OD API on full-size models: raredet builds the folder's pipeline.config, loads
its TF checkpoint (``load_checkpoint_weights(..., "full")``) and runs TF's resized image; prints the
max abs difference of the raw outputs (class logits without TF's background column, box encodings) and
of the detections TF scores above 0.01 (normalised, as TF's, to the true image inside a padded input).

A folder is what ``tests/fixtures/tf_models/write_fixture.py`` writes (TF 2.15.1 + the OD API; never
run by CI). For a full-size case, give it a zoo config unchanged (random weights, every variable set)::

    PYTHONPATH=/work/peer/src/research /work/peer/venv/bin/python tests/fixtures/tf_models/write_fixture.py \\
        src/raredet/zoo/configs/ssd_mobilenet_v2_fpnlite_320x320_coco17_tpu-8.config \\
        /tmp/fpnlite320 --image_size 360 480
    .venv/bin/python bench/tf_parity.py /tmp/fpnlite320 [more folders ...]

SSD families (``model.ssd``): add a family by writing its folder; nothing here is family-specific.
Faster R-CNN (``model.faster_rcnn``): the second stage's raw outputs per proposal (``cls_logits`` with
TF's background column, as raredet's; ``box_deltas`` against ``refined_box_encodings``) and the proposals,
after ``postprocess(model(image), true size)`` recomputed them for TF's true image shape
(``with_image_sizes``), rows matched by proposal box (two proposals whose objectness differs by float
noise may come out in either order); detections normalised to the true image, as TF's.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path
from typing import cast

import numpy as np
import torch

import raredet.config
from raredet import builders
from raredet.modeling import SSD, load_checkpoint_weights


def compare(folder: Path) -> dict[str, float]:
    """Max abs differences between raredet's and TF's outputs for one written folder."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = raredet.config.load(folder / "pipeline.config")
    model = cast(SSD, builders.build_model(builders.model_message(loaded.pipeline))[0])
    start = time.perf_counter()
    load_checkpoint_weights(model, folder / "checkpoint" / "ckpt-0", "full")
    load_s = time.perf_counter() - start
    tf = np.load(folder / "tf_outputs.npz")
    if type(model).__name__ == "FasterRCNN":
        return {**compare_faster_rcnn(model, dict(tf)), "load_s": load_s}
    image = torch.from_numpy(tf["resized_image"]).permute(2, 0, 1)[None]
    # the true image inside TF's padded one: the clip window, and what TF's boxes are normalised to
    height, width = (int(v) for v in tf["true_image_shape"][:2])
    with torch.no_grad():
        out = model.eval()(image)
        det = model.postprocess(out, torch.tensor([[height, width]]))
    tf_logits = tf["predict/class_predictions_with_background"]
    if tf_logits.shape[1] == model.num_classes + 1:  # TF's background column (add_background_class)
        tf_logits = tf_logits[:, 1:]
    scores = tf["postprocess/detection_scores"]
    n = int((scores > 0.01).sum())
    boxes = det["detection_boxes"][0, :n].numpy()[:, [1, 0, 3, 2]] / np.array([height, width] * 2)
    return {
        "anchors": float(tf_logits.shape[0]),
        "logit_scale": float(np.abs(tf_logits).max()),
        "cls_logits": float(np.abs(out["cls_logits"][0].numpy() - tf_logits).max()),
        "box_deltas": float(np.abs(out["box_deltas"][0].numpy() - tf["predict/box_encodings"]).max()),
        "detections": float(n), "num_detections_ours": float(det["num_detections"][0]),
        "det_boxes": float(np.abs(boxes - tf["postprocess/detection_boxes"][:n]).max()) if n else 0.0,
        "det_scores": float(np.abs(det["detection_scores"][0, :n].numpy() - scores[:n]).max()) if n else 0.0,
        "det_classes_differ": float((det["detection_classes"][0, :n].numpy()
                                     != tf["postprocess/detection_classes"][:n]).sum()),
        "load_s": load_s,
    }


def compare_faster_rcnn(model: torch.nn.Module, tf: dict[str, np.ndarray]) -> dict[str, float]:
    """Faster R-CNN's figures (module docstring): the image as TF resized and padded it, its true size."""
    image = torch.from_numpy(tf["resized_image"].astype(np.float32)).permute(2, 0, 1)[None]
    height, width = (int(v) for v in tf["true_image_shape"][:2])
    sizes = torch.tensor([[height, width]])
    with torch.no_grad():
        out = model.eval()(image)
        det = model.postprocess(out, sizes)  # type: ignore[operator]
        out = model.with_image_sizes(out, sizes)  # type: ignore[operator]
    p = int(tf["predict/num_proposals"])
    logits = tf["predict/class_predictions_with_background"][:p]
    encodings = tf["predict/refined_box_encodings"][:p]
    # rows matched by box: proposals whose objectness differs by float noise (~1e-6) may swap places
    proposals = out["proposals"][0].numpy()[:, [1, 0, 3, 2]]
    distance = np.abs(tf["predict/proposal_boxes"][:p, None, :] - proposals[None]).max(-1)  # [p, P]
    match = distance.argmin(1)
    scores = tf["postprocess/detection_scores"]
    n = int((scores > 0.01).sum())
    boxes = det["detection_boxes"][0, :n].numpy()[:, [1, 0, 3, 2]] / np.array([height, width] * 2)
    return {
        "proposals": float(p), "proposals_ours": float(out["proposal_valid"][0].sum()),
        "proposal_px": float(distance.min(1).max()),
        "proposals_swapped": float((match != np.arange(p)).sum()),
        "rpn_objectness": float(np.abs(out["rpn_objectness"][0].numpy()
                                       - tf["predict/rpn_objectness_predictions_with_background"]).max()),
        "rpn_box": float(np.abs(out["rpn_box_deltas"][0].numpy() - tf["predict/rpn_box_encodings"]).max()),
        "logit_scale": float(np.abs(logits).max()),
        "cls_logits": float(np.abs(out["cls_logits"][0].numpy()[match] - logits).max()),
        "box_deltas": float(np.abs(out["box_deltas"][0].numpy()[match] - encodings).max()),
        "num_detections": float(tf["postprocess/num_detections"]),
        "num_detections_ours": float(det["num_detections"][0]),
        "detections": float(n),
        "det_boxes": float(np.abs(boxes - tf["postprocess/detection_boxes"][:n]).max()) if n else 0.0,
        "det_scores": float(np.abs(det["detection_scores"][0, :n].numpy() - scores[:n]).max()) if n else 0.0,
        "det_classes_differ": float((det["detection_classes"][0, :n].numpy()
                                     != tf["postprocess/detection_classes"][:n]).sum()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", type=Path)
    args = parser.parse_args()
    for folder in args.folders:
        figures = compare(folder)
        print(folder.name + ": " + ", ".join(f"{k} {v:.3g}" for k, v in figures.items()))


if __name__ == "__main__":
    main()
