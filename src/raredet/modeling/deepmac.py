"""DeepMAC: CenterNet's box-conditioned mask head (the TF OD API's ``deepmac_mask_estimation``,
``meta_architectures/deepmac_meta_arch.py``; Birodkar et al. 2021, https://arxiv.org/abs/2104.00613).

Two prediction heads run on every feature output of the extractor: an *instance embedding*
(``dim`` channels) and a *pixel embedding* (``pixel_embedding_dim`` channels). For each box:

1. the pixel embedding is cropped to ``mask_size x mask_size`` (``tf.image.crop_and_resize``
   semantics at the map's edges as the TF OD API's ``matmul_crop_and_resize``: ``roi_ops``);
2. with ``use_xy`` two channels ``(y, x)``, each ``linspace(-1, 1, mask_size)`` over the crop, go in
   front of it;
3. with ``use_instance_embedding`` the instance embedding read at the box centre (feature cell
   ``int((y1 + y2) / 2 * h)``, ``int((x1 + x2) / 2 * w)`` for a box normalised to the image) is tiled over
   the crop and goes after it;
4. the mask network (``network_type``: an hourglass ``hourglass{10,20,32,52,100}``,
   ``hourglass20_uniform_size`` or ``hourglass20_no_shortcut`` of ``modeling/hourglass.py`` without its
   input downsampling, ``num_init_channels`` wide) and a 1x1 convolution give ``mask_size x mask_size``
   logits. The TF OD API's other mask networks (``resnet*``, ``fully_connected``, ``embedding_projection``,
   ``cond_inst*``) are not built.

Training runs the head on the groundtruth boxes and compares with the groundtruth masks cropped by the
same boxes (sigmoid cross-entropy averaged over the crop's pixels, per instance); instances whose class
is not in ``allowed_masked_classes_ids`` (when that list is not empty) add nothing and are not
counted, which is how the zoo's VOC / non-VOC configs train on masks of some classes only. At
inference the head runs on the detected boxes with the last feature output and returns the
probabilities, box-relative, ``[B, D, mask_size, mask_size]``.

Boxes are normalised to the padded image that the feature map covers (``stride * h`` by
``stride * w``), the frame of both the feature maps and the groundtruth masks.

In training the mask network runs on every image's boxes padded to the batch's largest count (padding
boxes are zeros, weight 0), so its batch-norm statistics see those padding instances too; the TF OD API
pads to ``train_config.max_number_of_boxes`` instead (100 in the zoo), so its statistics see more of
them. The loss itself does not depend on the padding.

Where a TF2 checkpoint of the TF OD API's DeepMAC keeps these weights (object paths under ``model/``, as
TF 2.15.1 writes them for a model built by its ``model_builder``; kernels ``[kh, kw, in, out]`` ->
``[out, in, kh, kw]``) and their state-dict keys under the task:

=========================================================================  =============================
``_prediction_head_dict/INSTANCE_EMBEDDING/<s>/layer_with_weights-0/*``    ``instance_embedding.<s>.0.*``
``_prediction_head_dict/INSTANCE_EMBEDDING/<s>/layer_with_weights-1/*``    ``instance_embedding.<s>.2.*``
``_prediction_head_dict/PIXEL_EMBEDDING/<s>/layer_with_weights-{0,1}/*``   ``pixel_embedding.<s>.{0,2}.*``
``_mask_net/_net/<hourglass path>``                                        ``mask_net.net.<hourglass key>``
``_mask_net/project_out/{kernel,bias}``                                    ``mask_net.project_out.*``
=========================================================================  =============================

(``kernel``/``bias`` -> ``weight``/``bias``; the hourglass's own mapping: modeling/hourglass.py.) The
embedding kernels are ``[1, 3, in, 256]`` there, the object-detection heads' ``[3, 3, in, 256]``.

Not built (refused by the builder): RoI jitter, full-resolution masks, instance subsampling, the
weakly supervised losses (box and colour consistency, augmented self-supervision, point supervision)
and ``ignore_per_class_box_overlap``; the zoo's four DeepMAC configs use none of them.
tests/modeling/test_deepmac.py compares mask logits, loss and masks with the TF OD API's own
(tests/fixtures/deepmac/make_parity.py).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from raredet.modeling.center_net import CenterNetTask
from raredet.modeling.hourglass import (
    HourglassNetwork,
    hourglass_20_no_shortcut,
    hourglass_20_uniform_size,
    single_hourglass,
)
from raredet.modeling.layers import keras_default_init
from raredet.modeling.roi_ops import crop_and_resize


def _single_hourglass(depth: int) -> Callable[[int, int], HourglassNetwork]:
    def build(num_init_channels: int, in_channels: int) -> HourglassNetwork:
        return single_hourglass(f"hourglass_{depth}", num_init_channels, initial_downsample=False,
                                in_channels=in_channels)
    return build


# DeepMAC's mask networks: network_type -> (num_init_channels, input channels) -> the hourglass
# (modeling/hourglass.py) without input downsampling, as the TF OD API's _get_deepmac_network_by_type.
HOURGLASS_MASK_NETWORKS: dict[str, Callable[[int, int], HourglassNetwork]] = {
    **{f"hourglass{depth}": _single_hourglass(depth) for depth in (10, 20, 32, 52, 100)},
    "hourglass20_uniform_size": lambda nc, in_ch: hourglass_20_uniform_size(nc, in_channels=in_ch),
    "hourglass20_no_shortcut": lambda nc, in_ch: hourglass_20_no_shortcut(nc, in_channels=in_ch),
}

MASK_LOSS_NAME = "deep_mask_estimation"  # the TF OD API's loss key, ``Loss/deep_mask_estimation``
INSTANCE_EMBEDDING, PIXEL_EMBEDDING = "deepmac/instance_embedding", "deepmac/pixel_embedding"


def _conv(in_ch: int, out_ch: int, kernel: int | tuple[int, int], bias: bool = True) -> nn.Conv2d:
    """A stride-1 'same' conv with Keras' default initialisation (Glorot uniform, zero bias)."""
    k = (kernel, kernel) if isinstance(kernel, int) else kernel
    conv = nn.Conv2d(in_ch, out_ch, k, padding=(k[0] // 2, k[1] // 2), bias=bias)
    keras_default_init(conv)
    return conv


class HourglassMaskNetwork(nn.Module):
    """The TF OD API's ``MaskHeadNetwork`` for an hourglass ``network_type``: the hourglass (``net``,
    TF's ``_net``) on the ``[N, in_channels, S, S]`` mask inputs, its last output through a 1x1 conv
    with bias to one logit (``project_out``) -> ``[N, S, S]``. ``S`` must be a multiple of
    ``size_divisor`` (the hourglass halves the crop once per stage)."""

    def __init__(self, network_type: str, in_channels: int, num_init_channels: int) -> None:
        super().__init__()
        if network_type not in HOURGLASS_MASK_NETWORKS:
            raise ValueError(f"network_type: {network_type!r} is not supported; valid: "
                             f"{', '.join(HOURGLASS_MASK_NETWORKS)}")
        self.net = HOURGLASS_MASK_NETWORKS[network_type](num_init_channels, in_channels)
        self.size_divisor = self.net.size_divisor
        self.project_out = _conv(self.net.out_channels, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.project_out(self.net(x)[-1])[:, 0]


def embedding_head(in_channels: int, out_channels: int, num_filters: int = 256) -> nn.Sequential:
    """DeepMAC's embedding heads as the TF OD API builds them (``make_prediction_net(dim)`` with its
    defaults): a ``1 x 3`` conv (``unit_height_conv`` defaults to true there, unlike CenterNet's own
    heads, which pass false) with ``num_filters`` channels and ReLU, then a 1x1 conv; Keras' default
    initialisation, zero biases."""
    return nn.Sequential(_conv(in_channels, num_filters, (1, 3)), nn.ReLU(inplace=True),
                         _conv(num_filters, out_channels, 1))


def normalized_boxes(boxes_xyxy: Tensor, height: float, width: float) -> Tensor:
    """``[..., 4]`` xyxy pixels -> ``[..., 4]`` (y1, x1, y2, x2) normalised to an image ``height x width``."""
    x1, y1, x2, y2 = boxes_xyxy.unbind(-1)
    return torch.stack([y1 / height, x1 / width, y2 / height, x2 / width], dim=-1)


def center_embeddings(instance_embedding: Tensor, boxes: Tensor) -> Tensor:
    """``instance_embedding [B, C, h, w]``, ``boxes [B, N, 4]`` normalised -> ``[B, N, C]``: the cell at
    the box centre, ``int(centre * size)`` (TF's truncation), clamped to the map."""
    b, c, h, w = instance_embedding.shape
    cy = ((boxes[..., 0] + boxes[..., 2]) * (h / 2.0)).long().clamp(0, h - 1)
    cx = ((boxes[..., 1] + boxes[..., 3]) * (w / 2.0)).long().clamp(0, w - 1)
    flat = instance_embedding.flatten(2)  # [B, C, h*w]
    index = (cy * w + cx)[:, None, :].expand(b, c, -1)
    return flat.gather(2, index).transpose(1, 2)


def crop_masks(masks: Tensor, boxes: Tensor, mask_size: int) -> Tensor:
    """``masks [N, H, W]``, ``boxes [N, 4]`` normalised -> ``[N, mask_size, mask_size]`` float: each mask
    cropped by its own box, as the TF OD API's ``crop_and_resize_instance_masks``."""
    n = masks.shape[0]
    if n == 0:
        return masks.new_zeros((0, mask_size, mask_size), dtype=torch.float32)
    crops = crop_and_resize(masks.float()[:, None], boxes[:, None], mask_size, matmul=True)
    return crops[:, 0]


def _padded_targets(targets: Sequence[dict[str, Tensor]], allowed: Tensor | None) -> tuple[Tensor, Tensor]:
    """Boxes ``[B, N, 4]`` xyxy (zeros past each image's boxes) and the mask weights ``[B, N]`` (box
    weight, times whether the class may have a mask; 0 past each image's boxes)."""
    n = max((len(t["boxes"]) for t in targets), default=0)
    boxes = torch.stack([F.pad(t["boxes"].float(), (0, 0, 0, n - len(t["boxes"]))) for t in targets])
    weights = []
    for t in targets:
        w = t["weights"].float() if "weights" in t else torch.ones(len(t["boxes"]), device=boxes.device)
        if allowed is not None:
            w = w * torch.isin(t["labels"], allowed.to(t["labels"].device)).float()
        weights.append(F.pad(w, (0, n - len(w))))
    return boxes, torch.stack(weights)


class DeepMACTask(CenterNetTask):
    """CenterNet's DeepMAC mask task (module docstring).

    ``mask_loss(logits, targets, weights)`` is the config's ``classification_loss`` called on
    ``[N, S*S, 1]`` tensors: elementwise (``weighted_sigmoid``: averaged over the pixels) or reduced
    over the pixels to ``[N, 1]`` (the dice loss).
    ``allowed_masked_classes_ids`` are contiguous class indices (0..K-1); empty: every class."""

    def __init__(
        self,
        in_channels: int,
        num_feature_outputs: int,
        mask_loss: Callable[[Tensor, Tensor, Tensor], Tensor],
        dim: int = 256,
        pixel_embedding_dim: int = 16,
        mask_size: int = 32,
        use_xy: bool = True,
        network_type: str = "hourglass52",
        use_instance_embedding: bool = True,
        num_init_channels: int = 64,
        task_loss_weight: float = 1.0,
        allowed_masked_classes_ids: Sequence[int] = (),
        use_only_last_stage: bool = False,
    ) -> None:
        super().__init__()
        outputs = range(num_feature_outputs)
        self.instance_embedding = nn.ModuleList(embedding_head(in_channels, dim) for _ in outputs)
        self.pixel_embedding = nn.ModuleList(
            embedding_head(in_channels, pixel_embedding_dim) for _ in outputs)
        mask_in = pixel_embedding_dim + (2 if use_xy else 0) + (dim if use_instance_embedding else 0)
        self.mask_net = HourglassMaskNetwork(network_type, mask_in, num_init_channels)
        if mask_size % self.mask_net.size_divisor:
            raise ValueError(f"mask_size: {mask_size} must be a multiple of {self.mask_net.size_divisor} "
                             f"for network_type {network_type!r} (it halves the crop that many times)")
        self.mask_loss = mask_loss
        self.mask_size = mask_size
        self.use_xy = use_xy
        self.use_instance_embedding = use_instance_embedding
        self.task_loss_weight = float(task_loss_weight)
        self.use_only_last_stage = use_only_last_stage
        self.allowed_classes: Tensor
        allowed = torch.tensor(sorted(set(allowed_masked_classes_ids)), dtype=torch.long)
        self.register_buffer("allowed_classes", allowed, persistent=False)

    def forward(self, features: list[Tensor]) -> dict[str, list[Tensor]]:
        """``features``: ``[B, C, h, w]`` per feature output -> ``INSTANCE_EMBEDDING`` ``[B, dim, h, w]``
        and ``PIXEL_EMBEDDING`` ``[B, pixel_embedding_dim, h, w]``, one per feature output."""
        return {
            INSTANCE_EMBEDDING: [h(f) for h, f in zip(self.instance_embedding, features, strict=True)],
            PIXEL_EMBEDDING: [h(f) for h, f in zip(self.pixel_embedding, features, strict=True)],
        }

    def mask_logits(self, instance_embedding: Tensor, pixel_embedding: Tensor, boxes: Tensor) -> Tensor:
        """Embeddings ``[B, C, h, w]``, ``boxes [B, N, 4]`` normalised (y1, x1, y2, x2) -> mask logits
        ``[B, N, mask_size, mask_size]``, box-relative."""
        b, n = boxes.shape[:2]
        s = self.mask_size
        inputs = [crop_and_resize(pixel_embedding, boxes, s, matmul=True)]  # [B*N, P, S, S]
        if self.use_xy:
            ramp = torch.linspace(-1.0, 1.0, s, device=boxes.device, dtype=inputs[0].dtype)
            yx = torch.stack(torch.meshgrid(ramp, ramp, indexing="ij"))  # [2, S, S]: y then x
            inputs.insert(0, yx.expand(b * n, 2, s, s))
        if self.use_instance_embedding:
            centre = center_embeddings(instance_embedding, boxes).reshape(b * n, -1)
            inputs.append(centre[:, :, None, None].expand(-1, -1, s, s))
        return self.mask_net(torch.cat(inputs, dim=1)).reshape(b, n, s, s)

    def loss(self, predictions: dict[str, list[Tensor]], targets: Sequence[dict[str, Tensor]], stride: int
             ) -> dict[str, Tensor]:
        """``{"deep_mask_estimation": task_loss_weight * L}``; ``L``, averaged over the feature outputs
        used, is the per-instance mean over the crop's pixels of ``mask_loss`` summed over the instances
        that may have a mask (weighted by their box weights) and divided by their total weight (at
        least 1), over the whole batch. ``targets`` need ``boxes``, ``labels``, ``masks`` (``[N, H, W]``,
        the padded image's frame) and optionally ``weights``; without masks the loss is 0, as in the TF
        OD API (with a warning)."""
        inst, pix = predictions[INSTANCE_EMBEDDING], predictions[PIXEL_EMBEDDING]
        if self.use_only_last_stage:
            inst, pix = inst[-1:], pix[-1:]
        h, w = pix[0].shape[-2:]
        allowed = self.allowed_classes if len(self.allowed_classes) else None
        boxes_px, valid = (t.to(pix[0].device) for t in _padded_targets(targets, allowed))
        has_masks = all("masks" in t for t in targets)
        if not has_masks:
            warnings.warn("DeepMAC's mask loss is 0: the batch has no instance masks (set the input "
                          "reader's load_instance_masks: true)", stacklevel=2)
        if boxes_px.shape[1] == 0 or not has_masks:  # 0, still a function of the heads
            return {MASK_LOSS_NAME: torch.stack([p.sum() for p in inst + pix]).sum() * 0.0}
        s = self.mask_size
        target = self._groundtruth(targets, boxes_px).reshape(-1, s * s, 1)
        boxes = normalized_boxes(boxes_px, stride * h, stride * w)
        total = boxes.new_zeros(())
        for ie, pe in zip(inst, pix, strict=True):
            logits = self.mask_logits(ie, pe, boxes).reshape(-1, s * s, 1)  # [B*N, S*S, 1]
            per_pixel = self.mask_loss(logits, target, torch.ones_like(target))
            # TF's normalize_auto: the mean over the pixels; a loss that reduced them (dice): the sum
            per_instance = (per_pixel.mean(dim=(1, 2)) if per_pixel.ndim == 3 else per_pixel.sum(dim=1))
            per_instance = per_instance.reshape(valid.shape)
            total = total + (per_instance * valid).sum() / valid.sum().clamp(min=1.0)
        return {MASK_LOSS_NAME: self.task_loss_weight * total / len(inst)}

    def _groundtruth(self, targets: Sequence[dict[str, Tensor]], boxes_px: Tensor) -> Tensor:
        """The groundtruth masks cropped by their boxes (normalised to the masks' frame), ``[B, N, S, S]``
        (zeros past each image's boxes)."""
        s = self.mask_size
        counts = [len(t["boxes"]) for t in targets]
        out = boxes_px.new_zeros((boxes_px.shape[0], boxes_px.shape[1], s, s))
        masks = torch.cat([t["masks"] for t in targets]).to(boxes_px.device)
        positions = torch.arange(boxes_px.shape[1], device=boxes_px.device)
        keep = positions[None] < torch.tensor(counts, device=boxes_px.device)[:, None]  # [B, N]
        out[keep] = crop_masks(masks, normalized_boxes(boxes_px[keep], *masks.shape[-2:]), s)
        return out

    def postprocess(self, predictions: dict[str, list[Tensor]], detections: dict[str, Tensor], stride: int
                    ) -> dict[str, Tensor]:
        """``detection_masks [B, D, mask_size, mask_size]``: sigmoid of the mask logits of each detected
        box, from the last feature output. The boxes are ``detections["detection_boxes_strided"]`` (xyxy
        in feature-map cells, the TF OD API's ``detection_boxes_strided``: clipped to the map, not to
        the image inside the padding) when given, else ``detection_boxes`` (xyxy pixels) / ``stride``."""
        ie, pe = predictions[INSTANCE_EMBEDDING][-1], predictions[PIXEL_EMBEDDING][-1]
        h, w = pe.shape[-2:]
        strided = detections.get("detection_boxes_strided")
        if strided is None:
            strided = detections["detection_boxes"] / stride
        boxes = normalized_boxes(strided.to(pe.dtype), h, w)
        if boxes.shape[1] == 0:
            return {"detection_masks": pe.new_zeros((boxes.shape[0], 0, self.mask_size, self.mask_size))}
        return {"detection_masks": torch.sigmoid(self.mask_logits(ie, pe, boxes))}
