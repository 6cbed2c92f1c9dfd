"""The pair-aware losses' statistics (losses/pair_aware.py) inside DetectionLoss: updated on training
calls only, taken from the real gradient, logged, saved and restored, and equal across DDP ranks to
one process."""

import gc
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from tests.helpers.pair_aware import pair_aware_detection_loss
from torch import nn

from raredet.losses import (
    DetectionLoss,
    HardExampleMiner,
    confusion_gated_focal,
    equalized_focal,
    seesaw_sigmoid_focal,
    weighted_sigmoid_focal,
    weighted_smooth_l1,
)

LOSSES = {
    "seesaw": (seesaw_sigmoid_focal, {"compensation_score_floor": 0.01}, {}),
    "gated": (confusion_gated_focal, {"gate_threshold": 0.3}, {"warmup_steps": 2}),
    "efl": (equalized_focal, {"scale": 4.0}, {"gradient_decay": 0.9}),
}
K = 3


def _anchors():
    xs = torch.arange(0, 64, 8.0)
    grid = torch.stack(torch.meshgrid(xs, xs, indexing="xy"), -1).reshape(-1, 2)
    return torch.cat([grid, grid + 16], -1)  # 64 anchors of 16 x 16


# Four images; class 0 frequent, class 1 rare. Each anchor box is exactly one of the anchors, so the
# matches are known: image 0 has two class-0 boxes and a class-1 box of data weight 0.5.
BATCH = {
    "boxes": torch.tensor([
        [[0.0, 0, 16, 16], [24, 24, 40, 40], [48, 0, 64, 16]],
        [[8.0, 8, 24, 24], [40, 8, 56, 24], [0, 0, 0, 0]],
        [[16.0, 16, 32, 32], [32, 40, 48, 56], [8, 40, 24, 56]],
        [[0.0, 48, 16, 64], [0, 0, 0, 0], [0, 0, 0, 0]],
    ]),
    "labels": torch.tensor([[0, 0, 1], [0, 2, -1], [0, 0, 2], [1, -1, -1]]),
    "weights": torch.tensor([[1.0, 1.0, 0.5], [1.0, 1.0, 0.0], [1.0, 2.0, 1.0], [1.0, 0.0, 0.0]]),
}


def _loss(name, miner=False):
    fn, params, options = LOSSES[name]
    return pair_aware_detection_loss(
        fn, params, options, torch.tensor([1.0, 5.0, 2.0]),
        HardExampleMiner(num_hard_examples=20, max_negatives_per_positive=3) if miner else None)


class Head(nn.Module):
    """Per-image features [B, 8] -> cls_logits [B, 64, K], box_deltas [B, 64, 4]."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(8, 64 * (K + 4))

    def forward(self, features):
        y = self.linear(features).view(len(features), 64, K + 4)
        return {"cls_logits": y[..., :K] - 2.0, "box_deltas": y[..., K:], "anchors": _anchors()}


FEATURES = torch.randn(4, 8, generator=torch.Generator().manual_seed(1))


def _train(name, rows, steps, model=None, loss=None, miner=False):
    """`steps` SGD steps on the images `rows`; returns (model, loss, per-step outputs)."""
    model = model or Head()
    loss = loss or _loss(name, miner)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    outs = []
    for _ in range(steps):
        out = loss(model(FEATURES[rows]), {k: v[rows] for k, v in BATCH.items()})
        opt.zero_grad()
        out["total_loss"].backward()
        opt.step()
        outs.append({k: v.detach().clone() for k, v in out.items()})
    return model, loss, outs


def test_seesaw_counts_positive_anchors_with_weight_on_training_calls_only():
    loss = _loss("seesaw")
    logits = torch.zeros(4, 64, K, requires_grad=True)
    outputs = {"cls_logits": logits, "box_deltas": torch.zeros(4, 64, 4), "anchors": _anchors()}
    with torch.no_grad():
        loss(outputs, BATCH)
    assert loss.classification_statistics.class_counts.tolist() == [0, 0, 0]
    out = loss(outputs, BATCH)
    # Weighted boxes per class (weight-0 rows are padding or ignored): class 0: 1+1+1+1+2 = 5 boxes,
    # class 1: 0.5-weighted box + image 3's box = 2, class 2: image 1's box + image 2's box = 2.
    assert loss.classification_statistics.class_counts.tolist() == [5, 2, 2]
    assert out["class_balance/seesaw_count"].tolist() == [5, 2, 2]
    # Mitigation logged per column j: sum_i N_i M_ij / sum_i N_i over i != j.
    m = lambda nj, ni: (nj / ni) ** 0.8 if ni > nj else 1.0  # noqa: E731
    expect = [(2 * m(5, 2) + 2 * m(5, 2)) / 4,  # column 0 (N 5): never mitigated
              (5 * m(2, 5) + 2 * m(2, 2)) / 7, (5 * m(2, 5) + 2 * m(2, 2)) / 7]
    torch.testing.assert_close(out["class_balance/seesaw_mitigation"],
                               torch.tensor(expect, dtype=torch.float64))


def test_gated_warmup_is_plain_focal_then_gated():
    logits = (torch.randn(4, 64, K, generator=torch.Generator().manual_seed(3)) * 2).requires_grad_()
    outputs = {"cls_logits": logits, "box_deltas": torch.zeros(4, 64, 4), "anchors": _anchors()}
    loss = _loss("gated")  # warmup_steps 2
    focal = DetectionLoss(
        matcher=loss.matcher, box_coder=loss.box_coder, classification_loss=weighted_sigmoid_focal,
        classification_loss_params={"alpha": 0.25}, localization_loss=weighted_smooth_l1,
        class_weights=loss.class_weights, normalize_loss_by_num_matches=True)
    plain = focal(outputs, BATCH)["classification_loss"]
    got = [loss(outputs, BATCH)["classification_loss"] for _ in range(3)]
    assert torch.equal(got[0], plain) and torch.equal(got[1], plain)
    assert got[2] < plain  # after the warm-up, the gate drops foreground negatives below 0.3
    assert loss.classification_statistics.step == 3


def test_efl_statistics_are_the_loss_gradient_at_the_logits():
    loss = _loss("efl")  # gradient_decay 0.9
    logits = (torch.randn(4, 64, K, generator=torch.Generator().manual_seed(4)) - 2).requires_grad_()
    outputs = {"cls_logits": logits, "box_deltas": torch.zeros(4, 64, 4), "anchors": _anchors()}
    targets = loss.assign(_anchors(), BATCH, logits.device)
    onehot = torch.nn.functional.one_hot(targets.labels.clamp(min=0), K) * (targets.labels >= 0)[..., None]
    expected_pos, expected_neg = torch.zeros(K, dtype=torch.float64), torch.zeros(K, dtype=torch.float64)
    for step in range(3):
        out = loss(outputs, BATCH)
        logits.grad = None
        out["total_loss"].backward()
        g = logits.grad.double().abs()
        # decay 0.9 before each update; the first update starts from zero sums
        expected_pos = 0.9 * expected_pos + (g * onehot).sum((0, 1))
        expected_neg = 0.9 * expected_neg + (g * (1 - onehot)).sum((0, 1))
        stats = loss.classification_statistics
        torch.testing.assert_close(stats.positive, expected_pos, rtol=1e-12, atol=0)
        torch.testing.assert_close(stats.negative, expected_neg, rtol=1e-12, atol=0)
        if step == 0:  # before any gradient: g = 1, gamma = gamma_base
            assert out["class_balance/efl_gamma"].tolist() == [2.0, 2.0, 2.0]
    ratio = (expected_pos / expected_neg).clamp(0, 1)
    out = loss(outputs, BATCH)
    torch.testing.assert_close(out["class_balance/efl_gradient_ratio"], ratio)
    torch.testing.assert_close(out["class_balance/efl_gamma"], 2.0 + 4.0 * (1 - ratio))


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_state_dict_round_trip_resumes_exactly(name, tmp_path):
    # N + N steps with the loss state saved through torch.save / weights_only load == 2N steps.
    straight, straight_loss, _ = _train(name, slice(0, 4), 6, miner=True)
    first, first_loss, _ = _train(name, slice(0, 4), 3, miner=True)
    torch.save({"model": first.state_dict(), "loss": first_loss.state_dict()}, tmp_path / "ckpt.pt")
    saved = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    model, loss = Head(), _loss(name, miner=True)
    model.load_state_dict(saved["model"])
    loss.load_state_dict(saved["loss"])
    resumed, resumed_loss, _ = _train(name, slice(0, 4), 3, model=model, loss=loss)
    for key, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    for key, value in straight_loss.state_dict()["classification_statistics"].items():
        assert torch.equal(torch.as_tensor(value),
                           torch.as_tensor(resumed_loss.state_dict()["classification_statistics"][key])), key


def test_load_state_dict_refuses_another_loss():
    seesaw, efl = _loss("seesaw"), _loss("efl")
    with pytest.raises(ValueError, match="class_counts"):
        seesaw.load_state_dict(efl.state_dict())
    with pytest.raises(ValueError, match="classification loss changed"):
        seesaw.load_state_dict({})


def _ddp_results(rank):
    """Each loss trained under DDP on this rank's half of the batch. The DDP wrappers die when this
    returns, while the process group is alive: a gloo group destroyed first makes a wrapper's
    destructor wait for the group's threads for ever."""
    results = {}
    for name in sorted(LOSSES):
        model = nn.parallel.DistributedDataParallel(Head())
        _, loss, outs = _train(name, slice(2 * rank, 2 * rank + 2), 4, model=model)
        results[name] = {
            "params": {k: v.detach().clone() for k, v in model.module.state_dict().items()},
            "stats": loss.state_dict()["classification_statistics"],
            "logged": {k: v for k, v in outs[-1].items() if k.startswith("class_balance/")},
        }
    return results


def _ddp_worker(rank, world, init_file, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.save(_ddp_results(rank), os.path.join(out_dir, f"rank{rank}.pt"))
        gc.collect()  # any wrapper kept alive by a reference cycle goes before the group, too
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two gloo processes
@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")
def test_ddp_two_ranks_equal_one_process(tmp_path):
    mp.start_processes(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2,
                       start_method="fork")
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for name in sorted(LOSSES):
        single, single_loss, single_outs = _train(name, slice(0, 4), 4)
        stats0, stats1 = ranks[0][name]["stats"], ranks[1][name]["stats"]
        for key, value in single_loss.state_dict()["classification_statistics"].items():
            assert torch.equal(torch.as_tensor(stats0[key]), torch.as_tensor(stats1[key])), (name, key)
            torch.testing.assert_close(torch.as_tensor(stats0[key]), torch.as_tensor(value),
                                       rtol=1e-6, atol=1e-12, msg=f"{name} {key}")
        for key, value in single_outs[-1].items():
            if key.startswith("class_balance/"):
                torch.testing.assert_close(ranks[0][name]["logged"][key], value, msg=f"{name} {key}")
        for key, value in single.state_dict().items():
            assert torch.equal(ranks[0][name]["params"][key], ranks[1][name]["params"][key])
            torch.testing.assert_close(ranks[0][name]["params"][key], value, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_statistics_stay_full_precision_under_bf16_autocast(name):
    # As engine.train: the model runs under bf16 autocast, its outputs are cast to float32 for the loss.
    # The statistics keep their own dtypes (int64 counts, float64 sums) whatever the model's.
    model, loss = Head(), _loss(name)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outputs = model(FEATURES)
    assert outputs["cls_logits"].dtype == torch.bfloat16
    logits = outputs["cls_logits"].float()
    logits.retain_grad()
    out = loss({**outputs, "cls_logits": logits, "box_deltas": outputs["box_deltas"].float()}, BATCH)
    out["total_loss"].backward()
    state = loss.state_dict()["classification_statistics"]
    dtypes = {k: v.dtype for k, v in state.items() if isinstance(v, torch.Tensor)}
    assert dtypes == {"seesaw": {"class_counts": torch.int64}, "gated": {"kept_fraction": torch.float64},
                      "efl": {"positive": torch.float64, "negative": torch.float64}}[name]
    if name == "efl":  # the sums are the float32 gradient at the logits, accumulated in float64
        targets = loss.assign(_anchors(), BATCH, logits.device)
        labels = targets.labels
        onehot = torch.nn.functional.one_hot(labels.clamp(min=0), K) * (labels >= 0)[..., None]
        torch.testing.assert_close(state["positive"], (logits.grad.double().abs() * onehot).sum((0, 1)))
