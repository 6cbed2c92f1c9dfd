"""builders/deepmac.py: the zoo's four DeepMAC blocks build the task they describe (sizes, classes, loss
weight; the mask network's parameter count is the TF OD API's own), `allowed_masked_classes_ids` go
through the label-map ids, the TASK_BUILDERS entry, and what raredet does not build is refused naming
the field."""

from __future__ import annotations

import math

import pytest
import torch
from google.protobuf import text_format

from raredet.builders.deepmac import build_deepmac_task, build_deepmac_tasks
from raredet.config import ConfigWarning
from raredet.errors import ConfigError
from raredet.losses import weighted_sigmoid
from raredet.modeling.center_net import CenterNetTask
from raredet.modeling.deepmac import _padded_targets
from raredet.protos import center_net_pb2, pipeline_pb2
from raredet.zoo import CONFIG_DIR

VOC_IDS = [1, 2, 3, 4, 5, 6, 7, 9, 16, 17, 18, 19, 20, 21, 44, 62, 63, 64, 67, 72]

# The TF OD API's MaskHeadNetwork on the zoo's 16 + 2 + 32 input channels with num_init_channels 64:
# trainable variables as TF 2.15 counts them.
TF_MASK_NETWORK_PARAMS = {"hourglass52": 23454593, "hourglass100": 47221121}


def _zoo_block(name: str) -> center_net_pb2.CenterNet.DeepMACMaskEstimation:
    config = pipeline_pb2.TrainEvalPipelineConfig()
    text_format.Parse((CONFIG_DIR / f"center_net_deepmac_{name}.config").read_text(), config)
    return config.model.center_net.deepmac_mask_estimation


def _block(text: str) -> center_net_pb2.CenterNet.DeepMACMaskEstimation:
    return text_format.Parse(text, center_net_pb2.CenterNet.DeepMACMaskEstimation())


SMALL = "dim: 4 pixel_embedding_dim: 3 mask_size: 4 network_type: 'hourglass10' num_init_channels: 2 "


@pytest.mark.parametrize("name,network,allowed", [
    ("512x512_voc_only_tpu-32", "hourglass52", [i - 1 for i in VOC_IDS]),
    ("1024x1024_voc_only_tpu-128", "hourglass100", [i - 1 for i in VOC_IDS]),
    ("1024x1024_coco_tpu-128", "hourglass100", []),
])
def test_zoo_blocks_build_the_task_they_describe(name, network, allowed):
    task = build_deepmac_task(_zoo_block(name), in_channels=256, num_feature_outputs=2)
    assert len(task.instance_embedding) == len(task.pixel_embedding) == 2
    assert task.instance_embedding[0][2].out_channels == 32 and task.pixel_embedding[0][2].out_channels == 16
    assert (task.mask_size, task.use_xy, task.use_instance_embedding) == (32, True, True)
    assert task.task_loss_weight == 5.0
    assert task.allowed_classes.tolist() == allowed  # no label map: TF's id - 1
    assert sum(p.numel() for p in task.mask_net.parameters()) == TF_MASK_NETWORK_PARAMS[network]
    # weighted_sigmoid: sigmoid cross-entropy per pixel
    loss = task.mask_loss(torch.zeros(1, 2, 1), torch.tensor([[[1.0], [0.0]]]), torch.ones(1, 2, 1))
    torch.testing.assert_close(loss, torch.full((1, 2, 1), math.log(2.0)))


def test_non_voc_block_allows_the_other_sixty_classes():
    ids = list(_zoo_block("1024x1024_non_voc_only_tpu-128").allowed_masked_classes_ids)
    assert len(ids) == 60 and not set(ids) & set(VOC_IDS)


def test_allowed_ids_go_through_the_label_map():
    msg = _block(SMALL + "classification_loss { weighted_sigmoid {} } allowed_masked_classes_ids: [44, 3]")
    assert build_deepmac_task(msg, 8, 1, class_ids=[1, 3, 44]).allowed_classes.tolist() == [1, 2]
    # an id the label map lacks selects no instance, as in TF (a zoo config on a smaller label map)
    msg.allowed_masked_classes_ids.append(9)
    with pytest.warns(ConfigWarning, match=r"allowed_masked_classes_ids: \[9\] are not label-map ids"):
        assert build_deepmac_task(msg, 8, 1, class_ids=[1, 3, 44]).allowed_classes.tolist() == [1, 2]
    # none of them in the label map (the zoo's non_voc_only ids on a 2-class map): TF trains the mask head
    # on no instance (mask loss 0); so does raredet, with a warning saying what to set
    expected = (r"deepmac_mask_estimation.allowed_masked_classes_ids: none of \[44, 3, 9\] is a label-map "
                r"id \(the label map's ids are \[1, 2\]\), so no instance trains the mask head.*set it to "
                r"the ids whose masks should train, or remove it")
    with pytest.warns(ConfigWarning, match=expected):
        task = build_deepmac_task(msg, 8, 1, class_ids=[1, 2])
    boxes, weights = _padded_targets([{"boxes": torch.tensor([[0.0, 0, 4, 4], [1, 1, 3, 3]]),
                                       "labels": torch.tensor([0, 1])}], task.allowed_classes)
    assert weights.tolist() == [[0.0, 0.0]]  # both instances out of the mask loss; an empty list: both in
    _, weights = _padded_targets([{"boxes": boxes[0], "labels": torch.tensor([0, 1])}], None)
    assert weights.tolist() == [[1.0, 1.0]]


def test_task_builder_entry_builds_one_task_when_the_block_is_set():
    center_net = center_net_pb2.CenterNet(num_classes=3)
    assert build_deepmac_tasks(center_net, 8, 2, [1, 2, 3]) == []
    center_net.deepmac_mask_estimation.CopyFrom(_block(SMALL + "classification_loss { weighted_sigmoid {} }"))
    (task,) = build_deepmac_tasks(center_net, 8, 2, [1, 2, 3])
    assert isinstance(task, CenterNetTask) and len(task.pixel_embedding) == 2


@pytest.mark.parametrize("field", [
    "box_consistency_loss_weight: 1.0", "predict_full_resolution_masks: true", "max_roi_jitter_ratio: 0.1",
    "mask_num_subsamples: 10", "feature_consistency_loss_weight: 1.0", "ignore_per_class_box_overlap: true",
])
def test_what_raredet_does_not_build_is_refused_by_field(field):
    msg = _block(SMALL + "classification_loss { weighted_sigmoid {} } " + field)
    where = f"model.center_net.deepmac_mask_estimation.{field.split(':')[0]}"
    with pytest.raises(ConfigError, match=f"{where}: is not supported"):
        build_deepmac_task(msg, 8, 1)


def test_classification_loss_choices():
    with pytest.raises(ConfigError, match="classification_loss: is not set; valid choices: weighted_sigmoid"):
        build_deepmac_task(_block(SMALL), 8, 1)
    with pytest.raises(ConfigError, match="'weighted_softmax' is not supported"):
        build_deepmac_task(_block(SMALL + "classification_loss { weighted_softmax {} }"), 8, 1)
    with pytest.raises(ConfigError, match=r"network_type: 'resnet4' is not supported"):
        build_deepmac_task(_block("network_type: 'resnet4' classification_loss { weighted_sigmoid {} }"),
                           8, 1)
    dice_loss = "classification_loss { weighted_dice_classification_loss { squared_normalization: true } }"
    dice = build_deepmac_task(_block(SMALL + dice_loss), 8, 1)
    # squared: p^2 = 1/4 on both pixels, t = (1, 0): 1 - 2 (1/4) / (1/2 + 1)
    loss = dice.mask_loss(torch.zeros(1, 2, 1), torch.tensor([[[1.0], [0.0]]]), torch.ones(1, 2, 1))
    torch.testing.assert_close(loss, torch.tensor([[1.0 - 0.5 / 1.5]]))
    assert weighted_sigmoid is not dice.mask_loss
