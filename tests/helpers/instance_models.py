"""Tiny model folders whose detections carry masks or keypoints, for the predict / export / eval tests:
a CenterNet (hourglass_10, 64 px) with a keypoint task and a DeepMAC mask task, and the small Mask R-CNN
copy of the zoo config. One untrained checkpoint each (`ckpt-1.pt`), no training."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import torch
from tests.helpers.predict import make_model_dir

from raredet import builders, config
from raredet.builders import faster_rcnn as faster_rcnn_builder
from raredet.engine.checkpoint import save_checkpoint
from raredet.modeling.inception_resnet_v2 import InceptionResnetV2

KEYPOINTS = ("head", "tail", "left", "right")

_HEAD = "{ kernel_sizes: 3 num_filters: 8 }"
_FOCAL = "classification_loss { penalty_reduced_logistic_focal_loss { alpha: 2.0 beta: 4.0 } }"

# Classes crack (1), scratch (2), dent (3) of the synthetic data; keypoints on cracks; masks on all.
CENTER_NET = f"""
model {{ center_net {{
  num_classes: 3
  feature_extractor {{ type: "hourglass_10" }}
  image_resizer {{ fixed_shape_resizer {{ height: 64 width: 64 resize_method: NEAREST_NEIGHBOR }} }}
  object_detection_task {{ task_loss_weight: 1.0 offset_loss_weight: 1.0 scale_loss_weight: 0.1
    localization_loss {{ l1_localization_loss {{ }} }}
    scale_head_params {_HEAD} offset_head_params {_HEAD} }}
  object_center_params {{ object_center_loss_weight: 1.0 min_box_overlap_iou: 0.7 max_box_predictions: 6
    {_FOCAL} center_head_params {_HEAD} heatmap_bias_init: 0.0 }}
  keypoint_label_map_path: "KEYPOINT_LABEL_MAP"
  keypoint_estimation_task {{ task_name: "shape" task_loss_weight: 1.0 keypoint_class_name: "crack"
    loss {{ localization_loss {{ l1_localization_loss {{ }} }} {_FOCAL} }}
    heatmap_head_params {_HEAD} offset_head_params {_HEAD} regress_head_params {_HEAD} }}
  deepmac_mask_estimation {{ dim: 4 pixel_embedding_dim: 3 mask_size: 4 network_type: "hourglass10"
    num_init_channels: 2 use_xy: true use_instance_embedding: true
    classification_loss {{ weighted_sigmoid {{ }} }} }}
}} }}
train_config {{ batch_size: 2 num_steps: 1 optimizer {{ adam_optimizer {{ learning_rate {{
  constant_learning_rate {{ learning_rate: 0.001 }} }} }} }} }}
train_input_reader {{ label_map_path: "label_map.pbtxt"
  tf_record_input_reader {{ input_path: "train-*.tfrecord" }} }}
eval_input_reader {{ label_map_path: "label_map.pbtxt"
  tf_record_input_reader {{ input_path: "val-*.tfrecord" }} }}
"""


def _save(loaded: config.LoadedConfig, state: dict[str, torch.Tensor], run: Path) -> Path:
    save_checkpoint(run, 1, {"model": state, "config_text": config.effective_config_text(loaded.pipeline),
                             "label_map_text": loaded.label_map.to_pbtxt()})
    return run


def write_keypoint_label_map(data: Path) -> Path:
    path = data / "keypoints.pbtxt"
    points = " ".join(f'keypoints {{ id: {i} label: "{k}" }}' for i, k in enumerate(KEYPOINTS))
    path.write_text(f'item {{ name: "crack" id: 1 {points} }}\n', encoding="utf-8")
    return path


def center_net_model_dir(root: Path, tasks: bool = True) -> tuple[Path, Path]:
    """(run folder, data folder with images/ and center_net.config) of the tiny CenterNet with keypoints
    and DeepMAC masks (without `tasks`: boxes only); the SSD helper's synthetic data (64 px, 3 classes)."""
    _, data = make_model_dir(root)  # its synthetic data; the SSD run beside it is not used
    labels = write_keypoint_label_map(data)
    text = CENTER_NET.replace("KEYPOINT_LABEL_MAP", str(labels))
    if not tasks:
        text = text[:text.index("  keypoint_label_map_path")] + text[text.index("} }\ntrain_config"):]
    path = data / "center_net.config"
    path.write_text(text, encoding="utf-8")
    loaded = config.load(path)
    torch.manual_seed(0)
    model, _ = builders.build_model(builders.model_message(loaded.pipeline), loaded.label_map.ids)
    state = model.state_dict()
    for key in ("object_detection.center.0.2.weight", "tasks.1.heatmap_heads.0.2.weight"):
        if key in state:  # untrained: scores spread instead of all saturating at 1
            state[key] = state[key] * 0.01
    state["object_detection.center.0.2.bias"][0] += 0.45  # cracks (the keypoint class) among the best
    return _save(loaded, state, root / "center_net_run"), data


@contextlib.contextmanager
def narrow_inception_resnet_v2() -> Iterator[None]:
    """While open, the Faster R-CNN builder builds Inception-ResNet v2 1/16 wide with one block of each
    kind (`InceptionResnetV2`'s test variant; no config field selects it): build, save, load and export
    a Mask R-CNN inside it."""
    narrow = functools.partial(InceptionResnetV2, depth_multiplier=1 / 16, min_depth=8, repeats=(1, 1, 1))
    with mock.patch.object(faster_rcnn_builder, "InceptionResnetV2", narrow):
        yield


def mask_rcnn_model_dir(root: Path) -> tuple[Path, Path]:
    """(run folder, data folder) of the small Mask R-CNN copy (Inception-ResNet-v2, 64 px, 10x10 masks)
    with records with masks; class and box layers scaled by 0.01 as `tests.helpers.faster_rcnn` does,
    so that scores spread and boxes stay near their proposals, and the mask head's weights drawn anew
    (at the config's initialisation every mask is 0.5 to 1e-3). Call inside `narrow_inception_resnet_v2`
    for a model that exports in a minute."""
    from tests.test_mask_rcnn_zoo import small_copy_text, write_records

    data = root / "mask_rcnn"
    data.mkdir(parents=True)
    write_records(data / "train.tfrecord", 2)
    write_records(data / "val.tfrecord", 2)
    (data / "label_map.pbtxt").write_text("".join(f'item {{ name: "{n}" id: {i} }}\n' for i, n in
                                                  enumerate(("crack", "scratch", "dent"), start=1)))
    path = data / "pipeline.config"
    path.write_text(small_copy_text(), encoding="utf-8")
    loaded = config.load(path)
    torch.manual_seed(0)
    model, _ = builders.build_model(builders.model_message(loaded.pipeline), loaded.label_map.ids)
    state = model.state_dict()
    for key in ("box_head.cls.weight", "box_head.box.weight", "rpn.box.0.weight"):
        state[key] = state[key] * 0.01
    generator = torch.Generator().manual_seed(1)
    for key in [k for k in state if k.startswith("mask_head.") and k.endswith(".weight")]:
        fan_in = state[key][0].numel()  # He initialisation: the masks' logits spread over a few units
        state[key] = torch.randn(state[key].shape, generator=generator) * (2.0 / fan_in) ** 0.5
    state["mask_head.last.weight"] *= 50.0  # the narrow network's features are small
    state["mask_head.last.bias"] += 1.0  # some pixels of each mask above 0.5, some below
    return _save(loaded, state, root / "mask_rcnn_run"), data
