"""The Faster R-CNN meta-architecture (Ren et al. 2015) as the TF OD API's ``faster_rcnn`` builds it.

The constructor takes built parts and plain values (``builders.faster_rcnn.build_faster_rcnn`` builds
them from the ``faster_rcnn`` message, the only code that reads it). What it computes:

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
* **FPN variant** (``faster_rcnn_resnet{50,101,152}_fpn``): the SSD family's ``FeaturePyramid`` on
  C2..C5 plus stride-2 levels up to ``fpn.max_level`` (``feature_extractor.conv_hyperparams``), one
  RPN conv shared by the levels with 1x1 heads per level, ``multiscale_anchor_generator`` anchors; each
  proposal is cropped on the level ``fpn_levels_of_boxes`` picks (TF's ``fpn_feature_levels``), and
  the box classifier is flatten, fc 1024 + ReLU, batch norm, fc 1024 + ReLU (the TF OD API's).
* **Inception-ResNet v2** (``faster_rcnn_inception_resnet_v2``, ``modeling.inception_resnet_v2``): its
  first half (to ``block17_20``, stride 16) is the first stage's map, its second half (``mixed_7a`` to
  ``conv_7b``) runs on the crops in place of conv5; the input normalised as its TF preprocess.
* **Mask R-CNN** (``mask_head``, ``modeling.mask_head``; ``number_of_stages: 3``): in training the mask
  head runs on the box-classifier features of the sampled proposals (``mask_logits [B, P, K or 1, h,
  w]``); at inference ``postprocess`` crops the feature map again at the detections, runs the second
  half and the mask head on them and returns ``detection_masks [B, D, h, w]``, the sigmoid of each
  detection's class channel, relative to its box (the TF OD API's third stage, before reframing).

``forward(images, targets=None)`` takes ``[B, 3, H, W]`` in 0..255, normalises with the ImageNet
mean/std and returns ``rpn_objectness [B, A, 2]``, ``rpn_box_deltas [B, A, 4]``, ``anchors [A, 4]``,
``anchor_valid [A]``, ``proposals [B, P, 4]`` (xyxy pixels), ``proposal_valid [B, P]``, ``cls_logits
[B, P, K + 1]``, ``box_deltas [B, P, 1 or K, 4]``. In training with ``targets`` (the batch's
``boxes``, ``labels``, ``weights``; the engine passes them to models with ``takes_targets``) the
second stage runs, as in the TF OD API, only on the ``second_stage_batch_size`` proposals per image
that the balanced sampler draws (``P`` is then that size); otherwise on all
``first_stage_max_proposals``. ``postprocess(outputs, image_sizes)`` decodes per proposal, clips,
converts scores (softmax over the K + 1 logits, background dropped) and runs the batched NMS.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from raredet.modeling.anchors import MultiscaleAnchorGenerator
from raredet.modeling.backbones import ResNet
from raredet.modeling.box_coder import FasterRcnnBoxCoder
from raredet.modeling.exact_nms import multiclass_nms_clipped, nms_then_clip
from raredet.modeling.fpn import FeaturePyramid
from raredet.modeling.grid_anchors import GridAnchorGenerator
from raredet.modeling.inception_resnet_v2 import InceptionResnetV2
from raredet.modeling.layers import INITIALIZERS, ConvHyperparams, ReLU6, l2_weights_of
from raredet.modeling.mask_head import MaskHead
from raredet.modeling.postprocess import BatchNonMaxSuppression, OperatingPoints, ScoreConverter, clip_boxes
from raredet.modeling.roi_ops import crop_and_resize
from raredet.modeling.sampling import batch_sampling_seeds, ground_truth, sample_proposals
from raredet.modeling.tf_compat import (
    TF_INPUT_NORMALIZATION,
    content_sizes,
    switching_to_tf,
    use_tf_same_padding,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Anchors entering the proposal NMS per image. The TF OD API runs NMS over every anchor; raredet's
# exact batched NMS is quadratic in its candidates, so it takes the best-scoring anchors first (as
# torchvision's RPN does, 2000 in training).
RPN_PRE_NMS_TOP_K = 2000
# Width of the FPN variant's two fully connected box-classifier layers (the TF OD API's).
FPN_FC_DEPTH = 1024
# The first stage's anchors: one grid on conv4, or one set per FPN level.
AnchorGenerator = GridAnchorGenerator | MultiscaleAnchorGenerator


def fpn_levels_of_boxes(boxes: Tensor, image_hw: tuple[int, int], num_levels: int) -> Tensor:
    """The TF OD API's ``fpn_feature_levels`` for cropping: ``boxes [B, P, 4]`` xyxy pixels -> index
    ``[B, P]`` into the cropped maps, ``floor(log2(sqrt(w h) / 224)) + num_levels - 2`` clamped to
    ``0 .. num_levels - 1`` (224-pixel boxes at the second-coarsest map, Lin et al. 2017 §4.2)."""
    # TF: sqrt of the normalised area times sqrt(H W) / 224, i.e. the side in pixels / 224
    del image_hw
    width = (boxes[..., 2] - boxes[..., 0]).clamp(min=0)
    height = (boxes[..., 3] - boxes[..., 1]).clamp(min=0)
    size = (width * height).sqrt()
    levels = torch.floor(torch.log2((size / 224.0).clamp(min=1e-6))) + (num_levels - 2)
    return levels.clamp(0, num_levels - 1).long()


class RpnHead(nn.Module):
    """conv ``kernel x kernel`` (dilated by ``atrous_rate``) + activation shared by every map, then
    per map 1x1 convs for ``2 n`` objectness logits and ``4 n`` box codes (as the TF OD API's first
    stage predictor); outputs ``[B, A, 2]`` and ``[B, A, 4]``, maps in order, each cell-major."""

    def __init__(self, in_channels: int, num_anchors: int, hp: ConvHyperparams, kernel_size: int = 3,
                 depth: int = 512, atrous_rate: int = 1, num_maps: int = 1) -> None:
        super().__init__()
        pad = atrous_rate * (kernel_size // 2)
        self.conv = nn.Conv2d(in_channels, depth, kernel_size, padding=pad, dilation=atrous_rate)
        self.act = hp.act()
        self.objectness = nn.ModuleList(nn.Conv2d(depth, 2 * num_anchors, 1) for _ in range(num_maps))
        self.box = nn.ModuleList(nn.Conv2d(depth, 4 * num_anchors, 1) for _ in range(num_maps))
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                hp.initialize(module)

    def forward(self, maps: list[Tensor]) -> tuple[Tensor, Tensor]:
        objectness, boxes = [], []
        for x, obj_conv, box_conv in zip(maps, self.objectness, self.box, strict=True):
            h = self.act(self.conv(x))
            b = x.shape[0]
            # [B, n*c, H, W] -> [B, H, W, n*c] -> [B, H*W*n, c]: cell-major, anchor-minor like the anchors
            objectness.append(obj_conv(h).permute(0, 2, 3, 1).reshape(b, -1, 2))
            boxes.append(box_conv(h).permute(0, 2, 3, 1).reshape(b, -1, 4))
        return torch.cat(objectness, dim=1), torch.cat(boxes, dim=1)


class FpnBoxClassifier(nn.Module):
    """The FPN variant's box classifier on ``[N, C, S, S]`` crops: flatten, fc 1024 + ReLU, batch norm
    (the feature extractor's conv_hyperparams), fc 1024 + ReLU -> ``[N, 1024]``."""

    def __init__(self, in_features: int, hp: ConvHyperparams, freeze_batchnorm: bool) -> None:
        super().__init__()
        self.hp, self.out_features = hp, FPN_FC_DEPTH  # hp: the fc layers' L2 weight (l2_weights)
        self.fc1 = nn.Linear(in_features, FPN_FC_DEPTH)
        self.fc2 = nn.Linear(FPN_FC_DEPTH, FPN_FC_DEPTH)
        eps, momentum = hp.bn_epsilon, 1.0 - hp.bn_decay
        self.norm = (nn.BatchNorm1d(FPN_FC_DEPTH, eps=eps, momentum=momentum) if hp.use_batch_norm
                     else nn.Identity())
        if isinstance(self.norm, nn.BatchNorm1d):
            # TF's scale: false / center: false mean no gamma / beta (kept at 1 / 0, untrained)
            self.norm.weight.requires_grad_(hp.bn_scale and not freeze_batchnorm and hp.bn_train)
            self.norm.bias.requires_grad_(hp.bn_center and not freeze_batchnorm and hp.bn_train)
        self.frozen_norm = freeze_batchnorm or not hp.bn_train
        # Flatten in (y, x, channel) order, as Keras' Flatten of NHWC crops (TF weights' fc1)
        self.flatten_channels_last = False

    def forward(self, crops: Tensor) -> Tensor:
        x = crops.permute(0, 2, 3, 1) if self.flatten_channels_last else crops
        x = torch.relu(self.fc1(x.flatten(1)))
        use_running_stats = self.frozen_norm or not self.training or x.shape[0] == 1
        if isinstance(self.norm, nn.BatchNorm1d) and use_running_stats:
            x = F.batch_norm(x, self.norm.running_mean, self.norm.running_var, self.norm.weight,
                             self.norm.bias, False, 0.0, self.norm.eps)
        else:
            x = self.norm(x)
        return torch.relu(self.fc2(x))


def _fc_init(layer: nn.Linear, hp: ConvHyperparams) -> nn.Linear:
    """``fc_hyperparams``' initializer on a dense layer (fans of a ``[out, in]`` kernel), bias zero."""
    if hp.initializer:
        INITIALIZERS[hp.initializer](layer.weight, **hp.initializer_args)
    nn.init.zeros_(layer.bias)
    return layer


class MaskRcnnBoxHead(nn.Module):
    """The ``mask_rcnn_box_predictor`` box/class head on pooled features ``[N, C]`` -> class logits
    ``[N, K + 1]`` and box codes ``[N, 1 or K, 4]``."""

    def __init__(self, in_features: int, num_classes: int, hp: ConvHyperparams,
                 share_box_across_classes: bool = False, use_dropout: bool = False,
                 dropout_keep_probability: float = 0.5) -> None:
        super().__init__()
        self.hp = hp  # fc_hyperparams
        self.share_box = share_box_across_classes
        self.dropout = nn.Dropout(1.0 - dropout_keep_probability) if use_dropout else nn.Identity()
        self.num_boxes = 1 if self.share_box else num_classes
        self.cls = _fc_init(nn.Linear(in_features, num_classes + 1), self.hp)
        self.box = _fc_init(nn.Linear(in_features, 4 * self.num_boxes), self.hp)

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        x = self.dropout(features)
        return self.cls(x), self.box(x).reshape(x.shape[0], self.num_boxes, 4)


class FasterRCNN(OperatingPoints, nn.Module):
    """Two-stage detector; see the module docstring."""

    pixel_mean: Tensor
    pixel_std: Tensor
    takes_targets = True  # the engine passes the batch's boxes to forward in training

    def __init__(
        self,
        *,
        num_classes: int,
        backbone: ResNet | InceptionResnetV2,
        rpn: RpnHead,
        box_head: MaskRcnnBoxHead,
        anchor_generator: AnchorGenerator,
        box_coder: FasterRcnnBoxCoder,
        score_converter: ScoreConverter,
        non_max_suppression: BatchNonMaxSuppression,
        initial_crop_size: int,
        maxpool_kernel_size: int,
        maxpool_stride: int,
        fpn: FeaturePyramid | None = None,
        box_classifier: FpnBoxClassifier | None = None,
        first_stage_nms_score_threshold: float = 0.0,
        first_stage_nms_iou_threshold: float = 0.7,
        first_stage_max_proposals: int = 300,
        clip_anchors_to_image: bool = False,
        use_matmul_crop_and_resize: bool = False,
        second_stage_batch_size: int = 64,
        second_stage_balance_fraction: float = 0.25,
        mask_head: MaskHead | None = None,
    ) -> None:
        """The parts (the module docstring): ``backbone`` (conv5 is the single-map variant's second
        stage), ``fpn`` and its ``box_classifier`` (both or neither), ``rpn`` with one head per map,
        ``box_head`` on the pooled crops, ``score_converter`` for the ``[B, P, K + 1]`` logits
        (``background_column``), ``non_max_suppression`` of the detections, ``mask_head`` (Mask R-CNN)
        on the box-classifier features. The plain values are the ``faster_rcnn`` fields of the same
        names."""
        super().__init__()
        self.num_classes = num_classes
        self.second_stage_batch_size = second_stage_batch_size
        self.second_stage_balance_fraction = second_stage_balance_fraction
        self.backbone = backbone
        self.fpn = fpn
        self.anchor_generator = anchor_generator
        self.rpn = rpn
        self.clip_anchors_to_image = clip_anchors_to_image
        self.max_proposals = first_stage_max_proposals
        self.proposal_nms = BatchNonMaxSuppression(
            score_threshold=first_stage_nms_score_threshold, iou_threshold=first_stage_nms_iou_threshold,
            max_detections_per_class=self.max_proposals, max_total_detections=self.max_proposals,
            pre_nms_top_k=RPN_PRE_NMS_TOP_K)
        self.crop_size = initial_crop_size
        self.matmul_crops = use_matmul_crop_and_resize  # roi_ops.crop_and_resize's edge rule
        self.pool_kernel, self.pool_stride = maxpool_kernel_size, maxpool_stride
        self.box_classifier = box_classifier
        self.box_head = box_head
        self.mask_head = mask_head
        self.box_coder = box_coder  # the TF OD API's Faster R-CNN coder: scales 10, 10, 5, 5
        # second_stage_post_processing: score conversion with the calibration_config (temperature
        # before the converter, maps after, as in the TF OD API); set_operating_points maps last
        self.score_converter = score_converter
        self.non_max_suppression = non_max_suppression
        mean, std = torch.tensor(IMAGENET_MEAN) * 255, torch.tensor(IMAGENET_STD) * 255
        if isinstance(backbone, InceptionResnetV2):  # its TF preprocess in either convention
            mean, std = (torch.tensor(v) for v in backbone.input_normalization)
        self.register_buffer("pixel_mean", mean.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", std.view(1, 3, 1, 1), persistent=False)
        self.weights_convention = "torchvision"  # "tf" once use_weights_convention("tf") has run

    def use_weights_convention(self, convention: str) -> None:
        """Compute as the weights' framework does: ``"tf"`` (weights the TF OD API trained) makes the
        ResNet the TF OD API's Keras ResNet v1 (``ResNet.use_tf_conventions``: ReLU, batch-norm
        epsilon 1e-5, strides on the 1x1 convs, 'SAME' max pool; conv_hyperparams' batch norm and
        activation under override_base_feature_extractor_hyperparams), the RPN conv's activation ReLU6,
        the FPN's stride-2 convs pad 'SAME' and its top-down path upsamples the smoothed maps, the FPN
        box classifier flattens its crops channels-last, and the input normalisation the Keras ResNet
        extractor's (channel means subtracted, no scaling). Records the choice as
        ``weights_convention``; a model switched to "tf" stays so."""
        if not switching_to_tf(self.weights_convention, convention):
            return
        self.backbone.use_tf_conventions()
        # The TF OD API's Keras first stage applies relu6 after the RPN conv whatever its hyperparams say
        # (faster_rcnn_meta_arch: Lambda(tf.nn.relu6)); raredet's default keeps the hyperparams' one.
        self.rpn.act = ReLU6()
        self.box_coder.max_log_scale = math.inf  # TF's decode has no cap on the size ratio
        if self.fpn is not None:
            use_tf_same_padding(self.fpn)
            self.fpn.tf_top_down = True  # upsample the smoothed map (KerasFpnTopDownFeatureMaps)
        if self.box_classifier is not None:
            self.box_classifier.flatten_channels_last = True
        if isinstance(self.backbone, ResNet):  # Inception-ResNet v2 normalises as TF already
            mean, std = TF_INPUT_NORMALIZATION["resnet_v1"]
            self.pixel_mean.copy_(torch.tensor(mean).view(1, 3, 1, 1))
            self.pixel_std.copy_(torch.tensor(std).view(1, 3, 1, 1))
        self.weights_convention = convention

    def l2_weights(self) -> dict[str, float]:
        """``{parameter name: l2 weight}``: the RPN convs' and the fc layers' regularizers (the
        backbone carries none, as the TF OD API's Keras ResNet feature extractor)."""
        out: dict[str, float] = {}
        out.update(l2_weights_of(self.rpn, "rpn"))  # the L2 weight each conv was built with
        if self.fpn is not None:
            out.update(l2_weights_of(self.fpn, "fpn"))
        classifier = self.box_classifier
        if classifier is not None and classifier.hp.l2_weight:
            out.update({f"box_classifier.{n}.weight": classifier.hp.l2_weight for n in ("fc1", "fc2")})
        if self.box_head.hp.l2_weight:
            out.update({f"box_head.{n}.weight": self.box_head.hp.l2_weight for n in ("cls", "box")})
        if self.mask_head is not None:
            out.update(l2_weights_of(self.mask_head, "mask_head"))
        return out

    def _feature_maps(self, x: Tensor) -> list[Tensor]:
        """The maps the RPN sees and the crops come from: conv4, or the FPN levels."""
        if self.fpn is not None:
            return self.fpn(self.backbone(x))
        b = self.backbone
        if isinstance(b, InceptionResnetV2):
            return [b.proposal_features(x)]
        x = b.maxpool(b.relu(b.bn1(b.conv1(x))))
        return [b.layer3(b.layer2(b.layer1(x)))]

    def _anchors(self, sizes: list[tuple[int, int]], image_hw: tuple[int, int], device: torch.device
                 ) -> tuple[Tensor, Tensor]:
        if isinstance(self.anchor_generator, MultiscaleAnchorGenerator):
            anchors = self.anchor_generator(image_hw, sizes, device)
        else:
            anchors = self.anchor_generator(sizes[0], device)
        h, w = image_hw
        # the TF OD API clips anchors at inference whatever clip_anchors_to_image says (prunes in training)
        if self.clip_anchors_to_image or (self.weights_convention == "tf" and not self.training):
            limits = anchors.new_tensor([w, h, w, h])
            anchors = torch.minimum(anchors.clamp(min=0), limits)
            valid = (anchors[:, 2] > anchors[:, 0]) & (anchors[:, 3] > anchors[:, 1])
        else:
            valid = (anchors[:, 0] >= 0) & (anchors[:, 1] >= 0) & (anchors[:, 2] <= w) & (anchors[:, 3] <= h)
        return anchors, valid

    @torch.no_grad()
    def _proposals(self, first: Mapping[str, Tensor], image_sizes: Tensor) -> tuple[Tensor, Tensor]:
        """``first``: the first stage's outputs -> proposals ``[B, P, 4]`` xyxy and ``proposal_valid [B, P]``.
        TF's conventions: NMS over every anchor's unclipped box, then clip to ``image_sizes`` and drop
        the boxes left without area (``_postprocess_rpn``); otherwise clip, then NMS over the
        ``RPN_PRE_NMS_TOP_K`` best."""
        scores = torch.softmax(first["rpn_objectness"].float(), dim=-1)[..., 1]
        boxes = self.box_coder.decode(first["rpn_box_deltas"].float(), first["anchors"][None])
        valid = first["anchor_valid"][None].expand_as(scores)
        if self.weights_convention == "tf":
            nms = self.proposal_nms
            proposals, _, proposal_valid = nms_then_clip(
                boxes, scores, valid & (scores > nms.score_threshold), image_sizes, nms.iou_threshold,
                self.max_proposals)
            return proposals, proposal_valid
        det = self.proposal_nms(clip_boxes(boxes, image_sizes), (scores * valid)[..., None])  # invalid: 0
        rows = torch.arange(self.max_proposals, device=boxes.device)[None]
        return det["detection_boxes"], rows < det["num_detections"][:, None]

    def forward(self, images: Tensor, targets: Mapping[str, Tensor] | None = None,
                image_sizes: Tensor | None = None) -> dict[str, Tensor]:
        """``images [B, 3, H, W]`` in 0..255 (and in training the batch's ``boxes``, ``labels``,
        ``weights``) -> the dict of the module docstring. ``image_sizes [B, 2]`` (h, w): each image's
        true size inside the padded input (TF's ``true_image_shapes``; default: ``targets["image_sizes"]``,
        else, at inference under TF's conventions, the extent without the trailing all-zero rows and
        columns a TF resizer pads with (``tf_compat.content_sizes``), else the whole input), which the
        proposals are clipped to."""
        x = (images.float() - self.pixel_mean) / self.pixel_std
        image_hw = (int(x.shape[-2]), int(x.shape[-1]))
        maps = self._feature_maps(x)
        objectness, rpn_deltas = self.rpn(maps)
        sizes = [(int(f.shape[-2]), int(f.shape[-1])) for f in maps]
        anchors, anchor_valid = self._anchors(sizes, image_hw, x.device)
        if image_sizes is None and targets is not None:
            image_sizes = targets.get("image_sizes")
        if image_sizes is None and targets is None and self.weights_convention == "tf":
            image_sizes = content_sizes(images)  # TF's resized image: its zero padding at bottom/right
        if image_sizes is None:
            image_sizes = torch.tensor([image_hw], device=x.device).expand(x.shape[0], 2)
        outputs = {"rpn_objectness": objectness, "rpn_box_deltas": rpn_deltas, "anchors": anchors,
                   "anchor_valid": anchor_valid, "image_sizes": image_sizes.to(x.device, torch.int64),
                   "input_size": torch.tensor(image_hw, device=x.device)}
        outputs.update(self._second_stage(maps, outputs, targets))
        if not self.training:  # for postprocess with other image sizes (with_image_sizes)
            outputs.update({f"features_to_crop_{i}": m for i, m in enumerate(maps)})
        return outputs

    def _second_stage(self, maps: list[Tensor], first: Mapping[str, Tensor],
                      targets: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
        """Proposals from the first stage's outputs, crops of ``maps`` at them, the box classifier."""
        image_hw = (int(first["input_size"][0]), int(first["input_size"][1]))
        proposals, proposal_valid = self._proposals(first, first["image_sizes"])
        if self.training and targets is not None:
            with torch.no_grad():
                proposals, proposal_valid = sample_proposals(
                    proposals, proposal_valid, ground_truth(targets, proposals.device),
                    self.second_stage_batch_size, self.second_stage_balance_fraction,
                    batch_sampling_seeds(targets))
        crops = F.max_pool2d(self._crops(maps, proposals, image_hw), self.pool_kernel, self.pool_stride)
        b, p = proposals.shape[:2]
        features = None
        if self.box_classifier is not None:
            pooled = self.box_classifier(crops)  # [B * P, 1024]
        else:
            features = self._box_classifier_features(crops)  # [B * P, C5, h, w]
            pooled = features.mean(dim=(2, 3))
        cls_logits, box_deltas = self.box_head(pooled)
        out = {"proposals": proposals, "proposal_valid": proposal_valid,
               "cls_logits": cls_logits.reshape(b, p, -1), "box_deltas": box_deltas.reshape(b, p, -1, 4)}
        if self.mask_head is not None and self.training and features is not None:
            # training: masks on the sampled proposals' features (TF's third stage in training)
            out["mask_logits"] = self.mask_head(features).reshape(b, p, *self.mask_head_shape())
        return out

    def mask_head_shape(self) -> tuple[int, int, int]:
        """(masks per box, mask height, mask width) of the mask head (a method, not a property: tracing
        reads every property of the module, and a model without masks has none to give)."""
        assert self.mask_head is not None
        return (self.mask_head.last.out_channels, *self.mask_head.mask_size)

    def _box_classifier_features(self, crops: Tensor) -> Tensor:
        """The single-map variants' second stage on the pooled crops: conv5, or Inception-ResNet v2's
        second half."""
        if isinstance(self.backbone, InceptionResnetV2):
            return self.backbone.box_classifier_features(crops)
        return self.backbone.layer4(crops)

    @torch.no_grad()
    def with_image_sizes(self, outputs: Mapping[str, Tensor], image_sizes: Tensor) -> dict[str, Tensor]:
        """``outputs`` of ``forward`` (in eval mode) for images whose true sizes are ``image_sizes [B, 2]``:
        the proposals and the second stage computed again from the stored first-stage outputs and
        feature maps (``forward`` without ``image_sizes`` took the whole input as the image)."""
        maps = [outputs[f"features_to_crop_{i}"] for i in range(len(self.rpn.objectness))
                if f"features_to_crop_{i}" in outputs]
        if len(maps) != len(self.rpn.objectness):
            raise ValueError("with_image_sizes needs the feature maps forward stores in eval mode; run "
                             "forward in eval mode, or pass image_sizes to forward")
        first = dict(outputs)
        first["image_sizes"] = image_sizes.to(outputs["anchors"].device, torch.int64)
        first.update(self._second_stage(maps, first))
        return first

    def _crops(self, maps: list[Tensor], proposals: Tensor, image_hw: tuple[int, int]) -> Tensor:
        """``crop_and_resize`` of each proposal on its map (one map, or the FPN level its size picks)
        -> ``[B * P, C, S, S]``."""
        h, w = image_hw
        normalised = proposals[..., [1, 0, 3, 2]] / proposals.new_tensor([h, w, h, w])
        if len(maps) == 1:
            return crop_and_resize(maps[0], normalised, self.crop_size, matmul=self.matmul_crops)
        levels = fpn_levels_of_boxes(proposals, image_hw, len(maps)).reshape(-1)  # [B * P]
        crops = crop_and_resize(maps[0], normalised, self.crop_size, matmul=self.matmul_crops)
        for index in range(1, len(maps)):  # a handful of levels; every box is cropped on each
            crops = torch.where((levels == index)[:, None, None, None],
                                crop_and_resize(maps[index], normalised, self.crop_size,
                                                matmul=self.matmul_crops), crops)
        return crops

    @torch.no_grad()
    def postprocess(self, outputs: Mapping[str, Tensor], image_sizes: Tensor) -> dict[str, Tensor]:
        """Decode each proposal's box(es), clip to ``image_sizes [B, 2]`` (h, w), score, NMS -> padded
        ``detection_boxes [B, D, 4]`` xyxy pixels, ``detection_scores``, ``detection_classes``
        (contiguous index), ``num_detections [B]`` (as ``SSD.postprocess``). Under TF's conventions as
        the TF OD API's ``postprocess(prediction_dict, true_image_shapes)``: the proposals clipped to
        ``image_sizes`` (computed again when ``forward`` took other sizes), per-class NMS over every
        proposal on unclipped boxes, then clipping and dropping boxes without area; a recomputed second
        stage also replaces the entries of ``outputs`` (a dict) it changes (proposals, logits, codes)."""
        image_sizes = image_sizes.to(outputs["proposals"].device, torch.int64)
        if self.weights_convention == "tf":
            if "features_to_crop_0" in outputs and not torch.equal(outputs["image_sizes"], image_sizes):
                refined = self.with_image_sizes(outputs, image_sizes)
                if isinstance(outputs, dict):  # the outputs then hold what the detections came from
                    outputs.update(refined)
                outputs = refined
            return self._with_masks(outputs, self._postprocess_as_tf(outputs, image_sizes))
        proposals, deltas = outputs["proposals"], outputs["box_deltas"]
        boxes = self.box_coder.decode(deltas.float(), proposals[:, :, None, :])  # [B, P, 1 or K, 4]
        b, p, kb = boxes.shape[:3]
        boxes = clip_boxes(boxes.reshape(b, p * kb, 4), image_sizes).reshape(b, p, kb, 4)
        scores = self.score_converter(outputs["cls_logits"].float())
        scores = torch.where(outputs["proposal_valid"][..., None], scores, torch.zeros_like(scores))
        detections = self.non_max_suppression(boxes[:, :, 0] if kb == 1 else boxes, scores)
        return self._with_masks(outputs, detections)

    def _with_masks(self, outputs: Mapping[str, Tensor], detections: dict[str, Tensor]) -> dict[str, Tensor]:
        """``detections`` and, with a mask head, ``detection_masks [B, D, h, w]``: the TF OD API's third
        stage at inference. The feature map cropped again at the detection boxes, max-pooled, the
        second stage's features, the mask head, the channel of each detection's class, sigmoid;
        probabilities relative to each box (reframe them into the image to compare with instance
        masks). Padded detections get masks too (of their zero boxes), as in the TF OD API."""
        if self.mask_head is None:
            return detections
        if "features_to_crop_0" not in outputs:
            raise ValueError("Mask R-CNN's postprocess needs the feature map forward stores in eval mode; "
                             "run forward in eval mode")
        boxes = detections["detection_boxes"]
        size = (int(outputs["input_size"][0]), int(outputs["input_size"][1]))
        crops = self._crops([outputs["features_to_crop_0"]], boxes.float(), size)  # float32 boxes
        crops = F.max_pool2d(crops, self.pool_kernel, self.pool_stride)
        logits = self.mask_head(self._box_classifier_features(crops))  # [B * D, K or 1, h, w]
        b, d = boxes.shape[:2]
        logits = logits.reshape(b, d, *self.mask_head_shape())
        if logits.shape[2] > 1:
            pick = detections["detection_classes"].long().clamp(0, logits.shape[2] - 1)
            logits = logits.gather(2, pick[:, :, None, None, None].expand(-1, -1, 1, *logits.shape[-2:]))
        detections["detection_masks"] = torch.sigmoid(logits[:, :, 0].float())
        return detections

    def _postprocess_as_tf(self, outputs: Mapping[str, Tensor], image_sizes: Tensor) -> dict[str, Tensor]:
        """``_postprocess_box_classifier``: ``multiclass_non_max_suppression`` with the true image as the
        clip window (``exact_nms.multiclass_nms_clipped``; class-agnostic NMS as ``postprocess``'s other
        path, clipping after it)."""
        boxes = self.box_coder.decode(outputs["box_deltas"].float(), outputs["proposals"][:, :, None, :])
        scores = self.score_converter(outputs["cls_logits"].float())
        nms = self.non_max_suppression
        if nms.use_class_agnostic_nms:
            scores = torch.where(outputs["proposal_valid"][..., None], scores, torch.zeros_like(scores))
            det = nms(boxes[:, :, 0] if boxes.shape[2] == 1 else boxes, scores)
            det["detection_boxes"] = clip_boxes(det["detection_boxes"], image_sizes)
            return det
        return multiclass_nms_clipped(
            boxes, scores, outputs["proposal_valid"], image_sizes, score_threshold=nms.score_threshold,
            iou_threshold=nms.iou_threshold, max_per_class=nms.max_detections_per_class,
            max_total=nms.max_total_detections)
