"""The model (SSD, Faster R-CNN or CenterNet) and its calibration from the model message."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NoReturn

from torch import nn

from raredet.builders.messages import CALIBRATION_WHERE, ModelMessage, post_processing_field
from raredet.config import check_calibration
from raredet.errors import ConfigError
from raredet.modeling.calibration import Calibration
from raredet.modeling.tf_compat import apply_weights_convention
from raredet.protos import calibration_pb2, center_net_pb2, faster_rcnn_pb2


def default_weights_convention(msg: ModelMessage) -> str:
    """How a model of `msg` computes unless its weights say otherwise: "tf" for the TF OD API's Keras SSD
    feature extractors (`*_keras`, which every TF2 zoo SSD config names), built and trained as the TF OD
    API builds and trains them (docs/models.md, "Training parity"); "torchvision" for the others.
    Faster R-CNN takes TF's conventions only with TF weights: its TF-order first stage is checked at
    inference only (with it, two DDP ranks no longer train as one process on the same batch)."""
    if isinstance(msg, faster_rcnn_pb2.FasterRcnn | center_net_pb2.CenterNet):
        return "torchvision"
    return "tf" if msg.feature_extractor.type.endswith("_keras") else "torchvision"


def build_model(ssd: ModelMessage, class_ids: Sequence[int] | None = None,
                weights_convention: str | None = None) -> tuple[nn.Module, dict[str, float]]:
    """The model of `model.ssd` (SSD) or `model.faster_rcnn` (FasterRCNN) and its L2 map
    `{parameter name: l2 weight}` for weight decay.

    `class_ids`: the label-map ids in index order (default 1..num_classes), which the keys of a
    per-class `calibration_config` name. `weights_convention`: "tf" or "torchvision" (a checkpoint's
    record, or what the fine-tune checkpoint's weights expect); None = `default_weights_convention`.
    """
    model, l2 = _build_model(ssd, class_ids)
    apply_weights_convention(model, weights_convention or default_weights_convention(ssd))
    return model, l2


def _build_model(ssd: ModelMessage, class_ids: Sequence[int] | None) -> tuple[nn.Module, dict[str, float]]:
    post, where = post_processing_field(ssd)
    calibration = None
    if post.HasField("calibration_config"):
        calibration = build_calibration(post.calibration_config, ssd.num_classes, class_ids, where)
    if isinstance(ssd, center_net_pb2.CenterNet):
        from raredet.builders.center_net import build_center_net  # model code is heavy

        return build_center_net(ssd, calibration, class_ids), {}
    if isinstance(ssd, faster_rcnn_pb2.FasterRcnn):
        from raredet.builders.faster_rcnn import build_faster_rcnn  # model code is heavy

        frcnn = build_faster_rcnn(ssd, calibration)
        return frcnn, dict(frcnn.l2_weights())
    from raredet.builders.ssd import build_ssd  # imported here: model code is heavy and needed only here

    model = build_ssd(ssd, calibration)
    return model, dict(model.l2_weights())


def build_calibration(msg: calibration_pb2.CalibrationConfig, num_classes: int,
                      class_ids: Sequence[int] | None = None, where: str = CALIBRATION_WHERE) -> Calibration:
    """The `Calibration` of a `calibration_config` for `num_classes` score columns.

    Per-class keys are label-map ids: `class_ids[k]` is column k's id (default k + 1, which is also
    the TF OD API's class id: its column 0 is background). ConfigError with the field path for maps
    that cannot be applied (see `config.check_calibration`).
    """
    ids = list(class_ids) if class_ids is not None else list(range(1, num_classes + 1))
    if len(ids) != num_classes:
        raise ConfigError(f"{where}: {len(ids)} label-map ids given for {num_classes} classes")

    def fail(field: str, problem: str) -> NoReturn:
        raise ConfigError(f"{field}: {problem}")

    check_calibration(msg, where, ids, fail)
    column = {id_: k for k, id_ in enumerate(ids)}
    kind = msg.WhichOneof("calibrator")
    if kind == "temperature_scaling_calibration":
        return Calibration.temperature_scaling(num_classes, msg.temperature_scaling_calibration.scaler)
    if kind == "function_approximation":
        x, y = _xy(msg.function_approximation.x_y_pairs)
        return Calibration.piecewise_linear_all(num_classes, x, y)
    if kind == "class_id_function_approximations":
        pairs = msg.class_id_function_approximations.class_id_xy_pairs_map
        return Calibration.piecewise_linear(num_classes, {column[i]: _xy(pairs[i]) for i in pairs})
    if kind == "sigmoid_calibration":
        params = msg.sigmoid_calibration.sigmoid_parameters
        return Calibration.platt_all(num_classes, params.a, params.b)
    per_class = msg.class_id_sigmoid_calibrations.class_id_sigmoid_parameters_map
    return Calibration.platt(num_classes, {column[i]: (per_class[i].a, per_class[i].b) for i in per_class})


def _xy(pairs: calibration_pb2.XYPairs) -> tuple[list[float], list[float]]:
    return [p.x for p in pairs.x_y_pair], [p.y for p in pairs.x_y_pair]
