"""DetectionDataset (augment per (seed, epoch, index), crowd as ignore, draft decoding) and collate."""

from __future__ import annotations

import numpy as np
import torch

from raredet.data.augment import RandomHorizontalFlip
from raredet.data.dataset import DetectionDataset, collate
from raredet.data.resize import make_resizer


class FakeReader:
    """Two images of different sizes, the second with a crowd box."""

    def __init__(self):
        rng = np.random.default_rng(0)
        self.images = [
            rng.integers(0, 255, (20, 30, 3), dtype=np.uint8),
            rng.integers(0, 255, (10, 10, 3), np.uint8),
        ]
        self.boxes = [
            np.array([[0, 0, 10, 10]], np.float32),
            np.array([[1, 1, 5, 5], [2, 2, 8, 8]], np.float32),
        ]

    def __len__(self):
        return 2

    def annotations(self, i):
        n = len(self.boxes[i])
        return {
            "boxes": self.boxes[i],
            "labels": np.arange(n, dtype=np.int64),
            "weights": np.full(n, 2.0, np.float32),
            "is_crowd": np.arange(n) == 1,
            "difficult": np.zeros(n, bool),
            "source_id": f"s{i}",
            "filename": "",
            "height": self.images[i].shape[0],
            "width": self.images[i].shape[1],
        }

    def example(self, i, draft_size=None):
        return {**self.annotations(i), "image": self.images[i], "original_size": self.images[i].shape[:2]}


def test_collate_pads_images_and_boxes_by_hand():
    ds = DetectionDataset(FakeReader())
    batch = collate([ds[0], ds[1]])
    assert batch["images"].shape == (2, 3, 20, 30) and batch["images"].dtype == torch.uint8
    assert (batch["images"][1, :, 10:, :] == 0).all() and (batch["images"][1, :, :, 10:] == 0).all()
    assert torch.equal(
        batch["images"][1, :, :10, :10], torch.from_numpy(FakeReader().images[1]).permute(2, 0, 1)
    )
    assert batch["boxes"].shape == (2, 2, 4)
    assert batch["boxes"][0, 1].tolist() == [0, 0, 0, 0] and batch["labels"][0].tolist() == [0, -1]
    assert batch["weights"].tolist() == [[2.0, 0.0], [2.0, 2.0]]  # evaluation keeps crowd weights
    assert batch["is_crowd"].tolist() == [[False, False], [False, True]]
    assert batch["num_boxes"].tolist() == [1, 2]
    assert batch["image_sizes"].tolist() == [[20, 30], [10, 10]]
    assert batch["original_sizes"].tolist() == [[20, 30], [10, 10]]
    assert batch["scales"].tolist() == [[1.0, 1.0], [1.0, 1.0]]
    assert batch["source_ids"] == ["s0", "s1"]


def test_training_makes_crowd_an_ignore_region():
    ds = DetectionDataset(FakeReader(), training=True)
    assert ds[1]["weights"].tolist() == [2.0, 0.0]


def test_resizer_scale_is_relative_to_the_original():
    ds = DetectionDataset(
        FakeReader(), resizer=make_resizer("fixed_shape_resizer", {"height": 40, "width": 15})
    )
    ex = ds[0]
    assert ex["image"].shape == (40, 15, 3) and ex["scale"] == (2.0, 0.5)
    np.testing.assert_allclose(ex["boxes"], [[0, 0, 5, 20]])


def test_augmentation_depends_only_on_seed_epoch_index():
    ds = DetectionDataset(FakeReader(), augmentations=[RandomHorizontalFlip()], training=True, seed=7)
    flips = []
    for epoch in range(12):
        ds.set_epoch(epoch)
        first = ds[0]["boxes"][0, 0]
        assert ds[0]["boxes"][0, 0] == first  # same (seed, epoch, index): same draw
        flips.append(first == 20.0)  # flipped: x0 = 30 - 10
        expected = np.random.default_rng([7, epoch, 0]).random() < 0.5
        assert flips[-1] == expected
    assert any(flips) and not all(flips)


def test_empty_batch_boxes():
    reader = FakeReader()
    reader.boxes = [np.zeros((0, 4), np.float32), np.zeros((0, 4), np.float32)]
    batch = collate([DetectionDataset(reader)[i] for i in range(2)])
    assert batch["boxes"].shape == (2, 1, 4) and batch["labels"].tolist() == [[-1], [-1]]
    assert batch["num_boxes"].tolist() == [0, 0]


def test_draft_decoding_through_the_dataset(tmp_path, label_map, encode_image):
    from raredet.data.tfrecord import TFRecordReader, detection_example, write_tfrecord

    record = detection_example(
        encoded=encode_image(64, 96, "JPEG"),
        image_format="jpeg",
        height=64,
        width=96,
        boxes=np.array([[8.0, 16.0, 48.0, 32.0]]),
        class_ids=np.array([3]),
    )
    reader = TFRecordReader([write_tfrecord(tmp_path / "d.tfrecord", [record])], label_map)
    resizer = make_resizer("fixed_shape_resizer", {"height": 16, "width": 24})
    batch = collate([DetectionDataset(reader, resizer=resizer)[0]])
    assert batch["images"].shape == (1, 3, 16, 24)
    assert batch["original_sizes"].tolist() == [[64, 96]] and batch["scales"].tolist() == [[0.25, 0.25]]
    np.testing.assert_allclose(batch["boxes"][0].numpy(), [[2, 4, 12, 8]], rtol=1e-5)
    assert batch["labels"].tolist() == [[1]]
