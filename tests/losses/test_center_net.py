"""CenterNet's loss by hand: the penalty-reduced focal loss, its normalisation by the boxes, the L1 box
terms, and what a class weight does on a heatmap (docs/center_net.md)."""

from __future__ import annotations

import math

import pytest
import torch

from raredet.losses.center_net import (
    CenterNetLoss,
    ObjectDetectionLoss,
    batch_targets,
    penalty_reduced_logistic_focal,
)
from raredet.modeling.center_net import BOX_OFFSET, BOX_SCALE, OBJECT_CENTER
from raredet.modeling.center_net_targets import gaussian_sigma

LN2 = math.log(2.0)


@pytest.mark.parametrize("logit", [-6.0, -1.0, 0.0, 0.5, 3.0])
@pytest.mark.parametrize("target", [0.0, 0.3, 0.9, 1.0])
def test_focal_is_equation_1_of_objects_as_points(logit, target):
    p = min(max(1 / (1 + math.exp(-logit)), 1e-4), 1 - 1e-4)
    if target == 1.0:
        expected = -((1 - p) ** 2) * math.log(p)
    else:
        expected = -((1 - target) ** 4) * p**2 * math.log(1 - p)
    got = penalty_reduced_logistic_focal(torch.tensor([logit]), torch.tensor([target]), 2.0, 4.0)
    assert float(got) == pytest.approx(expected, rel=1e-5)


def test_focal_clips_the_sigmoid_and_has_gradients():
    logits = torch.tensor([-50.0, 50.0, 0.0], requires_grad=True)
    loss = penalty_reduced_logistic_focal(logits, torch.tensor([1.0, 0.0, 0.5]))
    assert float(loss[0].detach()) == pytest.approx(-math.log(1e-4) * (1 - 1e-4) ** 2, rel=1e-4)
    loss.sum().backward()
    assert torch.isfinite(logits.grad).all() and logits.grad[2] > 0  # pushed down on a negative


def _predictions(b: int, k: int, h: int, w: int, outputs: int = 1) -> dict[str, list[torch.Tensor]]:
    return {OBJECT_CENTER: [torch.zeros(b, k, h, w) for _ in range(outputs)],
            BOX_SCALE: [torch.zeros(b, 2, h, w) for _ in range(outputs)],
            BOX_OFFSET: [torch.zeros(b, 2, h, w) for _ in range(outputs)]}


def _target(boxes, labels, weights=None, size=(32, 32)) -> dict[str, torch.Tensor]:
    t = {"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels),
         "image_size": torch.tensor(size)}
    if weights is not None:
        t["weights"] = torch.tensor(weights)
    return t


def _heatmap_sum_by_hand(cy: int, cx: int, sigma: float, h: int, w: int, k: int, label: int,
                         center_weight: float = 1.0) -> float:
    """Σ over pixels and channels of the focal terms at logit 0 (p = 1/2): positive 0.25 ln 2 at the
    center of `label`, negatives (1 - y)^4 0.25 ln 2 elsewhere; the center pixel's terms times
    `center_weight`."""
    total = 0.0
    for y in range(h):
        for x in range(w):
            g = math.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * sigma * sigma))
            for c in range(k):
                target = g if c == label else 0.0
                term = 0.25 * LN2 if target == 1.0 else (1 - target) ** 4 * 0.25 * LN2
                total += term * (center_weight if (y, x) == (cy, cx) else 1.0)
    return total


def test_one_box_heatmap_loss_by_hand():
    # box [8, 8, 48, 48] pixels on a 64 x 64 input, stride 4: center (7, 7), 10 x 10 -> sigma 5/6
    loss = ObjectDetectionLoss(2)
    out = loss(_predictions(1, 2, 16, 16), [_target([[8, 8, 48, 48]], [1], size=(64, 64))], 4)
    sigma = float(gaussian_sigma(torch.tensor([10.0]), torch.tensor([10.0]), 0.7))
    expected = _heatmap_sum_by_hand(7, 7, sigma, 16, 16, 2, 1)
    assert float(out[OBJECT_CENTER]) == pytest.approx(expected, rel=1e-5)
    # box terms at zero predictions: scale 0.1 (10 + 10) / 1 box; offset (0 + 0)
    assert float(out[BOX_SCALE]) == pytest.approx(0.1 * 20.0)
    assert float(out[BOX_OFFSET]) == 0.0


def test_normalised_by_boxes_and_feature_outputs_over_the_batch():
    preds1 = _predictions(1, 1, 8, 8)
    preds2 = _predictions(2, 1, 8, 8, outputs=2)  # two images, two feature outputs (hourglass)
    t = _target([[4, 6, 20, 18]], [0])
    single = ObjectDetectionLoss(1)(preds1, [t], 4)
    double = ObjectDetectionLoss(1)(preds2, [t, t], 4)
    # twice the terms (two images) over twice the boxes; two outputs summed, divided by two
    for key in (OBJECT_CENTER, BOX_SCALE, BOX_OFFSET):
        assert float(double[key]) == pytest.approx(float(single[key]), rel=1e-6)
    # a weight-0 box is not counted in n and its center pixel is ignored; its Gaussian target is 0
    ignored = ObjectDetectionLoss(1)(_predictions(1, 1, 8, 8), [_target([[4, 6, 20, 18]], [0], [0.0])], 4)
    empty = 0.25 * LN2 * 63  # 64 pixels at target 0, the center pixel weighs 0; n = max(0, 1)
    assert float(ignored[OBJECT_CENTER]) == pytest.approx(empty, rel=1e-5)
    assert float(ignored[BOX_SCALE]) == 0.0


def test_loss_weights():
    t = [_target([[4, 6, 20, 18]], [0])]  # pixels: 16 x 12 -> 4 x 3 map units; center (3, 3) exactly
    plain = ObjectDetectionLoss(1)(_predictions(1, 1, 8, 8), t, 4)
    weighted_loss = ObjectDetectionLoss(1, object_center_loss_weight=2.0, task_loss_weight=3.0,
                                        scale_loss_weight=0.5, offset_loss_weight=4.0)
    weighted = weighted_loss(_predictions(1, 1, 8, 8), t, 4)
    assert float(weighted[OBJECT_CENTER]) == pytest.approx(2 * float(plain[OBJECT_CENTER]))
    assert float(plain[BOX_SCALE]) == pytest.approx(0.1 * (3 + 4))
    assert float(weighted[BOX_SCALE]) == pytest.approx(3 * 0.5 * (3 + 4))


def test_class_weight_weighs_the_center_pixel_on_every_channel():
    # one box of class 0 of 2 at logits 0: the center pixel's two terms (positive on channel 0,
    # negative on channel 1) are each 0.25 ln 2; with w_0 = 3 they weigh 3, everything else stays
    t = [_target([[8, 8, 48, 48]], [0], size=(64, 64))]
    plain = ObjectDetectionLoss(2)(_predictions(1, 2, 16, 16), t, 4)
    weighted = ObjectDetectionLoss(2, class_weights=torch.tensor([3.0, 1.0]))(_predictions(1, 2, 16, 16), t,
                                                                                 4)
    diff = float(weighted[OBJECT_CENTER]) - float(plain[OBJECT_CENTER])
    assert diff == pytest.approx((3 - 1) * (0.25 * LN2 + 0.25 * LN2), rel=1e-5)
    sigma = float(gaussian_sigma(torch.tensor([10.0]), torch.tensor([10.0]), 0.7))
    assert float(weighted[OBJECT_CENTER]) == pytest.approx(
        _heatmap_sum_by_hand(7, 7, sigma, 16, 16, 2, 0, center_weight=3.0), rel=1e-5)
    # a weight on the other class changes nothing here; the box terms take w_c (apply_to_localization)
    other = ObjectDetectionLoss(2, class_weights=torch.tensor([1.0, 5.0]))(_predictions(1, 2, 16, 16), t, 4)
    assert float(other[OBJECT_CENTER]) == pytest.approx(float(plain[OBJECT_CENTER]))
    assert float(weighted[BOX_SCALE]) == pytest.approx(3 * float(plain[BOX_SCALE]))
    no_loc = ObjectDetectionLoss(2, class_weights=torch.tensor([3.0, 1.0]), apply_to_localization=False)
    unweighted_box = float(no_loc(_predictions(1, 2, 16, 16), t, 4)[BOX_SCALE])
    assert unweighted_box == pytest.approx(float(plain[BOX_SCALE]))


def test_a_class_weight_moves_the_optimum_logit_by_log_w():
    # one pixel, the center of a class-0 box half the time (target 1) and background otherwise
    # (target 0): with p = sigmoid(z) and alpha = beta = 0 the loss w (-log p) + (-log(1 - p)) is
    # least at p / (1 - p) = w, i.e. z = log w
    def total(z: torch.Tensor, w: float) -> torch.Tensor:
        pos = penalty_reduced_logistic_focal(z, torch.tensor(1.0), 0.0, 0.0)
        neg = penalty_reduced_logistic_focal(z, torch.tensor(0.0), 0.0, 0.0)
        return w * pos + neg

    z = torch.zeros((), requires_grad=True)
    opt = torch.optim.SGD([z], lr=0.5)
    for _ in range(400):
        opt.zero_grad()
        total(z, 4.0).backward()
        opt.step()
    assert float(z.detach()) == pytest.approx(math.log(4.0), abs=1e-3)


def test_criterion_sums_the_terms_and_reads_the_padded_batch():
    batch = {"boxes": torch.tensor([[[8.0, 8, 48, 48], [0, 0, 0, 0]]]), "labels": torch.tensor([[1, -1]]),
             "weights": torch.tensor([[1.0, 0.0]]), "num_boxes": torch.tensor([1]),
             "image_sizes": torch.tensor([[64, 64]])}
    targets = batch_targets(batch, torch.device("cpu"))
    assert targets[0]["boxes"].shape == (1, 4) and targets[0]["image_size"].tolist() == [64, 64]
    outputs = {k: torch.stack(v) for k, v in _predictions(1, 2, 16, 16).items()}

    class Extra:
        def loss(self, predictions, targets, stride):
            assert stride == 4 and len(targets) == 1
            return {"extra": torch.tensor(0.5)}

    out = CenterNetLoss(ObjectDetectionLoss(2), [Extra()])(outputs, batch)
    expected = float(out[OBJECT_CENTER] + out[BOX_SCALE] + out[BOX_OFFSET]) + 0.5
    assert float(out["total_loss"]) == pytest.approx(expected)
    assert float(out["localization_loss"]) == pytest.approx(float(out[BOX_SCALE] + out[BOX_OFFSET]))
    assert out["matched_anchors"].tolist() == [0.0, 1.0]
    assert out["positive_cls_loss_share"].tolist() == pytest.approx([0.0, 1.0])
