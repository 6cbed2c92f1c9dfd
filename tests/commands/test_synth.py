"""`raredet synth`: the summary it prints counts what the written COCO files hold."""

from __future__ import annotations

import json
from collections import Counter

from raredet.cli import main


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
