"""The confusion matrix's counts by hand (rows: ground truth classes then background; columns: detected
classes then missed)."""

from __future__ import annotations

import numpy as np
import pytest

from raredet.evaluation import per_class
from raredet.evaluation.coco import prepare_coco
from raredet.evaluation.plots import confusion_counts


@pytest.mark.parametrize("share_prepared", [False, True])
def test_confusion_matrix_by_hand(share_prepared: bool) -> None:
    gt = {"images": [{"id": 1}, {"id": 2}],
          "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
          "annotations": [
              {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10]},
              {"id": 2, "image_id": 1, "category_id": 2, "bbox": [30, 30, 10, 10]},
              {"id": 3, "image_id": 2, "category_id": 1, "bbox": [0, 0, 10, 10]},
          ]}
    dets = [
        {"image_id": 1, "category_id": 2, "bbox": [0, 0, 10, 10], "score": 0.9},  # an "a" seen as "b"
        {"image_id": 1, "category_id": 2, "bbox": [30, 30, 10, 10], "score": 0.8},  # TP b
        {"image_id": 1, "category_id": 1, "bbox": [60, 60, 10, 10], "score": 0.7},  # false alarm a
        {"image_id": 2, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.1},  # below threshold
    ]
    prepared = prepare_coco(gt, dets) if share_prepared else None  # as the pipeline passes it
    mat = confusion_counts(gt, dets, per_class.match_detections(gt, dets, prepared), [1, 2], 0.5, prepared)
    # rows: GT a, GT b, background; columns: detected a, detected b, background (missed)
    np.testing.assert_array_equal(mat, [[0, 1, 1], [0, 1, 0], [1, 0, 0]])
