"""The TF2 zoo's 10 Faster R-CNN configs: each passes `config check` and trains two steps on CPU with a
small batch and small images (a test copy with sizes, classes and paths overridden)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tests.helpers.tiny_pipeline import make_data
from tests.helpers.zoo import faster_rcnn_small_copy

from raredet.commands import config as config_cmd
from raredet.commands.train import train_from_config
from raredet.errors import ConfigError
from raredet.zoo import CONFIG_DIR

# The zoo configs, verbatim (with the EfficientDet ones, tests/test_efficientdet_zoo.py).
ZOO = CONFIG_DIR
BUILT = sorted(p.name for p in ZOO.glob("faster_rcnn_*.config"))
FAST = ["faster_rcnn_resnet50_v1_640x640_coco17_tpu-8.config",
        "faster_rcnn_resnet50_v1_fpn_640x640_coco17_tpu-8.config"]



@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("frcnn_data")
    make_data(out, images=6)
    return out


@pytest.mark.parametrize("name", BUILT)
def test_zoo_config_checks(name):
    assert len(BUILT) == 10
    report = config_cmd.check(ZOO / name)
    assert "faster_rcnn" in report and "OK" in report


def _train_two_steps(name: str, data_dir: Path, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    config = faster_rcnn_small_copy(name, data_dir)
    result = train_from_config(config, tmp_path / "run", num_train_steps=2, num_workers=0, device="cpu")
    assert result.step == 2
    assert (tmp_path / "run" / "ckpt-2.pt").exists()
    assert all(torch.isfinite(torch.tensor(v)) for v in result.last_losses.values())


@pytest.mark.parametrize("name", FAST)
def test_resnet50_and_fpn_640_train_two_steps(name, data_dir, tmp_path):
    _train_two_steps(name, data_dir, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in BUILT if n not in FAST])
def test_every_zoo_config_trains_two_steps(name, data_dir, tmp_path):
    _train_two_steps(name, data_dir, tmp_path)


def test_a_bad_second_stage_calibration_names_its_field(tmp_path):
    text = (ZOO / FAST[0]).read_text().replace("score_converter: SOFTMAX", """score_converter: SOFTMAX
      calibration_config { class_id_function_approximations { class_id_xy_pairs_map {
        key: 91 value { x_y_pair { x: 0.0 y: 0.0 } x_y_pair { x: 1.0 y: 1.0 } } } } }""")
    path = tmp_path / "bad.config"
    path.write_text(text)
    where = r"model\.faster_rcnn\.second_stage_post_processing\.calibration_config"
    with pytest.raises(ConfigError, match=where):
        config_cmd.check(path)
