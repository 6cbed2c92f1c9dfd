"""bench/zoo_gpu_smoke.py (the lead's GPU run of D5-D7) checked on the CPU at a small size."""

from __future__ import annotations

import warnings

import pytest
import torch

from bench import zoo_gpu_smoke
from raredet import config as cfg


def test_small_copy_keeps_the_native_size_and_changes_only_what_a_user_does(tmp_path):
    path = zoo_gpu_smoke.small_copy(zoo_gpu_smoke.CONFIGS["d7"], tmp_path, batch=2, size=None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", cfg.ConfigWarning)
        loaded = cfg.load(path).pipeline
    ssd = loaded.model.ssd
    resizer = ssd.image_resizer.keep_aspect_ratio_resizer
    assert (resizer.min_dimension, resizer.max_dimension) == (1536, 1536)
    crop = [s.random_scale_crop_and_pad_to_square for s in loaded.train_config.data_augmentation_options
            if s.HasField("random_scale_crop_and_pad_to_square")]
    assert [c.output_size for c in crop] == [1536]
    assert ssd.num_classes == 3 and ssd.feature_extractor.type == "ssd_efficientnet-b6_bifpn_keras"
    assert loaded.train_config.batch_size == 2 and not loaded.train_config.fine_tune_checkpoint
    paths = list(loaded.train_input_reader.tf_record_input_reader.input_path)
    assert paths == [str(tmp_path / "train-*.tfrecord")]
    assert zoo_gpu_smoke.native_size(zoo_gpu_smoke.CONFIGS["d5"]) == 1280


@pytest.mark.slow  # builds D5 and trains it two steps at 128 px (~10 s on 2 cores)
def test_the_script_trains_d5_two_steps_on_cpu(tmp_path, capsys):
    torch.set_num_threads(1)
    code = zoo_gpu_smoke.main(["--device", "cpu", "--size", "128", "--data_size", "64", "--configs", "d5",
                               "--work", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    line = [x for x in out.splitlines() if x.startswith("d5 ")]
    assert len(line) == 1 and line[0].endswith(", ok") and "128x128 batch 2 cpu" in line[0]
    assert (tmp_path / "run_d5" / "ckpt-2.pt").exists()
