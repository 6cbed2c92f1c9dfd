"""builders.faster_rcnn: unset fields take the proto's defaults (read from the message, floats as the
config writes them), and what raredet cannot build is refused naming the field."""

from __future__ import annotations

import pytest
import torch
from google.protobuf import text_format

from raredet.builders.faster_rcnn import build_faster_rcnn
from raredet.errors import ConfigError
from raredet.modeling.faster_rcnn import FasterRCNN
from raredet.protos import faster_rcnn_pb2

# The fields without a usable default (sizes 0, no anchors, no box predictor), smallest ResNet.
REQUIRED = """num_classes: 2 initial_crop_size: 4 maxpool_kernel_size: 2 maxpool_stride: 2
feature_extractor { type: "faster_rcnn_resnet50_keras" }
first_stage_anchor_generator { grid_anchor_generator { } }
second_stage_box_predictor { mask_rcnn_box_predictor {  } }"""


def _build(text: str = REQUIRED, extra: str = "") -> FasterRCNN:
    msg = text_format.Parse(text, faster_rcnn_pb2.FasterRcnn())
    text_format.Merge(extra, msg)
    return build_faster_rcnn(msg)


def test_unset_fields_take_the_proto_defaults():
    model = _build()
    # faster_rcnn.proto: first_stage_max_proposals 300, first_stage_nms_iou_threshold 0.7 (as written,
    # not its float32 0.699999988), score threshold 0, second stage 64 at 0.25, no anchor clipping
    assert model.max_proposals == 300 and model.proposal_nms.max_total_detections == 300
    assert model.proposal_nms.iou_threshold == 0.7 and model.proposal_nms.score_threshold == 0.0
    assert (model.second_stage_batch_size, model.second_stage_balance_fraction) == (64, 0.25)
    assert not model.clip_anchors_to_image and not model.matmul_crops
    # first_stage_box_predictor_kernel_size 3, _depth 512, _atrous_rate 1
    conv = model.rpn.conv
    assert (conv.kernel_size, conv.out_channels, conv.dilation) == ((3, 3), 512, (1, 1))
    # mask_rcnn_box_predictor: a box per class (share_box_across_classes false), no dropout
    assert model.box_head.num_boxes == 2 and isinstance(model.box_head.dropout, torch.nn.Identity)
    # post_processing: score_converter IDENTITY, logit_scale 1
    assert (model.score_converter.score_converter, model.score_converter.logit_scale) == ("IDENTITY", 1.0)
    assert model.score_converter.background_column
    # batch_norm_trainable false: the backbone's batch norms are frozen
    assert not model.backbone.bn1.weight.requires_grad


def test_set_fields_reach_the_parts():
    model = _build(extra="""first_stage_nms_iou_threshold: 0.6 first_stage_max_proposals: 20
        first_stage_box_predictor_depth: 32 first_stage_atrous_rate: 2
        second_stage_box_predictor { mask_rcnn_box_predictor {
            share_box_across_classes: true use_dropout: true dropout_keep_probability: 0.8 } }
        second_stage_post_processing { score_converter: SOFTMAX logit_scale: 2.0 }""")
    assert model.proposal_nms.iou_threshold == 0.6 and model.max_proposals == 20
    assert model.rpn.conv.out_channels == 32 and model.rpn.conv.dilation == (2, 2)
    assert model.box_head.num_boxes == 1
    assert model.box_head.dropout.p == pytest.approx(0.2)  # 1 - keep probability
    assert (model.score_converter.score_converter, model.score_converter.logit_scale) == ("SOFTMAX", 2.0)


FPN = REQUIRED.replace("faster_rcnn_resnet50_keras", "faster_rcnn_resnet50_fpn_keras").replace(
    "grid_anchor_generator { }", "multiscale_anchor_generator { min_level: 2 max_level: 6 }")


BOX_PREDICTOR = "second_stage_box_predictor { mask_rcnn_box_predictor { %s } }"
MASKS = "predict_instance_masks: true conv_hyperparams { op: CONV }"
# name -> (message text, merged onto it, the error after "model.faster_rcnn.")
ERRORS = {
    "extractor type": (REQUIRED, 'feature_extractor { type: "faster_rcnn_inception_v2" }',
                       r"feature_extractor\.type: 'faster_rcnn_inception_v2' is not supported"),
    "stride": (REQUIRED, "feature_extractor { first_stage_features_stride: 8 }",
               r"feature_extractor\.first_stage_features_stride is 8"),
    "anchors for FPN": (REQUIRED, 'feature_extractor { type: "faster_rcnn_resnet50_fpn_keras" }',
                        r"first_stage_anchor_generator: the FPN feature extractors take "
                        r"multiscale_anchor_generator \(got \['grid_anchor_generator'\]\)"),
    "anchor levels": (FPN, "first_stage_anchor_generator { multiscale_anchor_generator { max_level: 7 } }",
                      r"first_stage_anchor_generator\.multiscale_anchor_generator: levels 2\.\.7 differ "
                      r"from feature_extractor\.fpn levels 3\.\.7"),
    "masks with 2 stages": (REQUIRED, BOX_PREDICTOR % "predict_instance_masks: true",
                            r"number_of_stages is 2 with mask_rcnn_box_predictor\.predict_instance_masks "
                            r"true; .* make the two agree"),
    "3 stages without masks": (REQUIRED, "number_of_stages: 3",
                               r"number_of_stages is 3 with mask_rcnn_box_predictor\.predict_instance_masks "
                               r"false"),
    "keypoints": (REQUIRED, BOX_PREDICTOR % "predict_keypoints: true",
                  r"second_stage_box_predictor\.mask_rcnn_box_predictor\.predict_keypoints: Mask R-CNN's "
                  r"keypoint head is not supported"),
    "masks without conv_hyperparams": (
        REQUIRED, "number_of_stages: 3 " + BOX_PREDICTOR % "predict_instance_masks: true",
        r"second_stage_box_predictor\.mask_rcnn_box_predictor\.conv_hyperparams: the mask head's "
        r"convolutions need it"),
    "masks on FPN": (
        FPN, "number_of_stages: 3 " + BOX_PREDICTOR % MASKS,
        r"second_stage_box_predictor\.mask_rcnn_box_predictor\.predict_instance_masks: masks are built on "
        r"the single-map feature extractors"),
    "upsampling factor": (REQUIRED, "number_of_stages: 3 initial_crop_size: 8 " + BOX_PREDICTOR % (
                              MASKS + " convolve_then_upsample_masks: true mask_height: 5"),
                          r"second_stage_box_predictor\.mask_rcnn_box_predictor\."
                          r"convolve_then_upsample_masks: mask_height and mask_width \(5, 15\) must be "
                          r"multiples of the second stage's feature size 2"),
    "irv2 stride 8": (REQUIRED, 'feature_extractor { type: "faster_rcnn_inception_resnet_v2_keras" '
                      "first_stage_features_stride: 8 }",
                      r"feature_extractor\.first_stage_features_stride is 8; the ResNet and "
                      r"Inception-ResNet v2 feature extractors have stride 16"),
    "box code size": (REQUIRED, BOX_PREDICTOR % "box_code_size: 5",
                      r"second_stage_box_predictor\.mask_rcnn_box_predictor\.box_code_size is 5"),
    "no box predictor": (REQUIRED.replace(BOX_PREDICTOR % "", ""), "",
                         r"second_stage_box_predictor: set mask_rcnn_box_predictor \(got none\)"),
    "crop size": (REQUIRED, "initial_crop_size: 0", r"initial_crop_size is 0"),
    "stages": (REQUIRED, "number_of_stages: 1", r"number_of_stages is 1"),
    "classes": (REQUIRED, "num_classes: 0", r"num_classes must be at least 1"),
}


@pytest.mark.parametrize(("text", "extra", "match"), ERRORS.values(), ids=ERRORS.keys())
def test_config_errors_name_the_field(text, extra, match):
    with pytest.raises(ConfigError, match=r"^model\.faster_rcnn\." + match):
        _build(text, extra)


def test_mask_head_takes_the_proto_defaults_and_the_inception_resnet_v2_features():
    irv2 = 'feature_extractor { type: "faster_rcnn_inception_resnet_v2_keras" }'
    model = _build(extra=f"number_of_stages: 3 {irv2} " + BOX_PREDICTOR % MASKS)
    head = model.mask_head
    assert head is not None
    # box_predictor.proto: mask_height / mask_width 15, mask_prediction_num_conv_layers 2,
    # mask_prediction_conv_depth 256, class-specific masks, resize first
    assert head.mask_size == (15, 15) and not head.convolve_then_upsample
    convs = [m for m in head.convs if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(1536, 256)]  # conv_7b's 1536 channels
    assert head.last.out_channels == 2
    # the Inception-ResNet v2 extractor: 1088-channel first-stage map for the RPN, 1536 for the box head
    assert model.rpn.conv.in_channels == 1088 and model.box_head.cls.in_features == 1536
    # its TF preprocess, (2 / 255) x - 1
    assert model.pixel_mean.flatten().tolist() == [127.5] * 3
    assert model.pixel_std.flatten().tolist() == [127.5] * 3
    # batch_norm_trainable false: moving statistics, the betas still train (TF's FreezableBatchNorm)
    assert model.backbone.conv_7b[1].frozen and model.backbone.conv_7b[1].bias.requires_grad
