"""The synthetic dataset: determinism, exact quotas, the held-out test split, records == COCO JSON, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from raredet.cli import main
from raredet.config import LabelMap
from raredet.data.coco import CocoReader
from raredet.data.synth import class_quotas, deal_labels, make_synthetic_dataset
from raredet.data.tfrecord import TFRecordReader, expand_input_paths


def test_class_quotas_by_hand():
    # 10 boxes at 100:20:3 -> shares 8.13, 1.63, 0.24 -> floors 8, 1, 0; the largest remainder gets the last
    assert class_quotas(10, np.array([100.0, 20.0, 3.0])).tolist() == [8, 2, 0]
    assert class_quotas(10, np.array([100.0, 20.0, 3.0]), min_per_class=2).tolist() == [6, 2, 2]


def test_deal_labels_exact_counts():
    rng = np.random.default_rng(0)
    per_image = deal_labels(rng, 200, np.array([100.0, 20.0, 3.0]))
    counts = np.bincount(np.concatenate(per_image), minlength=3)
    assert counts.tolist() == class_quotas(int(counts.sum()), np.array([100.0, 20.0, 3.0])).tolist()


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    make_synthetic_dataset(out, images=30, seed=3, image_size=64, min_val_boxes=3, num_steps=10)
    return out


def test_synth_is_deterministic(synth_dir, tmp_path):
    make_synthetic_dataset(tmp_path / "same", images=30, seed=3, image_size=64, min_val_boxes=3, num_steps=10)
    make_synthetic_dataset(
        tmp_path / "other", images=30, seed=4, image_size=64, min_val_boxes=3, num_steps=10
    )
    name = "train-00000-of-00002.tfrecord"
    assert (synth_dir / name).read_bytes() == (tmp_path / "same" / name).read_bytes()
    assert (synth_dir / name).read_bytes() != (tmp_path / "other" / name).read_bytes()


def test_synth_test_split_is_held_out_and_leaves_train_and_val_unchanged(synth_dir, tmp_path):
    make_synthetic_dataset(tmp_path / "t", images=30, seed=3, image_size=64, min_val_boxes=3, num_steps=10,
                           test_images=8)
    for name in ("train-00000-of-00002.tfrecord", "val-00000-of-00002.tfrecord", "val.json"):
        assert (tmp_path / "t" / name).read_bytes() == (synth_dir / name).read_bytes()
    summary = json.loads((tmp_path / "t" / "summary.json").read_text())
    assert summary["test"]["images"] == 8 and min(summary["test"]["boxes"].values()) >= 3  # val's floor
    assert "test" not in json.loads((synth_dir / "summary.json").read_text())
    lm = LabelMap.load(synth_dir / "label_map.pbtxt")
    records = TFRecordReader(expand_input_paths([str(tmp_path / "t" / "test-?????-of-00002.tfrecord")]), lm)
    test_images = [records.example(i)["image"] for i in range(len(records))]
    val = TFRecordReader(expand_input_paths([str(synth_dir / "val-?????-of-00002.tfrecord")]), lm)
    assert len(test_images) == 8 and not np.array_equal(test_images[0], val.example(0)["image"])
    with pytest.raises(ValueError, match="test_images >= 0"):
        make_synthetic_dataset(tmp_path / "bad", images=30, test_images=-1)


def test_synth_test_split_has_its_own_floor(synth_dir, tmp_path):
    # 20 test images carry ~36 boxes, ~0.9 of them cracks and ~6 dents at 100:20:3: a floor of 8 (below
    # a third of the boxes) raises crack and dent to exactly 8, and val keeps its own floor.
    make_synthetic_dataset(tmp_path / "t", images=30, seed=3, image_size=64, min_val_boxes=3, num_steps=10,
                           test_images=20, min_test_boxes=8)
    summary = json.loads((tmp_path / "t" / "summary.json").read_text())
    assert summary["test"]["boxes"]["crack"] == 8 and summary["test"]["boxes"]["dent"] == 8
    assert (tmp_path / "t" / "val.json").read_bytes() == (synth_dir / "val.json").read_bytes()


def test_synth_records_match_coco_json(synth_dir):
    lm = LabelMap.load(synth_dir / "label_map.pbtxt")
    assert lm.names == ["scratch", "dent", "crack"]
    for split in ("train", "val"):
        shards = str(synth_dir / f"{split}-?????-of-00002.tfrecord")
        records = TFRecordReader(expand_input_paths([shards]), lm)
        coco = CocoReader(synth_dir / f"{split}.json", lm)
        assert len(records) == len(coco) > 0
        for i in range(len(coco)):
            a, b = records.annotations(i), coco.annotations(i)
            np.testing.assert_allclose(a["boxes"], b["boxes"], atol=1e-3)
            assert a["labels"].tolist() == b["labels"].tolist()
        assert np.array_equal(records.example(0)["image"], coco.example(0)["image"])
    summary = json.loads((synth_dir / "summary.json").read_text())
    val = list(summary["val"]["boxes"].values())
    assert val == class_quotas(sum(val), np.array([100.0, 20.0, 3.0]), min_per_class=3).tolist()
    assert min(val) >= 3


def test_synth_defects_are_visible(synth_dir):
    """Pixels inside a defect box differ from the part around it (the dataset is learnable)."""
    lm = LabelMap.load(synth_dir / "label_map.pbtxt")
    reader = CocoReader(synth_dir / "train.json", lm)
    contrasts = []
    for i in range(len(reader)):
        ex = reader.example(i)
        gray = ex["image"].astype(np.float32).mean(axis=2)
        for x0, y0, x1, y1 in ex["boxes"].astype(int):
            patch = gray[y0:y1, x0:x1]
            contrasts.append(patch.max() - patch.min())
    assert len(contrasts) > 5 and np.median(contrasts) > 60


def test_synth_cli_bad_ratios(tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path), "--ratios", "1:2"]) == 2
    assert "--ratios" in capsys.readouterr().err


def test_synth_box_is_grown_to_the_minimum_side_and_clipped():
    """A 1-px horizontal line's tight box is 1 px tall; the box drawn is 8 % of the image (5.12 px at
    64 px) tall, centred on the line, and clipped at the image's edge."""
    from raredet.data.synth import MIN_BOX_FRACTION, _alpha_box

    assert MIN_BOX_FRACTION == 0.08
    alpha = np.zeros((64, 64))
    alpha[20, 10:41] = 1.0  # tight box x 10..41, y 20..21
    np.testing.assert_allclose(_alpha_box(alpha), [10, 20 - 2.06, 41, 21 + 2.06], atol=1e-5)
    edge = np.zeros((64, 64))
    edge[0, 60:] = 1.0  # tight box x 60..64, y 0..1: grown by 0.56 and 2.06 per side, then clipped
    np.testing.assert_allclose(_alpha_box(edge), [60 - 0.56, 0, 64, 1 + 2.06], atol=1e-5)
    assert _alpha_box(np.full((64, 64), 0.2)) is None  # nothing above the 0.3 coverage: no box
