"""The TF OD API's ``faster_rcnn_box_coder``: box <-> regression-target encoding.

For an anchor with centre ``(ya, xa)`` and size ``(ha, wa)`` and a box with centre ``(y, x)`` and size
``(h, w)`` the code is ``(ty, tx, th, tw) = (y_scale (y - ya) / ha, x_scale (x - xa) / wa,
height_scale log(h / ha), width_scale log(w / wa))`` — ordered ``y`` first, as the TF OD API does, so
weights trained there mean the same here. Boxes and anchors are ``xyxy``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

# Added to sizes before division and log, as the TF OD API does, so zero-size boxes give finite codes.
_EPSILON = 1e-8
# exp() of a larger log-scale overflows float32 long before it means anything; the clamp keeps a wild
# early-training prediction from producing inf boxes (and NaN losses downstream).
_MAX_LOG_SCALE = math.log(1000.0 / 16.0)


def _centers_and_sizes(boxes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``boxes [..., 4]`` xyxy -> (ycenter, xcenter, height, width), each ``[...]``."""
    height = boxes[..., 3] - boxes[..., 1]
    width = boxes[..., 2] - boxes[..., 0]
    return boxes[..., 1] + 0.5 * height, boxes[..., 0] + 0.5 * width, height, width


class FasterRcnnBoxCoder:
    """Encode boxes relative to anchors and decode predictions back (TF OD API ``faster_rcnn_box_coder``).

    Unlike the TF OD API, ``decode`` caps the size ratio to an anchor at 62.5 (``exp`` of
    ``log(1000/16)``, as torchvision does), so a diverging prediction cannot yield an infinite box.
    """

    code_size = 4

    def __init__(
        self,
        y_scale: float = 10.0,
        x_scale: float = 10.0,
        height_scale: float = 5.0,
        width_scale: float = 5.0,
    ) -> None:
        self.scales = (float(y_scale), float(x_scale), float(height_scale), float(width_scale))
        # the cap on decoded log size ratios; math.inf decodes exactly as the TF OD API (no cap)
        self.max_log_scale = _MAX_LOG_SCALE

    def encode(self, boxes: Tensor, anchors: Tensor) -> Tensor:
        """``boxes [..., 4]``, ``anchors [..., 4]`` (xyxy, broadcastable) -> ``[..., 4]`` (ty, tx, th, tw)."""
        ya, xa, ha, wa = _centers_and_sizes(anchors)
        y, x, h, w = _centers_and_sizes(boxes)
        ha, wa, h, w = ha + _EPSILON, wa + _EPSILON, h + _EPSILON, w + _EPSILON
        sy, sx, sh, sw = self.scales
        return torch.stack(
            [sy * (y - ya) / ha, sx * (x - xa) / wa, sh * torch.log(h / ha), sw * torch.log(w / wa)],
            dim=-1,
        )

    def decode(self, deltas: Tensor, anchors: Tensor) -> Tensor:
        """``deltas [..., 4]`` (ty, tx, th, tw), ``anchors [..., 4]`` xyxy -> boxes ``[..., 4]`` xyxy."""
        ya, xa, ha, wa = _centers_and_sizes(anchors)
        sy, sx, sh, sw = self.scales
        y = deltas[..., 0] / sy * ha + ya
        x = deltas[..., 1] / sx * wa + xa
        h = torch.exp((deltas[..., 2] / sh).clamp(max=self.max_log_scale)) * ha
        w = torch.exp((deltas[..., 3] / sw).clamp(max=self.max_log_scale)) * wa
        return torch.stack([x - 0.5 * w, y - 0.5 * h, x + 0.5 * w, y + 0.5 * h], dim=-1)
