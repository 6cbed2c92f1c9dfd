"""CenterNet's keypoint estimation task: the TF OD API's `keypoint_estimation_task`, one per task message.

Three prediction heads per feature output (docs/center_net.md): a heatmap with one channel per keypoint
type (logits; Gaussian targets at the keypoints, trained with the task's heatmap loss), a local offset
(`2` channels, or `2 J` with `per_keypoint_offset`: the sub-pixel position of a keypoint from its
floored pixel) and a regression from the object center to each keypoint (`2 J` channels). Channel pairs
are `(y, x)`, as the TF OD API orders them, so TF weights load channel for channel.

Targets follow the TF OD API's `CenterNetKeypointTargetAssigner` (core/target_assigner.py): only boxes
of the task's class count; a keypoint is used when its coordinates are finite, it is visible and its
box weight is positive, with weight `box weight`. Its Gaussian has the standard deviation
`keypoint_std_dev[j] * sigma(box)`, `sigma(box) = (2 floor(r) + 1) / 6` with `r` CenterNet's radius for
IoU 0.7 of the box in output pixels; heatmap pixels inside the box of an instance whose keypoint is not
used are left out of the loss. Offsets and regressions are assigned at the floored keypoint (center)
pixel and at every pixel within `offset_peak_radius` of it.

Post-processing follows the TF OD API's `refine_keypoints`: the keypoints regressed from each detected
center are snapped to the best heatmap peak of the same type (`candidate_ranking_mode`) when that peak
scores at least `keypoint_candidate_score_threshold`, lies inside the detection box scaled by
`box_scale` and the nearest peak lies within `candidate_search_scale * max(box side)`; otherwise the
regressed keypoint stays, with score `unmatched_keypoint_score`.

Coordinates here: targets' `keypoints [N, J, 2]` are `(x, y)` absolute pixels of the (padded) input,
NaN where absent; outputs `detection_keypoints [B, D, J, 2]` are `(x, y)` absolute input pixels.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from raredet.modeling.center_net import CenterNetTask, peak_mask, prediction_head
from raredet.modeling.center_net_targets import gaussian_sigma

HEATMAP = "keypoint/heatmap"
OFFSET = "keypoint/offset"
REGRESSION = "keypoint/regression"
MAX_DISTANCE = 1e5  # the distance given to padded candidates, as the TF OD API does
RANKING_MODES = ("min_distance", "score_distance_ratio", "score_scaled_distance_ratio", "gaussian_weighted")
# The detections' key of the object centers' output-grid pixels `[B, D, 2]` (y, x) int64, where the
# keypoints are regressed from (CenterNet.postprocess gives it). Without it, each box's floored center.
CENTER_INDICES = "detection_centers"

HeadShape = tuple[tuple[int, ...], tuple[int, ...]]  # (kernel_sizes, num_filters) of a head's hidden convs
DEFAULT_HEAD: HeadShape = ((3,), (256,))  # the TF OD API's when a *_head_params is unset
ElementwiseLoss = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class KeypointTaskParams:
    """The fields of one `keypoint_estimation_task`, resolved (class index, keypoint ids, std devs)."""

    task_name: str
    class_id: int  # contiguous class index 0..K-1 of the boxes that carry the keypoints
    keypoint_indices: tuple[int, ...]  # columns of the data's keypoints this task predicts
    keypoint_std_dev: tuple[float, ...]
    num_total_keypoints: int = 0  # width of detection_keypoints; 0 = max(keypoint_indices) + 1
    task_loss_weight: float = 1.0
    heatmap_loss_weight: float = 1.0
    offset_loss_weight: float = 1.0
    regression_loss_weight: float = 1.0
    heatmap_bias_init: float = -2.19
    offset_peak_radius: int = 0
    per_keypoint_offset: bool = False
    candidate_score_threshold: float = 0.1
    num_candidates_per_keypoint: int = 100
    peak_max_pool_kernel_size: int = 3
    unmatched_keypoint_score: float = 0.1
    box_scale: float = 1.2
    candidate_search_scale: float = 0.3
    candidate_ranking_mode: str = "min_distance"
    score_distance_offset: float = 1.0
    score_distance_multiplier: float = 0.1
    std_dev_multiplier: float = 1.0
    clip_out_of_frame_keypoints: bool = False
    rescore_instances: bool = False
    rescoring_threshold: float = 0.0
    heatmap_head: HeadShape = DEFAULT_HEAD
    offset_head: HeadShape = DEFAULT_HEAD
    regression_head: HeadShape = DEFAULT_HEAD
    use_depthwise: bool = False  # separable hidden convs (model.center_net.use_depthwise)

    def __post_init__(self) -> None:
        if len(self.keypoint_std_dev) != len(self.keypoint_indices):
            raise ValueError(
                f"{len(self.keypoint_std_dev)} std devs for {len(self.keypoint_indices)} keypoints")
        if self.candidate_ranking_mode not in RANKING_MODES:
            raise ValueError(
                f"candidate_ranking_mode {self.candidate_ranking_mode!r} is not one of {RANKING_MODES}")

    @property
    def num_keypoints(self) -> int:
        return len(self.keypoint_indices)

    @property
    def output_keypoints(self) -> int:
        return self.num_total_keypoints or max(self.keypoint_indices) + 1


# ----------------------------------------------------------------------------------------------------
# Geometry shared by targets and post-processing


def gaussian_sigma_from_box(height: Tensor, width: Tensor) -> Tensor:
    """The TF OD API's `_compute_std_dev_from_box_size(height, width, 0.7)`, which the keypoint task uses
    for every box whatever `min_box_overlap_iou` says."""
    return gaussian_sigma(height, width, 0.7)


def neighbour_offsets(radius: int) -> list[tuple[int, int]]:
    """`(dy, dx)` of the pixels within `radius` of a pixel, in the TF OD API's order (row by row)."""
    return [(dy, dx) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1)
            if dy * dy + dx * dx <= radius * radius]


# ----------------------------------------------------------------------------------------------------
# Targets


@dataclass
class PackedTargets:
    """A batch's ground truth for one keypoint task, padded to `N` boxes (`real` marks the boxes).

    `keypoints [B, N, J, 2]` are `(x, y)` in output pixels (input pixels / stride), 0 where not used;
    `keypoint_weights [B, N, J]` the TF OD API's keypoint weights (class x box weight x finite x visible);
    `boxes [B, N, 4]` xyxy in output pixels; `image_sizes [B, 2]` (h, w) input pixels, or None.
    """

    keypoints: Tensor
    keypoint_weights: Tensor
    boxes: Tensor
    real: Tensor
    image_sizes: Tensor | None


def pack_targets(targets: Sequence[Mapping[str, Tensor]], params: KeypointTaskParams, stride: int,
                 device: torch.device) -> PackedTargets:
    """Pad the per-image targets ("boxes", "labels", "weights", "keypoints", "keypoint_visibilities",
    optional "image_size" (h, w)) into batch tensors, keeping the task's keypoint columns."""
    idx = torch.as_tensor(params.keypoint_indices, dtype=torch.long, device=device)
    boxes, labels, weights, points, visible = [], [], [], [], []
    for t in targets:  # one step per image: the padding, not the maths
        n = int(t["boxes"].shape[0])
        kp = t.get("keypoints")
        if kp is None:  # the TF OD API raises; the loss of absent keypoints is the heatmap's negatives
            warnings.warn(f"keypoint task '{params.task_name}': the batch has no keypoints (set the input "
                          "reader's num_keypoints); its keypoints count as absent", stacklevel=3)
            kp = torch.full((n, params.output_keypoints, 2), float("nan"))
        if kp.shape[1] <= int(idx.max()):
            raise ValueError(f"keypoint task '{params.task_name}' reads keypoint {int(idx.max())} but the "
                             f"targets have {kp.shape[1]} keypoints per box")
        vis = t.get("keypoint_visibilities")
        boxes.append(t["boxes"].to(device, torch.float32))
        labels.append(t["labels"].to(device))
        weights.append(t.get("weights", torch.ones(n)).to(device, torch.float32))
        points.append(kp.to(device, torch.float32)[:, idx])
        visible.append(torch.ones(n, len(idx), dtype=torch.bool, device=device) if vis is None
                       else vis.to(device, torch.bool)[:, idx])
    pad = torch.nn.utils.rnn.pad_sequence
    real = pad([torch.ones(len(b), dtype=torch.bool, device=device) for b in boxes], batch_first=True)
    kp = pad(points, batch_first=True, padding_value=float("nan"))
    label = pad(labels, batch_first=True, padding_value=-1)
    finite = torch.isfinite(kp).all(-1)
    kw = ((label == params.class_id) & real).float() * pad(weights, batch_first=True)
    kw = kw[..., None] * (finite & pad(visible, batch_first=True)).float()
    sizes = [t.get("image_size") for t in targets]
    image_sizes = None if any(s is None for s in sizes) else torch.stack(
        [torch.as_tensor(s, device=device) for s in sizes if s is not None])
    return PackedTargets(torch.where(finite[..., None], kp, 0.0) / stride, kw,
                         pad(boxes, batch_first=True) / stride, real, image_sizes)


def keypoint_heatmap_targets(packed: PackedTargets, std_dev: Sequence[float], height: int,
                             width: int) -> tuple[Tensor, Tensor, Tensor]:
    """The TF OD API's `assign_keypoint_heatmap_targets` on a batch.

    Returns `heatmap [B, J, H, W]` (per keypoint type the max over instances of `weight * Gaussian`
    centred on the floored keypoint), `valid [B, J, H, W]` (0 inside the boxes of instances whose
    keypoint has weight < 1e-3, 1 elsewhere) and `num_instances [B, J]` (the floored sum of weights).
    """
    kw, kp = packed.keypoint_weights, packed.keypoints
    batch, _, num_kp = kw.shape
    box_h = packed.boxes[..., 3] - packed.boxes[..., 1]
    box_w = packed.boxes[..., 2] - packed.boxes[..., 0]
    std = torch.as_tensor(std_dev, device=kw.device)[None, None]
    sigma = std * gaussian_sigma_from_box(box_h, box_w)[..., None]  # [B, N, J]
    b, n, j = torch.nonzero(kw > 0, as_tuple=True)  # only used keypoints can raise the max above 0
    ys = torch.arange(height, device=kw.device, dtype=torch.float32)
    xs = torch.arange(width, device=kw.device, dtype=torch.float32)
    dy = ys[None, :] - kp[b, n, j, 1].floor()[:, None]  # [P, H]
    dx = xs[None, :] - kp[b, n, j, 0].floor()[:, None]  # [P, W]
    two_var = 2 * sigma[b, n, j][:, None] ** 2
    # exp(-(dx² + dy²) / 2σ²) as the product of its row and column factors: P (H + W) exponentials, not
    # P H W (1 exactly at the keypoint's pixel all the same, as the focal loss's positives need)
    rows = torch.exp(-dy * dy / two_var)
    cols = torch.exp(-dx * dx / two_var) * kw[b, n, j][:, None]
    flat = (rows[:, :, None] * cols[:, None, :]).reshape(len(b), height * width)
    heatmap = torch.zeros(batch * num_kp, height * width, device=kw.device)
    heatmap.scatter_reduce_(0, (b * num_kp + j)[:, None].expand_as(flat), flat, "amax")
    x0, y0, x1, y1 = (packed.boxes[..., k, None, None] for k in range(4))  # [B, N, 1, 1]
    row, col = ys[:, None], xs[None, :]
    in_box = (row >= y0) & (row < y1) & (col >= x0) & (col < x1) & packed.real[..., None, None]
    blackout = ((kw < 1e-3) & packed.real[..., None]).float()  # [B, N, J]
    hits = torch.einsum("bnp,bnj->bjp", in_box.flatten(2).float(), blackout)
    valid = (hits == 0).float().view(batch, num_kp, height, width)
    num_instances = torch.floor(kw.sum(1))
    return heatmap.view(batch, num_kp, height, width), valid, num_instances


def pixel_targets(sources: Tensor, points: Tensor, weights: Tensor, radius: int, height: int,
                  width: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Offsets from the floored `sources [P, 2]` (x, y) and their neighbours within `radius` to
    `points [P, 2]`: the TF OD API's `get_surrounding_grids` + `compute_floor_offsets_with_indices`.

    Returns `y [P, M]`, `x [P, M]` (long pixel indices, 0 where outside the map), `offsets [P, M, 2]`
    `(y, x)` and `weights [P, M]` (the point's weight, 0 for neighbours outside the map).
    """
    nb = torch.as_tensor(neighbour_offsets(radius), dtype=torch.float32, device=sources.device)  # [M, 2]
    y = sources[:, 1, None].floor() + nb[None, :, 0]
    x = sources[:, 0, None].floor() + nb[None, :, 1]
    inside = (x >= 0) & (x < width) & (y >= 0) & (y < height)
    offsets = torch.stack([points[:, 1, None] - y, points[:, 0, None] - x], dim=-1)
    y = torch.where(inside, y, 0.0).long()
    x = torch.where(inside, x, 0.0).long()
    return y, x, offsets, inside.float() * weights[:, None]


def pixel_weights(image_sizes: Tensor | None, batch: int, stride: int, height: int, width: int,
                  device: torch.device) -> Tensor:
    """`[B, 1, H, W]`: 1 on the output pixels of the true image (`ceil(size / stride)`, as the TF OD
    API's `get_valid_anchor_weights_in_flattened_image`), 0 on the padding; all 1 without sizes."""
    if image_sizes is None:
        return torch.ones(batch, 1, height, width, device=device)
    limit = torch.ceil(image_sizes.to(device, torch.float32) / stride)
    ys = torch.arange(height, device=device)[None, :, None] < limit[:, 0, None, None]
    xs = torch.arange(width, device=device)[None, None, :] < limit[:, 1, None, None]
    return (ys & xs).float()[:, None]


# ----------------------------------------------------------------------------------------------------
# Post-processing


def keypoint_candidates(heatmap: Tensor, offsets: Tensor, threshold: float, kernel: int,
                        max_candidates: int) -> tuple[Tensor, Tensor, Tensor]:
    """The TF OD API's `prediction_tensors_to_keypoint_candidates` on `heatmap [B, J, H, W]`
    (probabilities) and `offsets [B, 2 or 2J, H, W]`.

    Returns `candidates [B, K, J, 2]` (y, x) output pixels, `scores [B, K, J]` (descending per type,
    zero-padded when `H W < K`) and `num_candidates [B, J]` (scores >= threshold).
    """
    batch, num_kp, height, width = heatmap.shape
    heatmap = heatmap * peak_mask(heatmap, kernel)
    k = min(max_candidates, height * width)
    scores, flat = heatmap.flatten(2).topk(k, dim=-1)  # [B, J, k]
    off = offsets.view(batch, -1, 2, height * width).expand(batch, num_kp, 2, height * width)
    picked = off.gather(3, flat[:, :, None].expand(batch, num_kp, 2, k))  # [B, J, 2, k]
    rows, cols = (flat // width).float(), (flat % width).float()
    cand = torch.stack([rows + picked[:, :, 0], cols + picked[:, :, 1]], -1)
    cand = F.pad(cand, (0, 0, 0, max_candidates - k))
    scores = F.pad(scores, (0, max_candidates - k))
    return cand.transpose(1, 2), scores.transpose(1, 2), (scores >= threshold).sum(-1)


def regressed_keypoints(regression: Tensor, centers: Tensor) -> Tensor:
    """`regression [B, 2J, H, W]` read at `centers [B, D, 2]` (y, x long) plus the center:
    `[B, D, J, 2]` (y, x) output pixels (the TF OD API's `regressed_keypoints_at_object_centers`)."""
    batch, channels, height, width = regression.shape
    flat = (centers[..., 0] * width + centers[..., 1])[:, None].expand(batch, channels, -1)
    reg = regression.flatten(2).gather(2, flat).view(batch, channels // 2, 2, -1).permute(0, 3, 1, 2)
    return reg + centers[:, :, None].float()


def refine_keypoints(regressed: Tensor, candidates: Tensor, scores: Tensor, num_candidates: Tensor,
                     boxes: Tensor, params: KeypointTaskParams) -> tuple[Tensor, Tensor]:
    """The TF OD API's `refine_keypoints` with boxes given: `regressed [B, D, J, 2]`, `candidates
    [B, K, J, 2]`, `scores [B, K, J]`, `num_candidates [B, J]`, `boxes [B, D, 4]` (ymin, xmin, ymax,
    xmax output pixels) -> refined keypoints `[B, D, J, 2]` (y, x) and their scores `[B, D, J]`."""
    batch, dets, num_kp, _ = regressed.shape
    max_cand = candidates.shape[1]
    invalid = torch.arange(max_cand, device=scores.device)[None, :, None] >= num_candidates[:, None, :]
    dist = (regressed[:, :, None] - candidates[:, None]).pow(2).sum(-1).sqrt()  # [B, D, K, J]
    dist = torch.where(invalid[:, None], torch.full_like(dist, MAX_DISTANCE), dist)
    min_dist = dist.min(2).values
    ranking, picked_scores = _ranking(dist, scores, boxes, params)
    best = dist.argmin(2) if ranking is None else ranking.argmax(2)  # [B, D, J]
    gather_at = best[:, :, None, :, None].expand(batch, dets, 1, num_kp, 2)
    coords = candidates[:, None].expand(batch, dets, max_cand, num_kp, 2).gather(2, gather_at)[:, :, 0]
    cand_scores = scores[:, None].expand(batch, dets, max_cand, num_kp).gather(2, best[:, :, None])[:, :, 0]
    if picked_scores is not None:  # gaussian_weighted: the weighted score is the keypoint's score
        cand_scores = picked_scores
    center = (boxes[..., :2] + boxes[..., 2:]) / 2
    half = (boxes[..., 2:] - boxes[..., :2]) * params.box_scale / 2
    lo, hi = (center - half)[:, :, None], (center + half)[:, :, None]  # [B, D, 1, 2] (y, x)
    radius = (hi - lo).max(-1).values * params.candidate_search_scale  # [B, D, 1]
    unmatched = ((coords < lo) | (coords > hi)).any(-1) | (cand_scores < params.candidate_score_threshold) \
        | (min_dist > radius)
    refined = torch.where(unmatched[..., None], regressed, coords)
    default = torch.full_like(cand_scores, params.unmatched_keypoint_score)
    return refined, torch.where(unmatched, default, cand_scores)


def _ranking(dist: Tensor, scores: Tensor, boxes: Tensor,
             params: KeypointTaskParams) -> tuple[Tensor | None, Tensor | None]:
    """The ranking score of each candidate for each regressed keypoint `[B, D, K, J]` (None: nearest
    wins), and for `gaussian_weighted` the best ranking score, which becomes the keypoint's score."""
    mode = params.candidate_ranking_mode
    if mode == "min_distance":
        return None, None
    if mode == "score_distance_ratio":
        return scores[:, None] / (dist + params.score_distance_offset), None
    size_h, size_w = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
    if mode == "score_scaled_distance_ratio":
        offset = torch.maximum(size_h, size_w) * params.score_distance_multiplier
        return scores[:, None] / (dist + offset[:, :, None, None]), None
    std = torch.as_tensor(params.keypoint_std_dev, device=dist.device) * params.std_dev_multiplier
    sigma = (std[None, None] * gaussian_sigma_from_box(size_h, size_w)[..., None])[:, :, None]  # [B, D, 1, J]
    ranking = scores[:, None] * torch.exp(-dist * dist / (2 * sigma * sigma))
    return ranking, ranking.max(2).values


def rescore(scores: Tensor, classes: Tensor, keypoint_scores: Tensor, class_id: int,
            threshold: float) -> Tensor:
    """The TF OD API's `_rescore_instances` for one task: a detection of the task's class scores
    `score * mean(keypoint scores above threshold)` (the mean over those keypoints, at least 1)."""
    visible = keypoint_scores > threshold
    count = visible.float().sum(-1).clamp(min=1.0)
    new = (scores[..., None] * torch.where(visible, keypoint_scores, 0.0)).sum(-1) / count
    return torch.where(classes == class_id, new, scores)


# ----------------------------------------------------------------------------------------------------
# The task


class CenterNetKeypointTask(CenterNetTask):
    """One `keypoint_estimation_task`: its heads (one set per feature output), loss and post-processing.

    `heatmap_loss(logits, target)` and `localization_loss(pred, target)` are elementwise losses
    (losses/center_net_keypoints.py), as the TF OD API passes `classification_loss` and
    `localization_loss` in its `KeypointEstimationParams`.
    """

    def __init__(self, params: KeypointTaskParams, in_channels: int, num_outputs: int,
                 heatmap_loss: ElementwiseLoss, localization_loss: ElementwiseLoss) -> None:
        super().__init__()
        self.params = params
        self.heatmap_loss = heatmap_loss
        self.localization_loss = localization_loss
        j = params.num_keypoints
        offset_channels = 2 * j if params.per_keypoint_offset else 2
        self.heatmap_heads = self._heads(in_channels, j, params.heatmap_head, num_outputs,
                                         params.heatmap_bias_init)
        self.offset_heads = self._heads(in_channels, offset_channels, params.offset_head, num_outputs)
        self.regression_heads = self._heads(in_channels, 2 * j, params.regression_head, num_outputs)

    def _heads(self, in_channels: int, out_channels: int, shape: HeadShape, num_outputs: int,
               bias_fill: float | None = None) -> nn.ModuleList:
        kernel_sizes, num_filters = shape
        return nn.ModuleList(
            prediction_head(in_channels, out_channels, bias_fill, kernel_sizes, num_filters,
                            use_depthwise=self.params.use_depthwise) for _ in range(num_outputs))

    def key(self, head: str) -> str:
        """The TF OD API's name of a head's predictions and loss: `<task_name>/keypoint/<head>`."""
        return f"{self.params.task_name}/{head}"

    def prediction_heads(self) -> dict[str, nn.ModuleList]:
        """`{prediction name: its heads, one per feature output}`. A TF OD API checkpoint holds head `s`
        of prediction `name` at `model/_prediction_head_dict/<name, "/" written ".S">/<s>/
        layer_with_weights-<i>/{kernel,bias}`, `i` counting the head's convs."""
        return {self.key(HEATMAP): self.heatmap_heads, self.key(OFFSET): self.offset_heads,
                self.key(REGRESSION): self.regression_heads}

    def forward(self, features: list[Tensor]) -> dict[str, list[Tensor]]:
        """`features`: `[B, C, H, W]` per feature output -> heatmap logits `[B, J, H, W]`, offsets
        `[B, 2 or 2J, H, W]` and regressions `[B, 2J, H, W]` per output, under `key(...)`."""
        return {name: [head(f) for head, f in zip(heads, features, strict=True)]
                for name, heads in self.prediction_heads().items()}

    # -- loss --
    def loss(self, predictions: Mapping[str, list[Tensor]], targets: Sequence[Mapping[str, Tensor]],
             stride: int) -> dict[str, Tensor]:
        """The heatmap, offset and regression losses, each times its weight and `task_loss_weight`,
        averaged over the feature outputs and normalised as the TF OD API does (the heatmap by the
        number of used keypoints, the others by the sum of their pixel weights; each at least 1)."""
        p = self.params
        heat_preds = predictions[self.key(HEATMAP)]
        batch, _, height, width = heat_preds[0].shape
        packed = pack_targets(targets, p, stride, heat_preds[0].device)
        heat_loss = self._heatmap_loss(heat_preds, packed, stride)
        b, n, j = torch.nonzero(packed.keypoint_weights > 0, as_tuple=True)
        points, weights = packed.keypoints[b, n, j], packed.keypoint_weights[b, n, j]
        offset_at = pixel_targets(points, points, weights, p.offset_peak_radius, height, width)
        box = packed.boxes[b, n]
        centers = (box[:, :2] + box[:, 2:]) / 2
        regress_at = pixel_targets(centers, points, weights, p.offset_peak_radius, height, width)
        offset_channel = j if p.per_keypoint_offset else torch.zeros_like(j)
        offset_loss = self._pixel_loss(predictions[self.key(OFFSET)], b, offset_channel, offset_at)
        regress_loss = self._pixel_loss(predictions[self.key(REGRESSION)], b, j, regress_at)
        w = p.task_loss_weight
        return {self.key(HEATMAP): w * p.heatmap_loss_weight * heat_loss,
                self.key(OFFSET): w * p.offset_loss_weight * offset_loss,
                self.key(REGRESSION): w * p.regression_loss_weight * regress_loss}

    def _heatmap_loss(self, preds: list[Tensor], packed: PackedTargets, stride: int) -> Tensor:
        batch, _, height, width = preds[0].shape
        target, valid, num_instances = keypoint_heatmap_targets(
            packed, self.params.keypoint_std_dev, height, width)
        weight = valid * pixel_weights(packed.image_sizes, batch, stride, height, width, preds[0].device)
        total = sum((self.heatmap_loss(pred.float(), target) * weight).sum() for pred in preds)
        return total / (len(preds) * num_instances.sum().clamp(min=1.0))  # type: ignore[operator]

    def _pixel_loss(self, preds: list[Tensor], b: Tensor, channel: Tensor,
                    assigned: tuple[Tensor, Tensor, Tensor, Tensor]) -> Tensor:
        """Localization loss at the assigned pixels: `b [P]` image, `channel [P]` keypoint channel pair."""
        y, x, offsets, weights = assigned
        bb, cc = b[:, None].expand_as(y), channel[:, None].expand_as(y)
        total = preds[0].new_zeros(())
        for pred in preds:
            pairs = pred.float().view(pred.shape[0], -1, 2, pred.shape[2], pred.shape[3])
            picked = pairs[bb, cc, :, y, x]  # [P, M, 2] (y, x)
            total = total + (self.localization_loss(picked, offsets).sum(-1) * weights).sum()
        return total / (len(preds) * weights.sum().clamp(min=1.0))

    # -- post-processing --
    def postprocess(self, predictions: Mapping[str, list[Tensor]], detections: Mapping[str, Tensor],
                    stride: int) -> dict[str, Tensor]:
        """Keypoints of the detections: `detection_keypoints [B, D, J, 2]` (x, y input pixels) and
        `detection_keypoint_scores [B, D, J]`, zero for detections of other classes and past
        `num_detections`; with `rescore_instances`, new `detection_scores` as well.

        Reads `detection_boxes [B, D, 4]` (xyxy input pixels; `detection_boxes_strided`, xyxy output
        pixels, instead when given, as the TF OD API snaps within those), `detection_classes [B, D]`
        (0-based), `num_detections [B]`, optional `detection_centers [B, D, 2]` and `image_sizes [B, 2]`.
        The last feature output's predictions are used, as in the TF OD API."""
        p = self.params
        heat = torch.sigmoid(predictions[self.key(HEATMAP)][-1].float())
        offsets = predictions[self.key(OFFSET)][-1].float()
        regression = predictions[self.key(REGRESSION)][-1].float()
        batch, _, height, width = heat.shape
        strided = detections.get("detection_boxes_strided")  # TF's: clipped to the map, not the image
        boxes_xyxy = detections["detection_boxes"].float() / stride if strided is None else strided.float()
        boxes = boxes_xyxy[..., [1, 0, 3, 2]]  # ymin, xmin, ymax, xmax output pixels
        centers = detections.get(CENTER_INDICES)
        if centers is None:
            mid = (boxes[..., :2] + boxes[..., 2:]) / 2
            limit = torch.tensor([height - 1, width - 1], device=mid.device)
            centers = torch.minimum(mid.floor().clamp(min=0).long(), limit)
        regressed = regressed_keypoints(regression, centers.long())
        cands, scores, counts = keypoint_candidates(
            heat, offsets, p.candidate_score_threshold, p.peak_max_pool_kernel_size,
            p.num_candidates_per_keypoint)
        refined, kp_scores = refine_keypoints(regressed, cands, scores, counts, boxes, p)
        xy = refined.flip(-1) * stride
        if p.clip_out_of_frame_keypoints:
            xy, kp_scores = self._clip(xy, kp_scores, detections.get("image_sizes"), height * stride,
                                       width * stride)
        classes = detections["detection_classes"].long()
        dets = torch.arange(classes.shape[1], device=classes.device)[None]
        keep = (classes == p.class_id) & (dets < detections["num_detections"].long()[:, None])
        xy = torch.where(keep[..., None, None], xy, 0.0)
        kp_scores = torch.where(keep[..., None], kp_scores, 0.0)
        out = {"detection_keypoints": self._place(xy), "detection_keypoint_scores": self._place(kp_scores)}
        if p.rescore_instances:
            out["detection_scores"] = rescore(detections["detection_scores"], classes, kp_scores, p.class_id,
                                              p.rescoring_threshold)
        return out

    def _place(self, values: Tensor) -> Tensor:
        """The task's keypoints at their columns of the `output_keypoints` wide output (zeros elsewhere)."""
        shape = (*values.shape[:2], self.params.output_keypoints, *values.shape[3:])
        out = values.new_zeros(shape)
        out[:, :, list(self.params.keypoint_indices)] = values
        return out

    @staticmethod
    def _clip(xy: Tensor, scores: Tensor, image_sizes: Tensor | None, height: int,
              width: int) -> tuple[Tensor, Tensor]:
        """`clip_out_of_frame_keypoints`: keypoints outside the true image clipped to it, score 0."""
        if image_sizes is None:
            limit = xy.new_tensor([width, height]).expand(xy.shape[0], 2)
        else:
            limit = image_sizes.to(xy.device, torch.float32).flip(-1)
        limit = limit[:, None, None]  # [B, 1, 1, 2] (w, h)
        inside = ((xy >= 0) & (xy <= limit)).all(-1)
        return torch.minimum(xy.clamp(min=0), limit), torch.where(inside, scores, 0.0)


def std_devs_for(labels: Sequence[str], label_to_std: Mapping[str, float],
                 default: float = 1.0) -> tuple[float, ...]:
    """Each keypoint's Gaussian std dev: `keypoint_label_to_std[label]`, else the TF OD API's default 1.0."""
    return tuple(float(label_to_std.get(label, default)) for label in labels)
