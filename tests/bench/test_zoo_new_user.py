"""bench/zoo_new_user.py edits each zoo config as its comments ask a user to, and nothing else."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from bench.zoo_new_user import user_copy

from raredet import config
from raredet.protos import pipeline_pb2
from raredet.zoo import CONFIG_DIR

NAMES = sorted(p.name for p in CONFIG_DIR.glob("*.config"))


@pytest.mark.parametrize("name", NAMES)
def test_the_user_copy_changes_only_classes_paths_batch_and_the_checkpoint(name: str, tmp_path: Path) -> None:
    data = tmp_path / "data"
    path = user_copy(name, data, tmp_path, batch=1)
    msg = config.parse_text(path.read_text(), pipeline_pb2.TrainEvalPipelineConfig(), path)
    zoo = config.parse_text((CONFIG_DIR / name).read_text(), pipeline_pb2.TrainEvalPipelineConfig(), name)
    model = getattr(msg.model, msg.model.WhichOneof("model"))
    assert model.num_classes == 3 and msg.train_config.batch_size == 1
    assert not msg.train_config.fine_tune_checkpoint
    assert msg.eval_config.batch_size == zoo.eval_config.batch_size  # only the training batch changes
    assert msg.train_input_reader.label_map_path == str(data / "label_map.pbtxt")
    assert list(msg.train_input_reader.tf_record_input_reader.input_path) == [
        str(data / "train-00000-of-00001.tfrecord")]
    assert list(msg.eval_input_reader[0].tf_record_input_reader.input_path) == [
        str(data / "val-00000-of-00001.tfrecord")]
    # every other line is the zoo's: the lines in one file and not the other are those fields' only
    zoo_lines, copy_lines = (Counter(p.read_text().splitlines()) for p in (CONFIG_DIR / name, path))
    changed = {line.strip().split(":")[0] for line in (zoo_lines - copy_lines) + (copy_lines - zoo_lines)}
    allowed = {"num_classes", "batch_size", "label_map_path", "input_path", "keypoint_label_map_path",
               "fine_tune_checkpoint", "fine_tune_checkpoint_type", "fine_tune_checkpoint_version"}
    assert changed <= allowed, changed
