"""Constructor defaults equal the proto defaults, so that a default copied into the code cannot drift.

Builders pass only the fields a config sets (`builders.message_kwargs`); an unset field takes the
constructor's default. The proto's default (the TF OD API's) is what a user reads in the .proto, so the
two must agree for every callable a builder table or builder function reaches.

Compared: every constructor parameter named like a scalar field of the message it is built from. A
field without an explicit `[default = ...]` is compared with its type's zero value, except where the
constructor's default is None: None there means "unset = absent" (focal `alpha`: no alpha term, as the
TF OD API builds it only when the field is set).
"""

from __future__ import annotations

import ast
import inspect
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from raredet import builders
from raredet.builders import ssd as builders_ssd
from raredet.builders.hyperparams import build_conv_hyperparams
from raredet.data import augment, readers, resize
from raredet.losses import (
    CLASSIFICATION_LOSSES,
    LOCALIZATION_LOSSES,
    ConfusionGateSchedule,
    GradientRatioStatistics,
    HardExampleMiner,
)
from raredet.losses.center_net import ObjectDetectionLoss
from raredet.losses.faster_rcnn import FasterRcnnLoss
from raredet.modeling import fpn, postprocess
from raredet.modeling.box_coder import FasterRcnnBoxCoder
from raredet.modeling.center_net import CenterNet, ObjectDetectionTask
from raredet.modeling.faster_rcnn import FasterRCNN, MaskRcnnBoxHead
from raredet.modeling.grid_anchors import GridAnchorGenerator
from raredet.modeling.layers import ConvHyperparams
from raredet.modeling.mask_head import MaskHead
from raredet.modeling.matcher import ArgMaxMatcher
from raredet.protos import (
    anchor_generator_pb2,
    box_coder_pb2,
    box_predictor_pb2,
    center_net_pb2,
    faster_rcnn_pb2,
    hyperparams_pb2,
    image_resizer_pb2,
    input_reader_pb2,
    losses_pb2,
    matcher_pb2,
    optimizer_pb2,
    post_processing_pb2,
    preprocessor_pb2,
    ssd_pb2,
)

SRC = Path(__file__).resolve().parents[1] / "src" / "raredet"


def proto_default(fd: FieldDescriptor) -> Any:
    """The field's default as a builder would pass it: enums by name, floats as float32 values."""
    if fd.enum_type is not None:
        return fd.enum_type.values_by_number[fd.default_value].name
    return fd.default_value


def equal(code: Any, proto: Any, fd: FieldDescriptor) -> bool:
    if fd.cpp_type == FieldDescriptor.CPPTYPE_FLOAT:  # the message holds float32
        return code is not None and np.float32(code) == np.float32(proto)
    return type(code) is type(proto) and code == proto or (isinstance(proto, float) and code == proto)


def mismatches(fn: Callable[..., Any], message: Descriptor) -> Iterator[str]:
    """'name: code X, proto Y' for each parameter of `fn` named like a scalar field of `message`."""
    for name, param in inspect.signature(fn).parameters.items():
        fd = message.fields_by_name.get(name)
        if fd is None or fd.message_type is not None or fd.is_repeated:
            continue
        if param.default is inspect.Parameter.empty:
            if fd.has_default_value:  # an unset field would not be passed: the call would fail
                yield f"{message.name}.{name}: required in code, proto default {proto_default(fd)!r}"
            continue
        if param.default is None and not fd.has_default_value:
            continue  # None = unset means absent (module docstring)
        if not equal(param.default, proto_default(fd), fd):
            yield f"{message.name}.{name}: code {param.default!r}, proto {proto_default(fd)!r}"


def oneof_pairs(table: Mapping[str, Any], container: type[Message]) -> list[tuple[str, Any, Descriptor]]:
    """(choice, constructor, its message) for every entry of a builder table keyed by oneof member."""
    pairs = []
    for name, make in table.items():
        sub = container.DESCRIPTOR.fields_by_name[name].message_type
        assert sub is not None, name
        pairs.append((name, make, sub))
    return pairs


CENTER_PARAMS = center_net_pb2.CenterNet.ObjectCenterParams.DESCRIPTOR

PAIRS: list[tuple[str, Any, Descriptor]] = [
    *oneof_pairs(builders.OPTIMIZERS, optimizer_pb2.Optimizer),
    *oneof_pairs(builders.LEARNING_RATES, optimizer_pb2.LearningRate),
    *oneof_pairs(augment.AUGMENTATIONS, preprocessor_pb2.PreprocessingStep),
    *oneof_pairs(resize.RESIZERS, image_resizer_pb2.ImageResizer),
    *oneof_pairs(readers.READERS, input_reader_pb2.InputReader),
    *oneof_pairs(CLASSIFICATION_LOSSES, losses_pb2.ClassificationLoss),
    *oneof_pairs(LOCALIZATION_LOSSES, losses_pb2.LocalizationLoss),
    *oneof_pairs(builders.MATCHERS, matcher_pb2.Matcher),
    *oneof_pairs(builders.BOX_CODERS, box_coder_pb2.BoxCoder),
    ("HardExampleMiner", HardExampleMiner, losses_pb2.HardExampleMiner.DESCRIPTOR),
    # The statistics of the pair-aware losses take the fields the loss functions do not.
    ("ConfusionGateSchedule", ConfusionGateSchedule, losses_pb2.ConfusionGatedFocalLoss.DESCRIPTOR),
    ("GradientRatioStatistics", GradientRatioStatistics, losses_pb2.EqualizedFocalLoss.DESCRIPTOR),
    ("ArgMaxMatcher", ArgMaxMatcher, matcher_pb2.ArgMaxMatcher.DESCRIPTOR),
    ("FasterRcnnBoxCoder", FasterRcnnBoxCoder, box_coder_pb2.FasterRcnnBoxCoder.DESCRIPTOR),
    # SSD parts: built by builders.ssd from the model.ssd sub-messages.
    *oneof_pairs(builders_ssd.ANCHOR_GENERATORS, anchor_generator_pb2.AnchorGenerator),
    *oneof_pairs(builders_ssd.BOX_PREDICTORS, box_predictor_pb2.BoxPredictor),
    ("BatchNonMaxSuppression", postprocess.BatchNonMaxSuppression,
     post_processing_pb2.BatchNonMaxSuppression.DESCRIPTOR),
    ("FeaturePyramid", fpn.FeaturePyramid, ssd_pb2.FeaturePyramidNetworks.DESCRIPTOR),
    # Faster R-CNN: the model and its loss take model.faster_rcnn fields by name (builders.faster_rcnn,
    # builders.losses), its parts their sub-messages'.
    ("FasterRCNN", FasterRCNN, faster_rcnn_pb2.FasterRcnn.DESCRIPTOR),
    ("FasterRcnnLoss", FasterRcnnLoss, faster_rcnn_pb2.FasterRcnn.DESCRIPTOR),
    ("MaskRcnnBoxHead", MaskRcnnBoxHead, box_predictor_pb2.MaskRCNNBoxPredictor.DESCRIPTOR),
    ("MaskHead", MaskHead, box_predictor_pb2.MaskRCNNBoxPredictor.DESCRIPTOR),
    ("GridAnchorGenerator", GridAnchorGenerator, anchor_generator_pb2.GridAnchorGenerator.DESCRIPTOR),
    # CenterNet: the model, its object-detection task and its loss take the fields of object_center_params
    # and object_detection_task by name (builders.center_net).
    ("CenterNet", CenterNet, CENTER_PARAMS),
    ("ObjectDetectionTask", ObjectDetectionTask, CENTER_PARAMS),
    ("ObjectDetectionLoss/center", ObjectDetectionLoss, CENTER_PARAMS),
    ("ObjectDetectionLoss/task", ObjectDetectionLoss, center_net_pb2.CenterNet.ObjectDetection.DESCRIPTOR),
]


def test_the_comparison_covers_the_builder_tables():
    # Not vacuous: every table is in, and many parameters are really compared.
    names = {name for name, _, _ in PAIRS}
    for table in (builders.OPTIMIZERS, builders.LEARNING_RATES, augment.AUGMENTATIONS, resize.RESIZERS,
                  readers.READERS, CLASSIFICATION_LOSSES, LOCALIZATION_LOSSES):
        assert set(table) <= names
    compared = [name for _, make, message in PAIRS for name in inspect.signature(make).parameters
                if name in message.fields_by_name and message.fields_by_name[name].message_type is None]
    assert len(compared) >= 80


def test_the_comparison_sees_a_drifted_default():
    def drifted(learning_rate: float = 0.004) -> None: ...

    def required(learning_rate: float) -> None: ...

    def same(learning_rate: float = 0.002) -> None: ...

    message = optimizer_pb2.ConstantLearningRate.DESCRIPTOR
    assert list(mismatches(drifted, message)) == [
        "ConstantLearningRate.learning_rate: code 0.004, proto 0.0020000000949949026"]
    assert len(list(mismatches(required, message))) == 1
    assert list(mismatches(same, message)) == []


@pytest.mark.parametrize(("name", "make", "message"), PAIRS, ids=[p[0] for p in PAIRS])
def test_constructor_defaults_equal_proto_defaults(name, make, message):
    assert list(mismatches(make, message)) == []


# ---- no default copied into the model code or the SSD builders ----------------------------------------

# The SSD model code and the builders that read its messages: an unset field's value comes from the
# message (`msg.field`), never from a `.get("field", default)` on a config-shaped dict.
NO_DICT_DEFAULTS = [SRC / "modeling" / f"{name}.py" for name in (
    "ssd", "predictor", "anchors", "fpn", "bifpn", "efficientnet", "backbones", "layers")] + [
    SRC / "builders" / "ssd.py", SRC / "builders" / "hyperparams.py"]


def dict_get_defaults(path: Path) -> list[tuple[str, Any, int]]:
    """(field, default, line) for each `<x>.get("field", <constant>)` call in `path`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
                and len(node.args) == 2 and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[1], ast.Constant)):
            found.append((node.args[0].value, node.args[1].value, node.lineno))
    return found


def test_the_scan_sees_a_copied_default(tmp_path):
    source = tmp_path / "copy.py"
    source.write_text('def f(cfg):\n    return cfg.get("min_depth", 16), cfg.get("type")\n')
    assert dict_get_defaults(source) == [("min_depth", 16, 2)]


def test_ssd_model_and_builders_copy_no_proto_default():
    assert all(path.exists() for path in NO_DICT_DEFAULTS)  # not vacuous: the files are there
    found = [f"{p.relative_to(SRC)}:{line}: .get({field!r}, {default!r})"
             for p in NO_DICT_DEFAULTS for field, default, line in dict_get_defaults(p)]
    assert found == []


def test_conv_hyperparams_defaults_equal_proto_defaults():
    # An empty batch_norm { } and l2_regularizer { } in a conv_hyperparams block.
    msg = hyperparams_pb2.Hyperparams()
    msg.batch_norm.SetInParent()
    msg.regularizer.l2_regularizer.SetInParent()
    hp = build_conv_hyperparams(msg)
    bn = hyperparams_pb2.BatchNorm()
    assert (np.float32(hp.bn_decay), np.float32(hp.bn_epsilon)) == (bn.decay, bn.epsilon)
    assert (hp.bn_center, hp.bn_scale, hp.bn_train) == (bn.center, bn.scale, bn.train)
    assert np.float32(hp.l2_weight) == hyperparams_pb2.L2Regularizer().weight
    activation = hyperparams_pb2.Hyperparams().activation
    assert hp.activation == hyperparams_pb2.Hyperparams.Activation.Name(activation)


def test_conv_hyperparams_class_defaults_are_an_empty_message():
    # A predictor given no conv_hyperparams builds with ConvHyperparams(): the same as an empty block.
    assert ConvHyperparams() == build_conv_hyperparams(hyperparams_pb2.Hyperparams())
