"""Masks and keypoints through `raredet predict` and `raredet export`: detections.json carries COCO
`segmentation` RLEs and `keypoints` / `keypoint_scores`; TorchScript and ONNX exports of a CenterNet with
keypoints and DeepMAC masks and of Mask R-CNN carry `detection_masks`, `detection_keypoints` and
`detection_keypoint_scores`, run in torch.jit / onnxruntime and compared with the eager model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tests.helpers.instance_models import (
    center_net_model_dir,
    mask_rcnn_model_dir,
    narrow_inception_resnet_v2,
)

from raredet import cli
from raredet.commands.export import INSTANCE_OUTPUTS, OUTPUT_NAMES, instance_differences
from raredet.commands.predict import coco_results, draw_detections, predict
from raredet.commands.trained import load_trained_model
from raredet.evaluation.masks import paste_box_masks
from raredet.evaluation.report import PALETTE

# torch 2.13 deprecates TorchScript and the TorchScript-based ONNX exporter; both are what is tested here.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


# ---- hand-made detections ----------------------------------------------------------------------------


def _decode(rle: dict) -> np.ndarray:
    from pycocotools import mask as coco_mask  # an independent decoder

    return coco_mask.decode({"size": rle["size"], "counts": rle["counts"].encode("ascii")})


def test_coco_results_carry_the_pasted_mask_and_the_keypoints():
    """A 4x4 mask of ones in box x 2..6, y 3..7 of a 10x10 image: TF's crop_and_resize reads output pixel
    i at i / 9 of the image, inside the box where 0.2 <= i / 9 <= 0.6 (columns 2..5) and 0.3 <= i / 9 <=
    0.7 (rows 3..6). Keypoints: the first detection's (1.5, 2.25) and an unplaced one (NaN: 0, 0, 0); the
    second detection, of a class without keypoints (all zero), carries none."""
    det = {"boxes": np.array([[2.0, 3.0, 6.0, 7.0], [0.0, 0.0, 10.0, 10.0]]), "scores": np.array([0.9, 0.4]),
           "classes": np.array([0, 1]), "masks": np.stack([np.ones((4, 4)), np.zeros((4, 4))]),
           "keypoints": np.array([[[1.5, 2.25], [np.nan, np.nan]], [[0.0, 0.0], [0.0, 0.0]]]),
           "keypoint_scores": np.array([[0.875, 0.0], [0.0, 0.0]])}
    first, second = coco_results(3, det, np.array([5, 9]), size=(10, 10))
    want = np.zeros((10, 10), np.uint8)
    want[3:7, 2:6] = 1
    np.testing.assert_array_equal(_decode(first["segmentation"]), want)
    assert first["segmentation"]["size"] == [10, 10]
    assert not _decode(second["segmentation"]).any()
    assert first["keypoints"] == [1.5, 2.25, 2, 0, 0, 0] and first["keypoint_scores"] == [0.875, 0.0]
    assert "keypoints" not in second and "keypoint_scores" not in second
    assert (first["category_id"], first["bbox"], second["category_id"]) == (5, [2.0, 3.0, 4.0, 4.0], 9)


def test_drawn_image_blends_the_mask_and_dots_the_keypoints():
    """A black 64 px image is drawn 4x (256 px): the mask (ones in box 16..48) blended half-and-half with
    class 1's colour inside the box, a keypoint at (20, 40) a 3x3 dot of that colour at (80, 160)."""
    det = {"boxes": np.array([[16.0, 16.0, 48.0, 48.0]]), "scores": np.array([0.9]), "classes": np.array([1]),
           "masks": np.ones((1, 4, 4)), "keypoints": np.array([[[20.0, 40.0]]]),
           "keypoint_scores": np.array([[0.5]])}
    drawn = np.asarray(draw_detections(np.zeros((64, 64, 3), np.uint8), det, ["crack", "scratch"]))
    colour = np.asarray(PALETTE[1])
    assert drawn.shape == (256, 256, 3)
    np.testing.assert_array_equal(drawn[128, 128], np.round(0.5 * colour))
    np.testing.assert_array_equal(drawn[159:162, 79:82], np.broadcast_to(colour, (3, 3, 3)))
    assert not drawn[20, 200].any()  # outside the box: untouched


def _outputs(n: int, masks: np.ndarray, keypoints: np.ndarray) -> list[np.ndarray]:
    """One image's outputs: n detections of class 1 at distinct boxes and scores, with `masks` [n, 2, 2]
    and `keypoints` [n, 1, 2]."""
    boxes = np.arange(4 * n, dtype=np.float32).reshape(1, n, 4)
    scores = np.linspace(0.9, 0.5, n, dtype=np.float32)[None]
    return [boxes, scores, np.ones((1, n), np.int64), np.array([n]), masks[None], keypoints[None]]


def test_instance_differences_pairs_rows_by_detection_and_names_what_differs():
    rng = np.random.default_rng(0)
    masks, keypoints = rng.uniform(size=(3, 2, 2)).astype(np.float32), rng.uniform(0, 64, (3, 1, 2))
    keypoints[2] = np.nan  # unplaced: NaN on both sides is the same
    names = ("detection_masks", "detection_keypoints")
    want = _outputs(3, masks, keypoints)
    swapped = [a[:, [1, 0, 2]] if a.ndim > 1 else a for a in want]  # two rows in the other order
    assert instance_differences(want, swapped, names) is None
    off = [a.copy() for a in want]
    off[4][0, 1, 0, 0] += 0.01  # one mask pixel off by 0.01 (tolerance 1e-3)
    off[5][0, 0, 0, 1] += 0.5  # one keypoint's y off by 0.5 px (tolerance 1e-2)
    assert instance_differences(want, off, names) == (
        "detection_masks of 1 detections differ by up to 0.01 (tolerance 0.001); "
        "detection_keypoints of 1 detections differ by up to 0.5 (tolerance 0.01)")


# ---- CenterNet with keypoints and DeepMAC masks ------------------------------------------------------------


@pytest.fixture(scope="module")
def center_net_run(tmp_path_factory) -> tuple[Path, Path]:
    return center_net_model_dir(tmp_path_factory.mktemp("center_net_instances"))


def _images(data: Path) -> torch.Tensor:
    names = ["val_000000.jpg", "val_000001.jpg", "train_000000.jpg"]
    arrays = [np.asarray(Image.open(data / "images" / n).convert("RGB")) for n in names]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def _eager(run: Path, images: torch.Tensor) -> dict[str, np.ndarray]:
    model = load_trained_model(run).model
    with torch.no_grad():
        det = model.postprocess(model(images), torch.tensor([[64, 64]] * len(images)))
    return {k: v.numpy() for k, v in det.items()}


def _run_export(run: Path, fmt: str, out: Path, images: torch.Tensor) -> dict[str, np.ndarray]:
    """Export through the CLI, then run the file in torch.jit / onnxruntime: outputs by name."""
    assert cli.main(["export", "--model_dir", str(run), "--format", fmt, "--out", str(out)]) == 0
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(None, {"images": images.numpy()}), strict=True))
    extra = {"raredet.json": ""}
    module = torch.jit.load(str(out), _extra_files=extra)
    with torch.no_grad():
        got = module(images)
    return dict(zip(json.loads(extra["raredet.json"])["outputs"], [t.numpy() for t in got], strict=True))


def _assert_exported_equals_eager(got: dict[str, np.ndarray], want: dict[str, np.ndarray],
                                  names: tuple[str, ...]) -> None:
    assert tuple(got) == OUTPUT_NAMES + names
    np.testing.assert_array_equal(got["num_detections"], want["num_detections"])
    for b, n in enumerate(want["num_detections"]):
        np.testing.assert_array_equal(got["detection_classes"][b, :n], want["detection_classes"][b, :n] + 1)
        np.testing.assert_allclose(got["detection_boxes"][b, :n], want["detection_boxes"][b, :n], atol=1e-3)
        np.testing.assert_allclose(got["detection_scores"][b, :n], want["detection_scores"][b, :n], atol=1e-5)
        for name in names:
            np.testing.assert_allclose(got[name][b, :n], want[name][b, :n], atol=1e-3, equal_nan=True)


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
@pytest.mark.slow
def test_center_net_export_carries_masks_and_keypoints(center_net_run, tmp_path, fmt):
    run, data = center_net_run
    images = _images(data)
    want = _eager(run, images)
    n = want["num_detections"]
    assert n.min() > 0
    cracks = want["detection_classes"] == 0  # the keypoint class (index 0, label-map id 1)
    placed = want["detection_keypoint_scores"].max(axis=-1) > 0
    assert (cracks & placed).any() and not (~cracks & placed).any()  # keypoints on cracks only
    assert np.ptp(want["detection_masks"]) > 0.1  # masks that vary, not a constant
    _assert_exported_equals_eager(_run_export(run, fmt, tmp_path / f"model.{fmt}", images), want,
                                  INSTANCE_OUTPUTS)


@pytest.mark.slow
def test_center_net_predict_writes_keypoints_and_masks_in_original_pixels(center_net_run, tmp_path):
    run, data = center_net_run
    folder = tmp_path / "images"
    folder.mkdir()
    shutil.copy(data / "images" / "val_000000.jpg", folder / "small.jpg")
    small = np.asarray(Image.open(folder / "small.jpg").convert("RGB"))
    Image.fromarray(np.repeat(np.repeat(small, 2, axis=0), 2, axis=1)).save(folder / "big.png")
    predict(run, [str(folder)], tmp_path / "out", min_score=0.0)
    records = json.loads((tmp_path / "out" / "detections.json").read_text())
    big = [r for r in records if r["image_id"] == 1]  # images.json order: big.png, small.jpg
    small_records = [r for r in records if r["image_id"] == 2]
    want = _eager(run, torch.from_numpy(small).permute(2, 0, 1)[None].contiguous())
    n = int(want["num_detections"][0])
    assert len(small_records) == len(big) == n
    for k, record in enumerate(small_records):  # same order: best first
        assert record["segmentation"]["size"] == [64, 64] and big[k]["segmentation"]["size"] == [128, 128]
        pasted = paste_box_masks(want["detection_masks"][0, k:k + 1], want["detection_boxes"][0, k:k + 1],
                                 64, 64)
        np.testing.assert_array_equal(_decode(record["segmentation"]), pasted[0])
        if want["detection_classes"][0, k] != 0:  # not a crack: no keypoints
            assert "keypoints" not in record
            continue
        xy = np.asarray(record["keypoints"]).reshape(-1, 3)
        np.testing.assert_allclose(xy[:, :2], want["detection_keypoints"][0, k], atol=0.006)
        np.testing.assert_allclose(record["keypoint_scores"], want["detection_keypoint_scores"][0, k],
                                   atol=6e-6)
        # the doubled image resizes (nearest) to exactly the small one: twice the pixels
        np.testing.assert_allclose(np.asarray(big[k]["keypoints"]).reshape(-1, 3)[:, :2], 2 * xy[:, :2],
                                   atol=0.02)
    assert any("keypoints" in r for r in small_records)
    assert (tmp_path / "out" / "drawn" / "small.png").is_file()


# ---- Mask R-CNN -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mask_rcnn_run(tmp_path_factory):
    with narrow_inception_resnet_v2():  # build, save, load and export the narrow network alike
        yield mask_rcnn_model_dir(tmp_path_factory.mktemp("mask_rcnn_instances"))


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
@pytest.mark.slow
def test_mask_rcnn_export_carries_masks(mask_rcnn_run, tmp_path, fmt):
    run, _ = mask_rcnn_run
    images = torch.from_numpy(np.random.default_rng(3).integers(0, 256, (2, 3, 64, 64), dtype=np.uint8))
    want = _eager(run, images)
    assert want["num_detections"].min() > 0 and np.ptp(want["detection_masks"]) > 0.3
    got = _run_export(run, fmt, tmp_path / f"model.{fmt}", images)
    _assert_exported_equals_eager(got, want, ("detection_masks",))


@pytest.mark.slow
def test_mask_rcnn_predict_writes_the_pasted_masks(mask_rcnn_run, tmp_path):
    run, data = mask_rcnn_run
    image = np.full((64, 64, 3), 40, np.uint8)
    image[10:50, 8:40] = (200, 60, 30)
    Image.fromarray(image).save(tmp_path / "one.png")
    predict(run, [str(tmp_path / "one.png")], tmp_path / "out", min_score=0.0)
    records = json.loads((tmp_path / "out" / "detections.json").read_text())
    want = _eager(run, torch.from_numpy(image).permute(2, 0, 1)[None].contiguous())
    assert len(records) == int(want["num_detections"][0]) > 0
    n = len(records)
    pasted = paste_box_masks(want["detection_masks"][0, :n], want["detection_boxes"][0, :n], 64, 64)
    for record, mask in zip(records, pasted, strict=True):
        np.testing.assert_array_equal(_decode(record["segmentation"]), mask)
    assert any(_decode(r["segmentation"]).any() for r in records)
