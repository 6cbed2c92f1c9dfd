"""`raredet init` for CenterNet: the three box-only zoo configs edited as for SSD (rates scaled by batch /
zoo batch, the step schedule by num_steps / zoo steps, written out by hand below), the checkpoint comment
for a CenterNet, the imbalance levers that act on its heatmap loss (repeat factors; class weights on the
center pixels as the alternative; no per-class focal alpha), and the keypoint and instance-mask models
refused with what they need and the box-only model to use instead."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from tests.commands.test_init import make_voc

from raredet import zoo
from raredet.commands.init import (
    edit_zoo_config,
    insert_lever_comments,
    recommend_levers,
    run_init,
    zoo_config,
)
from raredet.config import load
from raredet.config.label_map import LabelMap
from raredet.errors import ConfigError

# batch 128, 140000 steps, Adam 1e-3, 1e-4 from step 90000, 1e-5 from 120000
HOURGLASS = "centernet_hourglass104_512x512"
RESNET = "centernet_resnet101_v1_fpn_512x512"  # the same schedule; fine_tune_checkpoint_type classification
# batch 128, 50000 steps, cosine 1e-3 with warm-up 2.5e-4 over 5000 steps
HOURGLASS_1024 = "centernet_hourglass104_1024x1024"
BOX_ONLY = (HOURGLASS, HOURGLASS_1024, RESNET)


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


def test_keypoint_and_mask_models_refused_with_what_they_need(tmp_path):
    voc = make_voc(tmp_path / "voc")
    cases = {
        "centernet_hourglass104_512x512_kpts": ("keypoint annotations", HOURGLASS),
        "centernet_hourglass104_1024x1024_kpts": ("keypoints { id label }", HOURGLASS_1024),
        "centernet_resnet50_v1_fpn_512x512_kpts": ("num_keypoints", RESNET),
        "centernet_resnet50_v2_512x512_kpts": ("keypoint_std_dev", RESNET),
        "center_net_deepmac_512x512_voc_only_tpu-32": ("image/object/mask", HOURGLASS),
        "center_net_deepmac_1024x1024_coco_tpu-128": ("load_instance_masks: true", HOURGLASS_1024),
        "mask_rcnn_inception_resnet_v2_1024x1024": ("mask per box", "faster_rcnn_resnet101_v1_1024x1024"),
    }
    for i, (model, (need, instead)) in enumerate(cases.items()):
        with pytest.raises(ConfigError, match=rf"--model {model}:") as caught:
            run_init(voc, model, tmp_path / f"o{i}")
        assert need in str(caught.value) and f"use --model {instead}" in str(caught.value), model
        assert instead in zoo.model_names()
        assert not (tmp_path / f"o{i}").exists()  # refused before anything is written


def test_init_takes_the_31_box_only_zoo_models():
    taken, refused = [], []
    for name in zoo.model_names():
        try:
            zoo_config(name)
            taken.append(name)
        except ConfigError:
            refused.append(name)
    # 40 = 31 + 4 keypoint CenterNets + 4 DeepMACs + Mask R-CNN
    assert len(taken) == 31 and len(refused) == 9
    assert sorted(n for n in taken if n.startswith("center")) == sorted(BOX_ONLY)
    assert sum("_kpts" in n for n in refused) == 4 and sum("deepmac" in n for n in refused) == 4


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
