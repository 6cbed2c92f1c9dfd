"""bench/bench_model.py's CenterNet and Mask R-CNN rows (the zoo configs' model blocks): names, sizes, the
backward pass's sum, and (slow) each row measured at tiny settings."""

from __future__ import annotations

import pytest
import torch
from bench.bench_model import ZOO_ROWS, _training_sum, native_size, row_name, run

from raredet.zoo import CONFIG_DIR


def test_zoo_rows_name_zoo_configs_and_their_sizes():
    for file, size in ZOO_ROWS.values():
        assert (CONFIG_DIR / f"{file}.config").is_file()
        assert f"{size}x{size}" in file
    assert native_size("centernet_hourglass104") == 512
    assert native_size("mask_rcnn_inception_resnet_v2") == 1024


def test_two_stage_rows_say_how_many_proposals_they_ran():
    assert row_name("mask_rcnn_inception_resnet_v2", 4) == "mask_rcnn_inception_resnet_v2 (4 proposals)"
    assert row_name("faster_rcnn_resnet50", 8) == "faster_rcnn_resnet50 (8 proposals)"
    assert row_name("centernet_hourglass104", 4) == "centernet_hourglass104"
    assert row_name("mask_rcnn_inception_resnet_v2", None) == "mask_rcnn_inception_resnet_v2"


def test_training_sum_takes_the_maps_with_gradients_or_the_named_outputs():
    ones = torch.ones(2, 3, requires_grad=True)
    center_net = {"object_center": ones, "box/scale": torch.full((1, 4), 2.0, requires_grad=True),
                  "not_trained": torch.full((5,), 100.0)}
    assert float(_training_sum(center_net)) == 6.0 + 8.0  # the map without a gradient left out
    mask_rcnn = {"cls_logits": ones, "box_deltas": ones, "rpn_objectness": ones, "rpn_box_deltas": ones,
                 "mask_logits": torch.full((2, 2), 0.5, requires_grad=True), "anchors": torch.full((3,), 9.0)}
    assert float(_training_sum(mask_rcnn)) == 4 * 6.0 + 2.0


@pytest.mark.slow
def test_the_rows_run_at_tiny_settings():
    """128 px, batch 1, one timed run, 4 proposals; backward only where the forward is at most 5 GFLOPs
    (the ResNet-50 FPN CenterNet: 3.85). About 10 minutes on the 2 loaded cores of the dev VM."""
    result = run(True, only=list(ZOO_ROWS), size=128, proposals=4, max_train_gflops=5.0)
    rows = result["extractors"]
    assert list(rows) == ["centernet_resnet50_v1_fpn", "centernet_hourglass104",
                          "mask_rcnn_inception_resnet_v2 (4 proposals)"]
    # Mask R-CNN's grid anchors: a 128 px image at stride 16 is 8 x 8 cells, 4 scales x 3 aspect ratios
    assert rows["mask_rcnn_inception_resnet_v2 (4 proposals)"]["anchors"] == 8 * 8 * 12
    assert rows["centernet_hourglass104"]["anchors"] is None  # CenterNet has none: "-" in the table
    assert all(r["gflops_forward_per_image"] > 0 and r["forward_postprocess_ms_per_image"] > 0
               for r in rows.values())
    assert rows["centernet_resnet50_v1_fpn"]["forward_backward_ms_per_image"] > 0
    assert rows["centernet_hourglass104"]["forward_backward_ms_per_image"] is None  # 36.5 GFLOPs > 5
    # the TF OD API's trainable variables of the same block (bench/tf_center_net_param_count.py)
    assert rows["centernet_hourglass104"]["parameters"] == 191_244_944
