"""load_tf_checkpoint: which parts each fine_tune_checkpoint_type reads, another num_classes, the report,
the dispatch, and the weights convention surviving a raredet training run (train -> ckpt-N.pt -> the
model eval/predict/export load). Expectations are the TF OD API's own files: the checkpoint's tensors and
TensorFlow's outputs in tests/fixtures/tf_models/ssd_mobilenet_v2_fpnlite (see its WRITTEN_BY)."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import raredet.config
from raredet import builders
from raredet.commands.train import train_from_config
from raredet.commands.trained import load_trained_model
from raredet.data.synth import make_synthetic_dataset
from raredet.errors import CheckpointError
from raredet.modeling import load_checkpoint_weights
from raredet.modeling.pretrained import CheckpointShapeWarning
from raredet.modeling.tf_weights import family_module, load_tf_checkpoint
from raredet.tfcheckpoint import open_checkpoint

FOLDER = Path(__file__).parents[2] / "fixtures" / "tf_models" / "ssd_mobilenet_v2_fpnlite"
DETECTION = FOLDER / "checkpoint" / "ckpt-0"
CLASSIFICATION = FOLDER / "classification" / "ckpt-0"
# One tensor per part, and the TF variable it must hold (Keras layer_with_weights-0 is MobileNetV2's Conv1).
BACKBONE = ("feature_extractor.backbone.features.0.0.weight",
            "model/_feature_extractor/classification_backbone/layer_with_weights-0/kernel")
FPN = ("feature_extractor.fpn.projections.2.bias",
       "model/_feature_extractor/_fpn_features_generator/top_layers/0/bias")
BOX_HEAD = ("box_predictor.box_head.1.bias",
            "model/_box_predictor/_box_prediction_head/_box_encoder_layers/0/bias")


def build(text_edit=None) -> nn.Module:
    text = (FOLDER / "pipeline.config").read_text()
    if text_edit is not None:
        text = text_edit(text)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fields raredet parses but does not act on
        cfg = raredet.config.parse_config(text, FOLDER / "pipeline.config")
    model, _ = builders.build_model(builders.model_message(cfg))
    return model


def tf_value(source: str) -> np.ndarray:
    ckpt = open_checkpoint(DETECTION)
    return np.asarray(ckpt.tensor(ckpt.variables()[source]))


def holds(model: nn.Module, pair: tuple[str, str]) -> bool:
    """Whether the model's tensor holds the TF variable's values (conv kernels in torch's layout)."""
    ours = model.state_dict()[pair[0]].numpy()
    theirs = tf_value(pair[1])
    if theirs.ndim == 4:
        theirs = theirs.transpose(3, 2, 0, 1)
    return ours.shape == theirs.shape and np.array_equal(ours, theirs)


def test_full_loads_every_tensor_and_reports_parts():
    model = build()
    report = load_checkpoint_weights(model, DETECTION, "full")
    assert not report.missing and not report.unexpected and not report.shape_mismatch
    assert all(holds(model, pair) for pair in (BACKBONE, FPN, BOX_HEAD))
    assert set(report.parts) == {"backbone", "fpn", "box_predictor"}
    assert all(loaded == total > 0 for loaded, total in report.parts.values())
    assert "backbone 260/260 loaded" in report.summary() and "TF's conventions" in report.summary()


def test_detection_loads_the_feature_extractor_not_the_box_predictor():
    model = build()
    before = model.state_dict()[BOX_HEAD[0]].clone()
    report = load_checkpoint_weights(model, DETECTION, "detection")
    assert holds(model, BACKBONE) and holds(model, FPN)
    assert torch.equal(model.state_dict()[BOX_HEAD[0]], before)
    assert report.parts["box_predictor"][0] == 0
    assert all(n.startswith("box_predictor.") for n in report.missing)
    assert "box_predictor 0/94 loaded (left at its initialiser)" in report.summary()
    assert model.weights_convention == "tf"


@pytest.mark.parametrize("path", [CLASSIFICATION, DETECTION])
def test_classification_loads_the_backbone_only(path):
    model = build()
    before = model.state_dict()[FPN[0]].clone()
    report = load_checkpoint_weights(model, path, "classification")
    assert holds(model, BACKBONE)  # the classification checkpoint holds the same backbone values
    assert torch.equal(model.state_dict()[FPN[0]], before)
    assert report.parts["backbone"] == (260, 260) and report.parts["fpn"][0] == 0


def test_classification_checkpoint_as_detection_names_the_type_to_use():
    with pytest.raises(CheckpointError, match='set fine_tune_checkpoint_type: "classification"'):
        load_checkpoint_weights(build(), CLASSIFICATION, "detection")


def test_another_num_classes_fine_tunes():
    model = build(lambda text: text.replace("num_classes: 3", "num_classes: 5"))
    report = load_checkpoint_weights(model, DETECTION, "detection")
    assert holds(model, BACKBONE) and not report.shape_mismatch
    with pytest.warns(CheckpointShapeWarning, match="class_head"):
        report = load_checkpoint_weights(build(lambda t: t.replace("num_classes: 3", "num_classes: 5")),
                                           DETECTION, "full")
    # The class head's 1x1 kernel and bias follow num_classes (TF: 9 anchors x (3 + 1) channels here);
    # its depthwise kernel and every other tensor load.
    assert report.shape_mismatch == ["box_predictor.class_head.1.bias", "box_predictor.class_head.1.weight"]
    assert report.mismatched_shapes["box_predictor.class_head.1.bias"] == ((6 * 4,), (6 * 5,))
    assert not report.missing


def test_full_refuses_a_checkpoint_missing_tensors():
    # A backbone 2x wider than the checkpoint's: every shape differs, which 'full' refuses.
    model = build(lambda text: text.replace("depth_multiplier: 0.1", "depth_multiplier: 0.2"))
    with pytest.raises(CheckpointError, match="'full' needs every tensor.*use 'detection'"), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore", CheckpointShapeWarning)
        load_tf_checkpoint(model, DETECTION, "full")


def test_a_family_without_a_mapping_is_a_clear_error():
    class Unknown(nn.Module):
        feature_extractor_type = "ssd_inception_v2"

    with pytest.raises(CheckpointError, match="no TF checkpoint mapping.*ssd_inception_v2"):
        family_module(Unknown())
    assert family_module(build()).__name__.endswith("tf_weights.mobilenet")


def test_a_torch_checkpoint_still_loads_by_name(tmp_path):
    source = build()
    torch.save({"model": source.state_dict()}, tmp_path / "ckpt-3.pt")
    target = build()
    report = load_checkpoint_weights(target, tmp_path / "ckpt-3.pt", "full")
    # a *_keras zoo extractor is built with TF's conventions (builders.default_weights_convention)
    assert not report.missing and target.weights_convention == source.weights_convention == "tf"


def _training_config(data: Path) -> str:
    """The fixture's config, reading synthetic TFRecords, starting from the TF checkpoint ('full'), with
    frozen batch norms and a learning rate too small to move a weight: the trained model must still be
    TensorFlow's."""
    text = (FOLDER / "pipeline.config").read_text()
    text = re.sub(r"train_config \{.*?\n\}\n", "", text, flags=re.S)
    text = re.sub(r"(train|eval)_input_reader \{.*?\n\}\n", "", text, flags=re.S)
    text = text.replace("freeze_batchnorm: false", "freeze_batchnorm: true")
    text += f"""
train_config {{ batch_size: 2 num_steps: 1
  optimizer {{ momentum_optimizer {{ learning_rate {{
    constant_learning_rate {{ learning_rate: 1e-20 }} }} }} }}
  fine_tune_checkpoint: "{DETECTION}" fine_tune_checkpoint_type: "full" }}
train_input_reader {{ label_map_path: "{data}/label_map.pbtxt"
                     tf_record_input_reader {{ input_path: "{data}/train-*.tfrecord" }} }}
eval_input_reader {{ label_map_path: "{data}/label_map.pbtxt"
                    tf_record_input_reader {{ input_path: "{data}/val-*.tfrecord" }} }}
"""
    return text


def test_training_from_a_tf_checkpoint_keeps_tf_conventions_through_ckpt_n(tmp_path, capsys):
    data = tmp_path / "data"
    make_synthetic_dataset(data, images=4, image_size=64, num_shards=1, min_val_boxes=1, val_fraction=0.5)
    config_path = tmp_path / "pipeline.config"
    config_path.write_text(_training_config(data))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train_from_config(config_path, tmp_path / "run", num_workers=0)
    assert "computing with TF's conventions" in capsys.readouterr().out
    trained = load_trained_model(tmp_path / "run")  # what eval, predict and export load
    assert trained.model.weights_convention == "tf"
    tf = np.load(FOLDER / "tf_outputs.npz")
    with torch.no_grad():
        out = trained.model(torch.from_numpy(tf["resized_image"]).permute(2, 0, 1)[None])
    tf_logits = tf["predict/class_predictions_with_background"][:, 1:]
    assert np.abs(out["cls_logits"][0].numpy() - tf_logits).max() < 1e-4
    assert np.abs(out["box_deltas"][0].numpy() - tf["predict/box_encodings"]).max() < 1e-4


def test_the_moving_average_starts_at_the_fine_tune_weights(tmp_path):
    """With optimizer.use_moving_average, the average of a run fine-tuned from a TF checkpoint starts at
    the loaded weights (it was built from the initialisers before the load): after one step too small to
    move a weight, the checkpoint's EMA weights still give TensorFlow's outputs."""
    data = tmp_path / "data"
    make_synthetic_dataset(data, images=4, image_size=64, num_shards=1, min_val_boxes=1, val_fraction=0.5)
    config_path = tmp_path / "pipeline.config"
    text = _training_config(data).replace(
        "constant_learning_rate { learning_rate: 1e-20 } } } }",
        "constant_learning_rate { learning_rate: 1e-20 } } }\n    use_moving_average: true "
        "moving_average_decay: 0.5 }")
    assert "use_moving_average: true" in text
    config_path.write_text(text)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train_from_config(config_path, tmp_path / "run", num_workers=0)
    state = torch.load(tmp_path / "run" / "ckpt-1.pt", weights_only=True)
    model = build()
    model.load_state_dict(state["ema"])
    tf = np.load(FOLDER / "tf_outputs.npz")
    with torch.no_grad():
        out = model.eval()(torch.from_numpy(tf["resized_image"]).permute(2, 0, 1)[None])
    tf_logits = tf["predict/class_predictions_with_background"][:, 1:]
    assert np.abs(out["cls_logits"][0].numpy() - tf_logits).max() < 1e-4

