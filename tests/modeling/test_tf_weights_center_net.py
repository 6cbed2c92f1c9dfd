"""CenterNet loaded from checkpoints the TF OD API wrote, against TensorFlow's own outputs.

Fixtures (tests/fixtures/tf_models/center_net_*, each folder's WRITTEN_BY says how
write_center_net_fixture.py wrote it): narrow versions of the zoo's CenterNet configs on a 48x64 image
padded to 64x64 (a 16x16 output map), with every TF variable drawn at random, so a missed, transposed
or mis-assigned tensor changes the outputs by O(1). raredet builds the same narrow models (the widths
the writer narrowed TF's to) and must give TF's heatmaps, box maps, detections (and keypoints / masks)
after loading. Expectations are TensorFlow's numbers; restore_from_objects' choices are TF's code
(meta_architectures/center_net_meta_arch.py).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import raredet.config
from raredet import builders
from raredet.builders import center_net as builders_center_net
from raredet.errors import CheckpointError
from raredet.modeling import center_net_resnet_fpn, hourglass, load_checkpoint_weights, resnet_v2
from raredet.modeling.backbones import ResNet
from raredet.modeling.resnet_v2 import CenterNetResNetV2

FIXTURES = Path(__file__).parents[1] / "fixtures" / "tf_models"
RESNET_V1 = FIXTURES / "center_net_resnet50_v1_fpn"


def narrow_resnet_v1_fpn(monkeypatch: pytest.MonkeyPatch) -> None:
    """As the writer narrowed TF's: the Keras ResNet-50 at 1/32 (min 4), top-down 256/128/64 -> 16/8/8."""
    def narrow(depth: int, **_: object) -> ResNet:
        return ResNet(depth, depth_multiplier=1 / 32, min_depth=4, keras_widths=True)

    monkeypatch.setattr(center_net_resnet_fpn, "ResNet", narrow)
    monkeypatch.setattr(center_net_resnet_fpn, "TOP_DOWN_FILTERS", (16, 8, 8))
    monkeypatch.setattr(center_net_resnet_fpn, "TOP_DOWN_OUTPUTS", (8, 8, 8))


def build(folder: Path) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fields raredet parses but does not act on
        loaded = raredet.config.load(folder / "pipeline.config")
    model, _ = builders.build_model(builders.model_message(loaded.pipeline))
    return model.eval()


def tf_outputs(folder: Path) -> dict[str, np.ndarray]:
    return dict(np.load(folder / "tf_outputs.npz"))


def run(model: nn.Module, tf: dict[str, np.ndarray]) -> tuple[dict, dict]:
    image = torch.from_numpy(tf["resized_image"].astype(np.float32)).permute(2, 0, 1)[None]
    size = torch.from_numpy(tf["true_image_shape"][:2].astype(np.int64))[None]
    with torch.no_grad():
        out = model(image)
        return out, model.postprocess(out, size)


def nchw(array: np.ndarray) -> np.ndarray:
    return array.transpose(2, 0, 1)


def assert_close(ours: torch.Tensor, theirs: np.ndarray, tolerance: float = 1e-4) -> None:
    scale = max(float(np.abs(theirs).max()), 1.0)
    assert ours.shape == theirs.shape
    assert float(np.abs(ours.detach().numpy() - theirs).max()) < tolerance * scale


def assert_detections_equal(det: dict, tf: dict) -> None:
    """TF's boxes are normalised (ymin, xmin, ymax, xmax) to the true image, raredet's xyxy pixels."""
    height, width = (int(v) for v in tf["true_image_shape"][:2])
    n = int(tf["postprocess/num_detections"])
    assert int(det["num_detections"][0]) == n > 0
    boxes = det["detection_boxes"][0, :n].numpy()[:, [1, 0, 3, 2]] / np.array([height, width] * 2)
    assert np.abs(boxes - tf["postprocess/detection_boxes"][:n]).max() < 1e-5
    scores = det["detection_scores"][0, :n].numpy()
    assert np.abs(scores - tf["postprocess/detection_scores"][:n]).max() < 1e-5
    assert (det["detection_classes"][0, :n].numpy() == tf["postprocess/detection_classes"][:n]).all()


def assert_detection_task_equals(out: dict, det: dict, tf: dict) -> None:
    for ours, theirs in (("object_center", "object_center"), ("box/scale", "box/scale"),
                         ("box/offset", "box/offset")):
        assert_close(out[ours][-1, 0], nchw(tf[f"predict/{theirs}_0"]))
    assert np.ptp(tf["predict/object_center_0"]) > 0.3  # not a flat map: the weights count
    assert_detections_equal(det, tf)


def test_resnet_v1_fpn_full_checkpoint_gives_tensorflows_outputs(monkeypatch):
    narrow_resnet_v1_fpn(monkeypatch)
    model = build(RESNET_V1)
    report = load_checkpoint_weights(model, RESNET_V1 / "checkpoint" / "ckpt-0", "full")
    assert not report.missing and not report.unexpected and not report.shape_mismatch
    # 53 convs (each with Keras' bias) and 53 batch norms (4 tensors each) of the Keras ResNet-50
    assert report.parts["backbone"] == (53 * 2 + 53 * 4, 53 * 2 + 53 * 4)
    assert report.parts["fpn"] == (4 * 2 + 3 * 2 + 3 * 4,) * 2
    assert report.parts["object_detection"] == (12, 12)
    assert model.weights_convention == "tf"
    tf = tf_outputs(RESNET_V1)
    out, det = run(model, tf)
    assert_close(model.feature_extractor(  # the features TF's extractor returns
        (torch.from_numpy(tf["resized_image"]).permute(2, 0, 1)[None].float() - model.pixel_mean)
        / model.pixel_std)[0][0], nchw(tf["predict/extracted_features_0"]))
    assert_detection_task_equals(out, det, tf)


def test_resnet_v1_fpn_detection_checkpoint_loads_the_extractor_only(monkeypatch):
    # restore_from_objects('detection'): model/_feature_extractor (ResNet and top-down path), no heads
    narrow_resnet_v1_fpn(monkeypatch)
    model = build(RESNET_V1)
    heads = {k: v.clone() for k, v in model.object_detection.state_dict().items()}
    report = load_checkpoint_weights(model, RESNET_V1 / "checkpoint" / "ckpt-0", "detection")
    assert report.parts["backbone"][0] == report.parts["backbone"][1] > 300
    assert report.parts["fpn"][0] == report.parts["fpn"][1] > 0
    assert report.parts["object_detection"][0] == 0 and not report.unexpected
    for name, tensor in model.object_detection.state_dict().items():
        assert torch.equal(tensor, heads[name]), name
    full = build(RESNET_V1)
    load_checkpoint_weights(full, RESNET_V1 / "checkpoint" / "ckpt-0", "full")
    for name, tensor in full.feature_extractor.state_dict().items():
        assert torch.equal(tensor, model.feature_extractor.state_dict()[name]), name


def test_resnet_v1_fpn_classification_checkpoint_loads_the_keras_resnet_only(monkeypatch):
    # restore_from_objects('classification'): {'feature_extractor': classification_backbone} (_base_model)
    narrow_resnet_v1_fpn(monkeypatch)
    model = build(RESNET_V1)
    top = model.feature_extractor.top.weight.detach().clone()
    report = load_checkpoint_weights(model, RESNET_V1 / "classification" / "ckpt-0", "classification")
    assert report.parts["backbone"][0] == report.parts["backbone"][1] == 53 * 6
    assert not report.unexpected
    assert all(done == 0 for part, (done, _) in report.parts.items() if part != "backbone")
    assert torch.equal(model.feature_extractor.top.weight, top)
    full = build(RESNET_V1)
    load_checkpoint_weights(full, RESNET_V1 / "checkpoint" / "ckpt-0", "full")
    for name, tensor in full.feature_extractor.backbone.state_dict().items():  # the same Keras ResNet
        assert torch.equal(tensor, model.feature_extractor.backbone.state_dict()[name]), name
    # the backbone of a detection checkpoint, as classification: the same tensors, nothing else
    again = build(RESNET_V1)
    report = load_checkpoint_weights(again, RESNET_V1 / "checkpoint" / "ckpt-0", "classification")
    assert report.parts["backbone"][0] == 53 * 6
    assert all(done == 0 for part, (done, _) in report.parts.items() if part != "backbone")


def test_fine_tune_checkpoint_type_is_refused_with_tfs_advice(monkeypatch):
    narrow_resnet_v1_fpn(monkeypatch)
    model = build(RESNET_V1)
    with pytest.raises(ValueError, match="'fine_tune' is no longer supported for CenterNet.*'detection'"):
        load_checkpoint_weights(model, RESNET_V1 / "checkpoint" / "ckpt-0", "fine_tune")


def test_fine_tune_in_a_train_config_is_a_config_error_naming_the_field(monkeypatch):
    from raredet.errors import ConfigError
    from raredet.protos import train_pb2

    narrow_resnet_v1_fpn(monkeypatch)
    train_config = train_pb2.TrainConfig(fine_tune_checkpoint=str(RESNET_V1 / "checkpoint" / "ckpt-0"),
                                         fine_tune_checkpoint_type="fine_tune")
    with pytest.raises(ConfigError, match="train_config.fine_tune_checkpoint_type.*'detection'"):
        builders.load_fine_tune_checkpoint(build(RESNET_V1), train_config)


def test_a_checkpoint_of_another_extractor_is_refused_by_name(monkeypatch):
    model = build(RESNET_V1)  # full width: the checkpoint's ResNet is the narrow one
    with pytest.raises(CheckpointError):
        load_checkpoint_weights(model, FIXTURES / "faster_rcnn_resnet50_v1" / "checkpoint" / "ckpt-0", "full")


RESNET_V2_KPTS = FIXTURES / "center_net_resnet50_v2_kpts"


def narrow_resnet_v2(monkeypatch: pytest.MonkeyPatch) -> None:
    """As the writer narrowed TF's: Keras' ResNet50V2 at 1/16 (stem 4, bottlenecks 4/8/16/32 wide, 4x
    out), the upsampling stages 256/128/64 -> 16/8/8."""
    monkeypatch.setattr(resnet_v2, "STEM_FILTERS", 4)
    monkeypatch.setitem(builders_center_net.FEATURE_EXTRACTORS, "resnet_v2_50", lambda msg: CenterNetResNetV2(
        resnet_v2.RESNET_V2_BLOCKS[50], stage_filters=(4, 8, 16, 32), upsample_filters=(16, 8, 8)))


def test_resnet_v2_with_keypoints_full_checkpoint_gives_tensorflows_outputs(monkeypatch):
    narrow_resnet_v2(monkeypatch)
    model = build(RESNET_V2_KPTS)
    report = load_checkpoint_weights(model, RESNET_V2_KPTS / "checkpoint" / "ckpt-0", "full")
    assert not report.missing and not report.shape_mismatch
    # Keras' post_bn (after conv5, which the extractor never runs) is all the checkpoint has besides
    post_bn = {"gamma", "beta", "moving_mean", "moving_variance"}
    assert {p.rsplit("/", 1)[-1] for p in report.unexpected} == post_bn and len(report.unexpected) == 4
    assert report.parts["keypoints"] == (12, 12)  # heatmap, offset, regression: 2 convs each
    assert report.parts["upsample"][0] == report.parts["upsample"][1] == 3 * (2 * 2 + 2 * 4)
    tf = tf_outputs(RESNET_V2_KPTS)
    out, det = run(model, tf)
    assert_detection_task_equals(out, det, tf)
    for head in ("heatmap", "offset", "regression"):
        name = f"human_pose/keypoint/{head}"
        assert_close(out[name][-1, 0], nchw(tf[f"predict/{name}_0"]))
    # TF: (y, x) normalised to the true image; raredet: (x, y) input pixels
    n = int(tf["postprocess/num_detections"])
    height, width = (int(v) for v in tf["true_image_shape"][:2])
    keypoints = det["detection_keypoints"][0, :n].numpy()[..., ::-1] / np.array([height, width])
    assert np.abs(keypoints - tf["postprocess/detection_keypoints"][:n]).max() < 1e-5
    scores = det["detection_keypoint_scores"][0, :n].numpy()
    assert np.abs(scores - tf["postprocess/detection_keypoint_scores"][:n]).max() < 1e-5


def test_resnet_v2_classification_and_detection_select_tfs_objects(monkeypatch):
    narrow_resnet_v2(monkeypatch)
    model = build(RESNET_V2_KPTS)
    heads = {k: v.clone() for k, v in model.tasks.state_dict().items()}
    report = load_checkpoint_weights(model, RESNET_V2_KPTS / "checkpoint" / "ckpt-0", "detection")
    assert report.parts["backbone"][0] == report.parts["backbone"][1] > 200
    assert report.parts["upsample"][0] == report.parts["upsample"][1]
    assert all(done == 0 for part, (done, _) in report.parts.items() if part not in ("backbone", "upsample"))
    for name, tensor in model.tasks.state_dict().items():
        assert torch.equal(tensor, heads[name]), name
    backbone_only = build(RESNET_V2_KPTS)
    path = RESNET_V2_KPTS / "checkpoint" / "ckpt-0"
    report = load_checkpoint_weights(backbone_only, path, "classification")
    assert report.parts["backbone"][0] == report.parts["backbone"][1]
    assert all(done == 0 for part, (done, _) in report.parts.items() if part != "backbone")


HOURGLASS_DEEPMAC = FIXTURES / "center_net_hourglass10_deepmac"


def test_hourglass_with_deepmac_full_checkpoint_gives_tensorflows_outputs(monkeypatch):
    monkeypatch.setitem(hourglass.CENTER_NET_NUM_CHANNELS, "hourglass_10", 4)  # as the writer's TF model
    model = build(HOURGLASS_DEEPMAC)
    report = load_checkpoint_weights(model, HOURGLASS_DEEPMAC / "checkpoint" / "ckpt-0", "full")
    assert not report.missing and not report.shape_mismatch
    # DeepMAC's random generator for its self-supervised augmentation (training only): no raredet tensor
    assert report.unexpected == ["model/_self_supervised_rng/_state_var"]
    assert report.parts["hourglass"][0] == report.parts["hourglass"][1] > 50
    assert report.parts["deepmac"][0] == report.parts["deepmac"][1] > 50
    tf = tf_outputs(HOURGLASS_DEEPMAC)
    out, det = run(model, tf)
    assert_detection_task_equals(out, det, tf)
    for ours, theirs in (("deepmac/instance_embedding", "INSTANCE_EMBEDDING"),
                         ("deepmac/pixel_embedding", "PIXEL_EMBEDDING")):
        assert_close(out[ours][-1, 0], nchw(tf[f"predict/{theirs}_0"]))
    # TF crops the mask inputs with the boxes clipped to the map, not to the true image (boxes_strided): 4 of
    # the 20 detections reach into the padding (centres in rows 48..64), where the two differ
    n = int(tf["postprocess/num_detections"])
    strided = tf["postprocess/detection_boxes_strided"][:n]  # ymin, xmin, ymax, xmax on the 16x16 map
    assert (strided[:, 2] > int(tf["true_image_shape"][0]) // 4).sum() == 4
    masks = tf["postprocess/detection_masks"][:n]
    assert np.abs(det["detection_masks"][0, :n].numpy() - masks).max() < 1e-4
    assert np.ptp(masks) > 0.05


def test_hourglass_detection_checkpoint_loads_the_extractor_and_classification_none(monkeypatch):
    # TF: 'detection' = model/_feature_extractor (the hourglass), not the heads nor DeepMAC's _mask_net;
    # the hourglass extractors have no classification_backbone (TF raises NotImplementedError)
    monkeypatch.setitem(hourglass.CENTER_NET_NUM_CHANNELS, "hourglass_10", 4)
    model = build(HOURGLASS_DEEPMAC)
    report = load_checkpoint_weights(model, HOURGLASS_DEEPMAC / "checkpoint" / "ckpt-0", "detection")
    assert report.parts["hourglass"][0] == report.parts["hourglass"][1]
    assert all(done == 0 for part, (done, _) in report.parts.items() if part != "hourglass")
    with pytest.raises(CheckpointError, match="no TF variable matched"):
        load_checkpoint_weights(build(HOURGLASS_DEEPMAC), HOURGLASS_DEEPMAC / "checkpoint" / "ckpt-0",
                                "classification")


def keras_v2_module(layer: str) -> str:
    """A Keras ResNetV2 layer name -> raredet's module: ``conv3_block2_1_bn`` -> ``conv3.1.bn1``."""
    if layer == "conv1_conv":
        return "conv1"
    stage, block, rest = layer.split("_", 2)
    if rest != "preact_bn":
        number, kind = rest.split("_")
        rest = f"{kind}{number}"
    return f"{stage}.{int(block.removeprefix('block')) - 1}.{rest}"


def test_resnet_v2_layer_order_is_the_checkpoints_own(monkeypatch):
    # layer_with_weights-N is an index: the checkpoint's full names (Keras' layer names) say which layer
    from raredet.modeling.tf_weights import center_net as tf_center_net
    from raredet.tfcheckpoint import open_checkpoint

    narrow_resnet_v2(monkeypatch)
    model = build(RESNET_V2_KPTS)
    ckpt = open_checkpoint(RESNET_V2_KPTS / "checkpoint" / "ckpt-0")
    variables, full_names = ckpt.variables(), ckpt.full_names()
    shapes = {p: tuple(ckpt.info(k).shape) for p, k in variables.items()}
    maps = [m for m in tf_center_net.tensor_maps(model, shapes) if m.part == "backbone"]
    assert len(maps) > 200
    for item in maps:
        layer = full_names[variables[item.source]].rsplit("/", 1)[0]
        assert item.target.rsplit(".", 1)[0] == f"feature_extractor.{keras_v2_module(layer)}", item


TRAIN = """
train_config {{
  batch_size: 2
  num_steps: 1
  optimizer {{ adam_optimizer {{ learning_rate {{ constant_learning_rate {{ learning_rate: 1e-4 }} }} }}
               use_moving_average: false }}
  fine_tune_checkpoint: "{checkpoint}"
  fine_tune_checkpoint_type: "{kind}"
}}
train_input_reader {{
  label_map_path: "label_map.pbtxt"
  tf_record_input_reader {{ input_path: "train-*.tfrecord" }}
}}
eval_config {{ metrics_set: "coco_detection_metrics" }}
eval_input_reader {{
  label_map_path: "label_map.pbtxt"
  shuffle: false
  tf_record_input_reader {{ input_path: "val-*.tfrecord" }}
}}
"""


@pytest.mark.slow  # a whole `raredet train` run (statistics, data, a step, checkpoint): ~40 s, 2 busy cores
def test_raredet_train_starts_from_the_tf_checkpoint(monkeypatch, tmp_path, capsys):
    """`raredet train` on the fixture's CenterNet config (3 classes, the synthetic data) with
    fine_tune_checkpoint at the TF OD API's ckpt-0: the load report says what loaded, the model computes
    with TF's conventions, and the run's checkpoint holds TF's tensors (the conv biases, which training
    leaves alone: batch norm follows each) and rebuilds as it trained."""
    from tests.helpers.tiny_pipeline import make_data

    from raredet.commands.train import train_from_config

    narrow_resnet_v1_fpn(monkeypatch)
    make_data(tmp_path, images=4)
    text = (RESNET_V1 / "pipeline.config").read_text()
    model_block = text[text.index("model {"):text.index("train_config")]
    checkpoint = RESNET_V1 / "checkpoint" / "ckpt-0"
    config = tmp_path / "pipeline.config"
    config.write_text(model_block + TRAIN.format(checkpoint=checkpoint, kind="detection"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = train_from_config(config, tmp_path / "run", num_train_steps=1, num_workers=0, device="cpu")
    assert result.step == 1
    said = capsys.readouterr().out
    assert f"fine-tuning from {checkpoint} (detection)" in said
    assert "backbone 318/318 loaded" in said and "fpn 26/26 loaded" in said, said
    state = torch.load(tmp_path / "run" / "ckpt-1.pt", map_location="cpu", weights_only=False)
    assert state["weights_convention"] == "tf"
    from raredet.tfcheckpoint import open_checkpoint

    ckpt = open_checkpoint(checkpoint)
    bias = ckpt.tensor(ckpt.variables()["model/_feature_extractor/_base_model/layer_with_weights-0/bias"])
    assert np.array_equal(state["model"]["feature_extractor.backbone.conv1.bias"].numpy(), bias)
    rebuilt = build(RESNET_V1)
    rebuilt.use_weights_convention("tf")
    rebuilt.load_state_dict(state["model"])  # strict: the bias buffers exist under TF's conventions


LAYOUTS = FIXTURES / "center_net_layouts"
BASE_MODEL = "model/_feature_extractor/_base_model/layer_with_weights-"


def converted_shape(layout: str, shape: list[int]) -> tuple[int, ...]:
    """The torch shape `common.LAYOUTS[layout]` gives a TF array of `shape` (written out, not run)."""
    if layout == "conv":
        return (shape[3], shape[2], shape[0], shape[1])
    if layout == "depthwise":
        return (shape[2] * shape[3], 1, shape[0], shape[1])
    if layout == "dense":
        return (shape[1], shape[0])
    return (int(np.prod(shape)),) if layout == "flat" else tuple(shape)


@pytest.mark.parametrize("name", ["centernet_hourglass104_512x512_kpts_coco17_tpu-32.config",
                                  "centernet_resnet50_v1_fpn_512x512_kpts_coco17_tpu-8.config",
                                  "centernet_resnet50_v2_512x512_kpts_coco17_tpu-8.config",
                                  "centernet_resnet101_v1_fpn_512x512_coco17_tpu-8.config",
                                  "center_net_deepmac_512x512_voc_only_tpu-32.config",
                                  "centernet_resnet50_v1_fpn_512x512_kpts_coco17_tpu-8.config@resnet_v1_101_fpn"])
def test_zoo_layouts_map_every_tensor_with_its_shape(name, tmp_path):
    """The full-size zoo models (90 classes, hourglass-104, 17 keypoints, DeepMAC's hourglass-52 mask
    network; and ResNet-101 v1 FPN, which no zoo config names): every raredet tensor has a TF variable
    of the checkpoint's layout (center_net_layouts/, written by the TF OD API: WRITTEN_BY) and its
    shape, and every TF variable feeds one."""
    import gzip
    import json

    from raredet.modeling.tf_weights import center_net as tf_center_net
    from raredet.zoo import CONFIG_DIR

    with gzip.open(LAYOUTS / "layouts.json.gz", "rt", encoding="utf-8") as f:
        shapes = json.load(f)["layouts"][name]
    file_name, _, extractor = name.partition("@")  # NAME@TYPE: that config with extractor TYPE
    text = (CONFIG_DIR / file_name).read_text(encoding="utf-8")
    if extractor:
        text = text.replace('type: "resnet_v1_50_fpn"', f'type: "{extractor}"')
    labels = LAYOUTS / "keypoint_label_map.pbtxt"
    config = tmp_path / "pipeline.config"
    config.write_text(text.replace('keypoint_label_map_path: "PATH_TO_BE_CONFIGURED"',
                                   f'keypoint_label_map_path: "{labels}"'), encoding="utf-8")
    with warnings.catch_warnings(), torch.device("meta"):  # shapes only: hourglass-104 is big
        warnings.simplefilter("ignore")
        model = build(tmp_path)
        maps = tf_center_net.tensor_maps(model, {p: tuple(s) for p, s in shapes.items()})
        own = {k: tuple(v.shape) for k, v in model.state_dict().items()
               if not k.endswith("num_batches_tracked")}
    assert sorted(m.target for m in maps) == sorted(own)  # every tensor, once
    for item in maps:
        assert item.source in shapes, item
        assert converted_shape(item.layout, shapes[item.source]) == own[item.target], item
    # In the checkpoints but read by no raredet tensor: ResNetV2's post_bn (the Keras model's last layer,
    # after conv5, which the extractor never runs) and DeepMAC's random generator for its augmentation.
    unread = {p for p in shapes if p not in {m.source for m in maps}} - {"save_counter"}
    if "v2" in name or "resnet101" in name:
        last = max(int(p[len(BASE_MODEL):].split("/")[0]) for p in shapes if p.startswith(BASE_MODEL))
        post_bn = {f"{BASE_MODEL}{last}/{v}" for v in ("gamma", "beta", "moving_mean", "moving_variance")}
        assert post_bn <= unread
        unread -= post_bn
    assert unread <= {"model/_self_supervised_rng/_state_var"}


@pytest.mark.filterwarnings("ignore::raredet.config.validate.ConfigWarning")  # the zoo's TPU-only fields
def test_predict_on_the_tf_model_folder_gives_tensorflows_detections(monkeypatch, tmp_path):
    """`raredet predict --model_dir` on the folder the TF OD API wrote (pipeline.config, checkpoint/), on
    its 48x64 image (raredet's keep-aspect resizer leaves it as it is, and pads it to 64x64 as TF)."""
    import json

    from PIL import Image

    from raredet.commands.predict import predict

    narrow_resnet_v1_fpn(monkeypatch)
    tf = tf_outputs(RESNET_V1)
    image = tmp_path / "fixed.png"
    Image.fromarray(tf["image"].astype(np.uint8)).save(image)
    result = predict(RESNET_V1, [str(image)], tmp_path / "out", min_score=0.01)
    assert "computing with TF's conventions" in result.summary()
    records = json.loads((tmp_path / "out" / "detections.json").read_text())
    scores = tf["postprocess/detection_scores"]
    n = int((scores > 0.01).sum())
    assert len(records) == n > 10
    height, width = tf["image"].shape[:2]
    x, y, w, h = np.array([r["bbox"] for r in records]).T  # COCO xywh pixels, rounded to 0.01
    boxes = np.stack([y / height, x / width, (y + h) / height, (x + w) / width], axis=1)
    assert np.abs(boxes - tf["postprocess/detection_boxes"][:n]).max() < 1e-3
    assert np.abs(np.array([r["score"] for r in records]) - scores[:n]).max() < 1e-4
    assert [r["category_id"] for r in records] == (tf["postprocess/detection_classes"][:n] + 1).tolist()
