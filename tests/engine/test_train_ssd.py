"""Training the real SSD from a tiny pipeline.config: every loss option learns; resume is bit-exact
(the CLI: tests/commands/test_train.py)."""

from __future__ import annotations

import math

import pytest
import torch
from tests.helpers import tiny_pipeline as tiny

from raredet import builders, config
from raredet.data.dataset import collate
from raredet.engine.train import train

pytestmark = pytest.mark.slow  # trains and resumes SSDs end to end, through the CLI too


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny_ssd")
    tiny.make_data(out)
    return out


LOSS_OPTIONS = {
    "sigmoid+smooth_l1": ("weighted_sigmoid { }", "weighted_smooth_l1 { }", ""),
    "focal+l2+miner": ("weighted_sigmoid_focal { alpha: 0.25 gamma: 2.0 }", "weighted_l2 { }",
                       "hard_example_miner { num_hard_examples: 50 max_negatives_per_positive: 3 }"),
    "softmax+l1+sampler": ("weighted_softmax { }", "l1_localization_loss { }",
                           "random_example_sampler { positive_sample_fraction: 0.25 }"),
    "bootstrapped+iou": ("bootstrapped_sigmoid { alpha: 0.5 }", "weighted_iou { }", ""),
    "logits_softmax+giou+weights": ("weighted_logits_softmax { }", "weighted_giou { }",
                                    'class_weights { weight { name: "dent" value: 4.0 } }'),
}


@pytest.fixture(scope="module")
def base(data_dir):
    """One tiny SSD, its initial weights and a fixed batch of the first two images holding boxes."""
    loaded = config.load(tiny.write_config(data_dir, "base.config"))
    comps = builders.build_training(loaded, seed=0)
    dataset = comps.dataset
    with_boxes = [i for i in range(len(dataset)) if len(dataset.reader.annotations(i)["labels"])][:2]
    batch = collate([dataset[i] for i in with_boxes])
    initial = {k: v.clone() for k, v in comps.model.state_dict().items()}
    return comps.model, initial, batch


@pytest.mark.parametrize("option", list(LOSS_OPTIONS))
def test_each_loss_option_learns_one_batch(data_dir, base, option):
    model, initial, batch = base
    cls, loc, extra = LOSS_OPTIONS[option]
    block = f"classification_loss {{ {cls} }}\nlocalization_loss {{ {loc} }}\n{extra}"
    loaded = config.load(tiny.write_config(data_dir, f"{option}.config", loss=block))
    ssd = loaded.pipeline.model.ssd
    criterion = builders.build_loss(ssd, loaded.label_map,
                                    builders.build_class_weights(ssd.loss, loaded.label_map, None))
    model.load_state_dict(initial)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    totals = []
    for _ in range(5):
        opt.zero_grad()
        losses = criterion(model(batch["images"]), batch)
        losses["total_loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        totals.append(float(losses["total_loss"].detach()))
        assert math.isfinite(totals[-1]) and float(losses["localization_loss"].detach()) > 0
    assert totals[-1] < totals[0], totals


def test_ssd_resume_is_bit_exact(data_dir, tmp_path):
    # 7 training images, batch 2: 3 steps per epoch, so 4 steps cross an epoch boundary (new sampler
    # order, new augmentation draws); random_example_sampler draws from torch's global RNG.
    block = tiny.LOSS_BLOCK + "random_example_sampler { positive_sample_fraction: 0.25 }"
    loaded = config.load(tiny.write_config(data_dir, "resume.config", loss=block,
                                           reader_extra="repeat_factor_sampling { threshold: 0.5 }"))
    straight = builders.build_training(loaded, seed=5, num_train_steps=4)
    train(straight, tmp_path / "a", seed=5, device="cpu", progress=False)
    first = builders.build_training(loaded, seed=5, num_train_steps=2)
    train(first, tmp_path / "b", seed=5, device="cpu", progress=False)
    second = builders.build_training(loaded, seed=5, num_train_steps=4)
    train(second, tmp_path / "b", seed=5, device="cpu", progress=False)
    expected = straight.model.state_dict()
    for key, value in second.model.state_dict().items():
        assert torch.equal(value, expected[key]), key
