"""Each loss option drives a tiny SSD for a few optimizer steps with finite losses and gradients."""

import pytest
import torch
from tests.helpers.ssd import ssd_from_dicts

from raredet.losses import (
    CLASSIFICATION_LOSSES,
    LOCALIZATION_LOSSES,
    DetectionLoss,
    HardExampleMiner,
    statistics_for,
)
from raredet.modeling.box_coder import FasterRcnnBoxCoder
from raredet.modeling.matcher import ArgMaxMatcher


def _tiny_ssd():
    torch.manual_seed(0)
    return ssd_from_dicts(
        num_classes=3,
        feature_extractor={
            "type": "ssd_resnet18_v1_fpn",
            "depth_multiplier": 0.25,
            "min_depth": 8,
            "fpn": {"min_level": 3, "max_level": 5, "additional_layer_depth": 16},
        },
        box_predictor={
            "weight_shared_convolutional_box_predictor": {"depth": 16, "num_layers_before_predictor": 1}
        },
        anchor_generator={
            "multiscale_anchor_generator": {
                "min_level": 3,
                "max_level": 5,
                "anchor_scale": 2.0,
                "aspect_ratios": [1.0],
                "scales_per_octave": 1,
            }
        },
    )


BATCH = {
    "images": torch.randint(
        0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    ),
    "boxes": torch.tensor([[[2.0, 2, 14, 14], [15, 15, 30, 25]], [[5.0, 10, 20, 22], [0, 0, 0, 0]]]),
    "labels": torch.tensor([[0, 2], [1, -1]]),
    "weights": torch.tensor([[1.0, 0.5], [2.0, 0.0]]),
}


@pytest.mark.parametrize(
    "cls_name,loc_name,params,miner",
    [
        (
            "weighted_sigmoid_focal",
            "weighted_smooth_l1",
            {"alpha": 0.25, "class_alpha": torch.tensor([0.5, float("nan"), 0.9])},
            True,
        ),
        ("weighted_sigmoid", "weighted_l2", {}, True),
        ("weighted_softmax", "weighted_giou", {"logit_scale": 2.0}, True),
        ("weighted_logits_softmax", "weighted_iou", {}, False),
        ("bootstrapped_sigmoid", "l1_localization_loss", {"alpha": 0.5, "hard_bootstrap": True}, False),
        ("seesaw_sigmoid_focal", "weighted_smooth_l1", {"compensation_score_floor": 0.01}, True),
        ("confusion_gated_focal", "weighted_smooth_l1", {"gate_threshold": 0.02, "gate_sharpness": 50.0},
         True),
        ("equalized_focal", "weighted_giou", {"scale": 8.0}, True),
    ],
)
def test_few_steps_finite(cls_name, loc_name, params, miner):
    model = _tiny_ssd()
    loss_fn = DetectionLoss(
        matcher=ArgMaxMatcher(matched_threshold=0.5, unmatched_threshold=0.4, force_match_for_each_row=True),
        box_coder=FasterRcnnBoxCoder(),
        classification_loss=CLASSIFICATION_LOSSES[cls_name],
        classification_loss_params=params,
        classification_statistics=statistics_for(CLASSIFICATION_LOSSES[cls_name], 3, warmup_steps=1),
        localization_loss=LOCALIZATION_LOSSES[loc_name],
        class_weights=torch.tensor([1.0, 4.0, 2.0]),
        hard_example_miner=HardExampleMiner(num_hard_examples=16, max_negatives_per_positive=3)
        if miner
        else None,
        normalize_loss_by_num_matches=True,
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    losses = []
    for _ in range(2):
        out = loss_fn(model(BATCH["images"]), BATCH)
        optimizer.zero_grad()
        out["total_loss"].backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
        optimizer.step()
        losses.append(out["total_loss"].item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert out["matched_anchors"].sum() > 0 and out["localization_loss"] > 0
