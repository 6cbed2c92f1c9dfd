"""Mask R-CNN Inception-ResNet v2 loaded from checkpoints the TF OD API wrote, against TensorFlow's outputs.

The fixture (tests/fixtures/tf_models/mask_rcnn_inception_resnet_v2, see its WRITTEN_BY) is the zoo's
mask_rcnn_inception_resnet_v2_1024x1024 config at 96x128, 3 classes; the config cannot narrow the
Inception-ResNet v2, so the writer narrowed the OD API's own Keras model (convs / 16, the first and last
block of each repeat) and this test builds raredet's the same way. Expectations are TensorFlow's numbers,
and the Keras layer order is checked against the variables' own names in the checkpoints.

Covered: every tensor loads ('full'); the 'classification' checkpoint (root feature_extractor, the Keras
application: what the zoo config's fine_tune_checkpoint_type reads) and 'detection' (both feature-extractor
models) load what TF's ``restore_from_objects`` restores and nothing else; the RPN, proposals, second stage,
detections and ``detection_masks`` equal TF's; ``raredet train`` of the config starting from the fixture.
"""

from __future__ import annotations

import functools
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from tests.helpers.mask_records import write_ellipse_records
from torch import nn

import raredet.config
from raredet import builders
from raredet.builders import faster_rcnn as builders_faster_rcnn
from raredet.commands.train import train_from_config
from raredet.config.label_map import LabelMap
from raredet.errors import CheckpointError
from raredet.modeling import load_checkpoint_weights
from raredet.modeling.inception_resnet_v2 import ConvBN, InceptionResnetBlock, InceptionResnetV2
from raredet.modeling.tf_weights.inception_resnet_v2 import (
    BOX_CLASSIFIER_MODULES,
    PROPOSAL_MODULES,
    keras_order,
)
from raredet.tfcheckpoint import open_checkpoint

FOLDER = Path(__file__).parents[1] / "fixtures" / "tf_models" / "mask_rcnn_inception_resnet_v2"
DETECTION, CLASSIFICATION = FOLDER / "checkpoint" / "ckpt-0", FOLDER / "classification" / "ckpt-0"
NARROW = functools.partial(InceptionResnetV2, depth_multiplier=1 / 16, min_depth=4, repeats=(2, 2, 2))
KEPT_BLOCKS = {"block35": (1, 10), "block17": (1, 20), "block8": (1, 10)}  # the writer's, by Keras name
HEIGHT, WIDTH = 96, 128
FEATURE_HW, CROP = (6, 8), 17  # block17_20_ac of a 96x128 input (stride 16); initial_crop_size


@pytest.fixture(autouse=True)
def narrow(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(builders_faster_rcnn, "InceptionResnetV2", NARROW)  # as the writer narrowed TF's


def build(config: Path = FOLDER / "pipeline.config") -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fields raredet parses but does not act on
        loaded = raredet.config.load(config)
    model, _ = builders.build_model(builders.model_message(loaded.pipeline))
    return model.eval()


@functools.cache
def tf_outputs() -> dict[str, np.ndarray]:
    return dict(np.load(FOLDER / "tf_outputs.npz"))


def image() -> torch.Tensor:
    return torch.from_numpy(tf_outputs()["resized_image"].astype(np.float32)).permute(2, 0, 1)[None]


def true_size() -> torch.Tensor:
    return torch.from_numpy(tf_outputs()["true_image_shape"][:2].astype(np.int64))[None]


def close(ours: torch.Tensor | np.ndarray, theirs: np.ndarray, tolerance: float = 1e-4) -> None:
    ours = np.asarray(ours, dtype=np.float64)
    assert ours.shape == theirs.shape
    assert np.abs(ours - theirs).max() <= tolerance * max(1.0, float(np.abs(theirs).max()))


def keras_names(network: InceptionResnetV2) -> dict[str, str]:
    """raredet layer -> the Keras layer's name in the TF-written checkpoint: the application names
    ``conv2d_bn``'s layers ``conv2d_N`` / ``freezable_batch_norm_N`` (N counting them in creation order,
    raredet's registration order) except ``conv_7b`` / ``conv_7b_bn``; the residual blocks' closing
    convs ``blockNN_i_conv``."""
    names, count = {}, 0
    for name, module in network.named_modules():
        if isinstance(module, ConvBN) and name != "conv_7b":
            suffix = f"_{count}" if count else ""
            names[f"{name}.0"], names[f"{name}.1"] = f"conv2d{suffix}", f"freezable_batch_norm{suffix}"
            count += 1
        elif isinstance(module, InceptionResnetBlock):
            kind, index = name.split(".")
            names[f"{name}.conv"] = f"{kind}_{KEPT_BLOCKS[kind][int(index)]}_conv"
    names["conv_7b.0"], names["conv_7b.1"] = "conv_7b", "conv_7b_bn"
    return names


# ---- what loads ------------------------------------------------------------------------------------


def test_full_checkpoint_loads_every_tensor():
    model = build()
    report = load_checkpoint_weights(model, DETECTION, "full")
    assert not report.missing and not report.unexpected and not report.shape_mismatch
    # 52 convs with a batch norm (kernel; beta, mean, variance), 6 residual convs (kernel, bias)
    assert report.parts["backbone"] == (220, 220) and 52 * 4 + 6 * 2 == 220
    assert report.parts["rpn"] == (6, 6) and report.parts["second_stage"] == (4, 4)
    assert report.parts["mask_head"] == (8, 8)  # 3 convs 3x3 of depth 16 and the last, each with a bias
    assert model.weights_convention == "tf"


@pytest.mark.parametrize(("checkpoint", "roots"), [
    (DETECTION, {"model/_feature_extractor_for_proposal_features": PROPOSAL_MODULES,
                 "model/_feature_extractor_for_box_classifier_features": BOX_CLASSIFIER_MODULES}),
    (CLASSIFICATION, {"feature_extractor": PROPOSAL_MODULES + BOX_CLASSIFIER_MODULES})])
def test_the_keras_layer_order_is_the_one_tf_saved(checkpoint, roots):
    """Each ``layer_with_weights-N`` raredet reads holds the variables of the Keras layer TF created for
    that raredet layer (the checkpoint's full names), in both functional models and the application."""
    network = build().backbone
    expected = keras_names(network)
    ckpt = open_checkpoint(checkpoint)
    variables, full_names = ckpt.variables(), ckpt.full_names()
    checked = 0
    for root, modules in roots.items():
        order = keras_order(network, modules)
        assert f"{root}/layer_with_weights-{len(order)}/kernel" not in variables  # nothing left over
        for index, (name, layer) in enumerate(order):
            leaf = "kernel" if isinstance(layer, nn.Conv2d) else "moving_mean"
            full_name = full_names[variables[f"{root}/layer_with_weights-{index}/{leaf}"]]
            assert full_name == f"{expected[name]}/{leaf}", (root, index, name)
            checked += 1
    assert checked == len(expected) == 2 * 52 + 6


def test_the_full_size_network_has_tfs_448_keras_weight_layers():
    # tests/fixtures/inception_resnet_v2/parity.json: the zoo's extractor creates 448 Conv2D / batch-norm
    # layers (make_parity.py counts them); keras_order covers each of raredet's exactly once
    network = InceptionResnetV2()
    order = keras_order(network, PROPOSAL_MODULES + BOX_CLASSIFIER_MODULES)
    assert len(order) == 448
    assert len({id(layer) for _, layer in order}) == 448


def test_classification_checkpoint_loads_the_backbone_only():
    model = build()
    rpn, mask = model.rpn.conv.weight.detach().clone(), model.mask_head.last.weight.detach().clone()
    report = load_checkpoint_weights(model, CLASSIFICATION, "classification")
    assert report.parts["backbone"] == (220, 220) and not report.unexpected
    assert report.parts["rpn"][0] == report.parts["mask_head"][0] == 0
    assert torch.equal(model.rpn.conv.weight, rpn) and torch.equal(model.mask_head.last.weight, mask)
    full = build()
    load_checkpoint_weights(full, DETECTION, "full")
    for name, tensor in full.backbone.state_dict().items():  # the same Keras application, saved twice
        assert torch.equal(tensor, model.backbone.state_dict()[name]), name
    # a detection checkpoint read as 'classification': its backbone, from both feature-extractor models
    other = build()
    report = load_checkpoint_weights(other, DETECTION, "classification")
    assert report.parts["backbone"] == (220, 220) and report.parts["mask_head"][0] == 0


def test_detection_checkpoint_loads_both_feature_extractor_models():
    # restore_from_objects('detection'): _feature_extractor_for_{proposal,box_classifier}_features only
    model = build()
    heads = [m.weight.detach().clone() for m in (model.rpn.conv, model.box_head.cls, model.mask_head.last)]
    report = load_checkpoint_weights(model, DETECTION, "detection")
    assert report.parts["backbone"] == (220, 220) and not report.unexpected
    # parts not read are named after their modules
    assert report.parts["rpn"][0] == report.parts["box_head"][0] == report.parts["mask_head"][0] == 0
    for before, after in zip(heads, (model.rpn.conv, model.box_head.cls, model.mask_head.last), strict=True):
        assert torch.equal(before, after.weight)
    full = build()
    load_checkpoint_weights(full, DETECTION, "full")
    for name, tensor in full.backbone.block8.state_dict().items():  # from the box classifier's model
        assert torch.equal(tensor, model.backbone.block8.state_dict()[name]), name


def test_full_for_another_number_of_classes_is_refused_and_detection_loads(tmp_path):
    config = tmp_path / "pipeline.config"
    text = (FOLDER / "pipeline.config").read_text()
    assert text.count("num_classes: 3") == 1
    config.write_text(text.replace("num_classes: 3", "num_classes: 5"))
    with pytest.raises(CheckpointError, match="'full' needs every tensor.*use 'detection'"):
        load_checkpoint_weights(build(config), DETECTION, "full")
    report = load_checkpoint_weights(build(config), DETECTION, "detection")
    assert report.parts["backbone"] == (220, 220) and not report.shape_mismatch


# ---- what it computes --------------------------------------------------------------------------------


@functools.cache
def loaded_outputs() -> tuple[nn.Module, dict, dict]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(builders_faster_rcnn, "InceptionResnetV2", NARROW)
        model = build()
    load_checkpoint_weights(model, DETECTION, "full")
    with torch.no_grad():
        out = model(image())
        det = model.postprocess(out, true_size())
    return model, out, det


def test_first_and_second_stage_equal_tensorflows():
    _, out, _ = loaded_outputs()
    tf = tf_outputs()
    objectness = tf["predict/rpn_objectness_predictions_with_background"]  # [A, 2]: background, object
    close(out["rpn_objectness"][0], objectness)
    close(out["rpn_box_deltas"][0], tf["predict/rpn_box_encodings"])
    assert np.abs(objectness).max() > 1.0
    close(out["anchors"].numpy()[:, [1, 0, 3, 2]], tf["predict/anchors"])
    n = int(tf["predict/num_proposals"])
    assert n == 16 and int(out["proposal_valid"][0].sum()) == n
    close(out["proposals"][0].numpy()[:, [1, 0, 3, 2]], tf["predict/proposal_boxes"])
    close(out["cls_logits"][0], tf["predict/class_predictions_with_background"])  # K + 1, background first
    close(out["box_deltas"][0], tf["predict/refined_box_encodings"])  # [P, K, 4]: a box per class


def test_detections_equal_tensorflows():
    _, _, det = loaded_outputs()
    tf = tf_outputs()
    n = int(tf["postprocess/num_detections"])
    assert n == int(det["num_detections"][0]) == 8
    boxes = det["detection_boxes"][0].numpy()[:, [1, 0, 3, 2]] / np.array([HEIGHT, WIDTH] * 2)
    close(boxes, tf["postprocess/detection_boxes"], 1e-5)
    close(det["detection_scores"][0], tf["postprocess/detection_scores"], 1e-5)
    assert (det["detection_classes"][0].numpy() == tf["postprocess/detection_classes"]).all()
    scores = tf["postprocess/detection_scores"]
    assert scores.max() > 0.8 and scores.min() < 0.3  # spread, not saturated


def last_sample(boxes: np.ndarray, axis: int) -> np.ndarray:
    """``tf.image.crop_and_resize``'s last sample position on the map along ``axis`` (0: y, 1: x), in
    float32 as its kernel computes it: ``lo (size - 1) + (S - 1) ((hi - lo) (size - 1) / (S - 1))``."""
    lo, hi = boxes[:, axis].astype(np.float32), boxes[:, axis + 2].astype(np.float32)
    top, steps = np.float32(FEATURE_HW[axis] - 1), np.float32(CROP - 1)
    return lo * top + steps * ((hi - lo) * top / steps)


def test_detection_masks_equal_tensorflows():
    """The third stage (the map cropped at each detection, the second half of the network, the mask
    head, the detection's class, sigmoid) gives TF's ``detection_masks``, every one of the 8. Where a box
    reaches the image's far edge, TF's native ``crop_and_resize`` lands the crop's last sample on the
    map's last cell or a rounding error past it -- then the crop's whole last row / column is 0 (the
    extrapolation value), and the mask differs by O(0.01). TF's box, decoded and normalised in another
    order of float32 operations, may differ from raredet's by one unit in the last place and fall on the
    other side (a fixture written with kernel_gain 1.1 had one such detection: TF's last sample at
    7.0000005 on an 8-cell map). None of this fixture's boxes does, which is checked here; such a box is
    compared through TF's own box in ``test_masks_of_tfs_boxes_equal_tensorflows``."""
    _, _, det = loaded_outputs()
    tf_masks = tf_outputs()["postprocess/detection_masks"]  # [D, 33, 33] probabilities in the box
    assert det["detection_masks"].shape == (1, *tf_masks.shape)
    assert tf_masks.min() < 0.2 and tf_masks.max() > 0.99 and tf_masks.std() > 0.1
    ours = det["detection_boxes"][0].numpy()[:, [1, 0, 3, 2]] / np.array([HEIGHT, WIDTH] * 2)
    theirs = tf_outputs()["postprocess/detection_boxes"]
    for axis in (0, 1):
        limit = FEATURE_HW[axis] - 1
        ours_past = last_sample(ours.astype(np.float32), axis) > limit
        assert ((last_sample(theirs, axis) > limit) == ours_past).all()
    assert (theirs[:, 2:] == 1.0).any()  # boxes reaching the far edges are among them
    close(det["detection_masks"][0].numpy(), tf_masks, 1e-5)


def test_masks_of_tfs_boxes_equal_tensorflows():
    """Every one of TF's masks, the edge cases included, from raredet's third stage on TF's boxes."""
    model, out, det = loaded_outputs()
    tf = tf_outputs()
    scale = np.float32([WIDTH, HEIGHT] * 2)  # normalised again by raredet: x / 128 exact, y / 96 to an ulp
    boxes = torch.from_numpy(tf["postprocess/detection_boxes"][:, [1, 0, 3, 2]] * scale)
    detections = {"detection_boxes": boxes[None], "detection_classes": det["detection_classes"].clone()}
    with torch.no_grad():
        masks = model._with_masks(out, detections)["detection_masks"][0]
    close(masks.numpy(), tf["postprocess/detection_masks"], 1e-5)


def test_a_mask_head_with_batch_norms_that_upsamples_equals_tensorflows():
    """The same model with the mask head in its other mode (``..._upsample``, WRITTEN_BY: 3 convs, the
    upsampling by 2, a conv, each conv with ``conv_hyperparams``' batch norm, then the last conv; one
    class-agnostic 18x18 mask): the mask head's Keras layers 0, 1, 3, 4, 6, 7, 10, 11, 13 map."""
    folder = FOLDER.with_name(f"{FOLDER.name}_upsample")
    model = build(folder / "pipeline.config")
    report = load_checkpoint_weights(model, folder / "checkpoint" / "ckpt-0", "full")
    assert not report.missing and not report.unexpected and not report.shape_mismatch
    # 4 convs without bias, each with a batch norm (gamma, beta, moving statistics); the last conv and bias
    assert report.parts["mask_head"] == (4 * (1 + 4) + 2, 22)
    assert model.mask_head.convolve_then_upsample and model.mask_head.last.out_channels == 1
    tf = dict(np.load(folder / "tf_outputs.npz"))
    pixels = torch.from_numpy(tf["resized_image"].astype(np.float32)).permute(2, 0, 1)[None]
    with torch.no_grad():
        det = model.postprocess(model(pixels), true_size())
    close(det["detection_scores"][0], tf["postprocess/detection_scores"], 1e-5)
    masks = tf["postprocess/detection_masks"]  # [8, 18, 18]
    assert masks.shape == (8, 18, 18) and masks.std() > 0.05
    close(det["detection_masks"][0], masks, 1e-5)


# ---- raredet train from the fixture ------------------------------------------------------------------


def _records(path: Path, count: int) -> None:
    """``count`` 96x128 records with one ellipse each: its class, box and PNG instance mask."""
    write_ellipse_records(path, count, HEIGHT, WIDTH, lambda i: (10 + 4 * i, 8, 110, 80 - 4 * i), "png")


@pytest.mark.slow  # about 30 s on a loaded 2-core CPU
def test_raredet_train_starts_from_the_tf_classification_checkpoint(tmp_path, capsys):
    """The fixture's config as the zoo ships it (fine_tune_checkpoint_type "classification"), pointed at
    the fixture's classification checkpoint: the load report names the whole backbone loaded, and with a
    learning rate too small to move a weight the trained backbone is still TF's."""
    LabelMap.from_names(["a", "b", "c"]).save(tmp_path / "label_map.pbtxt")
    _records(tmp_path / "train.tfrecord", 2)
    _records(tmp_path / "val.tfrecord", 1)
    text = (FOLDER / "pipeline.config").read_text()
    text = re.sub(r"train_config \{.*?\n\}\n", "", text, flags=re.S)
    text = re.sub(r"(train|eval)_input_reader \{.*?\n\}\n", "", text, flags=re.S)
    assert "train_config" not in text and "input_reader" not in text
    text += f"""
train_config {{ batch_size: 1 num_steps: 1
  optimizer {{ momentum_optimizer {{ learning_rate {{
    constant_learning_rate {{ learning_rate: 1e-20 }} }} }} }}
  fine_tune_checkpoint: "{CLASSIFICATION}" fine_tune_checkpoint_type: "classification" }}
train_input_reader {{ label_map_path: "{tmp_path}/label_map.pbtxt"
                     load_instance_masks: true mask_type: PNG_MASKS
                     tf_record_input_reader {{ input_path: "{tmp_path}/train.tfrecord" }} }}
eval_input_reader {{ label_map_path: "{tmp_path}/label_map.pbtxt"
                    load_instance_masks: true mask_type: PNG_MASKS
                    tf_record_input_reader {{ input_path: "{tmp_path}/val.tfrecord" }} }}
"""
    (tmp_path / "pipeline.config").write_text(text)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: one thread beats two contending for a busy machine
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = train_from_config(tmp_path / "pipeline.config", tmp_path / "run", num_workers=0,
                                       device="cpu")
    finally:
        torch.set_num_threads(threads)
    printed = capsys.readouterr().out
    assert "backbone 220/220 loaded" in printed and "computing with TF's conventions" in printed
    assert result.step == 1 and np.isfinite(list(result.last_losses.values())).all()
    state = torch.load(tmp_path / "run" / "ckpt-1.pt", weights_only=True)["model"]
    reference = build()
    load_checkpoint_weights(reference, CLASSIFICATION, "classification")
    for name, tensor in reference.backbone.state_dict().items():
        if not name.endswith("num_batches_tracked"):
            assert torch.allclose(state[f"backbone.{name}"], tensor, atol=1e-6), name

