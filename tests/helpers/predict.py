"""A tiny SSD model folder (one untrained checkpoint, class bias 0) for the predict and export tests."""

from __future__ import annotations

from pathlib import Path

import torch

from raredet import builders, config
from raredet.data.synth import make_synthetic_dataset
from raredet.engine.checkpoint import save_checkpoint

# A tiny SSD on 64x64 inputs; NEAREST_NEIGHBOR resizing makes a 2x pixel-doubled image resize back to
# exactly the original, which lets a test check the mapping of boxes to the stored image's pixels.
CONFIG = """
model { ssd {
  num_classes: 3
  image_resizer { fixed_shape_resizer { height: 64 width: 64 resize_method: NEAREST_NEIGHBOR } }
  feature_extractor { type: "ssd_resnet18_v1_fpn" depth_multiplier: 0.25 min_depth: 8
                      fpn { min_level: 3 max_level: 5 additional_layer_depth: 16 } }
  box_coder { faster_rcnn_box_coder { } }
  matcher { argmax_matcher { matched_threshold: 0.5 unmatched_threshold: 0.4 } }
  similarity_calculator { iou_similarity { } }
  anchor_generator { multiscale_anchor_generator { min_level: 3 max_level: 5 anchor_scale: 2.0
                     aspect_ratios: [1.0, 2.0, 0.5] scales_per_octave: 1 } }
  box_predictor { weight_shared_convolutional_box_predictor { depth: 16 num_layers_before_predictor: 1
                  kernel_size: 3 class_prediction_bias_init: -4.6 } }
  post_processing { batch_non_max_suppression { score_threshold: 0.05 iou_threshold: 0.5
                    max_detections_per_class: 20 max_total_detections: 20 } score_converter: SIGMOID }
  loss { classification_loss { weighted_sigmoid_focal { alpha: 0.25 gamma: 2.0 } }
         localization_loss { weighted_smooth_l1 { } } }
} }
train_config { batch_size: 2 num_steps: 1 optimizer { momentum_optimizer { learning_rate {
  constant_learning_rate { learning_rate: 0.01 } } } } }
train_input_reader { label_map_path: "label_map.pbtxt"
                     tf_record_input_reader { input_path: "train-*.tfrecord" } }
eval_input_reader { label_map_path: "label_map.pbtxt"
                    tf_record_input_reader { input_path: "val-*.tfrecord" } }
"""


def make_model_dir(root: Path) -> tuple[Path, Path]:
    """(model_dir with one checkpoint, data dir with images/). The class head's bias is set to 0 so that
    the untrained model scores about 0.5 everywhere: plenty of detections to check."""
    data = root / "data"
    make_synthetic_dataset(data, images=8, image_size=64, num_shards=1, min_val_boxes=1, val_fraction=0.25)
    (data / "pipeline.config").write_text(CONFIG)
    loaded = config.load(data / "pipeline.config")
    torch.manual_seed(0)
    model, _ = builders.build_model(loaded.pipeline.model.ssd)
    state = model.state_dict()
    bias = next(k for k in state if k.endswith("class_head.bias"))
    state[bias] = torch.zeros_like(state[bias])
    model_dir = root / "run"
    save_checkpoint(model_dir, 1, {"model": state,
                                   "config_text": config.effective_config_text(loaded.pipeline),
                                   "label_map_text": loaded.label_map.to_pbtxt()})
    return model_dir, data
