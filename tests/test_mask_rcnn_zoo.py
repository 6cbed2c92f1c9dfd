"""The TF2 zoo's Mask R-CNN config (mask_rcnn_inception_resnet_v2_1024x1024_coco17_gpu-8): `config check`
passes on the verbatim file, and a small copy (3 classes, 64-pixel images, 8 proposals, 4 sampled per
image, 9-pixel crops, 10x10 masks, batch 2, the synthetic records below with PNG instance masks) trains
two steps on CPU through `raredet train`'s path, the mask loss included."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
from tests.helpers.mask_records import write_ellipse_records

from raredet import config
from raredet.builders.losses import build_faster_rcnn_loss
from raredet.builders.model import build_model
from raredet.commands import config as config_cmd
from raredet.commands.train import train_from_config
from raredet.config.label_map import LabelMap
from raredet.protos import pipeline_pb2
from raredet.zoo import CONFIG_DIR

NAME = "mask_rcnn_inception_resnet_v2_1024x1024_coco17_gpu-8.config"
SIZE = 64


def small_copy_text() -> str:
    """The zoo config with only sizes, classes and paths changed (CPU-sized; the rest verbatim)."""
    text = (CONFIG_DIR / NAME).read_text()
    for pattern, value in ((r"num_classes: \d+", "num_classes: 3"), (r"(height|width): 1024", rf"\1: {SIZE}"),
                           (r"first_stage_max_proposals: \d+", "first_stage_max_proposals: 8\n"
                                                               "    second_stage_batch_size: 4"),
                           (r"initial_crop_size: \d+", "initial_crop_size: 9"),
                           (r"mask_(height|width): \d+", r"mask_\1: 10"),
                           (r"batch_size: 16", "batch_size: 2"),
                           (r'fine_tune_checkpoint(_type)?: "[^"]*"', ""),
                           (r'"PATH_TO_BE_CONFIGURED/label_map.txt"', '"label_map.pbtxt"'),
                           (r'"PATH_TO_BE_CONFIGURED/(train|val)[^"]*"', r'"\1.tfrecord"')):
        text, count = re.subn(pattern, value, text)
        assert count, pattern
    return text


def write_records(path: Path, images: int) -> None:
    """`images` 64x64 records, each with one object: an ellipse of class (i % 3) + 1, its box and PNG mask."""
    write_ellipse_records(path, images, SIZE, SIZE, lambda i: (4 + 2 * i, 6, 58, 60 - 2 * i), "jpeg")


def test_verbatim_zoo_config_passes_check():
    report = config_cmd.check(CONFIG_DIR / NAME)
    assert "OK" in report and "faster_rcnn_inception_resnet_v2_keras" in report


def test_small_copy_computes_a_mask_loss_that_trains_the_mask_head():
    msg = config.parse_text(small_copy_text(), pipeline_pb2.TrainEvalPipelineConfig(), "small.config")
    torch.manual_seed(0)
    model, _ = build_model(msg.model.faster_rcnn, None)
    loss_fn = build_faster_rcnn_loss(msg.model.faster_rcnn, [])
    assert loss_fn.mask_weight == 4.0  # second_stage_mask_prediction_loss_weight
    # one box covering the image: every proposal clipped to the image overlaps it, so positives exist
    masks = torch.zeros(1, 1, SIZE, SIZE, dtype=torch.uint8)
    masks[0, 0, 16:48, 8:56] = 1
    batch = {"images": torch.rand(1, 3, SIZE, SIZE) * 255, "boxes": torch.tensor([[[0.0, 0.0, 64.0, 64.0]]]),
             "labels": torch.tensor([[2]]), "weights": torch.tensor([[1.0]]), "masks": masks}
    model.train()
    outputs = model(batch["images"], {k: batch[k] for k in ("boxes", "labels", "weights")})
    assert outputs["mask_logits"].shape == (1, 4, 3, 10, 10)
    losses = loss_fn(outputs, batch)
    # at initialisation the logits are near 0: about 4 (the loss weight) x ln 2 per pixel
    assert 0.5 * 4 * math.log(2) < losses["mask_loss"].item() < 2 * 4 * math.log(2)
    losses["total_loss"].backward()
    grad = model.mask_head.last.weight.grad
    assert grad is not None and grad[2].abs().sum() > 0  # class index 2's channel trained
    assert grad[0].abs().sum() == 0 and grad[1].abs().sum() == 0  # the other classes' channels did not


@pytest.mark.slow  # about a minute on a loaded 2-core CPU: Inception-ResNet v2's second half per proposal
def test_small_copy_trains_two_steps_on_records_with_masks(tmp_path):
    torch.set_num_threads(1)
    LabelMap.from_names(["a", "b", "c"]).save(tmp_path / "label_map.pbtxt")
    write_records(tmp_path / "train.tfrecord", 4)
    write_records(tmp_path / "val.tfrecord", 2)
    path = tmp_path / "pipeline.config"
    path.write_text(small_copy_text())
    result = train_from_config(path, tmp_path / "run", num_train_steps=2, num_workers=0, device="cpu")
    assert result.step == 2
    assert (tmp_path / "run" / "ckpt-2.pt").exists()
    assert all(math.isfinite(v) for v in result.last_losses.values())
