"""builders/training.py: the training components from a config, the fine-tune checkpoint, sync batch norm."""

from __future__ import annotations

import warnings

import pytest
import torch
from tests.helpers import tiny_pipeline as tiny
from tests.helpers.builders import parse

from raredet import builders, config
from raredet.builders.training import warn_frozen_batch_norm_from_scratch
from raredet.config import ConfigWarning
from raredet.engine.optim import KerasMomentum
from raredet.errors import ConfigError
from raredet.protos import pipeline_pb2, ssd_pb2, train_pb2
from raredet.zoo import CONFIG_DIR


def test_build_training_components(data_dir):
    cfg = tiny.write_config(data_dir, "repeat.config",
                            reader_extra="repeat_factor_sampling { threshold: 0.9 }")
    comps = builders.build_training(config.load(cfg), seed=3, num_train_steps=7)
    assert comps.num_steps == 7 and comps.batch_size == 2
    assert comps.class_names == ["scratch", "dent", "crack"]
    assert comps.ema is None and comps.schedule(0) == pytest.approx(0.01)
    assert isinstance(comps.optimizer, KerasMomentum)
    decayed = {n for g in comps.optimizer.param_groups if g["weight_decay"] > 0 for n in g["param_names"]}
    assert decayed and all(n.endswith("weight") for n in decayed)
    assert len(comps.dataset) == 7
    assert len(comps.sampler) > 7  # images with the rarer class repeat
    assert 'name: "crack"' in comps.label_map_text
    assert "fixed_shape_resizer" in comps.config_text
    assert [w.name for w in comps.class_weights] == ["scratch", "dent", "crack"]


def test_num_steps_zero_is_an_error(data_dir):
    cfg = tiny.write_config(data_dir, "zero.config")
    loaded = config.load(cfg)
    loaded.pipeline.train_config.num_steps = 0
    with pytest.raises(ConfigError, match="num_train_steps"):
        builders.build_training(loaded)


def test_fine_tune_from_detection_checkpoint(data_dir, tmp_path):
    loaded = config.load(tiny.write_config(data_dir, "ft.config"))
    torch.manual_seed(1)
    source, _ = builders.build_model(loaded.pipeline.model.ssd)
    torch.save({"model": source.state_dict()}, tmp_path / "ckpt-9.pt")
    torch.manual_seed(2)
    target, _ = builders.build_model(loaded.pipeline.model.ssd)
    tc = train_pb2.TrainConfig(fine_tune_checkpoint=str(tmp_path / "ckpt-9.pt"),
                               fine_tune_checkpoint_type="detection")
    report = builders.load_fine_tune_checkpoint(target, tc)
    n = len(source.state_dict())
    assert report.endswith(f"loaded {n}, missing 0, unexpected 0, shape mismatch 0; computing with "
                           "torchvision's conventions (what torch weights expect)")
    for key, value in source.state_dict().items():
        assert torch.equal(value, target.state_dict()[key]), key
    tc.fine_tune_checkpoint_type = "everything"
    with pytest.raises(ConfigError, match="valid: .*'classification', 'detection'"):
        builders.load_fine_tune_checkpoint(target, tc)


def test_uses_sync_batch_norm():
    plain = parse("feature_extractor { conv_hyperparams { batch_norm { } } }", ssd_pb2.Ssd())
    synced = parse("box_predictor { weight_shared_convolutional_box_predictor { "
                    "conv_hyperparams { sync_batch_norm { } } } }", ssd_pb2.Ssd())
    assert not builders.uses_sync_batch_norm(plain) and builders.uses_sync_batch_norm(synced)




def _zoo(name: str, checkpoint: str = "") -> pipeline_pb2.TrainEvalPipelineConfig:
    path = CONFIG_DIR / name
    msg = config.parse_text(path.read_text(), pipeline_pb2.TrainEvalPipelineConfig(), path)
    msg.train_config.fine_tune_checkpoint = checkpoint
    return msg


def test_frozen_batch_norms_without_a_checkpoint_are_warned_about():
    frozen = "faster_rcnn_resnet152_v1_800x1333_coco17_gpu-8.config"  # no batch_norm_trainable: frozen
    expected = (r"batch_norm_trainable is false and train_config.fine_tune_checkpoint is not set: the "
                r"frozen batch norms keep their initial statistics")
    with pytest.warns(ConfigWarning, match=expected):
        warn_frozen_batch_norm_from_scratch(_zoo(frozen))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # none of these warns
        warn_frozen_batch_norm_from_scratch(_zoo(frozen, checkpoint="ckpt-0"))
        trainable = "faster_rcnn_resnet152_v1_640x640_coco17_tpu-8.config"  # batch_norm_trainable: true
        warn_frozen_batch_norm_from_scratch(_zoo(trainable))
        warn_frozen_batch_norm_from_scratch(_zoo("ssd_resnet50_v1_fpn_640x640_coco17_tpu-8.config"))
