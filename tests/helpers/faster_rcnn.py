"""A Faster R-CNN checkpoint of the small zoo copy for the command tests (eval, predict, export,
operating points): no training, the head layers scaled so its detections are distinct."""

from __future__ import annotations

from pathlib import Path

import torch
from tests.helpers.tiny_pipeline import make_data
from tests.helpers.zoo import faster_rcnn_small_copy

from raredet import builders, config
from raredet.engine.checkpoint import save_checkpoint

ZOO_NAME = "faster_rcnn_resnet50_v1_640x640_coco17_tpu-8.config"


def scaled_checkpoint(data: Path, images: int) -> tuple[Path, Path]:
    """(checkpoint folder data/run, config): synthetic data in `data` and a checkpoint of the untrained
    small zoo model whose class and box layers are scaled by 0.01, so scores spread around 1/4 (an
    untrained ResNet's pooled features are large) and boxes stay near their anchors / proposals:
    distinct detections to compare, no degenerate ties."""
    torch.set_num_threads(1)
    make_data(data, images=images)
    path = faster_rcnn_small_copy(ZOO_NAME, data)
    loaded = config.load(path)
    torch.manual_seed(0)
    model, _ = builders.build_model(builders.model_message(loaded.pipeline))
    state = model.state_dict()
    for key in ("box_head.cls.weight", "box_head.box.weight", "rpn.box.0.weight"):
        state[key] = state[key] * 0.01
    run = data / "run"
    save_checkpoint(run, 1, {"model": state, "config_text": config.effective_config_text(loaded.pipeline),
                             "label_map_text": loaded.label_map.to_pbtxt()})
    return run, path
