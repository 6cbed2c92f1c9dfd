"""engine.evaluate with a fake model whose postprocess returns known boxes (no training)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from raredet.config import LabelMap
from raredet.engine.evaluate import evaluate
from raredet.evaluation.options import EvalOptions


class FakeSSD(nn.Module):
    """forward gives a fixed-size dict; postprocess returns the detections it was built with."""

    def __init__(self, detections: list[dict[str, torch.Tensor]]) -> None:
        super().__init__()
        self.detections = detections  # one postprocess dict per batch, in order
        self.calls = 0
        self.modes: list[bool] = []
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        b = images.shape[0]
        self.modes.append(self.training)
        return {"cls_logits": torch.zeros(b, 4, 2) + self.bias, "box_deltas": torch.zeros(b, 4, 4),
                "anchors": torch.zeros(4, 4)}

    def postprocess(self, outputs: dict, image_sizes: torch.Tensor) -> dict[str, torch.Tensor]:
        self.calls += 1
        return self.detections[self.calls - 1]


def make_batch() -> dict:
    """Two images resized by 0.5 (image 'a') and 2.0 (image 'b'); labels are contiguous indices."""
    boxes = torch.zeros(2, 2, 4)
    boxes[0, 0] = torch.tensor([5.0, 5.0, 15.0, 15.0])  # original (10, 10, 30, 30), class 0 ("part")
    boxes[0, 1] = torch.tensor([20.0, 20.0, 30.0, 30.0])  # a crowd region of class 0
    boxes[1, 0] = torch.tensor([20.0, 20.0, 40.0, 40.0])  # original (10, 10, 20, 20), class 1 ("crack")
    return {
        "images": torch.full((2, 3, 64, 64), 100, dtype=torch.uint8),
        "boxes": boxes, "labels": torch.tensor([[0, 0], [1, -1]]),
        "weights": torch.tensor([[1.0, 0.0], [1.0, 0.0]]),
        "is_crowd": torch.tensor([[False, True], [False, False]]),
        "difficult": torch.zeros(2, 2, dtype=torch.bool), "num_boxes": torch.tensor([2, 1]),
        "image_sizes": torch.tensor([[32, 32], [64, 64]]),
        "original_sizes": torch.tensor([[64, 64], [32, 32]]),
        "scales": torch.tensor([[0.5, 0.5], [2.0, 2.0]]), "source_ids": ["a", "b"],
    }


def make_detections() -> dict[str, torch.Tensor]:
    """In resized pixels: image a: a hit on 'part' (0.9), a box in the crowd (0.8);
    image b: a 'part' false alarm (0.7) and the 'crack' hit (0.4, under min_score 0.5)."""
    boxes = torch.tensor([[[5.0, 5.0, 15.0, 15.0], [21.0, 21.0, 29.0, 29.0], [0, 0, 0, 0]],
                          [[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 40.0, 40.0], [0, 0, 0, 0]]])
    return {"detection_boxes": boxes, "detection_scores": torch.tensor([[0.9, 0.8, 0.0], [0.7, 0.4, 0.0]]),
            "detection_classes": torch.tensor([[0, 0, 0], [0, 1, 0]]), "num_detections": torch.tensor([2, 2])}


class RecordingWriter:
    def __init__(self) -> None:
        self.scalars: dict[str, tuple[float, int | None]] = {}

    def add_scalar(self, tag: str, scalar_value: float, global_step: int | None = None) -> None:
        self.scalars[tag] = (scalar_value, global_step)


def fake_loss(outputs: dict, batch: dict) -> dict[str, torch.Tensor]:
    assert batch["boxes"].shape == (2, 2, 4)
    return {"total_loss": torch.tensor(3.0), "classification_loss": torch.tensor(1.0),
            "matched_anchors": torch.tensor([1.0, 2.0])}


@pytest.fixture
def label_map() -> LabelMap:
    return LabelMap.from_names(["part", "crack"])  # ids 1 and 2


def test_metrics_tables_and_scalars(tmp_path: Path, label_map: LabelMap) -> None:
    model = FakeSSD([make_detections(), make_detections()])
    writer = RecordingWriter()
    options = EvalOptions(metrics_set="coco_detection_metrics", min_score_threshold=0.5,
                          include_metrics_per_category=True, num_visualizations=2)
    metrics = evaluate(model, [make_batch(), make_batch()], label_map, out_dir=tmp_path, options=options,
                       loss_fn=fake_loss, device="cpu", writer=writer, step=7)
    # part, in score order: 0.9 hit, 0.9 hit, (0.8 x2 in the crowd: ignored), 0.7 x2 false alarms:
    # full recall at precision 1 first, so AP 1. crack: both boxes hit (COCO AP has no threshold).
    assert metrics["DetectionBoxes_Precision/mAP"] == pytest.approx(1.0)
    assert metrics["DetectionBoxes_PerformanceByCategory/mAP/crack"] == pytest.approx(1.0)
    assert metrics["Loss/total_loss"] == pytest.approx(3.0)
    assert "Loss/matched_anchors" not in metrics
    assert writer.scalars["DetectionBoxes_Precision/mAP@.50IOU"] == (pytest.approx(1.0), 7)
    assert writer.scalars["DetectionBoxes_Recall/AR@100"][1] == 7
    rows = {r["class"]: r for r in json.loads((tmp_path / "per_class.json").read_text())["classes"]}
    # At 0.5: part: 2 hits (crowd detections ignored), 2 false alarms; crack: its hit scores 0.4.
    assert (rows["part"]["gt_count"], rows["part"]["TP"], rows["part"]["FP"]) == (2, 2, 2)
    assert (rows["crack"]["gt_count"], rows["crack"]["TP"], rows["crack"]["missed"]) == (2, 0, 2)
    assert (tmp_path / "report.html").read_text().count("<figure>") == 2
    assert model.modes == [False, False] and model.training  # eval mode inside, restored after


def test_boxes_mapped_back_to_original_pixels(tmp_path: Path, label_map: LabelMap) -> None:
    """A detection right in resized pixels but wrongly scaled back would miss its box."""
    det = make_detections()
    det["detection_boxes"][1, 1] = torch.tensor([10.0, 10.0, 20.0, 20.0])  # = original coordinates
    metrics = evaluate(FakeSSD([det]), [make_batch()], label_map, out_dir=tmp_path, device="cpu")
    assert metrics["DetectionBoxes_PerformanceByCategory/mAP/crack"] == 0.0
    gt_file = json.loads((tmp_path / "per_class.json").read_text())
    assert {r["class"] for r in gt_file["classes"]} == {"part", "crack"}
