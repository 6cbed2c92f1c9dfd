"""CenterNet's keypoint task (modeling/center_net_keypoints.py): targets, losses and snapping by hand.

The TF OD API's definitions are written out in each test (core/target_assigner.py
CenterNetKeypointTargetAssigner, meta_architectures/center_net_meta_arch.py refine_keypoints).
"""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from raredet.losses.center_net import penalty_reduced_logistic_focal
from raredet.losses.center_net_keypoints import l1_elementwise
from raredet.modeling.center_net_keypoints import (
    CENTER_INDICES,
    HEATMAP,
    OFFSET,
    REGRESSION,
    CenterNetKeypointTask,
    KeypointTaskParams,
    gaussian_sigma_from_box,
    keypoint_candidates,
    keypoint_heatmap_targets,
    neighbour_offsets,
    pack_targets,
    pixel_targets,
)

NAN = float("nan")
SMALL_HEAD = ((3,), (4,))


def params(**kw: object) -> KeypointTaskParams:
    base: dict[str, object] = dict(task_name="pose", class_id=0, keypoint_indices=(0, 1),
                                   keypoint_std_dev=(1.0, 0.5), heatmap_head=SMALL_HEAD,
                                   offset_head=SMALL_HEAD, regression_head=SMALL_HEAD)
    base.update(kw)
    return KeypointTaskParams(**base)  # type: ignore[arg-type]


def task(**kw: object) -> CenterNetKeypointTask:
    return CenterNetKeypointTask(params(**kw), in_channels=3, num_outputs=2,
                                 heatmap_loss=penalty_reduced_logistic_focal,
                                 localization_loss=l1_elementwise)


def one_person() -> dict[str, torch.Tensor]:
    """Stride 4, a 64 x 64 input (16 x 16 output). The person (class 0) box (8, 8, 48, 48) is
    (2, 2, 12, 12) in output pixels: 10 x 10, centre (7, 7). Its keypoints (x, y): (22, 30) -> (5.5, 7.5)
    and (40, 17) -> (10, 4.25). A class-1 box (0, 0, 8, 8) -> (0, 0, 2, 2) carries no used keypoint."""
    return {"boxes": torch.tensor([[8.0, 8.0, 48.0, 48.0], [0.0, 0.0, 8.0, 8.0]]),
            "labels": torch.tensor([0, 1]),
            "keypoints": torch.tensor([[[22.0, 30.0], [40.0, 17.0]], [[1.0, 1.0], [2.0, 2.0]]]),
            "keypoint_visibilities": torch.tensor([[True, True], [True, True]])}


# A 10 x 10 box at IoU 0.7: CenterNet's three radii (with the TF OD API's root (-b + sqrt(b^2 - 4ac)) / 2)
#   a=1,   b=-20, c=100 * 0.3 / 1.7: (20 + sqrt(400 - 70.588)) / 2 = 19.07
#   a=4,   b=-40, c=30:              (40 + sqrt(1600 - 480)) / 2 = 36.73
#   a=2.8, b=28,  c=-30:             (-28 + sqrt(784 + 336)) / 2 = 2.733
# smallest 2.733 -> floor 2 -> sigma = (2 * 2 + 1) / 6 = 5/6.
SIGMA_10 = 5.0 / 6.0


def test_gaussian_sigma_of_a_box_by_hand() -> None:
    got = gaussian_sigma_from_box(torch.tensor([10.0, 0.0]), torch.tensor([10.0, 0.0]))
    # A point box: every radius is 0 -> sigma = 1/6.
    torch.testing.assert_close(got, torch.tensor([SIGMA_10, 1.0 / 6.0]))


def test_neighbours_within_radius_in_tf_order() -> None:
    assert neighbour_offsets(0) == [(0, 0)]
    assert neighbour_offsets(1) == [(-1, 0), (0, -1), (0, 0), (0, 1), (1, 0)]
    assert len(neighbour_offsets(3)) == 29  # the lattice points of a disc of radius 3


def test_heatmap_targets_of_one_box_with_two_keypoints_by_hand() -> None:
    p = params()
    heat, valid, count = keypoint_heatmap_targets(pack_targets([one_person()], p, 4, torch.device("cpu")),
                                                  p.keypoint_std_dev, 16, 16)
    s0, s1 = 1.0 * SIGMA_10, 0.5 * SIGMA_10  # keypoint_std_dev[j] * sigma(box)
    # keypoint 0 at floor (x 5, y 7); keypoint 1 at floor (x 10, y 4)
    assert heat[0, 0, 7, 5] == pytest.approx(1.0)
    assert heat[0, 0, 7, 6] == pytest.approx(math.exp(-1 / (2 * s0 * s0)))  # exp(-0.72)
    assert heat[0, 0, 8, 6] == pytest.approx(math.exp(-2 / (2 * s0 * s0)))
    assert heat[0, 0, 7, 8] == pytest.approx(math.exp(-9 / (2 * s0 * s0)), abs=1e-7)
    assert heat[0, 1, 4, 10] == pytest.approx(1.0)
    assert heat[0, 1, 4, 11] == pytest.approx(math.exp(-1 / (2 * s1 * s1)))  # exp(-2.88)
    assert heat[0, 1, 3, 9] == pytest.approx(math.exp(-2 / (2 * s1 * s1)))
    # The class-1 box is left out of the loss on both channels: pixels x, y in [0, 2).
    assert valid[0, :, :2, :2].sum() == 0 and valid.sum() == 2 * (256 - 4)
    torch.testing.assert_close(count, torch.tensor([[1.0, 1.0]]))


def test_an_invisible_keypoint_blacks_out_its_box_on_its_channel_only() -> None:
    target = one_person()
    target["keypoint_visibilities"] = torch.tensor([[True, False], [True, True]])
    p = params()
    heat, valid, count = keypoint_heatmap_targets(pack_targets([target], p, 4, torch.device("cpu")),
                                                  p.keypoint_std_dev, 16, 16)
    assert heat[0, 1].max() == 0 and heat[0, 0].max() == 1
    # channel 1: the person box [2, 12) x [2, 12) and the class-1 box [0, 2)^2 are out
    assert valid[0, 1, 2:12, 2:12].sum() == 0 and valid[0, 1].sum() == 256 - 100 - 4
    assert valid[0, 0].sum() == 256 - 4
    torch.testing.assert_close(count, torch.tensor([[1.0, 0.0]]))


def test_offset_and_regression_targets_by_hand() -> None:
    points = torch.tensor([[5.5, 7.5], [10.0, 4.25]])  # (x, y) output pixels
    weights = torch.ones(2)
    y, x, offsets, w = pixel_targets(points, points, weights, 0, 16, 16)
    assert y[:, 0].tolist() == [7, 4] and x[:, 0].tolist() == [5, 10]
    torch.testing.assert_close(offsets[:, 0], torch.tensor([[0.5, 0.5], [0.25, 0.0]]))  # (y, x)
    centers = torch.tensor([[7.0, 7.0], [7.0, 7.0]])  # the box centre, for both keypoints
    y, x, offsets, w = pixel_targets(centers, points, weights, 0, 16, 16)
    assert y[:, 0].tolist() == [7, 7] and x[:, 0].tolist() == [7, 7]
    torch.testing.assert_close(offsets[:, 0], torch.tensor([[0.5, -1.5], [-2.75, 3.0]]))
    # radius 1 at (x 0.5, y 0.5): neighbours (-1, 0) and (0, -1) fall off the map
    y, x, offsets, w = pixel_targets(torch.tensor([[0.5, 0.5]]), torch.tensor([[0.5, 0.5]]), torch.ones(1), 1,
                                     16, 16)
    assert w.tolist() == [[0.0, 0.0, 1.0, 1.0, 1.0]]
    torch.testing.assert_close(offsets[0, 3], torch.tensor([0.5, -0.5]))  # from pixel (y 0, x 1)


def predictions_with(heat_logit: float, num_kp: int = 2, size: int = 16, outputs: int = 2,
                     offset_channels: int = 2) -> dict[str, list[torch.Tensor]]:
    return {f"pose/{HEATMAP}": [torch.full((1, num_kp, size, size), heat_logit)] * outputs,
            f"pose/{OFFSET}": [torch.zeros(1, offset_channels, size, size)] * outputs,
            f"pose/{REGRESSION}": [torch.zeros(1, 2 * num_kp, size, size)] * outputs}


def test_offset_and_regression_losses_by_formula() -> None:
    t = task()
    losses = t.loss(predictions_with(0.0), [one_person()], stride=4)
    # zero predictions: L1 = |target| summed over (y, x), averaged over the 2 keypoints (and 2 outputs)
    assert losses[f"pose/{OFFSET}"].item() == pytest.approx((0.5 + 0.5 + 0.25 + 0.0) / 2)
    assert losses[f"pose/{REGRESSION}"].item() == pytest.approx((0.5 + 1.5 + 2.75 + 3.0) / 2)


def test_loss_weights_and_task_weight_multiply() -> None:
    plain = task().loss(predictions_with(0.0), [one_person()], stride=4)
    weighted = task(task_loss_weight=2.0, offset_loss_weight=0.5, regression_loss_weight=0.1,
                    heatmap_loss_weight=3.0).loss(predictions_with(0.0), [one_person()], stride=4)
    for head, w in ((HEATMAP, 6.0), (OFFSET, 1.0), (REGRESSION, 0.2)):
        assert weighted[f"pose/{head}"].item() == pytest.approx(w * plain[f"pose/{head}"].item())


def test_heatmap_loss_by_formula_on_a_4x4_map() -> None:
    """Stride 4, 16 x 16 input: one person box (0, 0, 16, 16) -> 4 x 4 output box, one keypoint at
    input (6, 10) -> (1.5, 2.5) -> pixel (x 1, y 2). Logit 0 everywhere: p = 1/2."""
    t = CenterNetKeypointTask(params(keypoint_indices=(0,), keypoint_std_dev=(1.0,)), 3, 1,
                              penalty_reduced_logistic_focal, l1_elementwise)
    target = {"boxes": torch.tensor([[0.0, 0.0, 16.0, 16.0]]), "labels": torch.tensor([0]),
              "keypoints": torch.tensor([[[6.0, 10.0]]])}
    loss = t.loss(predictions_with(0.0, num_kp=1, size=4, outputs=1), [target], stride=4)[f"pose/{HEATMAP}"]
    # sigma(4 x 4 box): radii (8 + sqrt(64 - 4 * 16 * 0.3 / 1.7)) / 2 = 7.27, (16 + sqrt(256 - 76.8)) / 2
    # = 14.69, (-11.2 + sqrt(125.44 + 4 * 2.8 * 4.8)) / 2 = 1.093 -> floor 1 -> sigma = 3/6 = 0.5
    sigma, p = 0.5, 0.5
    expected = 0.0
    for y in range(4):
        for x in range(4):
            g = math.exp(-((x - 1) ** 2 + (y - 2) ** 2) / (2 * sigma * sigma))
            expected += -(1 - p) ** 2 * math.log(p) if g == 1.0 else -(1 - g) ** 4 * p**2 * math.log(1 - p)
    assert loss.item() == pytest.approx(expected / 1.0)  # one keypoint instance


def test_boxes_of_other_classes_and_zero_weights_add_nothing() -> None:
    person = one_person()
    other = {**person, "labels": torch.tensor([1, 1])}
    zero = {**person, "weights": torch.tensor([0.0, 1.0])}
    for target in (other, zero):
        losses = task().loss(predictions_with(0.0), [target], stride=4)
        assert losses[f"pose/{OFFSET}"].item() == 0 and losses[f"pose/{REGRESSION}"].item() == 0


def test_padding_pixels_are_out_of_the_heatmap_loss() -> None:
    t = task()
    full = t.loss(predictions_with(0.0), [one_person()], stride=4)[f"pose/{HEATMAP}"]
    # the true image is 64 x 40 inside the 64 x 64 input: output columns 10..15 are padding
    cut = t.loss(predictions_with(0.0), [{**one_person(), "image_size": torch.tensor([64, 40])}],
                 stride=4)[f"pose/{HEATMAP}"]
    assert 0 < cut.item() < full.item()


def test_forward_shapes_and_heatmap_bias() -> None:
    t = task(per_keypoint_offset=True, heatmap_bias_init=-2.19)
    out = t([torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)])
    assert [tuple(x.shape) for x in out[f"pose/{HEATMAP}"]] == [(2, 2, 8, 8)] * 2
    assert [tuple(x.shape) for x in out[f"pose/{OFFSET}"]] == [(2, 4, 8, 8)] * 2
    assert [tuple(x.shape) for x in out[f"pose/{REGRESSION}"]] == [(2, 4, 8, 8)] * 2
    assert t.heatmap_heads[0][-1].bias.tolist() == pytest.approx([-2.19, -2.19])
    assert t.offset_heads[0][-1].bias.abs().sum() == 0


def snapping_predictions(peak1_at: tuple[int, int]) -> dict[str, list[torch.Tensor]]:
    """16 x 16 maps. Keypoint 0: a peak (logit 2) at (y 6, x 7) with offset (0.25, 0.5), and a higher
    peak (logit 3) far away at (1, 1). Keypoint 1: one peak (logit 2.2) at `peak1_at`. Regression
    at the centre (8, 8): keypoint 0 at (-2, -2), keypoint 1 at (+3, +1)."""
    heat = torch.full((1, 2, 16, 16), -10.0)
    heat[0, 0, 6, 7], heat[0, 0, 1, 1] = 2.0, 3.0
    heat[0, 1, peak1_at[0], peak1_at[1]] = 2.2
    offset = torch.zeros(1, 4, 16, 16)  # per keypoint: channels (y0, x0, y1, x1)
    offset[0, 0, 6, 7], offset[0, 1, 6, 7] = 0.25, 0.5
    regression = torch.zeros(1, 4, 16, 16)
    regression[0, :, 8, 8] = torch.tensor([-2.0, -2.0, 3.0, 1.0])
    return {f"pose/{HEATMAP}": [heat], f"pose/{OFFSET}": [offset], f"pose/{REGRESSION}": [regression]}


def detections_at_center() -> dict[str, torch.Tensor]:
    # box (16, 16, 48, 48) input pixels -> (4, 4, 12, 12) output; a second detection of class 1
    return {"detection_boxes": torch.tensor([[[16.0, 16.0, 48.0, 48.0], [0.0, 0.0, 8.0, 8.0]]]),
            "detection_classes": torch.tensor([[0, 1]]), "num_detections": torch.tensor([2]),
            "detection_scores": torch.tensor([[0.9, 0.8]]), CENTER_INDICES: torch.tensor([[[8, 8], [1, 1]]])}


def test_postprocess_snaps_to_the_nearest_peak_inside_the_box() -> None:
    t = task(per_keypoint_offset=True)
    out = t.postprocess(snapping_predictions(peak1_at=(14, 14)), detections_at_center(), stride=4)
    kp, scores = out["detection_keypoints"], out["detection_keypoint_scores"]
    # keypoint 0: regressed (6, 6); candidates (6.25, 7.5) at distance 1.52 and (1, 1) at 7.07: the nearer
    # wins; it lies in the box scaled by 1.2 ([3.2, 12.8]) and within 0.3 * 9.6 = 2.88 -> snapped.
    torch.testing.assert_close(kp[0, 0, 0], torch.tensor([7.5 * 4, 6.25 * 4]))  # (x, y) input pixels
    assert scores[0, 0, 0].item() == pytest.approx(1 / (1 + math.exp(-2.0)))
    # keypoint 1: the only peak (14, 14) is outside the scaled box: the regressed (11, 9) stays, score 0.1
    torch.testing.assert_close(kp[0, 0, 1], torch.tensor([9.0 * 4, 11.0 * 4]))
    assert scores[0, 0, 1].item() == pytest.approx(0.1)
    # the class-1 detection has no keypoints
    assert kp[0, 1].abs().sum() == 0 and scores[0, 1].sum() == 0


def test_postprocess_search_radius_and_score_threshold() -> None:
    # keypoint 1's peak at (11, 12): inside the scaled box but 3 from the regressed (11, 9) > 2.88
    out = task(per_keypoint_offset=True).postprocess(snapping_predictions(peak1_at=(11, 12)),
                                                     detections_at_center(), stride=4)
    assert out["detection_keypoint_scores"][0, 0, 1].item() == pytest.approx(0.1)
    # at (11, 11), distance 2 <= 2.88: snapped, unless the threshold is above its score (0.900)
    snapped = task(per_keypoint_offset=True).postprocess(snapping_predictions(peak1_at=(11, 11)),
                                                         detections_at_center(), stride=4)
    torch.testing.assert_close(snapped["detection_keypoints"][0, 0, 1], torch.tensor([44.0, 44.0]))
    strict = task(per_keypoint_offset=True, candidate_score_threshold=0.95).postprocess(
        snapping_predictions(peak1_at=(11, 11)), detections_at_center(), stride=4)
    torch.testing.assert_close(strict["detection_keypoints"][0, 0, 1], torch.tensor([36.0, 44.0]))


def test_score_distance_ratio_prefers_a_high_far_peak() -> None:
    """Keypoint 0 with the box grown to the whole map and a wide search: min_distance takes (6.25, 7.5)
    (distance 1.52); score_distance_ratio with offset 1 ranks 0.881 / 2.52 = 0.35 against the far peak's
    0.953 / (7.07 + 1) = 0.118, still the near one; with offset 100 the far peak wins (0.953 / 107.07 >
    0.881 / 101.52)."""
    whole = torch.tensor([[[0.0, 0.0, 64.0, 64.0], [0, 0, 8, 8]]])
    det = {**detections_at_center(), "detection_boxes": whole}
    for offset, expected in ((1.0, [30.0, 25.0]), (100.0, [4.0, 4.0])):
        t = task(per_keypoint_offset=True, candidate_ranking_mode="score_distance_ratio",
                 score_distance_offset=offset, candidate_search_scale=1.0)
        out = t.postprocess(snapping_predictions(peak1_at=(14, 14)), det, stride=4)
        torch.testing.assert_close(out["detection_keypoints"][0, 0, 0], torch.tensor(expected))


def test_candidates_are_zero_padded_on_a_small_map() -> None:
    heat = torch.tensor([[[[0.9, 0.1], [0.2, 0.05]]]])  # one keypoint type, 2 x 2
    cands, scores, count = keypoint_candidates(heat, torch.zeros(1, 2, 2, 2), 0.1, 1, 6)
    assert scores[0, :, 0].tolist() == pytest.approx([0.9, 0.2, 0.1, 0.05, 0.0, 0.0])
    assert count.tolist() == [[3]]  # scores >= 0.1
    assert cands[0, 1, 0].tolist() == [1.0, 0.0]  # 0.2 at (y 1, x 0)
    # with the 3 x 3 peak filter only the maximum survives
    _, scores, count = keypoint_candidates(heat, torch.zeros(1, 2, 2, 2), 0.1, 3, 6)
    assert count.tolist() == [[1]]


def test_rescore_and_clip_out_of_frame() -> None:
    t = task(per_keypoint_offset=True, rescore_instances=True, rescoring_threshold=0.5,
             clip_out_of_frame_keypoints=True)
    preds = snapping_predictions(peak1_at=(14, 14))
    preds[f"pose/{REGRESSION}"][0][0, 2, 8, 8] = 20.0  # keypoint 1 regressed to y = 28 (off the 16-row map)
    out = t.postprocess(preds, detections_at_center(), stride=4)
    # keypoint 1 (unmatched, score 0.1) leaves the 64-pixel frame: clipped to y = 64, score 0
    torch.testing.assert_close(out["detection_keypoints"][0, 0, 1], torch.tensor([36.0, 64.0]))
    assert out["detection_keypoint_scores"][0, 0, 1].item() == 0
    # rescoring: 0.9 * mean of the keypoint scores above 0.5 (only keypoint 0: 0.881)
    s0 = 1 / (1 + math.exp(-2.0))
    assert out["detection_scores"][0, 0].item() == pytest.approx(0.9 * s0)
    assert out["detection_scores"][0, 1].item() == pytest.approx(0.8)  # another class: unchanged


def test_keypoints_land_at_their_columns_of_the_output() -> None:
    p = params(keypoint_indices=(2, 3), num_total_keypoints=5, per_keypoint_offset=True)
    t = CenterNetKeypointTask(p, 3, 1, penalty_reduced_logistic_focal, l1_elementwise)
    out = t.postprocess(snapping_predictions(peak1_at=(14, 14)), detections_at_center(), stride=4)
    assert tuple(out["detection_keypoints"].shape) == (1, 2, 5, 2)
    assert out["detection_keypoint_scores"][0, 0].tolist() == pytest.approx(
        [0.0, 0.0, 1 / (1 + math.exp(-2.0)), 0.1, 0.0])
    # the data's keypoint columns 2 and 3 are the task's
    target = one_person()
    columns = [torch.full((2, 2, 2), NAN), target["keypoints"], torch.zeros(2, 1, 2)]
    target["keypoints"] = torch.cat(columns, 1)
    target["keypoint_visibilities"] = torch.ones(2, 5, dtype=torch.bool)
    loss = t.loss(predictions_with(0.0, outputs=1, offset_channels=4), [target], stride=4)
    assert loss[f"pose/{OFFSET}"].item() == pytest.approx(0.625)


def test_train_step_gradients_reach_every_head() -> None:
    t = task(per_keypoint_offset=True, offset_peak_radius=1)
    features = [torch.randn(1, 3, 16, 16), torch.randn(1, 3, 16, 16)]
    sum(t.loss(t(features), [one_person()], stride=4).values()).backward()  # type: ignore[union-attr]
    for name, p in t.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


# ----------------------------------------------------------------------------------------------------
# Against the TF OD API's own CenterNetMetaArch (tests/fixtures/center_net_keypoints/make_reference.py)

REFERENCE = Path(__file__).resolve().parents[1] / "fixtures" / "center_net_keypoints" / "reference.npz"
TF_MODES = ("min_distance", "score_distance_ratio", "score_scaled_distance_ratio", "gaussian_weighted")


def tf_task(ref: dict[str, np.ndarray], mode: str = "min_distance") -> CenterNetKeypointTask:
    p = KeypointTaskParams(task_name="pose", class_id=1, keypoint_indices=(0, 1, 2),
                           keypoint_std_dev=(0.8, 1.0, 1.3), task_loss_weight=1.5, heatmap_loss_weight=1.0,
                           offset_loss_weight=0.7, regression_loss_weight=0.2, per_keypoint_offset=True,
                           offset_peak_radius=1, candidate_ranking_mode=mode, heatmap_head=SMALL_HEAD,
                           offset_head=SMALL_HEAD, regression_head=SMALL_HEAD)
    return CenterNetKeypointTask(p, 3, 2, partial(penalty_reduced_logistic_focal, alpha=2.0, beta=4.0),
                                 l1_elementwise)


def tf_predictions(ref: dict[str, np.ndarray]) -> dict[str, list[torch.Tensor]]:
    return {f"pose/keypoint/{head}": [torch.from_numpy(ref[f"pred_{head}_{s}"]) for s in range(2)]
            for head in ("heatmap", "offset", "regression")}


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    with np.load(REFERENCE) as data:
        return dict(data)


def test_losses_equal_the_tf_od_api(reference: dict[str, np.ndarray]) -> None:
    keys = ("boxes", "labels", "weights", "keypoints")
    targets = [{key: torch.from_numpy(reference[f"{key}_{i}"]) for key in keys}
               | {"image_size": torch.from_numpy(reference["image_sizes"][i])} for i in range(2)]
    losses = tf_task(reference).loss(tf_predictions(reference), targets, stride=4)
    for head in ("heatmap", "offset", "regression"):
        expected = float(reference[f"loss_{head}"])
        assert losses[f"pose/keypoint/{head}"].item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("mode", TF_MODES)
def test_postprocessing_equals_the_tf_od_api(reference: dict[str, np.ndarray], mode: str) -> None:
    detections = {"detection_boxes": torch.from_numpy(reference["det_boxes"]),
                  CENTER_INDICES: torch.from_numpy(reference["det_centers"]),
                  "detection_classes": torch.from_numpy(reference["det_classes"]),
                  "num_detections": torch.from_numpy(reference["num_detections"])}
    out = tf_task(reference, mode).postprocess(tf_predictions(reference), detections, stride=4)
    expected_scores = torch.from_numpy(reference[f"kp_scores_{mode}"])
    torch.testing.assert_close(out["detection_keypoint_scores"], expected_scores)
    torch.testing.assert_close(out["detection_keypoints"], torch.from_numpy(reference[f"kp_{mode}"]),
                               atol=1e-4, rtol=1e-5)


def test_a_batch_without_keypoints_warns_and_trains_the_heatmap_only() -> None:
    target = {key: value for key, value in one_person().items() if not key.startswith("keypoint")}
    with pytest.warns(UserWarning, match="num_keypoints"):
        losses = task().loss(predictions_with(0.0), [target], stride=4)
    assert losses[f"pose/{OFFSET}"].item() == 0 and losses[f"pose/{HEATMAP}"].item() > 0


class _Postprocess(torch.nn.Module):
    """The keypoint post-processing as an exportable module of plain tensors."""

    def __init__(self, t: CenterNetKeypointTask) -> None:
        super().__init__()
        self.task = t

    def forward(self, heatmap: torch.Tensor, offset: torch.Tensor, regression: torch.Tensor,
                boxes: torch.Tensor, centers: torch.Tensor, classes: torch.Tensor,
                num: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        predictions = {f"pose/{HEATMAP}": [heatmap], f"pose/{OFFSET}": [offset],
                       f"pose/{REGRESSION}": [regression]}
        detections = {"detection_boxes": boxes, CENTER_INDICES: centers, "detection_classes": classes,
                      "num_detections": num}
        out = self.task.postprocess(predictions, detections, 4)
        return out["detection_keypoints"], out["detection_keypoint_scores"]


@pytest.mark.slow  # ONNX
def test_postprocessing_exports_to_onnx_and_still_equals_the_tf_od_api(reference: dict[str, np.ndarray],
                                                                     tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    names = ["heatmap", "offset", "regression", "boxes", "centers", "classes", "num"]
    inputs = [reference[f"pred_{head}_1"] for head in names[:3]] + [
        reference[key] for key in ("det_boxes", "det_centers", "det_classes", "num_detections")]
    path = tmp_path / "keypoints.onnx"
    module = _Postprocess(tf_task(reference, "gaussian_weighted")).eval()
    torch.onnx.export(module, tuple(torch.from_numpy(a) for a in inputs), str(path), opset_version=17,
                      input_names=names, dynamo=False)
    session = ort.InferenceSession(str(path))
    feed = dict(zip(names, inputs, strict=True))
    keypoints, scores = session.run(None, {i.name: feed[i.name] for i in session.get_inputs()})
    np.testing.assert_allclose(keypoints, reference["kp_gaussian_weighted"], atol=1e-4)
    np.testing.assert_allclose(scores, reference["kp_scores_gaussian_weighted"], atol=1e-5)


def test_strided_boxes_are_used_when_given(reference: dict[str, np.ndarray]) -> None:
    """The TF OD API snaps within `detection_boxes_strided` (output pixels): given, they win over
    `detection_boxes` (here zeros) and give TF's keypoints."""
    boxes = torch.from_numpy(reference["det_boxes"])
    detections = {"detection_boxes": torch.zeros_like(boxes), "detection_boxes_strided": boxes / 4,
                  CENTER_INDICES: torch.from_numpy(reference["det_centers"]),
                  "detection_classes": torch.from_numpy(reference["det_classes"]),
                  "num_detections": torch.from_numpy(reference["num_detections"])}
    out = tf_task(reference).postprocess(tf_predictions(reference), detections, stride=4)
    torch.testing.assert_close(out["detection_keypoints"], torch.from_numpy(reference["kp_min_distance"]),
                               atol=1e-4, rtol=1e-5)
