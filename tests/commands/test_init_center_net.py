"""`raredet init` for CenterNet: the three box-only zoo configs edited as for SSD (rates scaled by batch /
zoo batch, the step schedule by num_steps / zoo steps, written out by hand below), the checkpoint comment
for a CenterNet, the imbalance levers that act on its heatmap loss (repeat factors; class weights on the
center pixels as the alternative; no per-class focal alpha), and the keypoint and instance-mask models
refused with what they need and the box-only model to use instead."""

from __future__ import annotations

import io
import re
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tests.commands.test_init import make_voc

from raredet import zoo
from raredet.commands.init import (
    INSTANCE_MASKS,
    edit_zoo_config,
    insert_lever_comments,
    recommend_levers,
    run_init,
    set_mask_type,
    zoo_config,
)
from raredet.config import load
from raredet.config.label_map import LabelMap
from raredet.config.validate import ConfigWarning
from raredet.data.tfrecord import TFRecordReader, encode_example, write_tfrecord
from raredet.errors import ConfigError, DataError
from raredet.protos import input_reader_pb2

# batch 128, 140000 steps, Adam 1e-3, 1e-4 from step 90000, 1e-5 from 120000
HOURGLASS = "centernet_hourglass104_512x512"
RESNET = "centernet_resnet101_v1_fpn_512x512"  # the same schedule; fine_tune_checkpoint_type classification
# batch 128, 50000 steps, cosine 1e-3 with warm-up 2.5e-4 over 5000 steps
HOURGLASS_1024 = "centernet_hourglass104_1024x1024"
BOX_ONLY = (HOURGLASS, HOURGLASS_1024, RESNET)
MASK_RCNN = "mask_rcnn_inception_resnet_v2_1024x1024"  # batch 16, cosine 0.008


def _png(mask: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(mask).save(buffer, format="PNG")
    return buffer.getvalue()


def write_mask_records(folder: Path, *, lose_mask_of: int = -1,
                       numerical_from: int = 99) -> tuple[Path, Path]:
    """12 records of 32x32 images: a 'hole' [2, 2, 12, 10] in each, a 'dent' [20, 20, 28, 28] in the last 4;
    each box's mask is its rectangle (PNG, or float lists from record `numerical_from` on); record
    `lose_mask_of` has no mask. Returns the folder and a label map (dent 1, hole 2)."""
    folder.mkdir()
    labels = folder.parent / f"{folder.name}_labels.pbtxt"
    LabelMap.from_names(["dent", "hole"]).save(labels)
    records = []
    for i in range(12):
        image = io.BytesIO()
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
            image, format="JPEG")
        boxes = [[2, 2, 12, 10]] + ([[20, 20, 28, 28]] if i >= 8 else [])
        masks = np.zeros((len(boxes), 32, 32), dtype=np.uint8)
        for k, (x0, y0, x1, y1) in enumerate(boxes):
            masks[k, y0:y1, x0:x1] = 1
        xyxy = np.asarray(boxes, dtype=np.float32) / 32
        features = {
            "image/encoded": image.getvalue(), "image/format": "jpeg", "image/height": 32, "image/width": 32,
            "image/source_id": str(i), "image/filename": f"{i}.jpg",
            "image/object/bbox/xmin": xyxy[:, 0], "image/object/bbox/ymin": xyxy[:, 1],
            "image/object/bbox/xmax": xyxy[:, 2], "image/object/bbox/ymax": xyxy[:, 3],
            "image/object/class/label": [2] + ([1] if i >= 8 else []),
            "image/object/class/text": ["hole"] + (["dent"] if i >= 8 else []),
        }
        if i >= numerical_from:
            features["image/object/mask"] = masks.reshape(-1).astype(np.float32)
        elif i != lose_mask_of:
            features["image/object/mask"] = [_png(m) for m in masks]
        records.append(encode_example(features))
    write_tfrecord(folder / "all.tfrecord", records)
    return folder, labels


def _edit(name: str, batch_size: int, num_steps: int | None) -> str:
    return edit_zoo_config(zoo.config_path(name).read_text(), num_classes=2, batch_size=batch_size,
                           num_steps=num_steps, label_map=Path("/d/label_map.pbtxt"), train=Path("/d/train"),
                           evaluate=Path("/d/val"))


def _summary(boxes: dict[str, int]) -> dict:
    rows = [{"name": n, "boxes": b} for n, b in boxes.items()]
    return {"classes": rows, "imbalance_ratio": max(boxes.values()) / min(boxes.values())}


def test_manual_step_schedule_scaled_by_batch_and_steps():
    text = _edit(HOURGLASS, batch_size=8, num_steps=1400)
    assert re.search(r"^\s*num_classes: 2$", text, re.M)
    assert re.search(r"^\s*batch_size: 8$", text, re.M) and "num_steps: 1400" in text
    # rates * 8 / 128: 1e-3 -> 6.25e-05, 1e-4 -> 6.25e-06, 1e-5 -> 6.25e-07
    assert "initial_learning_rate: 6.25e-05" in text
    assert re.findall(r"^\s*learning_rate: ([\d.e-]+)$", text, re.M) == ["6.25e-06", "6.25e-07"]
    # boundaries * 1400 / 140000: 90000 -> 900, 120000 -> 1200
    assert re.findall(r"^\s*step: (\d+)$", text, re.M) == ["900", "1200"]
    assert "epsilon: 1e-7" in text  # Adam's epsilon is no rate
    assert re.search(r"^\s*batch_size: 1;$", text, re.M)  # eval_config's batch untouched
    assert 'label_map_path: "/d/label_map.pbtxt"' in text and 'input_path: "/d/train"' in text
    assert "PATH_TO_BE_CONFIGURED" not in re.sub(r"#.*", "", text)


def test_few_steps_keep_the_manual_boundaries_increasing():
    text = _edit(HOURGLASS, batch_size=8, num_steps=1)
    # 90000 / 140000 = 0.64 -> 1; 120000 / 140000 = 0.86 -> 1, which must exceed the previous: 2
    assert re.findall(r"^\s*step: (\d+)$", text, re.M) == ["1", "2"]
    text = _edit(HOURGLASS, batch_size=8, num_steps=14)
    assert re.findall(r"^\s*step: (\d+)$", text, re.M) == ["9", "12"]  # scaled, already increasing


def test_cosine_schedule_of_the_1024_hourglass_scaled():
    text = _edit(HOURGLASS_1024, batch_size=32, num_steps=None)
    # * 32 / 128: 1e-3 -> 2.5e-4, warm-up 2.5e-4 -> 6.25e-5; steps as the zoo's (no --num_steps)
    assert "learning_rate_base: 0.00025\n" in text and "warmup_learning_rate: 6.25e-05\n" in text
    assert "total_steps: 50000" in text and "warmup_steps: 5000" in text and "num_steps: 50000" in text


def test_checkpoint_comment_says_what_a_center_net_restores():
    hourglass, resnet = _edit(HOURGLASS, 8, None), _edit(RESNET, 8, None)
    for text in (hourglass, resnet):
        assert '#   fine_tune_checkpoint: "<the unpacked tarball>/checkpoint/ckpt-0"' in text
        assert "restores its feature extractor only" in text
        assert re.search(r'^\s*# fine_tune_checkpoint: "PATH_TO_BE_CONFIGURED', text, re.M)  # the zoo's
        assert not re.search(r"^\s*fine_tune_checkpoint(_type)?\s*:", text, re.M)  # nothing set
        assert "fine_tune_checkpoint_version: V2" in text  # harmless without a checkpoint: kept
    assert 'An hourglass has no classification backbone: "classification" is not available' in hourglass
    assert 'fine_tune_checkpoint_type: "classification". raredet and the TF OD API' in resnet
    assert "classification backbone" not in resnet


def test_levers_for_a_center_net_are_repeat_factors_and_center_pixel_weights():
    assert recommend_levers(_summary({"a": 100, "b": 40}), "center_net").repeat_factor_threshold is None
    levers = recommend_levers(_summary({"a": 100, "b": 20, "c": 3}), "center_net")
    assert levers.repeat_factor_threshold == 1.0
    assert levers.class_alpha == {}  # the heatmap loss has no per-class alpha
    assert levers.class_weights == "class_weights { auto { scheme: SQRT_INVERSE_FREQUENCY } }"
    ssd = recommend_levers(_summary({"a": 100, "b": 20, "c": 3}))
    assert ssd.class_alpha == {"b": 0.5, "c": 0.75} and not ssd.class_weights  # SSD's unchanged

    text = insert_lever_comments(_edit(HOURGLASS, 8, None), levers)
    lines = text.splitlines()
    at = next(i for i, line in enumerate(lines) if re.fullmatch(r"\s*num_classes: 2", line))
    assert lines[at + 3] == "    # class_weights { auto { scheme: SQRT_INVERSE_FREQUENCY } }"
    assert "  # repeat_factor_sampling { threshold: 1.0 }" in lines
    focal = next(i for i, line in enumerate(lines) if "penalty_reduced_logistic_focal_loss {" in line)
    assert "alpha here is the focusing exponent" in lines[focal + 1]
    assert "class_alpha {" not in text


def test_keypoint_models_refused_with_what_they_need(tmp_path):
    voc = make_voc(tmp_path / "voc")
    cases = {
        "centernet_hourglass104_512x512_kpts": ("keypoint annotations", HOURGLASS),
        "centernet_hourglass104_1024x1024_kpts": ("keypoints { id label }", HOURGLASS_1024),
        "centernet_resnet50_v1_fpn_512x512_kpts": ("num_keypoints", RESNET),
        "centernet_resnet50_v2_512x512_kpts": ("keypoint_std_dev", RESNET),
    }
    for i, (model, (need, instead)) in enumerate(cases.items()):
        with pytest.raises(ConfigError, match=rf"--model {model}: .* trains keypoints") as caught:
            run_init(voc, model, tmp_path / f"o{i}")
        assert need in str(caught.value) and f"use --model {instead}" in str(caught.value), model
        assert instead in zoo.model_names()
        assert not (tmp_path / f"o{i}").exists()  # refused before anything is written


def test_mask_models_refuse_data_without_masks_before_writing(tmp_path):
    voc = make_voc(tmp_path / "voc")
    cases = {
        "center_net_deepmac_512x512_voc_only_tpu-32": HOURGLASS,
        "center_net_deepmac_1024x1024_coco_tpu-128": HOURGLASS_1024,
        "mask_rcnn_inception_resnet_v2_1024x1024": "faster_rcnn_resnet101_v1_1024x1024",
    }
    for i, (model, instead) in enumerate(cases.items()):
        with pytest.raises(ConfigError, match=rf"--model {model}: .* trains instance masks") as caught:
            run_init(voc, model, tmp_path / f"o{i}")
        assert "a VOC folder has no masks" in str(caught.value)
        assert f"use --model {instead}" in str(caught.value) and instead in zoo.model_names()
        assert not (tmp_path / f"o{i}").exists()
    records, labels = write_mask_records(tmp_path / "recs", lose_mask_of=3)
    with pytest.raises(DataError, match=r"all\.tfrecord, record 3: 1 boxes and 0 masks"):
        run_init(records, MASK_RCNN, tmp_path / "o9", label_map=labels)
    assert not (tmp_path / "o9").exists()
    write_mask_records(tmp_path / "mixed", numerical_from=6)
    with pytest.raises(DataError, match=r"record 0 stores PNG masks and .*record 6 numerical masks"):
        run_init(tmp_path / "mixed", MASK_RCNN, tmp_path / "o10", label_map=labels)


def test_deepmac_edit_comments_out_the_coco_only_mask_settings():
    text = set_mask_type(_edit("center_net_deepmac_512x512_voc_only_tpu-32", 8, None), "NUMERICAL_MASKS")
    assert "      # allowed_masked_classes_ids: [\n      #   1,   # person\n" in text
    assert text.count("  # super_categories {") == 13
    path = Path(tempfile.mkdtemp()) / "deepmac.config"
    path.write_text(text)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConfigWarning)
        config = load(path).pipeline
    assert list(config.model.center_net.deepmac_mask_estimation.allowed_masked_classes_ids) == []
    assert dict(config.eval_config.super_categories) == {}
    assert config.eval_config.include_metrics_per_category  # the rest of eval_config as the zoo's
    readers = [config.train_input_reader, config.eval_input_reader[0]]
    assert [r.load_instance_masks for r in readers] == [True, True]
    assert [input_reader_pb2.InstanceMaskType.Name(r.mask_type) for r in readers] == ["NUMERICAL_MASKS"] * 2


def test_faster_rcnn_levers_are_repeat_factors_and_second_stage_weights():
    levers = recommend_levers(_summary({"a": 100, "b": 20, "c": 3}), "faster_rcnn")
    assert levers.repeat_factor_threshold == 1.0 and levers.class_alpha == {}
    assert levers.class_weights == "second_stage_class_weights { auto { scheme: SQRT_INVERSE_FREQUENCY } }"
    text = insert_lever_comments(_edit(MASK_RCNN, 8, None), levers)
    lines = text.splitlines()
    at = next(i for i, line in enumerate(lines) if re.fullmatch(r"\s*num_classes: 2", line))
    assert lines[at + 3].strip() == "# " + levers.class_weights
    assert "second stage's proposals" in lines[at + 2]


def test_init_takes_36_zoo_models_and_refuses_the_4_keypoint_ones():
    taken, refused = [], []
    for name in zoo.model_names():
        try:
            zoo_config(name)
            taken.append(name)
        except ConfigError:
            refused.append(name)
    # 40 = 31 box-only + 5 instance-mask models (given TFRecords with masks) + 4 keypoint CenterNets
    assert len(taken) == 36 and len(refused) == 4 and all("_kpts" in n for n in refused)
    masks = [n for n in taken if INSTANCE_MASKS.search(zoo.config_path(n).read_text())]
    assert len(masks) == 5 and sum("deepmac" in n for n in masks) == 4 and MASK_RCNN in masks
    assert sorted(n for n in taken if n.startswith("center") and n not in masks) == sorted(BOX_ONLY)


@pytest.mark.slow  # builds the ResNet-101 CenterNet twice (~40 s on the loaded 2-core VM)
def test_init_writes_a_center_net_config_that_passes_check_with_its_levers_uncommented(tmp_path):
    from raredet.commands.config import check

    out = tmp_path / "out"
    run_init(make_voc(tmp_path / "voc"), RESNET, out, batch_size=4, num_steps=700)  # crack 6, scratch 20
    config = load(out / "pipeline.config").pipeline
    center_net = config.model.center_net
    assert center_net.num_classes == 2 and config.train_config.batch_size == 4
    manual = config.train_config.optimizer.adam_optimizer.learning_rate.manual_step_learning_rate
    assert manual.initial_learning_rate == pytest.approx(1e-3 * 4 / 128, rel=1e-6)
    assert [s.step for s in manual.schedule] == [450, 600]  # 90000 and 120000 * 700 / 140000
    assert [s.learning_rate for s in manual.schedule] == pytest.approx([1e-4 * 4 / 128, 1e-5 * 4 / 128],
                                                                         rel=1e-6)
    assert not config.train_input_reader.HasField("repeat_factor_sampling")  # only commented
    text = (out / "pipeline.config").read_text()
    assert "for a CenterNet, repeat factors at threshold" in text  # ratio 20/6 = 3.3 >= 3
    uncommented = text.replace("# repeat_factor_sampling", "repeat_factor_sampling").replace(
        "# class_weights { auto", "class_weights { auto")
    (out / "levers.config").write_text(uncommented)
    check(out / "levers.config")
    loaded = load(out / "levers.config").pipeline
    assert loaded.train_input_reader.repeat_factor_sampling.threshold == 1.0
    auto = loaded.model.center_net.class_weights.auto
    assert auto.DESCRIPTOR.fields_by_name["scheme"].enum_type.values_by_number[auto.scheme].name == (
        "SQRT_INVERSE_FREQUENCY")
    assert LabelMap.load(out / "label_map.pbtxt").names == ["crack", "scratch"]


@pytest.mark.slow  # config check builds each of the three (~15 s each on the loaded 2-core VM)
def test_each_box_only_center_net_is_edited_into_a_config_that_passes_check(tmp_path):
    from raredet.commands.config import check

    LabelMap.from_names(["a", "b"]).save(tmp_path / "l.pbtxt")
    for name in BOX_ONLY:
        text = edit_zoo_config(zoo.config_path(name).read_text(), num_classes=2, batch_size=8, num_steps=None,
                               label_map=tmp_path / "l.pbtxt", train=tmp_path / "t", evaluate=tmp_path / "v")
        text = insert_lever_comments(text, recommend_levers(_summary({"a": 100, "b": 3}), "center_net"))
        text = text.replace("# class_weights { auto", "class_weights { auto")
        (tmp_path / f"{name}.config").write_text(text)
        check(tmp_path / f"{name}.config")  # raises ConfigError if raredet refuses it


@pytest.mark.slow  # builds Mask R-CNN (Inception-ResNet-v2) and a DeepMAC (two hourglasses): ~1 min
def test_mask_models_from_tfrecords_with_masks_pass_check_and_read_the_masks(tmp_path):
    records, labels = write_mask_records(tmp_path / "png")
    out = tmp_path / "mask_rcnn"
    run_init(records, MASK_RCNN, out, label_map=labels, batch_size=4)  # check_written: config check passes
    config = load(out / "pipeline.config").pipeline
    assert config.model.faster_rcnn.num_classes == 2 and config.train_config.batch_size == 4
    cosine = config.train_config.optimizer.momentum_optimizer.learning_rate.cosine_decay_learning_rate
    assert cosine.learning_rate_base == pytest.approx(0.008 * 4 / 16, rel=1e-6)
    readers = [config.train_input_reader, config.eval_input_reader[0]]
    assert [input_reader_pb2.InstanceMaskType.Name(r.mask_type) for r in readers] == ["PNG_MASKS"] * 2
    # hole-only stratum n=8: test (8*15+50)//100 = 1, val 1, train 6; dent n=4: 1, 1, 2 -> train 8
    reader = TFRecordReader([out / "train.tfrecord"], LabelMap.load(labels), load_instance_masks=True,
                            mask_type="PNG_MASKS")
    assert len(reader) == 8
    masks = [reader.example(i)["masks"] for i in range(len(reader))]
    assert sum(len(m) for m in masks) == 8 + 2  # a hole in each, a dent in the 2 dent images
    assert all(int(m[0].sum()) == 10 * 8 for m in masks)  # the hole's rectangle [2, 2, 12, 10]: 10 x 8
    text = (out / "pipeline.config").read_text()
    assert "instance masks: the records' image/object/mask, mask_type PNG_MASKS" in text
    # training boxes dent 2 : hole 8, ratio 4 >= 3: both levers written as comments
    assert "# second_stage_class_weights { auto" in text and "# repeat_factor_sampling {" in text
    lever = text.replace("# second_stage_class_weights { auto", "second_stage_class_weights { auto").replace(
        "# repeat_factor_sampling", "repeat_factor_sampling")
    (out / "levers.config").write_text(lever)
    from raredet.commands.config import check

    check(out / "levers.config")

    numerical, labels = write_mask_records(tmp_path / "numerical", numerical_from=0)
    out = tmp_path / "deepmac"
    run_init(numerical, "center_net_deepmac_512x512_voc_only_tpu-32", out, label_map=labels, batch_size=2)
    config = load(out / "pipeline.config").pipeline
    readers = [config.train_input_reader, config.eval_input_reader[0]]
    assert [input_reader_pb2.InstanceMaskType.Name(r.mask_type) for r in readers] == ["NUMERICAL_MASKS"] * 2
    assert list(config.model.center_net.deepmac_mask_estimation.allowed_masked_classes_ids) == []
    reader = TFRecordReader([out / "train.tfrecord"], LabelMap.load(labels), load_instance_masks=True,
                            mask_type="NUMERICAL_MASKS")
    assert int(reader.example(0)["masks"][0].sum()) == 10 * 8
