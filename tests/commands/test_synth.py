"""`raredet synth`: the summary it prints counts what the written COCO files hold."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from raredet.cli import main
from raredet.commands.synth import parse_ratios
from raredet.errors import ConfigError


def test_synth_prints_the_box_counts_of_each_split(tmp_path, capsys) -> None:
    out = tmp_path / "synth"
    assert main(["synth", "--out", str(out), "--images", "12", "--image_size", "64", "--num_shards", "1",
                 "--seed", "1"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == (f"wrote {out}: pipeline.config, label_map.pbtxt, train/val TFRecords, "
                          "train.json/val.json, images/")
    for line, split in zip(printed[1:], ("train", "val"), strict=True):
        coco = json.loads((out / f"{split}.json").read_text())
        names = {c["id"]: c["name"] for c in coco["categories"]}
        boxes = Counter(names[a["category_id"]] for a in coco["annotations"])
        prefix = f"  {split}: {len(coco['images'])} images, boxes: "
        assert line.startswith(prefix)
        counts = dict(reversed(item.split(" ")) for item in line[len(prefix):].split(", "))
        assert {name: int(n) for name, n in counts.items()} == boxes
    assert len(printed) == 3
    assert (out / "pipeline.config").is_file() and len(list(out.glob("*.tfrecord"))) == 2


def test_parse_ratios():
    assert parse_ratios("100:20:3") == (100.0, 20.0, 3.0)
    for bad in ("1:2", "a:b:c", "1:0:1"):
        with pytest.raises(ConfigError, match="--ratios"):
            parse_ratios(bad)


def test_bad_flag_values_are_a_user_error(tmp_path, capsys) -> None:
    assert main(["synth", "--out", str(tmp_path / "s"), "--images", "1"]) != 0
    assert "synth: need images >= 2 (got 1)" in capsys.readouterr().err
