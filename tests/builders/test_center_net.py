"""builders/center_net.py: `model.center_net` -> CenterNet (extractor table, heads, normalisation,
peaks, calibration, NMS, the task hooks) and its loss (weights, class weights from the label map)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tests.helpers.builders import LABELS, parse

from raredet import builders
from raredet.builders import center_net as builder
from raredet.data.stats import DatasetStats
from raredet.errors import ConfigError
from raredet.modeling.center_net import CenterNet, CenterNetTask
from raredet.modeling.center_net_resnet_fpn import CenterNetResnetV1Fpn
from raredet.protos import center_net_pb2

MODEL = """
num_classes: 3
feature_extractor {
  type: "resnet_v1_50_fpn" channel_means: [1, 2, 3] channel_stds: [4, 5, 6] bgr_ordering: true
}
image_resizer { fixed_shape_resizer { height: 64 width: 64 } }
object_detection_task {
  task_loss_weight: 0.5 offset_loss_weight: 2.0 scale_loss_weight: 0.2
  localization_loss { l1_localization_loss { } }
  scale_head_params { num_filters: [32, 16] kernel_sizes: [3, 1] }
}
object_center_params {
  object_center_loss_weight: 1.5 min_box_overlap_iou: 0.6 max_box_predictions: 7 heatmap_bias_init: -4.0
  classification_loss { penalty_reduced_logistic_focal_loss { alpha: 2.0 beta: 4.0 } }
}
"""


def _msg(extra: str = "") -> center_net_pb2.CenterNet:
    return parse(MODEL + extra, center_net_pb2.CenterNet())


def test_the_model_from_its_message():
    model, l2 = builders.build_model(_msg())
    assert isinstance(model, CenterNet) and l2 == {}
    assert isinstance(model.feature_extractor, CenterNetResnetV1Fpn)
    assert model.max_box_predictions == 7 and model.peak_max_pool_kernel_size == 3
    assert model.bgr_ordering and model.pixel_mean.flatten().tolist() == [1, 2, 3]
    assert model.pixel_std.flatten().tolist() == [4, 5, 6]
    task = model.object_detection
    center_convs = [m for m in task.center[0] if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in center_convs] == [(64, 256), (256, 3)]  # TF's default
    assert torch.allclose(center_convs[-1].bias, torch.full((3,), -4.0))
    scale_convs = [m for m in task.scale[0] if isinstance(m, torch.nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size[0]) for c in scale_convs] == [(32, 3), (16, 1), (2, 1)]
    assert model.non_max_suppression is None


def test_unknown_extractor_lists_the_valid_ones():
    msg = _msg()
    msg.feature_extractor.type = "resnet_v9"
    with pytest.raises(ConfigError, match=r"model\.center_net\.feature_extractor\.type: 'resnet_v9' .*"
                                          r"valid: .*resnet_v1_101_fpn, resnet_v1_50_fpn"):
        builders.build_model(msg)


def test_calibration_and_nms_from_post_processing():
    msg = _msg("""post_processing {
      batch_non_max_suppression { iou_threshold: 0.4 score_threshold: 0.0 }
      calibration_config { function_approximation { x_y_pairs {
        x_y_pair { x: 0.0 y: 0.0 } x_y_pair { x: 1.0 y: 0.5 } } } } }""")
    model, _ = builders.build_model(msg)
    assert model.non_max_suppression.iou_threshold == pytest.approx(0.4)
    scores = model.score_converter(torch.zeros(1, 3))  # sigmoid 0.5, then halved
    assert scores[0].tolist() == pytest.approx([0.25, 0.25, 0.25])


def test_task_builders_are_called_and_their_tasks_run(monkeypatch):
    class Extra(CenterNetTask):
        def forward(self, features):
            return {"extra/map": [f[:, :1] for f in features]}

    seen = []

    def build(msg, channels, outputs, ids):
        seen.append((channels, outputs, list(ids)))
        return [Extra()]

    monkeypatch.setitem(builder.TASK_BUILDERS, "extra_task", build)
    model, _ = builders.build_model(_msg(), class_ids=[4, 7, 9])
    assert seen == [(64, 1, [4, 7, 9])]
    out = model(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
    assert out["extra/map"].shape == (1, 1, 1, 16, 16) and out["object_center"].shape == (1, 1, 3, 16, 16)


def test_loss_fields_and_class_weights_from_the_label_map():
    msg = _msg('class_weights { weight { name: "crack" value: 5.0 } apply_to_localization: false }')
    weights = builders.build_class_weights(msg, LABELS, None)
    loss = builders.build_loss(msg, LABELS, weights).object_detection
    assert loss.class_weights.tolist() == [1.0, 1.0, 5.0] and not loss.apply_to_localization
    assert (loss.alpha, loss.beta, loss.center_weight) == (2.0, 4.0, 1.5)
    assert loss.min_iou == pytest.approx(0.6)
    assert (loss.task_weight, loss.offset_weight, loss.scale_weight) == pytest.approx((0.5, 2.0, 0.2))
    unweighted = builders.build_loss(_msg(), LABELS, builders.build_class_weights(_msg(), LABELS, None))
    assert unweighted.object_detection.class_weights is None


def test_automatic_class_weights_from_the_counts():
    msg = _msg("class_weights { auto { scheme: INVERSE_FREQUENCY } }")
    stats = DatasetStats(names=LABELS.names, ids=LABELS.ids, box_counts=np.array([8, 4, 1]),
                         image_counts=np.array([4, 4, 1]), median_box_size=np.full(3, 10.0), num_images=4,
                         ignored_boxes=0, image_classes=[])
    weights = builders.build_class_weights(msg, LABELS, stats)
    # 1/n rescaled so that sum N_c w_c = sum N_c = 13: (1/8, 1/4, 1) * 13 / 3
    expected = [13 / 3 / 8, 13 / 3 / 4, 13 / 3]
    assert [w.weight for w in weights] == pytest.approx(expected)
    loss = builders.build_loss(msg, LABELS, weights).object_detection
    assert loss.class_weights.tolist() == pytest.approx(expected)
