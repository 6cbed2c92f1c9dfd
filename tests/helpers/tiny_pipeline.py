"""A tiny synthetic dataset and pipeline.config for fast tests of builders and training on the SSD.

64x64 images, a ResNet-18 FPN at depth multiplier 0.25 with 16-channel FPN and predictor, batch 2.
"""

from __future__ import annotations

from pathlib import Path

from raredet.data.synth import make_synthetic_dataset

LOSS_BLOCK = """
      classification_loss { weighted_sigmoid_focal { alpha: 0.25 gamma: 2.0 } }
      localization_loss { weighted_smooth_l1 { } }
"""

TEMPLATE = """
model {{ ssd {{
  num_classes: 3
  image_resizer {{ fixed_shape_resizer {{ height: 64 width: 64 }} }}
  feature_extractor {{
    type: "ssd_resnet18_v1_fpn" depth_multiplier: 0.25 min_depth: 8
    conv_hyperparams {{ regularizer {{ l2_regularizer {{ weight: 0.0004 }} }} }}
    fpn {{ min_level: 3 max_level: 5 additional_layer_depth: 16 }}
  }}
  box_coder {{ faster_rcnn_box_coder {{ }} }}
  matcher {{ argmax_matcher {{ matched_threshold: 0.5 unmatched_threshold: 0.4
                               force_match_for_each_row: true }} }}
  similarity_calculator {{ iou_similarity {{ }} }}
  anchor_generator {{ multiscale_anchor_generator {{ min_level: 3 max_level: 5 anchor_scale: 2.0
                      aspect_ratios: [1.0, 2.0, 0.5] scales_per_octave: 1 }} }}
  box_predictor {{ weight_shared_convolutional_box_predictor {{
    depth: 16 num_layers_before_predictor: 1 kernel_size: 3 class_prediction_bias_init: -4.6 }} }}
  post_processing {{ batch_non_max_suppression {{ score_threshold: 0.05 iou_threshold: 0.5
      max_detections_per_class: 20 max_total_detections: 20 }} score_converter: SIGMOID }}
  normalize_loss_by_num_matches: true
  loss {{
{loss}
  }}
}} }}
train_config {{
  batch_size: 2
  num_steps: 4
  data_augmentation_options {{ random_horizontal_flip {{ }} }}
  optimizer {{
    momentum_optimizer {{ learning_rate {{ constant_learning_rate {{ learning_rate: {lr} }} }} }}
    use_moving_average: false
  }}
{train_extra}
}}
train_input_reader {{
  label_map_path: "label_map.pbtxt"
  tf_record_input_reader {{ input_path: "train-*.tfrecord" }}
{reader_extra}
}}
eval_config {{ metrics_set: "coco_detection_metrics" }}
eval_input_reader {{
  label_map_path: "label_map.pbtxt"
  shuffle: false
  tf_record_input_reader {{ input_path: "val-*.tfrecord" }}
}}
"""


def make_data(out: Path, images: int = 10) -> dict:
    """Synthetic TFRecords, label map and summary (box counts) in `out`."""
    return make_synthetic_dataset(out, images=images, image_size=64, num_shards=1, min_val_boxes=2,
                                  val_fraction=0.3)


def write_config(data_dir: Path, name: str = "pipeline.config", *, loss: str = LOSS_BLOCK,
                 lr: float = 0.01, train_extra: str = "", reader_extra: str = "") -> Path:
    path = data_dir / name
    path.write_text(TEMPLATE.format(loss=loss, lr=lr, train_extra=train_extra, reader_extra=reader_extra))
    return path
