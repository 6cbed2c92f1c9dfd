"""raredet.modeling: the SSD meta-architecture (RetinaNet family) in plain torch.

``SSD`` (ssd.py) is the model; ``load_checkpoint_weights`` (pretrained.py) loads torchvision
backbones or raredet checkpoints into it. Box geometry, coding, matching, anchors and NMS live in
box_ops.py, box_coder.py, matcher.py, anchors.py and postprocess.py, which the losses use too.
"""

from raredet.modeling.pretrained import LoadReport, load_checkpoint_weights
from raredet.modeling.ssd import SSD

__all__ = ["SSD", "LoadReport", "load_checkpoint_weights"]
