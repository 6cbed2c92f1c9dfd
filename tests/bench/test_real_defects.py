"""bench/real_defects: the rare-class thinning and the val-chosen threshold, by hand."""

from __future__ import annotations

import numpy as np
from bench.real_defects import coco_eval, make_rare, score_run, val_threshold

from raredet.config.label_map import LabelMap
from raredet.data.convert import CheckedImage


def _image(names: list[str]) -> CheckedImage:
    return CheckedImage("id", "f.jpg", b"", "jpeg", 10, 10, np.zeros((len(names), 4), np.float32), names)


def test_make_rare_keeps_images_until_the_target_is_reached():
    # 'a': 40 boxes (most frequent); 'r': 10 images of 2 boxes each; ratio 20 -> target ceil(40/20) = 2
    train = [_image(["a", "a"])] * 20 + [_image(["r", "r"])] * 10
    kept, what = make_rare(train, "r", 20.0, seed=0)
    assert what["target_boxes"] == 2 and what["rare_boxes_kept"] == 2 and what["rare_images_kept"] == 1
    assert len(kept) == 21 and sum(im.names.count("r") for im in kept) == 2


def test_val_threshold_is_the_highest_recall_at_precision_0_9():
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    tp = np.array([True, True, True, True, False, True])
    # precision by cut: 1, 1, 1, 1, 0.8, 0.833; recall 4/5 at 0.6 is the highest with precision >= 0.9
    assert val_threshold(scores, tp, gts=5) == 0.6
    assert val_threshold(scores, ~tp, gts=5) is None  # precision never reaches 0.9
    # a tie at the cut: 0.6 is shared by a true and a false positive -> 4/5 = 0.8 there; the cut moves up
    assert val_threshold(np.array([0.9, 0.8, 0.6, 0.6]), np.array([True, True, True, False]), 3) == 0.8


def test_score_run_by_hand():
    labels = LabelMap.from_names(["a", "b"])
    gt = {"images": [{"id": 1, "height": 100, "width": 100}, {"id": 2, "height": 100, "width": 100},
                     {"id": 3, "height": 100, "width": 100}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "area": 100,
                           "iscrowd": 0},
                          {"id": 2, "image_id": 2, "category_id": 1, "bbox": [50, 50, 10, 10], "area": 100,
                           "iscrowd": 0},
                          {"id": 3, "image_id": 3, "category_id": 1, "bbox": [5, 5, 10, 10], "area": 100,
                           "iscrowd": 0}],  # image 3: a box and no detection
          "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}
    dets = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.9},  # hit
            {"image_id": 2, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.8},  # miss
            {"image_id": 2, "category_id": 1, "bbox": [50, 50, 10, 10], "score": 0.3}]  # hit
    rows = score_run(gt, dets, gt, dets, labels)
    # val: precision 1 at 0.9 (recall 1/3), 1/2 at 0.8, 2/3 at 0.3 -> threshold 0.9, test recall 1/3
    assert rows["a"]["val_threshold"] == 0.9 and rows["a"]["recall_at_p90"] == 1 / 3
    assert rows["a"]["test_precision_at_threshold"] == 1.0
    # AP50 (101-point COCO interpolation): precision 1 at recall 0 to 0.33 (34 points: 0, 0.01 .. 0.33),
    # then 2/3 up to recall 2/3 (0.34 .. 0.66: 33 points), 0 beyond (never reached)
    assert abs(rows["a"]["ap50"] - (34 * 1 + 33 * 2 / 3) / 101) < 1e-9
    assert rows["b"]["val_threshold"] is None and np.isnan(rows["b"]["ap50"])
    assert coco_eval(gt, []).eval["precision"].shape[0] == 1  # no detections at all: still evaluates
