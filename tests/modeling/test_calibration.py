"""calibration_config: every kind against values worked out by hand from the TF OD API's definitions
(calibration_builder.py: linear interpolation between x/y pairs, constant beyond the ends, a class id
is the label-map id, a class without a map is unchanged; temperature divides the logits before the
score converter), config errors with field paths, and tracing into TorchScript / ONNX."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from raredet.builders import build_calibration
from raredet.config import LabelMap, parse_config, validate
from raredet.errors import ConfigError
from raredet.modeling.calibration import Calibration
from raredet.modeling.postprocess import ScoreConverter
from raredet.protos import calibration_pb2, post_processing_pb2

# torch 2.13 deprecates TorchScript and the TorchScript-based ONNX exporter; both are what is tested here.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def build_score_converter(post_processing: post_processing_pb2.PostProcessing,
                          num_classes: int | None = None,
                          class_ids: Sequence[int] | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """Logits `[B, A, K]` -> calibrated scores `[B, A, K]`, as `post_processing` says (score converter,
    `logit_scale`, `calibration_config`; TF OD API order): the model's score pipeline without the model.
    Column k is label-map id k + 1 unless `class_ids` says otherwise. Without `num_classes`, K is read
    from the logits at each call (and a per-class key beyond K is a ConfigError then)."""
    converter = post_processing_pb2.PostProcessing.ScoreConverter.Name(post_processing.score_converter)
    scale = post_processing.logit_scale

    def make(k: int) -> ScoreConverter:
        calibration = (build_calibration(post_processing.calibration_config, k, class_ids,
                                         "post_processing.calibration_config")
                       if post_processing.HasField("calibration_config") else None)
        return ScoreConverter(converter, scale, calibration, k)

    if num_classes is not None:
        return make(num_classes)
    built: dict[int, ScoreConverter] = {}

    def convert(logits: torch.Tensor) -> torch.Tensor:
        k = int(logits.shape[-1])
        if k not in built:
            built[k] = make(k)
        return built[k](logits)

    return convert


def _post(text: str) -> post_processing_pb2.PostProcessing:
    return text_format.Parse(text, post_processing_pb2.PostProcessing())


def _columns(values: list[float], k: int = 3) -> torch.Tensor:
    """[1, N, k]: each value repeated in every column."""
    return torch.tensor(values, dtype=torch.float32)[None, :, None].expand(1, len(values), k).contiguous()


MAP_ID2 = """score_converter: IDENTITY calibration_config { class_id_function_approximations {
  class_id_xy_pairs_map { key: 2 value { x_y_pair { x: 0.2 y: 0.1 } x_y_pair { x: 0.6 y: 0.9 } } } } }"""


def test_class_id_map_interpolates_the_label_map_ids_column_only():
    scores = _columns([0.1, 0.2, 0.4, 0.5, 0.6, 0.95])
    got = build_score_converter(_post(MAP_ID2))(scores)
    # Column 1 (label-map id 2): below x0 -> y0 = 0.1; at x0 -> 0.1; 0.4 is halfway -> 0.5;
    # 0.5: a = 0.75 -> 0.25 * 0.1 + 0.75 * 0.9 = 0.7; at and beyond the last x -> 0.9.
    torch.testing.assert_close(got[0, :, 1], torch.tensor([0.1, 0.1, 0.5, 0.7, 0.9, 0.9]))
    # Ids 1 and 3 have no map: unchanged.
    torch.testing.assert_close(got[0, :, 0], scores[0, :, 0])
    torch.testing.assert_close(got[0, :, 2], scores[0, :, 2])


def test_a_score_at_a_knot_maps_to_exactly_its_y():
    # The TF OD API's (1 - a) y_i + a y_{i+1} with a = 0 at x_i: exactly y_i in float32 too.
    x, y = [0.0, 0.3137, 1.0], [0.0, 0.5, 1.0]
    cal = Calibration.piecewise_linear(2, {0: (x, y)})
    s = torch.tensor([[0.3137, 0.3137]], dtype=torch.float32)
    out = cal(s)
    assert out[0, 0].item() == np.float32(0.5)
    # The next float32 down stays below 0.5; 1e-6 above goes above (one float32 step above can round
    # back to 0.5: the map is flatter above the knot than the score's float32 spacing).
    below = torch.tensor([[np.nextafter(np.float32(0.3137), np.float32(0)), 0.0]])
    above = torch.tensor([[0.3137 + 1e-6, 0.0]])
    assert cal(below)[0, 0].item() < 0.5 < cal(above)[0, 0].item()


def test_function_approximation_maps_every_column_and_more_pairs():
    post = _post("""score_converter: IDENTITY calibration_config { function_approximation { x_y_pairs {
      x_y_pair { x: 0.0 y: 0.0 } x_y_pair { x: 0.5 y: 0.2 } x_y_pair { x: 0.75 y: 0.7 }
      x_y_pair { x: 1.0 y: 0.8 } } } }""")
    got = build_score_converter(post)(_columns([0.25, 0.5, 0.6, 0.8, 1.0], k=2))
    # 0.25: half of (0, 0)-(0.5, 0.2) -> 0.1; 0.6: a = 0.4 on (0.5, 0.2)-(0.75, 0.7) -> 0.2 + 0.4 * 0.5
    # = 0.4; 0.8: a = 0.2 on (0.75, 0.7)-(1, 0.8) -> 0.72.
    expected = torch.tensor([0.1, 0.2, 0.4, 0.72, 0.8])
    for k in range(2):
        torch.testing.assert_close(got[0, :, k], expected)


def test_single_pair_map_is_constant():
    cal = Calibration.piecewise_linear(1, {0: ([0.4], [0.7])})
    torch.testing.assert_close(cal(torch.tensor([[0.0], [0.4], [1.0]])), torch.tensor([[0.7]] * 3))


def test_converter_runs_before_the_map():
    # SIGMOID first: logit 0 -> 0.5, then the id-2 map (0.2, 0.1)-(0.6, 0.9): 0.5 -> 0.7.
    post = _post(MAP_ID2.replace("IDENTITY", "SIGMOID"))
    got = build_score_converter(post)(torch.zeros(1, 1, 3))
    torch.testing.assert_close(got, torch.tensor([[[0.5, 0.7, 0.5]]]))


def test_non_contiguous_label_map_ids_pick_their_own_column():
    msg = _post(MAP_ID2).calibration_config
    cal = build_calibration(msg, 3, class_ids=[1, 2, 5])  # id 2 is column 1 here as well
    assert cal.mapped.tolist() == [False, True, False]
    msg = _post(MAP_ID2.replace("key: 2", "key: 5")).calibration_config
    assert build_calibration(msg, 3, class_ids=[1, 2, 5]).mapped.tolist() == [False, False, True]


def test_sigmoid_calibration_is_platt_on_the_converted_score():
    post = _post("""score_converter: IDENTITY calibration_config { class_id_sigmoid_calibrations {
      class_id_sigmoid_parameters_map { key: 1 value { a: -2.0 b: 1.0 } } } }""")
    got = build_score_converter(post)(_columns([0.5, 0.25], k=2))
    # y = 1 / (1 + exp(a s + b)): s = 0.5 -> 1 / (1 + e^0) = 0.5; s = 0.25 -> 1 / (1 + e^0.5).
    torch.testing.assert_close(got[0, :, 0], torch.tensor([0.5, 1 / (1 + math.exp(0.5))]))
    torch.testing.assert_close(got[0, :, 1], torch.tensor([0.5, 0.25]))  # id 2: unchanged
    # The class-agnostic form with the TF OD API's defaults a = -1, b = 0: 1 / (1 + e^-s).
    post = _post("score_converter: IDENTITY "
                 "calibration_config { sigmoid_calibration { sigmoid_parameters { } } }")
    got = build_score_converter(post)(_columns([0.5], k=2))
    torch.testing.assert_close(got, torch.full((1, 1, 2), 1 / (1 + math.exp(-0.5))))


TEMPERATURE = "calibration_config { temperature_scaling_calibration { scaler: 2 } } score_converter: "


def test_temperature_divides_the_logits_before_the_converter():
    post = _post(TEMPERATURE + "SIGMOID")
    got = build_score_converter(post)(torch.tensor([[[2.0, -4.0]]]))
    torch.testing.assert_close(got, torch.tensor([[[1 / (1 + math.exp(-1)), 1 / (1 + math.exp(2))]]]))
    # With logit_scale 2 as well: (logit / 2) / 2.
    post.logit_scale = 2.0
    got = build_score_converter(post)(torch.tensor([[[4.0]]]))
    torch.testing.assert_close(got, torch.tensor([[[1 / (1 + math.exp(-1))]]]))
    # SOFTMAX with the implicit background logit 0: logits (2, 0) / 2 = (1, 0) -> e / (1 + e + 1).
    post = _post(TEMPERATURE + "SOFTMAX")
    got = build_score_converter(post)(torch.tensor([[[2.0, 0.0]]]))
    e = math.e
    torch.testing.assert_close(got, torch.tensor([[[e / (e + 2), 1 / (e + 2)]]]))


def test_no_calibration_is_the_plain_converter():
    got = build_score_converter(_post("score_converter: SIGMOID"))(torch.tensor([[[0.0, 2.0]]]))
    torch.testing.assert_close(got, torch.sigmoid(torch.tensor([[[0.0, 2.0]]])))


@pytest.mark.parametrize(("calibration", "field", "words"), [
    ("function_approximation { x_y_pairs { x_y_pair { x: 0.5 y: 0.1 } x_y_pair { x: 0.5 y: 0.2 } } }",
     "function_approximation.x_y_pairs.x_y_pair[1].x", "strictly increasing"),
    ("function_approximation { x_y_pairs { x_y_pair { x: 0.1 y: 1.5 } } }",
     "function_approximation.x_y_pairs.x_y_pair[0].y", "outside [0, 1]"),
    ("function_approximation { x_y_pairs { } }", "function_approximation.x_y_pairs", "no x_y_pair"),
    ("class_id_function_approximations { class_id_xy_pairs_map { key: 4 value { x_y_pair { x: 0 y: 0 } } } }",
     "class_id_function_approximations.class_id_xy_pairs_map[4]", "not a label-map id"),
    ("class_id_function_approximations { class_id_xy_pairs_map { key: 0 value { x_y_pair { x: 0 y: 0 } } } }",
     "class_id_function_approximations.class_id_xy_pairs_map[0]", "background"),
    ("class_id_function_approximations { class_id_xy_pairs_map { key: 1 value {"
     " x_y_pair { x: 0.6 y: 0 } x_y_pair { x: 0.2 y: 1 } } } }",
     "class_id_function_approximations.class_id_xy_pairs_map[1].x_y_pair[1].x", "strictly increasing"),
    ("class_id_sigmoid_calibrations { class_id_sigmoid_parameters_map { key: 2 value { a: 1.0 } } }",
     "class_id_sigmoid_calibrations.class_id_sigmoid_parameters_map[2].a", "negative"),
    ("temperature_scaling_calibration { scaler: 0 }", "temperature_scaling_calibration.scaler", "> 0"),
    ("", "calibration_config", "sets no calibrator"),
])
def test_bad_maps_are_config_errors_with_the_field_path(calibration, field, words):
    post = _post(f"score_converter: SIGMOID calibration_config {{ {calibration} }}")
    with pytest.raises(ConfigError) as err:
        build_score_converter(post, num_classes=3)
    full = "post_processing." + (field if field == "calibration_config" else f"calibration_config.{field}")
    assert str(err.value).startswith(full)
    assert words in str(err.value)


PIPELINE = """model {{ ssd {{ num_classes: 2
  post_processing {{ score_converter: SIGMOID calibration_config {{ {calibration} }} }} }} }}"""


def test_validate_names_the_file_and_field_and_uses_the_label_map():
    label_map = LabelMap([3, 7], ["scratch", "crack"], ["scratch", "crack"])
    good = ("class_id_function_approximations { class_id_xy_pairs_map "
            "{ key: 7 value { x_y_pair { x: 0 y: 0 } } } }")
    validate(parse_config(PIPELINE.format(calibration=good)), label_map, "p.config")
    bad = good.replace("key: 7", "key: 2")
    with pytest.raises(ConfigError) as err:
        validate(parse_config(PIPELINE.format(calibration=bad)), label_map, "p.config")
    message = str(err.value)
    assert message.startswith("p.config: model.ssd.post_processing.calibration_config."
                              "class_id_function_approximations.class_id_xy_pairs_map[2]")
    assert "[3, 7]" in message


def test_unknown_class_id_without_num_classes_fails_at_the_call():
    post = _post(MAP_ID2)
    convert = build_score_converter(post)
    with pytest.raises(ConfigError, match=r"class_id_xy_pairs_map\[2\]"):
        convert(torch.zeros(1, 1, 1))  # one column: id 2 does not exist


def test_proto_matches_the_tf_od_api_numbers():
    fields = calibration_pb2.CalibrationConfig.DESCRIPTOR.fields_by_name
    assert {n: f.number for n, f in fields.items()} == {
        "function_approximation": 1, "class_id_function_approximations": 2, "sigmoid_calibration": 3,
        "class_id_sigmoid_calibrations": 4, "temperature_scaling_calibration": 5}
    assert post_processing_pb2.PostProcessing.DESCRIPTOR.fields_by_name["calibration_config"].number == 4
    params = calibration_pb2.SigmoidParameters()
    assert (params.a, params.b) == (-1.0, 0.0)


def _calibrated_converter() -> ScoreConverter:
    maps = {0: ([0.0, 0.3, 1.0], [0.0, 0.5, 1.0]), 2: ([0.1, 0.9], [0.2, 0.6])}
    cal = Calibration.piecewise_linear(3, maps)
    return ScoreConverter("SIGMOID", 1.0, cal, 3)


def test_calibration_traces_into_torchscript():
    converter = _calibrated_converter()
    logits = torch.randn(2, 50, 3) * 3
    traced = torch.jit.trace(converter, (torch.randn(1, 7, 3),))
    torch.testing.assert_close(traced(logits), converter(logits), rtol=0, atol=0)


@pytest.mark.slow
def test_calibration_exports_to_onnx(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    converter = _calibrated_converter()
    path = tmp_path / "calibration.onnx"
    torch.onnx.export(converter, (torch.randn(1, 7, 3),), str(path), input_names=["logits"],
                      output_names=["scores"], dynamic_axes={"logits": {0: "b", 1: "a"}}, dynamo=False,
                      opset_version=17)
    logits = torch.randn(2, 50, 3) * 3
    got = ort.InferenceSession(str(path)).run(None, {"logits": logits.numpy()})[0]
    np.testing.assert_allclose(got, converter(logits).numpy(), rtol=0, atol=1e-6)
