"""The evaluation pipeline: example images from an image folder (rarest class first, unreadable ones
named), and every output written even with no detections and no ground truth."""

from __future__ import annotations

from pathlib import Path

import pytest

from raredet.evaluation.options import EvalOptions
from raredet.evaluation.pipeline import evaluate_detections


def test_examples_from_image_dir_rarest_first(tmp_path: Path) -> None:
    from PIL import Image

    from raredet.errors import DataError
    from raredet.evaluation.pipeline import examples_from_files

    gt = {"images": [{"id": i, "file_name": f"{i}.png"} for i in (1, 2, 3)],
          "categories": [{"id": 1, "name": "common"}, {"id": 2, "name": "rare"}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5]},
                          {"id": 2, "image_id": 2, "category_id": 1, "bbox": [1, 1, 5, 5]},
                          {"id": 3, "image_id": 3, "category_id": 2, "bbox": [2, 2, 6, 6]}]}
    dets = [{"image_id": 3, "category_id": 2, "bbox": [2, 2, 6, 6], "score": 0.9}]
    for i in (1, 2, 3):
        Image.new("RGB", (16, 12), (i * 40, 0, 0)).save(tmp_path / f"{i}.png")
    examples = examples_from_files(gt, dets, tmp_path, 2)
    assert [e.title for e in examples] == ["3.png", "1.png"]  # the image with the rare class first
    assert examples[0].image.shape == (12, 16, 3)
    assert examples[0].gt_boxes.tolist() == [[2, 2, 8, 8]] and examples[0].det_classes.tolist() == [1]
    (tmp_path / "3.png").unlink()
    with pytest.raises(DataError, match=r"3\.png: cannot read image 3"):
        examples_from_files(gt, dets, tmp_path, 2)


def test_no_detections_and_no_ground_truth_still_write_everything(tmp_path: Path) -> None:
    gt = {"images": [{"id": 1}], "categories": [{"id": 1, "name": "a"}], "annotations": []}
    result = evaluate_detections(gt, [], out_dir=tmp_path,
                                 options=EvalOptions(metrics_set=["pascal_voc_detection_metrics"]))
    assert result["per_class"][0]["VOC_AP50"] is None and result["per_class"][0]["FP"] == 0
    assert "no ground truth" in (tmp_path / "per_class.md").read_text()
    assert (tmp_path / "confusion_matrix.png").stat().st_size > 0 and (tmp_path / "pr_curves.png").exists()
    assert "DetectionBoxes_Precision/mAP" not in (tmp_path / "metrics.json").read_text()  # VOC only
