"""The Faster R-CNN meta-architecture (Ren et al. 2015) as the TF OD API's ``faster_rcnn`` builds it.

One constructor, which builders call with the fields of the ``faster_rcnn`` message as plain dicts
(``builders.message_kwargs``; absent keys take the TF OD API's defaults). What it computes:

* **First stage.** A torchvision-named ResNet v1 (``backbone.conv1`` .. ``backbone.layer4``) up to
  ``layer3`` (conv4, output stride 16: the TF OD API's Keras ResNet Faster R-CNN), a ``k x k`` conv
  of ``first_stage_box_predictor_depth`` channels, then 1x1 convs for 2 objectness logits
  (background, object) and 4 box codes per grid anchor. Anchors are clipped to the (padded) input
  when ``clip_anchors_to_image``; otherwise anchors not inside it are invalid (never proposals, no
  loss), as the TF OD API removes them.
* **Proposals** (no gradient): decode, clip to the input, objectness probability, NMS at
  ``first_stage_nms_iou_threshold`` over the ``RPN_PRE_NMS_TOP_K`` best anchors, keep
  ``first_stage_max_proposals`` (padded; ``proposal_valid`` marks the real ones).
* **Crops.** ``crop_and_resize`` (TF semantics, ``modeling.roi_ops``) of the conv4 map at every
  proposal to ``initial_crop_size``, then max pooling ``maxpool_kernel_size`` / ``maxpool_stride``.
* **Second stage.** ``backbone.layer4`` (conv5, stride 2) on the crops, spatial mean, then the
  ``mask_rcnn_box_predictor`` fc layers: ``K + 1`` class logits (background first) and 4 box codes,
  shared by all classes (``share_box_across_classes``) or one set per class.

``forward(images)`` takes ``[B, 3, H, W]`` in 0..255, normalises with the ImageNet mean/std and
returns, in every mode, ``rpn_objectness [B, A, 2]``, ``rpn_box_deltas [B, A, 4]``, ``anchors
[A, 4]``, ``anchor_valid [A]``, ``proposals [B, P, 4]`` (xyxy pixels), ``proposal_valid [B, P]``,
``cls_logits [B, P, K + 1]``, ``box_deltas [B, P, 1 or K, 4]``. The second stage runs on all ``P``
proposals; in training the loss samples ``second_stage_batch_size`` of them (``losses.faster_rcnn``)
— the TF OD API crops only the sampled ones. The gradients are the same (unsampled proposals carry
no loss) but training computes more, and batch norm in conv5 (``batch_norm_trainable``) sees all
proposals' statistics. ``postprocess(outputs, image_sizes)`` decodes per proposal, clips, converts
scores (softmax over the K + 1 logits, background dropped) and runs the batched NMS.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from raredet.errors import ConfigError
from raredet.modeling.backbones import ResNet
from raredet.modeling.box_coder import FasterRcnnBoxCoder
from raredet.modeling.grid_anchors import GridAnchorGenerator
from raredet.modeling.layers import ConvHyperparams
from raredet.modeling.postprocess import BatchNonMaxSuppression, clip_boxes
from raredet.modeling.roi_ops import crop_and_resize

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Anchors entering the proposal NMS per image. The TF OD API runs NMS over every anchor; raredet's
# exact batched NMS is quadratic in its candidates, so it takes the best-scoring anchors first (as
# torchvision's RPN does, 2000 in training).
RPN_PRE_NMS_TOP_K = 2000
WHERE = "model.faster_rcnn"

Config = Mapping[str, Any]

FEATURE_EXTRACTORS: dict[str, int] = {
    "faster_rcnn_resnet50": 50,
    "faster_rcnn_resnet101": 101,
    "faster_rcnn_resnet152": 152,
}


def _feature_extractor_depth(cfg: Config) -> int:
    name = str(cfg.get("type", ""))
    key = name.removesuffix("_keras")
    if key not in FEATURE_EXTRACTORS:
        valid = ", ".join(f"{k}_keras" for k in FEATURE_EXTRACTORS)
        extra = (" (the FPN variant is not built by raredet yet)" if key.endswith("_fpn") else "")
        raise ConfigError(f"{WHERE}.feature_extractor.type: {name!r} is not supported{extra}; "
                          f"valid: {valid} (_keras suffix optional)")
    stride = int(cfg.get("first_stage_features_stride", 16))
    if stride != 16:
        raise ConfigError(f"{WHERE}.feature_extractor.first_stage_features_stride is {stride}; the ResNet "
                          "feature extractors have stride 16 (conv4), as in the TF OD API's Keras models")
    return FEATURE_EXTRACTORS[key]


def _grid_anchor_generator(cfg: Config | None) -> GridAnchorGenerator:
    keys = list(cfg or {})
    if keys != ["grid_anchor_generator"]:
        raise ConfigError(f"{WHERE}.first_stage_anchor_generator: set grid_anchor_generator (got {keys or 'none'}); "
                          "multiscale anchors belong to the FPN variant, which raredet does not build yet")
    return GridAnchorGenerator(**dict((cfg or {})["grid_anchor_generator"] or {}))


class RpnHead(nn.Module):
    """conv ``kernel x kernel`` (dilated by ``atrous_rate``) + activation, then 1x1 convs for
    ``2 n`` objectness logits and ``4 n`` box codes; outputs ``[B, H*W*n, 2]`` and ``[B, H*W*n, 4]``."""

    def __init__(self, in_channels: int, num_anchors: int, hp: ConvHyperparams, kernel_size: int = 3,
                 depth: int = 512, atrous_rate: int = 1) -> None:
        super().__init__()
        pad = atrous_rate * (kernel_size // 2)
        self.conv = nn.Conv2d(in_channels, depth, kernel_size, padding=pad, dilation=atrous_rate)
        self.act = hp.act()
        self.objectness = nn.Conv2d(depth, 2 * num_anchors, 1)
        self.box = nn.Conv2d(depth, 4 * num_anchors, 1)
        for conv in (self.conv, self.objectness, self.box):
            hp.initialize(conv)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.act(self.conv(x))
        b = x.shape[0]
        # [B, n*c, H, W] -> [B, H, W, n*c] -> [B, H*W*n, c]: cell-major, anchor-minor like the anchors
        objectness = self.objectness(h).permute(0, 2, 3, 1).reshape(b, -1, 2)
        boxes = self.box(h).permute(0, 2, 3, 1).reshape(b, -1, 4)
        return objectness, boxes


def _fc_init(layer: nn.Linear, hp: ConvHyperparams) -> nn.Linear:
    hp.initialize(layer)  # type: ignore[arg-type]  # uses .weight and .bias only
    return layer


class MaskRcnnBoxHead(nn.Module):
    """The ``mask_rcnn_box_predictor`` box/class head on pooled features ``[N, C]`` -> class logits
    ``[N, K + 1]`` and box codes ``[N, 1 or K, 4]``."""

    def __init__(self, in_features: int, num_classes: int, cfg: Config) -> None:
        super().__init__()
        for field in ("predict_instance_masks", "predict_keypoints"):
            if cfg.get(field):
                raise ConfigError(f"{WHERE}.second_stage_box_predictor.mask_rcnn_box_predictor.{field}: "
                                  "Mask R-CNN (masks, keypoints) is not supported; raredet builds Faster R-CNN")
        code = int(cfg.get("box_code_size", 4))
        if code != 4:
            raise ConfigError(f"{WHERE}.second_stage_box_predictor.mask_rcnn_box_predictor.box_code_size "
                              f"is {code}; the faster_rcnn_box_coder has 4")
        self.hp = ConvHyperparams.from_dict(cfg.get("fc_hyperparams"), f"{WHERE}.second_stage_box_predictor."
                                            "mask_rcnn_box_predictor.fc_hyperparams")
        self.share_box = bool(cfg.get("share_box_across_classes", False))
        keep = float(cfg.get("dropout_keep_probability", 0.5))
        self.dropout = nn.Dropout(1.0 - keep) if cfg.get("use_dropout", False) else nn.Identity()
        self.num_boxes = 1 if self.share_box else num_classes
        self.cls = _fc_init(nn.Linear(in_features, num_classes + 1), self.hp)
        self.box = _fc_init(nn.Linear(in_features, 4 * self.num_boxes), self.hp)

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        x = self.dropout(features)
        return self.cls(x), self.box(x).reshape(x.shape[0], self.num_boxes, 4)


class FasterRCNN(nn.Module):
    """Two-stage detector; see the module docstring."""

    pixel_mean: Tensor
    pixel_std: Tensor

    def __init__(
        self,
        num_classes: int,
        feature_extractor: Config,
        first_stage_anchor_generator: Config | None = None,
        first_stage_box_predictor_conv_hyperparams: Config | None = None,
        first_stage_atrous_rate: int = 1,
        first_stage_box_predictor_kernel_size: int = 3,
        first_stage_box_predictor_depth: int = 512,
        first_stage_nms_score_threshold: float = 0.0,
        first_stage_nms_iou_threshold: float = 0.7,
        first_stage_max_proposals: int = 300,
        initial_crop_size: int = 0,
        maxpool_kernel_size: int = 0,
        maxpool_stride: int = 0,
        second_stage_box_predictor: Config | None = None,
        second_stage_post_processing: Config | None = None,
        clip_anchors_to_image: bool = False,
        number_of_stages: int = 2,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ConfigError(f"{WHERE}.num_classes must be at least 1, got {num_classes}")
        if number_of_stages != 2:
            raise ConfigError(f"{WHERE}.number_of_stages is {number_of_stages}; raredet builds 2 stages only")
        for name, value in (("initial_crop_size", initial_crop_size), ("maxpool_kernel_size", maxpool_kernel_size),
                            ("maxpool_stride", maxpool_stride), ("first_stage_max_proposals",
                                                                 first_stage_max_proposals)):
            if value < 1:
                raise ConfigError(f"{WHERE}.{name} is {value}; set it to a positive value (the zoo uses "
                                  "initial_crop_size 14, maxpool_kernel_size 2, maxpool_stride 2)")
        self.num_classes = num_classes
        depth = _feature_extractor_depth(feature_extractor)
        frozen = not bool(feature_extractor.get("batch_norm_trainable", False))
        self.backbone = ResNet(depth, freeze_batchnorm=frozen)
        self.anchor_generator = _grid_anchor_generator(first_stage_anchor_generator)
        rpn_hp = ConvHyperparams.from_dict(first_stage_box_predictor_conv_hyperparams,
                                           f"{WHERE}.first_stage_box_predictor_conv_hyperparams")
        self.rpn = RpnHead(self.backbone.out_channels[4], self.anchor_generator.num_anchors_per_location,
                           rpn_hp, first_stage_box_predictor_kernel_size, first_stage_box_predictor_depth,
                           first_stage_atrous_rate)
        self.rpn_hp = rpn_hp
        self.clip_anchors_to_image = clip_anchors_to_image
        self.max_proposals = int(first_stage_max_proposals)
        self.proposal_nms = BatchNonMaxSuppression(
            score_threshold=first_stage_nms_score_threshold, iou_threshold=first_stage_nms_iou_threshold,
            max_detections_per_class=self.max_proposals, max_total_detections=self.max_proposals,
            pre_nms_top_k=RPN_PRE_NMS_TOP_K)
        self.crop_size, self.pool_kernel, self.pool_stride = initial_crop_size, maxpool_kernel_size, maxpool_stride
        predictor = dict(second_stage_box_predictor or {})
        if list(predictor) != ["mask_rcnn_box_predictor"]:
            raise ConfigError(f"{WHERE}.second_stage_box_predictor: set mask_rcnn_box_predictor (got "
                              f"{list(predictor) or 'none'}); rfcn_box_predictor is not supported")
        self.box_head = MaskRcnnBoxHead(self.backbone.out_channels[5], num_classes,
                                        dict(predictor["mask_rcnn_box_predictor"] or {}))
        self.box_coder = FasterRcnnBoxCoder()  # the TF OD API's Faster R-CNN coder: scales 10, 10, 5, 5
        post = dict(second_stage_post_processing or {})
        self.score_converter = str(post.get("score_converter", "IDENTITY"))
        if self.score_converter not in ("SOFTMAX", "SIGMOID", "IDENTITY"):
            raise ConfigError(f"{WHERE}.second_stage_post_processing.score_converter: unknown "
                              f"{self.score_converter!r}; valid: SOFTMAX, SIGMOID, IDENTITY")
        self.logit_scale = float(post.get("logit_scale", 1.0))
        self.non_max_suppression = BatchNonMaxSuppression(**dict(post.get("batch_non_max_suppression") or {}))
        mean, std = torch.tensor(IMAGENET_MEAN) * 255, torch.tensor(IMAGENET_STD) * 255
        self.register_buffer("pixel_mean", mean.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", std.view(1, 3, 1, 1), persistent=False)

    def l2_weights(self) -> dict[str, float]:
        """``{parameter name: l2 weight}``: the RPN convs' and the fc layers' regularizers (the
        backbone carries none, as the TF OD API's Keras ResNet feature extractor)."""
        out: dict[str, float] = {}
        if self.rpn_hp.l2_weight:
            out.update({f"rpn.{n}.weight": self.rpn_hp.l2_weight for n in ("conv", "objectness", "box")})
        if self.box_head.hp.l2_weight:
            out.update({f"box_head.{n}.weight": self.box_head.hp.l2_weight for n in ("cls", "box")})
        return out

    def _conv4(self, x: Tensor) -> Tensor:
        b = self.backbone
        x = b.maxpool(b.relu(b.bn1(b.conv1(x))))
        return b.layer3(b.layer2(b.layer1(x)))

    def _anchors(self, feature_size: tuple[int, int], image_hw: tuple[int, int], device: torch.device
                 ) -> tuple[Tensor, Tensor]:
        anchors = self.anchor_generator(feature_size, device)
        h, w = image_hw
        if self.clip_anchors_to_image:
            limits = anchors.new_tensor([w, h, w, h])
            anchors = torch.minimum(anchors.clamp(min=0), limits)
            valid = (anchors[:, 2] > anchors[:, 0]) & (anchors[:, 3] > anchors[:, 1])
        else:
            valid = (anchors[:, 0] >= 0) & (anchors[:, 1] >= 0) & (anchors[:, 2] <= w) & (anchors[:, 3] <= h)
        return anchors, valid

    @torch.no_grad()
    def _proposals(self, objectness: Tensor, deltas: Tensor, anchors: Tensor, anchor_valid: Tensor,
                   image_hw: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """-> proposals ``[B, P, 4]`` xyxy and ``proposal_valid [B, P]``."""
        b = objectness.shape[0]
        scores = torch.softmax(objectness.float(), dim=-1)[..., 1] * anchor_valid  # invalid: 0, never kept
        boxes = self.box_coder.decode(deltas.float(), anchors[None])
        sizes = torch.tensor([image_hw], device=boxes.device).expand(b, 2)
        det = self.proposal_nms(clip_boxes(boxes, sizes), scores[..., None])
        rows = torch.arange(self.max_proposals, device=boxes.device)[None]
        return det["detection_boxes"], rows < det["num_detections"][:, None]

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """``images [B, 3, H, W]`` in 0..255 -> the dict of the module docstring."""
        x = (images.float() - self.pixel_mean) / self.pixel_std
        image_hw = (int(x.shape[-2]), int(x.shape[-1]))
        features = self._conv4(x)
        objectness, rpn_deltas = self.rpn(features)
        anchors, anchor_valid = self._anchors((int(features.shape[-2]), int(features.shape[-1])), image_hw,
                                              x.device)
        proposals, proposal_valid = self._proposals(objectness.detach(), rpn_deltas.detach(), anchors,
                                                    anchor_valid, image_hw)
        h, w = image_hw
        normalised = proposals[..., [1, 0, 3, 2]] / proposals.new_tensor([h, w, h, w])
        crops = crop_and_resize(features, normalised, self.crop_size)
        crops = F.max_pool2d(crops, self.pool_kernel, self.pool_stride)
        pooled = self.backbone.layer4(crops).mean(dim=(2, 3))  # [B * P, C5]
        cls_logits, box_deltas = self.box_head(pooled)
        b, p = proposals.shape[:2]
        return {
            "rpn_objectness": objectness, "rpn_box_deltas": rpn_deltas, "anchors": anchors,
            "anchor_valid": anchor_valid, "proposals": proposals, "proposal_valid": proposal_valid,
            "cls_logits": cls_logits.reshape(b, p, -1), "box_deltas": box_deltas.reshape(b, p, -1, 4),
        }

    def scores(self, cls_logits: Tensor) -> Tensor:
        """Second-stage ``[..., K + 1]`` logits -> ``[..., K]`` class scores (background dropped)."""
        logits = cls_logits / self.logit_scale
        if self.score_converter == "SOFTMAX":
            return torch.softmax(logits, dim=-1)[..., 1:]
        if self.score_converter == "SIGMOID":
            return torch.sigmoid(logits)[..., 1:]
        return logits[..., 1:]

    @torch.no_grad()
    def postprocess(self, outputs: Mapping[str, Tensor], image_sizes: Tensor) -> dict[str, Tensor]:
        """Decode each proposal's box(es), clip to ``image_sizes [B, 2]`` (h, w), score, NMS -> padded
        ``detection_boxes [B, D, 4]``, ``detection_scores``, ``detection_classes`` (contiguous index),
        ``num_detections [B]`` (as ``SSD.postprocess``)."""
        proposals, deltas = outputs["proposals"], outputs["box_deltas"]
        boxes = self.box_coder.decode(deltas.float(), proposals[:, :, None, :])  # [B, P, 1 or K, 4]
        b, p, kb = boxes.shape[:3]
        boxes = clip_boxes(boxes.reshape(b, p * kb, 4), image_sizes.to(boxes.device)).reshape(b, p, kb, 4)
        scores = self.scores(outputs["cls_logits"].float())
        scores = torch.where(outputs["proposal_valid"][..., None], scores, torch.zeros_like(scores))
        return self.non_max_suppression(boxes[:, :, 0] if kb == 1 else boxes, scores)
