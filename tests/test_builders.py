"""builders: config messages -> objects, checked against the config's values and hand-computed weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from google.protobuf import text_format
from tests.helpers import tiny_pipeline as tiny

from raredet import builders, config
from raredet.config import LabelMap
from raredet.engine.optim import KerasMomentum
from raredet.errors import ConfigError
from raredet.losses import (
    bootstrapped_sigmoid,
    l1_localization_loss,
    weighted_giou,
    weighted_sigmoid,
    weighted_sigmoid_focal,
    weighted_softmax,
)
from raredet.protos import losses_pb2, optimizer_pb2, pipeline_pb2, ssd_pb2, train_pb2

LABELS = LabelMap.from_names(["scratch", "dent", "crack"])


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    tiny.make_data(out)
    return out


def _parse(text: str, message):
    return text_format.Parse(text, message)


def test_message_kwargs_values():
    msg = _parse("""classification_loss { weighted_sigmoid_focal { gamma: 1.5 alpha: 0.1 } }
                    hard_example_miner { loss_type: CLASSIFICATION num_hard_examples: 8 }""",
                 losses_pb2.Loss())
    kwargs = builders.message_kwargs(msg)
    assert kwargs["classification_loss"] == {"weighted_sigmoid_focal": {"gamma": 1.5, "alpha": 0.1}}
    assert kwargs["hard_example_miner"] == {"loss_type": "CLASSIFICATION", "num_hard_examples": 8}
    assert "localization_weight" not in kwargs  # unset fields keep the constructor's default


def test_oneof_error_lists_valid_choices():
    with pytest.raises(ConfigError, match="train_config.optimizer: is not set; valid choices: "
                                          "momentum_optimizer, adam_optimizer, rms_prop_optimizer"):
        builders.build_optimizer(train_pb2.TrainConfig(), torch.nn.Linear(1, 1), {})


def test_learning_rates():
    lr = _parse("manual_step_learning_rate { initial_learning_rate: 0.1 schedule { step: 5 } "
                "schedule { step: 10 learning_rate: 0.01 } }", optimizer_pb2.LearningRate())
    sched = builders.build_learning_rate(lr, "x")
    assert [sched(s) for s in (0, 5, 10)] == pytest.approx([0.1, 0.002, 0.01])  # 0.002: proto default
    lr = _parse("cosine_decay_learning_rate { learning_rate_base: 1.0 total_steps: 10 warmup_steps: 0 }",
                optimizer_pb2.LearningRate())
    assert builders.build_learning_rate(lr, "x")(5) == pytest.approx(0.5)


def test_optimizer_fields_freeze_and_ema():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 1), torch.nn.Conv2d(1, 1, 1))
    tc = _parse("""optimizer { rms_prop_optimizer { learning_rate { constant_learning_rate { } }
                     decay: 0.8 epsilon: 0.5 momentum_optimizer_value: 0.7 } }
                   freeze_variables: "^0\\\\." """, train_pb2.TrainConfig())
    opt, sched, ema = builders.build_optimizer(tc, model, {"1.weight": 0.01})
    assert isinstance(opt, torch.optim.RMSprop)
    fields = (opt.defaults["alpha"], opt.defaults["eps"], opt.defaults["momentum"])
    assert fields == pytest.approx((0.8, 0.5, 0.7))
    assert sched(123) == pytest.approx(0.002)
    decays = {n: g["weight_decay"] for g in opt.param_groups for n in g["param_names"]}
    assert decays == {"1.bias": 0.0, "1.weight": pytest.approx(0.01)}
    assert ema is not None and ema.decay == pytest.approx(0.9999)  # use_moving_average defaults to true
    tc.add_regularization_loss = False
    opt, _, _ = builders.build_optimizer(tc, model, {"1.weight": 0.01})
    assert all(g["weight_decay"] == 0.0 for g in opt.param_groups)


def test_explicit_class_weights_by_name_and_id():
    loss = _parse('class_weights { weight { name: "crack" value: 8 } weight { id: 2 value: 2 } }',
                  losses_pb2.Loss())
    table = builders.build_class_weights(loss, LABELS, None)
    assert [(w.name, w.weight, w.source) for w in table] == [
        ("scratch", 1.0, "default"), ("dent", 2.0, "explicit"), ("crack", 8.0, "explicit")]


def test_unknown_class_name_is_an_error():
    loss = _parse('class_weights { weight { name: "crak" value: 8 } }', losses_pb2.Loss())
    with pytest.raises(ConfigError, match=r"class_weights.weight\[0\].*crak"):
        builders.build_class_weights(loss, LABELS, None)


def test_auto_class_weights_from_training_counts(data_dir):
    # The synthetic training split has 10 scratch, 2 dent and 0 crack boxes (summary.json).
    cfg = tiny.write_config(data_dir, "auto.config", loss=tiny.LOSS_BLOCK + """
      class_weights { auto { scheme: INVERSE_FREQUENCY } weight { name: "scratch" value: 0.5 } }""")
    with pytest.warns(UserWarning, match="crack"):
        table = builders.resolve_class_weight_table(config.load(cfg))
    # raw 1/10, 1/2; rescaled so that 10 w_s + 2 w_d = 12: scale 6 -> 0.6, 3.0; scratch pinned at 0.5.
    assert [w.count for w in table] == [10, 2, 0]
    assert [w.weight for w in table] == pytest.approx([0.5, 3.0, 1.0])


@pytest.mark.parametrize(
    ("block", "fn", "params"),
    [
        ("weighted_sigmoid { }", weighted_sigmoid, {}),
        ("weighted_sigmoid_focal { gamma: 1.0 }", weighted_sigmoid_focal, {"gamma": 1.0}),
        ("weighted_softmax { logit_scale: 2.0 }", weighted_softmax, {"logit_scale": 2.0}),
        ("bootstrapped_sigmoid { alpha: 0.5 hard_bootstrap: true }", bootstrapped_sigmoid,
         {"alpha": 0.5, "hard_bootstrap": True}),
    ],
)
def test_classification_loss_choice(block, fn, params):
    ssd = _parse(f"""matcher {{ argmax_matcher {{ }} }} similarity_calculator {{ iou_similarity {{ }} }}
        box_coder {{ faster_rcnn_box_coder {{ }} }}
        loss {{ classification_loss {{ {block} }} localization_loss {{ l1_localization_loss {{ }} }} }}""",
                 ssd_pb2.Ssd())
    loss = builders.build_loss(ssd, LABELS, [])
    assert loss.classification_loss is fn and loss.classification_loss_params == params
    assert loss.localization_loss is l1_localization_loss
    assert loss.class_weights is None and loss.hard_example_miner is None


def test_loss_with_miner_class_alpha_and_weights():
    ssd = _parse("""matcher { argmax_matcher { matched_threshold: 0.6 unmatched_threshold: 0.3 } }
        similarity_calculator { iou_similarity { } } box_coder { faster_rcnn_box_coder { y_scale: 5 } }
        negative_class_weight: 0.5
        loss { classification_loss { weighted_sigmoid_focal { alpha: 0.25
                   class_alpha { name: "crack" value: 0.75 } } }
               localization_loss { weighted_giou { } } classification_weight: 2.0
               hard_example_miner { num_hard_examples: 16 max_negatives_per_positive: 3 }
               class_weights { weight { name: "dent" value: 4 } apply_to_localization: false } }""",
                 ssd_pb2.Ssd())
    table = builders.build_class_weights(ssd.loss, LABELS, None)
    loss = builders.build_loss(ssd, LABELS, table)
    assert loss.localization_loss is weighted_giou and loss.classification_weight == 2.0
    assert torch.equal(loss.class_weights, torch.tensor([1.0, 4.0, 1.0]))
    assert loss.apply_to_localization is False and loss.negative_class_weight == 0.5
    alpha = loss.classification_loss_params["class_alpha"]
    assert torch.isnan(alpha[:2]).all() and alpha[2] == 0.75
    assert loss.classification_loss_params["alpha"] == 0.25
    miner = loss.hard_example_miner
    assert (miner.num_hard_examples, miner.max_negatives_per_positive, miner.cls_loss_weight) == (16, 3, 2.0)
    assert loss.matcher.matched_threshold == pytest.approx(0.6)
    assert loss.box_coder.scales == (5.0, 10.0, 5.0, 5.0)


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


def test_eval_loader_samples_one_of_n(data_dir):
    loaded = config.load(tiny.write_config(data_dir, "eval.config"))
    assert len(builders.build_eval_loader(loaded).dataset) == 3
    assert len(builders.build_eval_loader(loaded, sample_1_of_n=2).dataset) == 2
    empty = pipeline_pb2.TrainEvalPipelineConfig()
    assert builders.build_eval_loader(config.LoadedConfig(empty, None, Path("x"), "")) is None


def test_uses_sync_batch_norm():
    plain = _parse("feature_extractor { conv_hyperparams { batch_norm { } } }", ssd_pb2.Ssd())
    synced = _parse("box_predictor { weight_shared_convolutional_box_predictor { "
                    "conv_hyperparams { sync_batch_norm { } } } }", ssd_pb2.Ssd())
    assert not builders.uses_sync_batch_norm(plain) and builders.uses_sync_batch_norm(synced)
