"""`raredet init`: a tiny VOC folder and a tiny COCO JSON made here become a config that `raredet config
check` passes and `raredet train` trains; counts, split sizes and the scaled learning rates by hand;
every bad-annotation kind reported with its file; refusals with what to do."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from raredet import cli, zoo
from raredet.commands.init import edit_zoo_config, recommend_levers, run_init
from raredet.config import load
from raredet.config.label_map import LabelMap
from raredet.data.tfrecord import TFRecordReader
from raredet.errors import ConfigError, DataError

MODEL = "ssd_mobilenet_v2_fpnlite_320x320"
ZOO_TEXT = zoo.config_path(MODEL).read_text()  # batch 128, learning_rate_base .08, warmup .026666


def _voc_object(name: str, box: tuple[int, int, int, int]) -> str:
    x0, y0, x1, y1 = box
    return (f"<object><name>{name}</name><difficult>0</difficult><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>"
            f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>")


def _voc_image(root: Path, stem: str, objects: list[tuple[str, tuple[int, int, int, int]]],
               filename: str | None = None, shade: int = 0) -> None:
    filename = filename or f"{stem}.jpg"
    pixels = np.random.default_rng(shade).integers(0, 256, (48, 64, 3), dtype=np.uint8)  # distinct bytes
    Image.fromarray(pixels).save(root / "JPEGImages" / f"{stem}.jpg", format="JPEG")
    xml = (f"<annotation><filename>{filename}</filename><size><width>64</width><height>48</height></size>"
           + "".join(_voc_object(n, b) for n, b in objects) + "</annotation>")
    (root / "Annotations" / f"{stem}.xml").write_text(xml)


def make_voc(root: Path) -> Path:
    """20 images with one 'scratch', 10 with a 'crack' and a 'scratch' (boxes: scratch 30, crack 10)."""
    (root / "Annotations").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    for i in range(20):
        _voc_image(root, f"s{i:02d}", [("scratch", (4, 4, 30, 20))], shade=i)
    for i in range(10):
        _voc_image(root, f"c{i:02d}", [("crack", (10, 10, 40, 30)), ("scratch", (1, 1, 9, 9))], shade=100 + i)
    return root


def _records(path: Path, labels: LabelMap) -> list[dict]:
    reader = TFRecordReader([path], labels)
    return [reader.annotations(i) for i in range(len(reader))]


def test_voc_folder_gives_splits_counts_label_map_and_scaled_rates(tmp_path):
    out = tmp_path / "out"
    summary = run_init(make_voc(tmp_path / "voc"), MODEL, out, batch_size=8, num_steps=1000)
    labels = LabelMap.load(out / "label_map.pbtxt")
    assert labels.names == ["crack", "scratch"] and labels.ids == [1, 2]  # sorted names, ids 1..K
    # strata: crack images (crack is the rarer class) n=10 -> test 2, val 2, train 6; scratch-only n=20 ->
    # test (20*15+50)//100 = 3, val 3, train 14
    sizes = {s: len(_records(out / f"{s}.tfrecord", labels)) for s in ("train", "val", "test")}
    assert sizes == {"train": 20, "val": 5, "test": 5}
    train = _records(out / "train.tfrecord", labels)
    assert sum(int((r["labels"] == 0).sum()) for r in train) == 6  # crack boxes
    assert sum(int((r["labels"] == 1).sum()) for r in train) == 20  # scratch: 6 + 14
    np.testing.assert_allclose(train[0]["boxes"][-1:], [[4, 4, 30, 20]] if len(train[0]["boxes"]) == 1
                               else [[1, 1, 9, 9]], atol=1e-4)
    stats = json.loads((out / "stats" / "stats.json").read_text())
    assert stats["num_images"] == 20 and stats["imbalance_ratio"] == pytest.approx(20 / 6)

    pipeline = load(out / "pipeline.config").pipeline
    assert pipeline.model.ssd.num_classes == 2
    assert pipeline.train_config.batch_size == 8 and pipeline.train_config.num_steps == 1000
    cosine = pipeline.train_config.optimizer.momentum_optimizer.learning_rate.cosine_decay_learning_rate
    # the zoo's rates scaled by the batch (stored as float32)
    assert cosine.learning_rate_base == pytest.approx(0.08 * 8 / 128, rel=1e-6)
    assert cosine.warmup_learning_rate == pytest.approx(0.026666 * 8 / 128, rel=1e-6)
    assert cosine.total_steps == 1000 and cosine.warmup_steps == 1000 * 1000 // 50000  # 20
    assert not pipeline.train_config.fine_tune_checkpoint  # left for the user, with a comment
    inputs = [pipeline.train_input_reader, pipeline.eval_input_reader[0]]
    assert [list(r.tf_record_input_reader.input_path) for r in inputs] == [
        [str(out / "train.tfrecord")], [str(out / "val.tfrecord")]]
    test_config = load(out / "pipeline.test.config").pipeline
    assert list(test_config.eval_input_reader[0].tf_record_input_reader.input_path) == [
        str(out / "test.tfrecord")]
    text = (out / "pipeline.config").read_text()
    assert "#   fine_tune_checkpoint: \"<the unpacked tarball>/checkpoint/ckpt-0\"" in text
    assert "# repeat_factor_sampling { threshold: 1.0 }" in text  # ratio 3.3 >= 3: the study's best
    assert '# class_alpha { name: "crack" value: 0.5 }' in text  # crack 6 of scratch 20: 30 % <= 50 %
    assert "no inconsistent annotations found" in summary


def test_each_bad_annotation_kind_is_reported_with_its_file(tmp_path):
    root = make_voc(tmp_path / "voc")
    _voc_image(root, "outside", [("scratch", (50, 40, 80, 60))], shade=200)  # clipped to (50, 40, 64, 48)
    _voc_image(root, "flat", [("scratch", (5, 5, 5, 20)), ("crack", (1, 1, 10, 10))], shade=201)
    _voc_image(root, "twice", [("crack", (1, 1, 10, 10)), ("crack", (1, 1, 10, 10))], shade=202)
    _voc_image(root, "empty", [], shade=203)
    _voc_image(root, "noext", [("crack", (2, 2, 12, 12))], filename="noext", shade=204)
    _voc_image(root, "copy", [("crack", (1, 1, 10, 10))])
    (root / "JPEGImages" / "copy.jpg").write_bytes((root / "JPEGImages" / "s03.jpg").read_bytes())
    _voc_image(root, "lost", [("crack", (1, 1, 10, 10))], shade=206)
    (root / "JPEGImages" / "lost.jpg").unlink()
    (root / "Annotations" / "broken.xml").write_text("<annotation>")
    _voc_image(root, "other", [("dent", (1, 1, 10, 10)), ("crack", (3, 3, 9, 9))], shade=205)
    labels = tmp_path / "labels.pbtxt"
    LabelMap.from_names(["crack", "scratch"]).save(labels)
    out = tmp_path / "out"
    summary = run_init(root, MODEL, out, label_map=labels)
    report = json.loads((out / "data_report.json").read_text())["issues"]
    assert {k: v["count"] for k, v in report.items()} == {
        "unreadable_annotation": 1, "image_name_without_extension": 1, "missing_image": 1,
        "duplicate_image": 1, "unknown_class": 1, "box_outside_image": 1, "zero_area_box": 1,
        "duplicate_box": 1, "image_without_annotations": 1}
    assert "broken.xml" in report["unreadable_annotation"]["where"][0]
    assert report["missing_image"]["where"][0].startswith(str(root / "Annotations" / "lost.xml"))
    copy = root / "Annotations" / "copy.xml"
    assert report["duplicate_image"]["where"][0].endswith(f"s03.jpg repeats {copy}")  # copy.xml sorts first
    assert "'dent'" in report["unknown_class"]["where"][0]
    assert report["box_outside_image"]["rule"] == "box clipped to the image"
    assert "missing_image: 1 (image skipped)" in summary and "unknown_class: 1 (box dropped)" in summary
    labels_map = LabelMap.load(out / "label_map.pbtxt")
    written = sum(len(_records(out / f"{s}.tfrecord", labels_map)) for s in ("train", "val", "test"))
    assert written == 30 - 1 + 7  # s03 (copy.xml came first); outside, flat, twice, empty, noext, other, copy


def make_coco(root: Path) -> Path:
    """8 images of 'hole' (category id 7) and 4 with a 'dent' (id 3) too; one box of an unknown id 9."""
    (root / "images").mkdir(parents=True)
    images, anns = [], []
    for i in range(12):
        Image.new("RGB", (32, 32), (i * 10, 0, 0)).save(root / "images" / f"{i}.png")
        images.append({"id": i + 1, "file_name": f"{i}.png", "height": 32, "width": 32})
        anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": 7, "bbox": [2, 2, 10, 8],
                     "iscrowd": 0})
        if i >= 8:
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": 3, "bbox": [20, 20, 8, 8],
                         "iscrowd": 0})
    anns.append({"id": 99, "image_id": 1, "category_id": 9, "bbox": [0, 0, 4, 4], "iscrowd": 0})
    path = root / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": [
        {"id": 7, "name": "hole"}, {"id": 3, "name": "dent"}]}))
    return path


def test_coco_json_ids_renumbered_and_unknown_category_reported(tmp_path):
    out = tmp_path / "out"
    run_init(make_coco(tmp_path / "coco"), MODEL, out)
    labels = LabelMap.load(out / "label_map.pbtxt")
    assert labels.names == ["dent", "hole"] and labels.ids == [1, 2]
    # dent images n=4: test (60+50)//100 = 1, val 1, train 2; hole-only n=8: (120+50)//100 = 1, 1, 6
    counts = {s: len(_records(out / f"{s}.tfrecord", labels)) for s in ("train", "val", "test")}
    assert counts == {"train": 8, "val": 2, "test": 2}
    report = json.loads((out / "data_report.json").read_text())["issues"]
    assert report["unknown_class"]["count"] == 1 and "category_id 9" in report["unknown_class"]["where"][0]


def test_edit_scales_every_rate_and_step_count_of_the_schedule():
    text = edit_zoo_config(ZOO_TEXT, num_classes=3, batch_size=16, num_steps=None, label_map=Path("/l"),
                           train=Path("/t"), evaluate=Path("/v"))
    assert re.search(r"learning_rate_base: 0\.01\n", text)  # .08 * 16 / 128
    assert re.search(r"warmup_learning_rate: 0\.00333325\n", text)  # .026666 * 16 / 128
    assert "num_steps: 50000" in text and "total_steps: 50000" in text and "warmup_steps: 1000" in text
    assert "PATH_TO_BE_CONFIGURED" not in text.replace('# fine_tune_checkpoint: "PATH_TO_BE_CONFIGURED', "")


def test_levers_follow_the_measured_imbalance():
    def summary(boxes):
        rows = [{"name": n, "boxes": b} for n, b in boxes.items()]
        return {"classes": rows, "imbalance_ratio": max(boxes.values()) / min(boxes.values())}

    assert recommend_levers(summary({"a": 100, "b": 40})).repeat_factor_threshold is None  # ratio 2.5
    levers = recommend_levers(summary({"a": 100, "b": 20, "c": 3, "d": 60}))
    assert levers.repeat_factor_threshold == 1.0
    assert levers.class_alpha == {"b": 0.5, "c": 0.75}  # the demo's crack 0.75 and dent 0.5


def test_refusals_say_what_to_do(tmp_path):
    voc = make_voc(tmp_path / "voc")
    with pytest.raises(ConfigError, match=f"unknown zoo model 'ssd_nonsense'.*{MODEL}"):
        run_init(voc, "ssd_nonsense", tmp_path / "o1")
    with pytest.raises(ConfigError, match="trains keypoints.*use --model centernet_hourglass104_512x512"):
        run_init(voc, "centernet_hourglass104_512x512_kpts", tmp_path / "o2")  # more: test_init_center_net
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    with pytest.raises(ConfigError, match="not empty.*--overwrite"):
        run_init(voc, MODEL, tmp_path / "full")
    with pytest.raises(DataError, match="not a Pascal VOC folder"):
        run_init(tmp_path / "nowhere", MODEL, tmp_path / "o3")
    with pytest.raises(ConfigError, match="--label_map"):
        (tmp_path / "recs").mkdir()
        (tmp_path / "recs" / "a.tfrecord").write_bytes(b"")
        run_init(tmp_path / "recs", MODEL, tmp_path / "o6")


def test_full_stem_is_accepted_and_the_cli_refuses_with_exit_2(tmp_path, capsys):
    assert zoo.config_path(MODEL + "_coco17_tpu-8") == zoo.config_path(MODEL)
    assert cli.main(["init", str(tmp_path), "--model", "nope", "--out", str(tmp_path / "o")]) == 2
    assert "ssd_resnet50_v1_fpn_640x640" in capsys.readouterr().err


@pytest.mark.slow
def test_written_config_passes_check_and_trains(tmp_path):
    out = tmp_path / "out"
    assert cli.main(["init", str(make_voc(tmp_path / "voc")), "--model", MODEL, "--out", str(out),
                     "--batch_size", "2", "--num_steps", "2"]) == 0
    assert cli.main(["config", "check", str(out / "pipeline.config")]) == 0
    assert cli.main(["train", "--pipeline_config_path", str(out / "pipeline.config"), "--model_dir",
                     str(out / "run")]) == 0
    assert sorted(p.name for p in (out / "run").glob("ckpt-*")), "no checkpoint written"


def test_a_relative_out_writes_paths_that_resolve_from_anywhere(tmp_path, monkeypatch):
    # `--out cn` from the data's folder once wrote "cn/train.tfrecord" into cn/pipeline.config, which
    # raredet reads from the config's folder (cn/cn/train.tfrecord): init refused its own config.
    voc = make_voc(tmp_path / "voc")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["init", "voc", "--model", MODEL, "--out", "rel", "--batch_size", "2"]) == 0
    text = (tmp_path / "rel" / "pipeline.config").read_text()
    assert f'input_path: "{tmp_path / "rel" / "train.tfrecord"}"' in text
    assert f'label_map_path: "{tmp_path / "rel" / "label_map.pbtxt"}"' in text
    assert voc.is_dir()


def test_tfrecords_are_split_or_kept_as_split(tmp_path):
    first = tmp_path / "first"
    run_init(make_voc(tmp_path / "voc"), MODEL, first)  # train 20, val 5, test 5 (the VOC test above)
    labels = first / "label_map.pbtxt"
    one = tmp_path / "one"
    one.mkdir()
    (one / "all.tfrecord").write_bytes(b"".join((first / f"{s}.tfrecord").read_bytes()
                                                for s in ("train", "val", "test")))
    run_init(one, MODEL, tmp_path / "resplit", label_map=labels)  # the same 30 images: the same strata
    mapped = LabelMap.load(labels)
    sizes = {s: len(_records(tmp_path / "resplit" / f"{s}.tfrecord", mapped))
             for s in ("train", "val", "test")}
    assert sizes == {"train": 20, "val": 5, "test": 5}
    kept = tmp_path / "kept"
    run_init(first, MODEL, kept, label_map=labels)  # train*, val*, test* files: their own split
    assert [(kept / f"{s}.tfrecord").read_bytes() == (first / f"{s}.tfrecord").read_bytes()
            for s in ("train", "val", "test")] == [True, True, True]
    assert "the files' own split" in json.loads((kept / "data_report.json").read_text())["split_rule"]


def test_a_voc_folders_own_splits_are_used(tmp_path):
    root = make_voc(tmp_path / "voc")
    (root / "ImageSets" / "Main").mkdir(parents=True)
    train = [f"s{i:02d}" for i in range(15)] + ["c00"]
    (root / "ImageSets" / "Main" / "train.txt").write_text("\n".join(train) + "\n")
    (root / "ImageSets" / "Main" / "val.txt").write_text("s15\nc01\ns00\n")  # s00 is in train already
    run_init(root, MODEL, tmp_path / "out")
    labels = LabelMap.load(tmp_path / "out" / "label_map.pbtxt")
    assert [len(_records(tmp_path / "out" / f"{s}.tfrecord", labels)) for s in ("train", "val")] == [16, 2]
    assert not (tmp_path / "out" / "test.tfrecord").exists()
    report = json.loads((tmp_path / "out" / "data_report.json").read_text())
    assert report["split_rule"] == "the folder's own ImageSets/Main lists: train, val"
    assert report["issues"]["duplicate_image"]["count"] == 1


@pytest.mark.slow  # config check builds each model: ~5 min for the 29 on a loaded 2-core machine
def test_every_zoo_model_raredet_trains_is_edited_into_a_config_that_passes_check(tmp_path):
    from raredet.commands.config import check

    LabelMap.from_names(["a", "b"]).save(tmp_path / "l.pbtxt")
    trainable = [n for n in zoo.model_names() if not n.startswith("center")]
    assert len(trainable) == 29  # the 40 zoo configs less the 11 CenterNets (tests/commands/test_init_center_net.py)
    for name in trainable:
        text = edit_zoo_config(zoo.config_path(name).read_text(), num_classes=2, batch_size=8, num_steps=None,
                               label_map=tmp_path / "l.pbtxt", train=tmp_path / "t", evaluate=tmp_path / "v")
        (tmp_path / f"{name}.config").write_text(text)
        check(tmp_path / f"{name}.config")  # raises ConfigError if raredet refuses it
        assert "PATH_TO_BE_CONFIGURED" not in re.sub(r"#.*", "", text), name  # only in comments
