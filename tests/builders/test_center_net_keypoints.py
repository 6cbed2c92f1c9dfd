"""builders/center_net_keypoints.py: the zoo's keypoint_estimation_task block, field by field; refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from raredet.builders.center_net_keypoints import build_keypoint_tasks
from raredet.config.load import parse_config
from raredet.errors import ConfigError
from raredet.protos import center_net_pb2
from raredet.zoo import config_path

# COCO's person keypoints in the order of its annotations (and of a TF OD API keypoint label map)
COCO_KEYPOINTS = ("nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder",
                  "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip",
                  "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle")


def keypoint_label_map(tmp_path: Path) -> Path:
    keypoints = " ".join(f'keypoints {{ id: {i} label: "{name}" }}' for i, name in enumerate(COCO_KEYPOINTS))
    path = tmp_path / "keypoints.pbtxt"
    path.write_text(f'item {{ name: "/m/01g317" id: 1 display_name: "person" {keypoints} }}\n'
                    'item { name: "/m/0199g" id: 2 display_name: "bicycle" }\n', encoding="utf-8")
    return path


def zoo_center_net(tmp_path: Path) -> center_net_pb2.CenterNet:
    name = "centernet_resnet50_v1_fpn_512x512_kpts_coco17_tpu-8"
    msg = parse_config(config_path(name).read_text(encoding="utf-8")).model.center_net
    msg.keypoint_label_map_path = str(keypoint_label_map(tmp_path))
    return msg


def test_the_zoo_block_builds_field_by_field(tmp_path: Path) -> None:
    msg = zoo_center_net(tmp_path)
    (task,) = build_keypoint_tasks(msg, in_channels=8, num_outputs=1, class_ids=[1, 2, 3])
    p = task.params
    assert p.task_name == "human_pose" and p.class_id == 0  # id 1 is index 0
    assert p.keypoint_indices == tuple(range(17))
    std = dict(zip(COCO_KEYPOINTS, p.keypoint_std_dev, strict=True))
    assert std["nose"] == pytest.approx(0.26) and std["left_hip"] == pytest.approx(1.07)
    assert std["left_ankle"] == pytest.approx(0.89) and std["right_eye"] == pytest.approx(0.25)
    assert (p.task_loss_weight, p.heatmap_loss_weight, p.offset_loss_weight) == (1.0, 1.0, 1.0)
    assert p.regression_loss_weight == 0.1
    assert p.offset_peak_radius == 3 and p.per_keypoint_offset
    # the fields the zoo leaves unset take the TF OD API's defaults
    assert (p.candidate_score_threshold, p.num_candidates_per_keypoint) == (0.1, 100)
    assert p.peak_max_pool_kernel_size == 3
    assert (p.unmatched_keypoint_score, p.box_scale, p.candidate_search_scale) == (0.1, 1.2, 0.3)
    assert p.candidate_ranking_mode == "min_distance" and p.heatmap_bias_init == pytest.approx(-2.19)
    assert task.heatmap_heads[0][0].out_channels == 256 and task.heatmap_heads[0][-1].out_channels == 17
    assert task.offset_heads[0][-1].out_channels == 34 and task.regression_heads[0][-1].out_channels == 34


def test_a_label_map_without_the_std_takes_one(tmp_path: Path) -> None:
    msg = zoo_center_net(tmp_path)
    del msg.keypoint_estimation_task[0].keypoint_label_to_std["nose"]
    (task,) = build_keypoint_tasks(msg, 8, 1, [1])
    assert task.params.keypoint_std_dev[0] == 1.0


def test_the_class_follows_the_training_label_map_ids(tmp_path: Path) -> None:
    (task,) = build_keypoint_tasks(zoo_center_net(tmp_path), 8, 1, class_ids=[5, 1, 9])
    assert task.params.class_id == 1


@pytest.mark.parametrize("change, field", [
    (lambda m: m.ClearField("keypoint_label_map_path"), "keypoint_label_map_path: is not set"),
    (lambda m: setattr(m, "keypoint_label_map_path", "PATH_TO_BE_CONFIGURED"), "does not exist"),
    (lambda m: setattr(m.keypoint_estimation_task[0], "keypoint_class_name", "/m/0199g"),
     "keypoint_class_name: no item named '/m/0199g'"),
    (lambda m: m.keypoint_estimation_task[0].loss.localization_loss.weighted_l2.SetInParent(),
     "loss.localization_loss: weighted_l2"),
    (lambda m: m.keypoint_estimation_task[0].loss.classification_loss.weighted_sigmoid.SetInParent(),
     "loss.classification_loss: weighted_sigmoid"),
    (lambda m: setattr(m.keypoint_estimation_task[0], "predict_depth", True), "predict_depth"),
    (lambda m: setattr(m.keypoint_estimation_task[0], "candidate_ranking_mode", "nearest"),
     "candidate_ranking_mode: 'nearest'"),
    (lambda m: m.keypoint_estimation_task.add().CopyFrom(m.keypoint_estimation_task[0]), "2 tasks"),
])
def test_refusals_name_the_field(tmp_path: Path, change: object, field: str) -> None:
    msg = zoo_center_net(tmp_path)
    change(msg)  # type: ignore[operator]
    with pytest.raises(ConfigError, match="model.center_net") as err:
        build_keypoint_tasks(msg, 8, 1, [1])
    assert field in str(err.value)


def test_a_keypoint_class_outside_the_model_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"keypoint_class_name: '/m/01g317' has id 1 .* \[2, 3\]"):
        build_keypoint_tasks(zoo_center_net(tmp_path), 8, 1, class_ids=[2, 3])


def test_no_task_builds_nothing() -> None:
    assert build_keypoint_tasks(center_net_pb2.CenterNet(), 8, 1, [1]) == []
