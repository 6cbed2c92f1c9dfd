"""Faster R-CNN's losses against hand-computed values: second-stage assignment, both stages'
normalisation and class weights, the sampled minibatch's normaliser, seesaw cross-entropy; the
Seesaw counts and class weights resume bit-exactly."""

from __future__ import annotations

import math

import pytest
import torch
from tests.helpers.faster_rcnn import ZOO_NAME
from tests.helpers.tiny_pipeline import make_data
from tests.helpers.zoo import faster_rcnn_small_copy

from raredet import builders, config
from raredet.engine.checkpoint import load_checkpoint
from raredet.engine.train import train
from raredet.losses.faster_rcnn import FasterRcnnLoss, seesaw_cross_entropy


def _loss(**kwargs) -> FasterRcnnLoss:
    base = dict(num_classes=2, first_stage_minibatch_size=1000, second_stage_batch_size=1000,
                second_stage_balance_fraction=1.0, first_stage_positive_balance_fraction=1.0)
    return FasterRcnnLoss(**{**base, **kwargs})


GT = (torch.tensor([[[0.0, 0.0, 10.0, 12.0]]]), torch.tensor([[1]]), torch.tensor([[1.0]]))


def test_second_stage_assignment_by_hand():
    proposals = torch.tensor([[[0, 0, 10, 12], [0, 0, 10, 10], [0, 0, 10, 24], [0, 0, 10, 25.2],
                               [50, 50, 60, 60]]], dtype=torch.float32)
    valid = torch.tensor([[True, True, True, True, False]])
    target, _, data_w = _loss().assign_proposals(proposals, valid, GT)
    # IoUs with the box: 1, 100/120, 120/240 = 0.5 (matched: >= 0.5), 120/252 < 0.5, invalid
    assert target.tolist() == [[2, 2, 2, 0, -1]]  # class index 1 -> column 2 (background is 0)
    assert data_w.tolist() == [[1.0, 1.0, 1.0, 1.0, 1.0]]


def _second_stage_outputs(num_neg: int) -> dict[str, torch.Tensor]:
    """One positive proposal [0, 0, 10, 10] (IoU 100/120 with the box) and `num_neg` far negatives;
    zero logits and zero box codes."""
    props = torch.tensor([[0.0, 0.0, 10.0, 10.0]] + [[50.0, 50.0, 60.0, 60.0]] * num_neg)[None]
    p = props.shape[1]
    return {"proposals": props, "proposal_valid": torch.ones(1, p, dtype=torch.bool),
            "cls_logits": torch.zeros(1, p, 3), "box_deltas": torch.zeros(1, p, 2, 4)}


def test_second_stage_loss_normalisation_and_class_weight():
    out = _second_stage_outputs(num_neg=3)
    cls, loc = _loss(class_weights=torch.tensor([1.0, 3.0])).second_stage(out, GT)
    # zero logits: cross-entropy log 3 per proposal; the positive weighs 3; normaliser 4 sampled
    assert cls.item() == pytest.approx((3 + 3) * math.log(3) / 4, rel=1e-6)
    # codes of [0,0,10,12] from [0,0,10,10]: ty 0, tx 10*(6-5)/10 = 1, th 0, tw 5 log(1.2);
    # Huber(1) = 0.5, Huber(0.9116) = 0.5 * 0.9116^2; times class weight 3, over 4 sampled
    tw = 5 * math.log(1.2)
    assert loc.item() == pytest.approx(3 * (0.5 + 0.5 * tw**2) / 4, rel=1e-5)
    # apply_to_localization false: the box loss carries no class weight
    plain = _loss(class_weights=torch.tensor([1.0, 3.0]), apply_to_localization=False)
    _, loc_plain = plain.second_stage(out, GT)
    assert loc_plain.item() == pytest.approx((0.5 + 0.5 * tw**2) / 4, rel=1e-5)


def test_second_stage_data_weight_zero_ignores_the_box():
    out = _second_stage_outputs(num_neg=3)
    gt = (GT[0], GT[1], torch.tensor([[0.0]]))
    cls, loc = _loss().second_stage(out, gt)
    # the positive is not sampled: 3 negatives, log 3 each, over 3
    assert cls.item() == pytest.approx(math.log(3), rel=1e-6)
    assert loc.item() == 0.0


def test_first_stage_normalisation_by_sampled_anchors():
    anchors = torch.tensor([[0.0, 0.0, 10.0, 12.0], [0.0, 0.0, 10.0, 10.0], [100, 100, 110, 110],
                            [200, 200, 210, 210], [0, 0, 10, 11]])
    out = {"anchors": anchors, "anchor_valid": torch.tensor([True, True, True, True, False]),
           "rpn_objectness": torch.zeros(1, 5, 2), "rpn_box_deltas": torch.zeros(1, 5, 4)}
    obj, loc = _loss().first_stage(out, GT)
    # anchor 0: IoU 1 (object); anchor 1: 100/120 >= 0.7 (object); anchors 2, 3 background;
    # anchor 4 invalid. Zero logits: log 2 each, 4 sampled -> mean log 2.
    assert obj.item() == pytest.approx(math.log(2), rel=1e-6)
    tw = 5 * math.log(1.2)
    assert loc.item() == pytest.approx((0.5 + 0.5 * tw**2) / 4, rel=1e-5)


def test_seesaw_reduces_to_softmax_with_equal_counts_and_mitigates_rare_negatives():
    torch.manual_seed(0)
    logits = torch.randn(4, 4)
    labels = torch.tensor([0, 1, 2, 3])
    plain = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    # equal counts and logits where the own class dominates: every factor is 1
    dominant = logits.clone()
    dominant[torch.arange(4), labels] += 20
    same = seesaw_cross_entropy(dominant, labels, torch.tensor([5.0, 5.0, 5.0]))
    assert torch.allclose(same, torch.nn.functional.cross_entropy(dominant, labels, reduction="none"))
    # class 1 frequent (N=100), class 2 rare (N=1): for a class-1 row, column 2's logit drops by
    # p * log(100) (mitigation), q = 0 to leave compensation out
    row = torch.zeros(1, 4)
    got = seesaw_cross_entropy(row, torch.tensor([2]), torch.tensor([100.0, 1.0, 100.0]), p=0.8, q=0.0)
    # labels 2 = class index 1 (rare): mitigation on rows of rare classes is min(1, (N_j/N_i)^p) = 1
    assert got.item() == pytest.approx(math.log(4), rel=1e-6)
    got = seesaw_cross_entropy(row, torch.tensor([1]), torch.tensor([100.0, 1.0, 100.0]), p=0.8, q=0.0)
    m = (1 / 100) ** 0.8  # column of the rare class for a frequent-class row
    assert got.item() == pytest.approx(-math.log(1 / (1 + 1 + m + 1)), rel=1e-6)
    assert plain.shape == (4,)


def test_second_stage_minibatch_is_sampled_before_the_crops():
    from raredet.modeling.sampling import sample_proposals

    torch.manual_seed(0)
    positives = torch.tensor([[0.0, 0.0, 10.0, 12.0]]).repeat(10, 1)  # IoU 1 with the box
    negatives = torch.tensor([[50.0, 50.0, 60.0, 60.0]]).repeat(50, 1)
    invalid = torch.zeros(3, 4)
    proposals = torch.cat([positives, negatives, invalid])[None]
    valid = torch.tensor([[True] * 60 + [False] * 3])
    sampled, sampled_valid = sample_proposals(proposals, valid, GT, batch_size=16, positive_fraction=0.25)
    assert sampled.shape == (1, 16, 4) and sampled_valid.all()
    # int(0.25 * 16) = 4 positives, 12 negatives, none of the invalid ones
    assert int((sampled[0, :, 2] == 10).sum()) == 4 and int((sampled[0, :, 2] == 60).sum()) == 12
    # the loss samples the sampled set again and keeps all of it: normaliser 16
    out = {"proposals": sampled, "proposal_valid": sampled_valid, "cls_logits": torch.zeros(1, 16, 3),
           "box_deltas": torch.zeros(1, 16, 1, 4)}
    cls, _ = _loss(second_stage_batch_size=16, second_stage_balance_fraction=0.25).second_stage(out, GT)
    assert cls.item() == pytest.approx(math.log(3), rel=1e-6)
    # fewer proposals than the batch size: all of them, padding marked invalid
    few, few_valid = sample_proposals(proposals[:, 58:], valid[:, 58:], GT, batch_size=16,
                                      positive_fraction=0.25)
    assert few.shape == (1, 5, 4) and few_valid.tolist() == [[True, True, False, False, False]]


SEESAW_AND_WEIGHTS = """
    second_stage_class_weights { auto { scheme: SQRT_INVERSE_FREQUENCY } }
    second_stage_seesaw_loss { }
"""


@pytest.mark.slow  # trains a small ResNet-50 Faster R-CNN 4 + 2 + 2 steps on CPU
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_resume_is_bit_exact_with_seesaw_and_class_weights(tmp_path):
    torch.set_num_threads(1)
    data = tmp_path / "data"
    make_data(data, images=6)
    path = faster_rcnn_small_copy(ZOO_NAME, data)
    text = path.read_text().replace("    use_static_shapes: true",
                                    SEESAW_AND_WEIGHTS + "    use_static_shapes: true")
    # The synthetic boxes are 3-13 pixels in 64-pixel images: upscale to 256, anchors of 16 and 32
    # pixels, RPN codes near 0 at the start (proposals near anchors) and 64 proposals, so that the
    # second stage samples positives (and the Seesaw counts move) within 4 steps.
    text = text.replace("min_dimension: 64", "min_dimension: 256")
    text = text.replace("max_dimension: 64", "max_dimension: 256")
    text = text.replace("stddev: 0.01", "stddev: 0.0001")
    text = text.replace("scales: [0.25, 0.5, 1.0, 2.0]", "scales: [0.0625, 0.125]")
    text = text.replace("first_stage_max_proposals: 16", "first_stage_max_proposals: 64")
    path.write_text(text)
    loaded = config.load(path)

    def components(steps: int):
        return builders.build_training(loaded, seed=3, num_train_steps=steps, num_workers=0)

    straight = components(4)
    train(straight, tmp_path / "a", progress=False)
    train(components(2), tmp_path / "b", progress=False)
    resumed = components(4)
    assert train(resumed, tmp_path / "b", progress=False).step == 4
    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    assert straight.criterion.seesaw_counts.sum() > 0
    assert torch.equal(straight.criterion.seesaw_counts, resumed.criterion.seesaw_counts)
    saved = load_checkpoint(tmp_path / "b" / "ckpt-4.pt")
    assert torch.equal(saved["loss"]["seesaw_counts"], straight.criterion.seesaw_counts)
