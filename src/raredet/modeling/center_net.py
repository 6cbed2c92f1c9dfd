"""CenterNet ("Objects as Points", Zhou et al. 2019), the TF OD API's ``center_net`` meta-architecture.

The model takes built parts; ``builders.build_center_net`` builds them from ``model.center_net``::

    CenterNet(num_classes: int,
              feature_extractor: nn.Module,   # forward(x) -> [B, C, H/4, W/4] per feature output;
                                              # .out_channels, .num_outputs
              object_detection: ObjectDetectionTask,  # center heatmap, box scale and offset heads
              score_converter: ScoreConverter,        # SIGMOID + calibration_config (+ operating points)
              tasks: Sequence[CenterNetTask] = (),    # further tasks (keypoints, DeepMAC masks)
              channel_means=(0, 0, 0), channel_stds=(1, 1, 1), bgr_ordering=False,
              max_box_predictions=100, peak_max_pool_kernel_size=3,
              non_max_suppression: BatchNonMaxSuppression | None = None)

``forward(images)`` takes ``[B, 3, H, W]`` uint8 or float in 0..255, normalises it as the TF OD API's
CenterNet feature extractor does (``(image - channel_means) / channel_stds``, channels reversed first
with ``bgr_ordering``) and returns every task's predictions, one map per feature output stacked on a
first axis: ``{"object_center" [S, B, K, h, w], "box/scale" [S, B, 2, h, w], "box/offset" [S, B, 2,
h, w], ...}`` (S feature outputs, h = H / 4), in every mode. ``unstack`` turns them back into the
``{name: [map per output]}`` the tasks take.

``postprocess(outputs, image_sizes)`` is the TF OD API's CenterNet post-processing on the last feature
output: the sigmoid of the center heatmap; peaks, the pixels equal to the maximum of their
``peak_max_pool_kernel_size`` neighbourhood in their own class channel (a max-pool, no NMS); the
``max_box_predictions`` best (pixel, class) peaks over all classes; a box from the scale (height,
width) and offset (y, x) predicted at each, in feature-map units, times the stride. raredet extends it
with the shared score machinery: the peaks' scores go through ``score_converter`` (the config's
``calibration_config``, and per-class operating points from ``set_operating_points``), so a calibration
reorders classes before the top-k; the peaks themselves are found on the uncalibrated heatmap, as the
TF OD API finds them. Detections scoring at most ``score_threshold`` are dropped (0 unless operating
points are set: the TF OD API's ``num_detections``, the count of positive scores). With
``post_processing.batch_non_max_suppression`` the kept peaks then go through NMS, as in the TF OD API.
Each further task adds its ``detection_*`` entries for the kept boxes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from raredet.modeling.calibration import Calibration
from raredet.modeling.postprocess import BatchNonMaxSuppression, ScoreConverter, nms_mask, rank_within_group
from raredet.modeling.tf_compat import switching_to_tf

STRIDE = 4  # every CenterNet feature extractor's output stride
OBJECT_CENTER, BOX_SCALE, BOX_OFFSET = "object_center", "box/scale", "box/offset"
PEAK_EPSILON = 1e-6  # the TF OD API's: a pixel within this of its neighbourhood's maximum is a peak


def prediction_head(in_channels: int, out_channels: int, bias_fill: float | None = None,
                    kernel_sizes: Sequence[int] = (3,), num_filters: Sequence[int] = (256,),
                    use_depthwise: bool = False) -> nn.Sequential:
    """A CenterNet prediction head as the TF OD API builds it (``make_prediction_net``): for each
    (kernel size, filters) a 'same'-padded conv (separable: depthwise then pointwise, with
    ``use_depthwise``) and a ReLU, then a 1x1 conv to ``out_channels`` whose bias is ``bias_fill``
    (zero if None). Kernels start as Keras' (Glorot uniform), biases at zero."""
    if len(kernel_sizes) != len(num_filters):
        raise ValueError(f"kernel_sizes {list(kernel_sizes)} and num_filters {list(num_filters)} differ "
                         "in length")
    layers: list[nn.Module] = []
    channels = in_channels
    for kernel, filters in zip(kernel_sizes, num_filters, strict=True):
        if kernel % 2 == 0:
            raise ValueError(f"kernel_sizes: {kernel} is even; 'same' padding needs an odd kernel")
        if use_depthwise:
            layers += [nn.Conv2d(channels, channels, kernel, padding=kernel // 2, groups=channels,
                                 bias=False), nn.Conv2d(channels, filters, 1)]
        else:
            layers.append(nn.Conv2d(channels, filters, kernel, padding=kernel // 2))
        layers.append(nn.ReLU(inplace=True))
        channels = filters
    layers.append(nn.Conv2d(channels, out_channels, 1))
    head = nn.Sequential(*layers)
    for module in head.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    last = head[-1]
    assert isinstance(last, nn.Conv2d) and last.bias is not None
    if bias_fill is not None:
        nn.init.constant_(last.bias, bias_fill)
    return head


class CenterNetTask(nn.Module):
    """One CenterNet task: its heads, loss and post-processing. Subclasses define

    ``forward(features)``: ``features`` (``[B, C, h, w]`` per feature output) -> ``{name: [prediction
    per feature output]}``; names unique across the model's tasks.
    ``loss(predictions, targets, stride)``: ``targets`` one dict per image (``boxes [N, 4]`` xyxy pixels
    of the padded batch image, ``labels [N]``, ``weights [N]``, ``image_size [2]`` (h, w) of the image
    inside the padding, and ``masks`` / ``keypoints`` where the data gives them) -> named scalar
    losses, each already multiplied by the task's ``task_loss_weight`` and averaged over the feature
    outputs as the TF OD API does.
    ``postprocess(predictions, detections, stride)``: ``detections`` holds the kept boxes
    (``detection_boxes [B, D, 4]`` xyxy pixels, ``detection_classes``, ``detection_scores``,
    ``num_detections``, ``detection_centers [B, D, 2]`` int64 (y, x) on the feature map, and
    ``detection_boxes_strided [B, D, 4]`` xyxy feature-map cells clipped to the map only, TF's
    ``boxes_strided``) -> the extra ``detection_*`` entries of this task.
    """

    def loss(self, predictions: dict[str, list[Tensor]], targets: Sequence[dict[str, Tensor]], stride: int
             ) -> dict[str, Tensor]:
        raise NotImplementedError(f"{type(self).__name__} has no loss")

    def postprocess(self, predictions: dict[str, list[Tensor]], detections: dict[str, Tensor], stride: int
                    ) -> dict[str, Tensor]:
        return {}


class ObjectDetectionTask(CenterNetTask):
    """The object center heatmap (one channel per class, bias ``heatmap_bias_init``) and the box
    scale and offset heads, one of each per feature output. Its loss is
    ``losses.center_net.ObjectDetectionLoss`` (the class-weight table lives there)."""

    def __init__(self, in_channels: int, num_classes: int, num_feature_outputs: int = 1,
                 heatmap_bias_init: float = -2.19,
                 center_head: tuple[Sequence[int], Sequence[int]] = ((3,), (256,)),
                 scale_head: tuple[Sequence[int], Sequence[int]] = ((3,), (256,)),
                 offset_head: tuple[Sequence[int], Sequence[int]] = ((3,), (256,)),
                 use_depthwise: bool = False) -> None:
        """``*_head``: (kernel_sizes, num_filters) of that head's convs before its 1x1 output."""
        super().__init__()

        def heads(out: int, spec: tuple[Sequence[int], Sequence[int]], bias: float | None) -> nn.ModuleList:
            return nn.ModuleList(prediction_head(in_channels, out, bias, *spec, use_depthwise=use_depthwise)
                                 for _ in range(num_feature_outputs))

        self.num_classes = num_classes
        self.center = heads(num_classes, center_head, heatmap_bias_init)
        self.scale = heads(2, scale_head, None)
        self.offset = heads(2, offset_head, None)

    def forward(self, features: list[Tensor]) -> dict[str, list[Tensor]]:
        return {
            OBJECT_CENTER: [h(f) for h, f in zip(self.center, features, strict=True)],
            BOX_SCALE: [h(f) for h, f in zip(self.scale, features, strict=True)],
            BOX_OFFSET: [h(f) for h, f in zip(self.offset, features, strict=True)],
        }


def unstack(outputs: Mapping[str, Tensor]) -> dict[str, list[Tensor]]:
    """``CenterNet.forward``'s ``{name: [S, ...]}`` -> ``{name: [map per feature output]}``."""
    return {name: list(value.unbind(0)) for name, value in outputs.items()}


def peak_mask(probs: Tensor, kernel_size: int, epsilon: float = PEAK_EPSILON) -> Tensor:
    """``probs [B, K, h, w]`` -> bool, True where a pixel is within ``epsilon`` of the maximum of its
    ``kernel_size`` neighbourhood in its own channel (TF: a 'SAME' max-pool, stride 1)."""
    if kernel_size <= 1:
        return torch.ones_like(probs, dtype=torch.bool)
    pooled = F.max_pool2d(probs, kernel_size, stride=1, padding=kernel_size // 2)
    return (probs - pooled).abs() < epsilon


def top_k_peaks(scores: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The ``k`` best entries of ``scores [B, K, h, w]`` over all classes and pixels, in the TF OD API's
    flattening order ((y, x, class), so ties go to the lower pixel, then the lower class) ->
    (scores, y, x, class), each ``[B, k]`` (fewer when the map has fewer entries)."""
    b, num_classes, _, w = scores.shape
    flat = scores.permute(0, 2, 3, 1).reshape(b, -1)  # [B, h * w * K], (y, x, class) order
    top, index = flat.topk(min(k, flat.shape[1]), dim=1)
    classes = index % num_classes
    pixel = index // num_classes
    return top, pixel // w, pixel % w, classes


def boxes_from_peaks(y: Tensor, x: Tensor, scale: Tensor, offset: Tensor) -> Tensor:
    """Peaks ``y, x [B, D]`` (int) and the scale ``[B, 2, h, w]`` (height, width) and offset (dy, dx)
    maps -> boxes ``[B, D, 4]`` xyxy in feature-map units, the size clamped at 0 and the corners
    clipped to the map (TF's ``prediction_tensors_to_boxes``)."""
    h, w = scale.shape[-2:]
    flat = (y * w + x)[:, None, :]  # [B, 1, D]
    size = scale.flatten(2).gather(2, flat.expand(-1, 2, -1)).clamp(min=0)  # [B, 2, D]
    shift = offset.flatten(2).gather(2, flat.expand(-1, 2, -1))
    cy, cx = y.to(shift.dtype) + shift[:, 0], x.to(shift.dtype) + shift[:, 1]
    half_h, half_w = size[:, 0] / 2, size[:, 1] / 2
    boxes = torch.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], dim=-1)
    limits = torch.tensor([w, h, w, h], dtype=boxes.dtype, device=boxes.device)
    return torch.minimum(boxes.clamp(min=0), limits)


class CenterNet(nn.Module):
    """CenterNet; see the module docstring for the constructor's arguments and outputs."""

    pixel_mean: Tensor
    pixel_std: Tensor

    def __init__(
        self,
        num_classes: int,
        feature_extractor: nn.Module,
        object_detection: ObjectDetectionTask,
        score_converter: ScoreConverter,
        tasks: Sequence[CenterNetTask] = (),
        channel_means: Sequence[float] = (0.0, 0.0, 0.0),
        channel_stds: Sequence[float] = (1.0, 1.0, 1.0),
        bgr_ordering: bool = False,
        max_box_predictions: int = 100,
        peak_max_pool_kernel_size: int = 3,
        non_max_suppression: BatchNonMaxSuppression | None = None,
        feature_extractor_type: str = "",
    ) -> None:
        super().__init__()
        if max_box_predictions < 1:
            raise ValueError(f"max_box_predictions must be at least 1, got {max_box_predictions}")
        self.num_classes = num_classes
        self.feature_extractor = feature_extractor
        self.object_detection = object_detection
        self.tasks = nn.ModuleList(tasks)
        self.score_converter = score_converter
        self.bgr_ordering = bgr_ordering
        self.max_box_predictions = max_box_predictions
        self.peak_max_pool_kernel_size = peak_max_pool_kernel_size
        self.non_max_suppression = non_max_suppression
        self.score_threshold = 0.0
        self.stride = STRIDE
        self.feature_extractor_type = feature_extractor_type
        self.weights_convention = "torchvision"
        mean, std = torch.tensor(list(channel_means)), torch.tensor(list(channel_stds))
        self.register_buffer("pixel_mean", mean.float().view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", std.float().view(1, 3, 1, 1), persistent=False)

    @property
    def all_tasks(self) -> list[CenterNetTask]:
        """The object-detection task first, then the others in config order."""
        return [self.object_detection, *self.tasks]  # type: ignore[list-item]

    @property
    def backbone(self) -> nn.Module:
        """Where a classification checkpoint loads (the extractor's torchvision-named backbone)."""
        return getattr(self.feature_extractor, "backbone", self.feature_extractor)

    def use_weights_convention(self, convention: str) -> None:
        """``"tf"``: the feature extractor computes as the TF OD API's does (its ``use_tf_conventions``,
        if any). A model switched to "tf" stays so."""
        if not switching_to_tf(self.weights_convention, convention):
            return
        hook = getattr(self.feature_extractor, "use_tf_conventions", None)
        if hook is not None:
            hook()
        self.weights_convention = convention

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """``images [B, 3, H, W]`` in 0..255 -> every task's predictions (module docstring)."""
        x = images.float()
        if self.bgr_ordering:
            x = x.flip(1)
        x = (x - self.pixel_mean) / self.pixel_std
        features = self.feature_extractor(x)
        outputs: dict[str, Tensor] = {}
        for task in self.all_tasks:
            for name, maps in task(features).items():
                outputs[name] = torch.stack(maps)
        return outputs

    def set_operating_points(self, thresholds: Calibration, score_threshold: float) -> None:
        """Per-class operating points: ``thresholds`` maps the calibrated scores so that each class's
        threshold lands on ``score_threshold``; detections at or below it are dropped."""
        if thresholds.num_classes != self.num_classes:
            raise ValueError(f"operating points for {thresholds.num_classes} classes, the model has "
                             f"{self.num_classes}")
        self.score_converter.thresholds = thresholds.to(self.pixel_mean.device)
        self.score_threshold = score_threshold
        if self.non_max_suppression is not None:
            self.non_max_suppression.score_threshold = score_threshold

    @torch.no_grad()
    def postprocess(self, outputs: Mapping[str, Tensor], image_sizes: Tensor) -> dict[str, Tensor]:
        """Peaks -> ``max_box_predictions`` detections (module docstring): boxes ``[B, D, 4]`` xyxy pixels
        clipped to ``image_sizes [B, 2]`` (h, w), scores ``[B, D]``, classes ``[B, D]`` int64, and
        ``num_detections [B]``; kept detections first, the rest zero; plus each task's entries."""
        predictions = {name: [value[-1]] for name, value in outputs.items()}
        top, y, x, classes = top_k_peaks(self.peak_scores(outputs), self.max_box_predictions)
        strided = boxes_from_peaks(y, x, predictions[BOX_SCALE][-1], predictions[BOX_OFFSET][-1])
        boxes = self._clipped(strided * self.stride, image_sizes)
        keep = top > self.score_threshold
        if self.non_max_suppression is not None:
            nms = self.non_max_suppression
            groups = torch.zeros_like(classes) if nms.use_class_agnostic_nms else classes
            keep = nms_mask(boxes, groups, keep, nms.iou_threshold)
            keep &= rank_within_group(keep, groups) < nms.max_detections_per_class
        detections = _kept_first(keep, boxes, top, classes, torch.stack([y, x], dim=-1), strided)
        for task in self.tasks:
            detections.update(task.postprocess(predictions, detections, self.stride))  # type: ignore[operator]
        # for the tasks only, as TF's keypoints and DeepMAC masks read its boxes_strided (clipped to the map,
        # not to the image inside the padding); not detection fields raredet returns
        del detections["detection_centers"], detections["detection_boxes_strided"]
        return detections

    def peak_scores(self, outputs: Mapping[str, Tensor], epsilon: float = PEAK_EPSILON) -> Tensor:
        """The last feature output's calibrated scores at its peaks (``peak_mask`` with ``epsilon``), 0
        elsewhere: ``[B, K, h, w]``."""
        logits = outputs[OBJECT_CENTER][-1]
        peaks = peak_mask(torch.sigmoid(logits), self.peak_max_pool_kernel_size, epsilon)
        return self.score_converter(logits.permute(0, 2, 3, 1)).permute(0, 3, 1, 2) * peaks

    def _boxes(self, predictions: Mapping[str, list[Tensor]], y: Tensor, x: Tensor, image_sizes: Tensor
               ) -> Tensor:
        """Boxes ``[B, D, 4]`` xyxy pixels at the peaks ``y, x [B, D]``, clipped to ``image_sizes``."""
        boxes = boxes_from_peaks(y, x, predictions[BOX_SCALE][-1], predictions[BOX_OFFSET][-1]) * self.stride
        return self._clipped(boxes, image_sizes)

    @staticmethod
    def _clipped(boxes: Tensor, image_sizes: Tensor) -> Tensor:
        """Boxes ``[B, D, 4]`` xyxy pixels clipped to ``image_sizes [B, 2]`` (h, w)."""
        limits = image_sizes.to(boxes).flip(-1).repeat(1, 2)[:, None, :]  # [B, 1, (w, h, w, h)]
        return torch.minimum(boxes, limits)

    def scored_boxes(self, outputs: Mapping[str, Tensor], image_sizes: Tensor,
                     peak_epsilon: float = PEAK_EPSILON) -> tuple[Tensor, Tensor]:
        """What the top-k chooses from, as SSD's ``scored_boxes``: a box per pixel ``[B, h * w, 4]`` and
        its peak scores ``[B, h * w, K]`` (peaks within ``peak_epsilon``: export's check widens it, since
        whether a pixel a hair below its neighbour is a peak is down to float rounding)."""
        scores = self.peak_scores(outputs, peak_epsilon)
        b, k, h, w = scores.shape
        pixel = torch.arange(h * w, device=scores.device).expand(b, -1)
        predictions = {name: [value[-1]] for name, value in outputs.items()}
        boxes = self._boxes(predictions, pixel // w, pixel % w, image_sizes)
        return boxes, scores.permute(0, 2, 3, 1).reshape(b, h * w, k)

    def l2_weights(self) -> dict[str, float]:
        """None: the TF OD API's CenterNet regularises no weight."""
        return {}


def _kept_first(keep: Tensor, boxes: Tensor, scores: Tensor, classes: Tensor, centers: Tensor,
                strided: Tensor) -> dict[str, Tensor]:
    """The kept entries first in their (score) order, the others zeroed; ``keep [B, D]`` bool."""
    order = (~keep).to(torch.uint8).argsort(dim=1, stable=True)
    kept = keep.gather(1, order)

    def take(t: Tensor) -> Tensor:
        index = order.view(*order.shape, *([1] * (t.dim() - 2))).expand(-1, -1, *t.shape[2:])
        gathered = t.gather(1, index)
        mask = kept.view(*kept.shape, *([1] * (t.dim() - 2)))
        return torch.where(mask, gathered, torch.zeros_like(gathered))

    return {"detection_boxes": take(boxes), "detection_scores": take(scores),
            "detection_classes": take(classes), "num_detections": kept.sum(dim=1),
            "detection_centers": take(centers), "detection_boxes_strided": take(strided)}
