"""raredet export: TorchScript and ONNX files reproduce the PyTorch detections; the NMS loop survives."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tests.helpers.faster_rcnn import scaled_checkpoint
from tests.helpers.predict import make_model_dir
from torch import Tensor, nn

from raredet import cli
from raredet.commands.export import (
    ONNX_OPSET,
    Candidates,
    compare_detections,
    export_model,
    exportable_nms,
    input_size,
    register_onnx_symbolics,
)
from raredet.commands.trained import load_trained_model
from raredet.errors import ConfigError
from raredet.modeling.postprocess import nms_mask
from raredet.protos import faster_rcnn_pb2, ssd_pb2

# slow: TorchScript and ONNX export, checked with onnxruntime. torch 2.13 deprecates TorchScript and the
# TorchScript-based ONNX exporter; both are what is tested here.
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("export"))


def _real_batch(data: Path) -> Tensor:
    """The synthetic validation and first training images as uint8 [3, 3, 64, 64]."""
    names = ["val_000000.jpg", "val_000001.jpg", "train_000000.jpg"]
    arrays = [np.asarray(Image.open(data / "images" / n).convert("RGB")) for n in names]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def _reference(model_dir: Path, images: Tensor) -> list[np.ndarray]:
    """Eager PyTorch detections, classes mapped to label-map ids by hand (ids 1..3 in index order)."""
    trained = load_trained_model(model_dir)
    with torch.no_grad():
        det = trained.model.postprocess(trained.model(images), torch.tensor([[64, 64]] * len(images)))
    n = det["num_detections"].numpy()
    valid = np.arange(det["detection_classes"].shape[1])[None, :] < n[:, None]
    ids = np.where(valid, det["detection_classes"].numpy() + 1, 0)
    return [det["detection_boxes"].numpy(), det["detection_scores"].numpy(), ids, n]


def _assert_same(reference: list[np.ndarray], got: list[np.ndarray]) -> None:
    assert got[3].tolist() == reference[3].tolist() and reference[3].min() > 0
    for b, n in enumerate(reference[3]):
        np.testing.assert_array_equal(got[2][b, :n], reference[2][b, :n])
        np.testing.assert_allclose(got[0][b, :n], reference[0][b, :n], atol=1e-3)
        np.testing.assert_allclose(got[1][b, :n], reference[1][b, :n], atol=1e-5)
        assert (got[2][b, n:] == 0).all()  # padding rows carry the background id


def test_torchscript_file_loads_with_torch_jit_and_matches(trained, tmp_path, capsys):
    model_dir, data = trained
    out = tmp_path / "model.pt"
    args = ["export", "--model_dir", str(model_dir), "--format", "torchscript", "--out", str(out)]
    assert cli.main(args) == 0
    assert "detections as PyTorch on a random batch" in capsys.readouterr().out
    extra = {"label_map.pbtxt": "", "raredet.json": ""}
    module = torch.jit.load(str(out), _extra_files=extra)
    assert b'name: "crack"' in extra["label_map.pbtxt"]
    assert json.loads(extra["raredet.json"])["step"] == 1
    images = _real_batch(data)
    with torch.no_grad():
        got = [t.numpy() for t in module(images)]
    _assert_same(_reference(model_dir, images), got)


def test_onnx_file_runs_in_onnxruntime_and_matches(trained, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model_dir, data = trained
    out = tmp_path / "model.onnx"
    assert cli.main(["export", "--model_dir", str(model_dir), "--format", "onnx", "--out", str(out)]) == 0
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["detection_boxes", "detection_scores",
                                                      "detection_classes", "num_detections"]
    meta = session.get_modelmeta().custom_metadata_map
    assert "crack" in meta["label_map.pbtxt"] and "ssd_resnet18_v1_fpn" in meta["pipeline.config"]
    images = _real_batch(data)
    reference = _reference(model_dir, images)
    _assert_same(reference, session.run(None, {"images": images.numpy()}))
    one = session.run(None, {"images": images[:1].numpy()})  # the batch axis is dynamic
    _assert_same([r[:1] for r in reference], one)


class _NmsOnly(nn.Module):
    def forward(self, boxes: Tensor) -> Tensor:
        groups = torch.zeros(boxes.shape[:2], dtype=torch.int64)
        valid = torch.ones(boxes.shape[:2], dtype=torch.bool)
        return nms_mask(boxes, groups, valid, 0.3)


def _chain(n: int) -> Tensor:
    """Boxes [1, n, 4] of width 10, each shifted 3 px right of the previous (score order = index order).
    Neighbours overlap with IoU 7/13 > 0.3, boxes two apart with IoU 4/16 < 0.3, so greedy NMS keeps
    every other box: box 0 suppresses 1, which then cannot suppress 2, and so on — settling this takes
    about n/2 rounds of the fixed-point iteration."""
    x = 3.0 * torch.arange(n, dtype=torch.float32)
    return torch.stack([x, torch.zeros(n), x + 10, torch.full((n,), 10.0)], dim=1)[None]


def test_nms_loop_is_kept_as_a_loop_in_both_formats(tmp_path):
    easy = torch.tensor([[[0.0, 0, 10, 10], [50, 50, 60, 60]]])  # no overlap: settles in one round
    expected = [i % 2 == 0 for i in range(12)]
    with exportable_nms(), torch.no_grad():
        traced = torch.jit.trace(_NmsOnly(), easy, check_trace=False)
    assert traced(_chain(12))[0].tolist() == expected
    pytest.importorskip("onnxruntime")
    import onnxruntime as ort

    register_onnx_symbolics()
    with exportable_nms():
        torch.onnx.export(_NmsOnly(), (easy,), str(tmp_path / "nms.onnx"), dynamo=False,
                          opset_version=ONNX_OPSET, input_names=["boxes"], dynamic_axes={"boxes": {1: "n"}})
    session = ort.InferenceSession(str(tmp_path / "nms.onnx"), providers=["CPUExecutionProvider"])
    assert session.run(None, {"boxes": _chain(12).numpy()})[0][0].tolist() == expected


def test_input_size_needs_a_fixed_size():
    ssd = ssd_pb2.Ssd()
    ssd.image_resizer.fixed_shape_resizer.height, ssd.image_resizer.fixed_shape_resizer.width = 96, 128
    assert input_size(ssd) == (96, 128)
    ssd.image_resizer.keep_aspect_ratio_resizer.max_dimension = 512
    with pytest.raises(ConfigError, match="model.ssd.image_resizer is keep_aspect_ratio_resizer: .*"
                                          "pad_to_max_dimension"):
        input_size(ssd)
    ssd.image_resizer.keep_aspect_ratio_resizer.pad_to_max_dimension = True
    assert input_size(ssd) == (512, 512)
    frcnn = faster_rcnn_pb2.FasterRcnn()  # a Faster R-CNN error names its own field
    frcnn.image_resizer.identity_resizer.SetInParent()
    with pytest.raises(ConfigError, match="model.faster_rcnn.image_resizer is identity_resizer"):
        input_size(frcnn)


def test_compare_detections_reports_what_differs():
    boxes = torch.tensor([[[0.0, 0, 5, 5], [0, 0, 0, 0]]])
    want = [boxes, torch.tensor([[0.9, 0.0]]), torch.tensor([[2, 0]]), torch.tensor([1])]
    same = [t.numpy().copy() for t in want]
    assert compare_detections(want, same) is None
    same[0][0, 1] = 99.0  # a padding row may differ
    assert compare_detections(want, same) is None
    moved = [t.numpy().copy() for t in want]
    moved[0][0, 0, 2] += 0.5
    assert "1 detections have no counterpart" in compare_detections(want, moved)
    relabelled = [t.numpy().copy() for t in want]
    relabelled[2][0, 0] = 3
    assert "no counterpart" in compare_detections(want, relabelled)
    two = [torch.tensor([[[0.0, 0, 5, 5], [9, 9, 20, 20]]]), torch.tensor([[0.5, 0.5]]),
           torch.tensor([[2, 1]]), torch.tensor([2])]
    swapped = [t.numpy()[:, ::-1].copy() if t.dim() > 1 else t.numpy() for t in two]  # equal scores
    assert compare_detections(two, swapped) is None
    fewer = [t.numpy().copy() for t in want]
    fewer[3][0] = 0
    assert "num_detections" in compare_detections(want, fewer)


def test_compare_detections_accepts_tied_alternatives_only_with_the_candidates():
    # PyTorch's candidates: 3 anchors, 2 classes (label-map ids 1, 2). Anchors 0 and 1 tie on class 1.
    cand = Candidates(
        boxes=np.array([[[0.0, 0, 5, 5], [10, 10, 15, 15], [20, 20, 30, 30]]], dtype=np.float32),
        scores=np.array([[[0.3, 0.1], [0.3, 0.1], [0.2, 0.9]]], dtype=np.float32),
        class_ids=np.array([1, 2]),
    )
    # PyTorch kept anchor 2 (id 2) and anchor 0 (id 1); the export kept anchor 1 instead of 0.
    want = [torch.tensor([[[20.0, 20, 30, 30], [0, 0, 5, 5]]]), torch.tensor([[0.9, 0.3]]),
            torch.tensor([[2, 1]]), torch.tensor([2])]
    tied = [np.array([[[20.0, 20, 30, 30], [10, 10, 15, 15]]]), np.array([[0.9, 0.3]]),
            np.array([[2, 1]]), np.array([2])]
    assert "1 detections have no counterpart" in compare_detections(want, tied)
    assert compare_detections(want, tied, cand) is None
    # Not a candidate: anchor 1's box for a score it does not have, or under another class.
    wrong_score = [a.copy() for a in tied]
    wrong_score[1][0, 1] = 0.2
    assert "no counterpart" in compare_detections(want, wrong_score, cand)
    wrong_class = [a.copy() for a in tied]
    wrong_class[2][0, 1] = 2
    assert "no counterpart" in compare_detections(want, wrong_class, cand)
    # A box no anchor has, even at the tied score.
    made_up = [a.copy() for a in tied]
    made_up[0][0, 1] = [40, 40, 50, 50]
    assert "no counterpart" in compare_detections(want, made_up, cand)
    # Anchor 2's class-1 score 0.2 is unique: swapping it in is a real difference, not a tie.
    unique = Candidates(cand.boxes, np.array([[[0.3, 0.1], [0.25, 0.1], [0.2, 0.9]]], dtype=np.float32),
                        cand.class_ids)
    other = [a.copy() for a in tied]
    other[0][0, 1], other[1][0, 1] = [10, 10, 15, 15], 0.25
    assert "no counterpart" in compare_detections(want, other, unique)
    # Within the score tolerance (1e-4) but not a tie (1e-6): a real difference.
    close = Candidates(cand.boxes, np.array([[[0.3, 0.1], [0.30005, 0.1], [0.2, 0.9]]], dtype=np.float32),
                       cand.class_ids)
    nearly = [a.copy() for a in tied]
    nearly[1][0, 1] = 0.30005
    assert "no counterpart" in compare_detections(want, nearly, close)
    # CenterNet's near-peaks (rounding_decides): any candidate of PyTorch's passes without a tie, as long
    # as the image's sorted scores agree; a box or score no candidate has still does not
    near_peaks = close._replace(rounding_decides=True)
    assert compare_detections(want, nearly, near_peaks) is None
    assert "no counterpart" in compare_detections(want, made_up, near_peaks)
    assert "no counterpart" in compare_detections(want, other, unique._replace(rounding_decides=True))


# ---- Faster R-CNN -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def faster_rcnn_run(tmp_path_factory) -> tuple[Path, Path]:
    return scaled_checkpoint(tmp_path_factory.mktemp("frcnn_export"), images=6)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_faster_rcnn_export_reproduces_pytorch_detections(faster_rcnn_run, tmp_path, fmt):
    run, _ = faster_rcnn_run
    report = export_model(run, fmt, tmp_path / f"model.{fmt}")
    found = re.search(r"checked: the same (\d+) detections as PyTorch", report)
    assert found, report
    assert int(found.group(1)) > 0  # a comparison of something
