"""fine_tune_checkpoint loading: state dicts saved here round-trip by name."""

import warnings

import pytest
import torch
from safetensors.torch import save_file
from tests.helpers.ssd import ssd_from_dicts, tiny_ssd_kwargs

from raredet.errors import CheckpointError
from raredet.modeling.backbones import MobileNetV2, ResNet
from raredet.modeling.pretrained import CheckpointShapeWarning, load_checkpoint_weights
from raredet.modeling.ssd import SSD


def _torchvision_like_resnet18_state():
    """A state dict shaped as torchvision's resnet18 at the tiny width, classifier included."""
    torch.manual_seed(1)
    state = {k: v.clone() for k, v in ResNet(18, 0.125, 8).state_dict().items()}
    for v in state.values():
        if v.is_floating_point():
            v.normal_()
    state["fc.weight"] = torch.randn(1000, 64)
    state["fc.bias"] = torch.randn(1000)
    return state


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_classification_round_trip_by_name(tmp_path, tiny_ssd, suffix):
    state = _torchvision_like_resnet18_state()
    path = tmp_path / f"resnet18{suffix}"
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    model = tiny_ssd()
    report = load_checkpoint_weights(model, path, "classification")
    assert sorted(report.unexpected) == ["fc.bias", "fc.weight"]
    assert report.missing == [] and report.shape_mismatch == []
    assert len(report.loaded) == len(state) - 2
    loaded = model.backbone.state_dict()
    assert all(torch.equal(loaded[k], state[k]) for k in report.loaded)


def test_detection_checkpoint_onto_other_num_classes(tmp_path, tiny_ssd):
    source = tiny_ssd(num_classes=3)
    torch.save({"model": source.state_dict(), "step": 7}, tmp_path / "ckpt-7.pt")
    target = tiny_ssd(num_classes=5)
    report = load_checkpoint_weights(target, tmp_path / "ckpt-7.pt", "detection")
    assert report.shape_mismatch == ["box_predictor.class_head.bias", "box_predictor.class_head.weight"]
    assert report.missing == [] and report.unexpected == []
    for name in report.loaded:
        assert torch.equal(target.state_dict()[name], source.state_dict()[name])
    with pytest.raises(CheckpointError, match="'full' needs every parameter"):
        load_checkpoint_weights(target, tmp_path / "ckpt-7.pt", "full")


def test_bare_state_dict_with_ddp_prefix(tmp_path, tiny_ssd):
    source = tiny_ssd()
    torch.save({f"module.{k}": v for k, v in source.state_dict().items()}, tmp_path / "bare.pt")
    report = load_checkpoint_weights(tiny_ssd(), tmp_path / "bare.pt", "full")
    assert len(report.loaded) == len(source.state_dict())


def test_bad_files_and_types(tmp_path, tiny_ssd):
    model = tiny_ssd()
    with pytest.raises(CheckpointError, match="nowhere.pth: fine_tune_checkpoint not found"):
        load_checkpoint_weights(model, tmp_path / "nowhere.pth", "classification")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pth: cannot read"):
        load_checkpoint_weights(model, tmp_path / "junk.pth", "classification")
    torch.save({"other.weight": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="other.pth: no entry matched"):
        load_checkpoint_weights(model, tmp_path / "other.pth", "classification")
    with pytest.raises(ValueError, match="'classification', 'detection', 'full'"):
        load_checkpoint_weights(model, tmp_path / "other.pth", "segmentation")
    # TF1's 'fine_tune' gets the TF OD API's own advice (CenterNet's restore_from_objects refuses it)
    with pytest.raises(ValueError, match="'fine_tune' is no longer supported.*'detection'"):
        load_checkpoint_weights(model, tmp_path / "other.pth", "fine_tune")


def _mobilenet_v2_fpn(extractor: str) -> SSD:
    kwargs = tiny_ssd_kwargs(extractor=extractor, depth=16)
    kwargs["feature_extractor"].update(depth_multiplier=1.0, use_depthwise=True)
    return ssd_from_dicts(**kwargs)


def test_a_narrowed_backbone_layer_is_named_with_both_shapes(tmp_path):
    # The TF1 slim FPN-lite (ssd_mobilenet_v2_fpn + use_depthwise) builds the last 1x1 conv 256 wide;
    # torchvision's ImageNet MobileNetV2 has it 1280 wide: those tensors cannot load, the rest do.
    source = MobileNetV2()  # torchvision's shapes
    state = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in source.state_dict().items()}
    state["classifier.1.weight"], state["classifier.1.bias"] = torch.randn(1000, 1280), torch.randn(1000)
    torch.save(state, tmp_path / "mobilenet_v2.pth")
    model = _mobilenet_v2_fpn("ssd_mobilenet_v2_fpn")
    with pytest.warns(CheckpointShapeWarning) as caught:
        report = load_checkpoint_weights(model, tmp_path / "mobilenet_v2.pth", "classification")
    narrowed = ["features.18.0.weight", *(f"features.18.1.{b}" for b in ("bias", "running_mean",
                                                                            "running_var", "weight"))]
    assert report.shape_mismatch == sorted(narrowed)
    assert report.mismatched_shapes["features.18.0.weight"] == ((1280, 320, 1, 1), (256, 320, 1, 1))
    message = str(caught[0].message)
    assert "features.18.0.weight (file [1280, 320, 1, 1], model [256, 320, 1, 1])" in message
    assert "features.18.1.running_var (file [1280], model [256])" in message
    assert "features.18.0.weight (file [1280, 320, 1, 1]" in report.summary()
    assert report.missing == [] and report.unexpected == ["classifier.1.bias", "classifier.1.weight"]
    assert len(report.loaded) == len(state) - 2 - len(narrowed)
    # The Keras extractor keeps torchvision's 1280: everything loads, no warning.
    keras = _mobilenet_v2_fpn("ssd_mobilenet_v2_fpn_keras")
    with warnings.catch_warnings():
        warnings.simplefilter("error", CheckpointShapeWarning)
        report = load_checkpoint_weights(keras, tmp_path / "mobilenet_v2.pth", "classification")
    assert report.shape_mismatch == [] and report.missing == []
