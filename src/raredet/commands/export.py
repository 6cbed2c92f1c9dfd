"""`raredet export`: a trained model as one TorchScript or ONNX file, post-processing included.

The exported module takes a uint8 image batch ``images [B, 3, H, W]`` (RGB, at the config's fixed input
size: ``fixed_shape_resizer`` height x width, or the ``max_dimension`` square of a padded
``keep_aspect_ratio_resizer``; the caller resizes) and returns, as the TF OD API's exported models do,

- ``detection_boxes [B, D, 4]`` float32, xyxy in pixels of the input,
- ``detection_scores [B, D]`` float32, best first,
- ``detection_classes [B, D]`` int64 **label-map ids** (0 on padding rows),
- ``num_detections [B]`` int64, the valid rows,

padded to ``D = max_total_detections``. Any batch size works. Normalisation is inside the model.
Models whose detections carry instances add, after those four (``INSTANCE_OUTPUTS``, in this order):

- ``detection_masks [B, D, h, w]`` float32 (Mask R-CNN, CenterNet with ``deepmac_mask_estimation``):
  each detection's mask probabilities *in its box's frame* (row 0 at the box's top edge, column 0 at its
  left; the TF OD API's masks before ``reframe_box_masks_to_image_masks``); paste into the image and
  threshold at 0.5 (``evaluation.masks.paste_box_masks`` does both);
- ``detection_keypoints [B, D, J, 2]`` float32 (CenterNet with ``keypoint_estimation_task``): (x, y) in
  pixels of the input (the TF OD API's are (y, x) normalised), zero for detections of classes without
  keypoints; ``detection_keypoint_scores [B, D, J]`` float32.

How it is exported, and why:

- Both formats are traced (``torch.jit.trace``), and the ONNX file comes from torch's TorchScript-based
  exporter (``dynamo=False``). The NMS (``modeling.postprocess``) iterates a suppression mask to its
  fixed point and stops when it no longer changes: a data-dependent loop, which ``torch.export`` (the
  dynamo exporter) refuses and plain tracing would unroll to the count of the example batch. During
  export that one function is replaced by an equivalent TorchScript-compiled copy
  (``torch.jit.script_if_tracing``), which both formats keep as a real loop (ONNX ``Loop``).
- Two ops of the post-processing have no symbolic in that exporter: in-place ``&=`` on masks
  (exported as ``And``) and stable ``argsort`` (exported as ``TopK``, which ONNX defines to break ties
  by the lower index: the same order).
- The label map and the pipeline.config travel inside the file (TorchScript extra files
  ``label_map.pbtxt``/``pipeline.config``; ONNX ``metadata_props``), so the ids can be named.
- After writing, the file is loaded back and run on a random batch; the export fails if its detections
  (and their masks and keypoints) differ from the PyTorch model's (so a broken export is never left
  behind silently).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple
from unittest import mock

import numpy as np
import torch
from torch import Tensor, nn

from raredet import builders
from raredet.builders.messages import ModelMessage
from raredet.commands.trained import TrainedModel, load_trained_model, set_operating_points_from_file
from raredet.errors import ConfigError, RaredetError
from raredet.fileio import atomic_write, atomic_write_bytes
from raredet.modeling.center_net import CenterNet
from raredet.protos import center_net_pb2, faster_rcnn_pb2

OUTPUT_NAMES = ("detection_boxes", "detection_scores", "detection_classes", "num_detections")
# Per-detection instance outputs a model may add after OUTPUT_NAMES (module docstring), in this order.
INSTANCE_OUTPUTS = ("detection_masks", "detection_keypoints", "detection_keypoint_scores")
# exported vs PyTorch: mask probabilities, keypoint (x, y) pixels, keypoint scores
INSTANCE_TOLERANCES = {"detection_masks": 1e-3, "detection_keypoints": 1e-2,
                       "detection_keypoint_scores": 1e-4}
ONNX_OPSET = 17
BOX_TOLERANCE_PX = 1e-2  # exported vs PyTorch boxes (float reordering only)
SCORE_TOLERANCE = 1e-4
# Scores this close are ties: ONNX Runtime's and PyTorch's sigmoids differ by up to ~5e-8 (measured).
TIE_TOLERANCE = 1e-6
NEAR_PEAK = 1e-5  # CenterNet: a pixel this close to its neighbourhood's maximum may be a peak after export


class ExportError(RaredetError):
    """The exported file could not be written or does not reproduce the model's detections."""


class ExportableDetector(nn.Module):
    """A detector (SSD, Faster R-CNN, CenterNet) plus its post-processing for a fixed input size,
    returning plain tensors (see module docstring) with label-map ids as classes; `instance_outputs`
    (names of INSTANCE_OUTPUTS the model's post-processing gives) follow the four detection outputs."""

    image_sizes: Tensor
    class_ids: Tensor

    def __init__(self, model: nn.Module, input_size: tuple[int, int], class_ids: Sequence[int],
                 instance_outputs: Sequence[str] = ()) -> None:
        super().__init__()
        self.model = model
        self.input_size = input_size
        self.instance_outputs = tuple(instance_outputs)
        self.register_buffer("image_sizes", torch.tensor([input_size], dtype=torch.int64))
        self.register_buffer("class_ids", torch.tensor(list(class_ids), dtype=torch.int64))

    @property
    def output_names(self) -> tuple[str, ...]:
        return OUTPUT_NAMES + self.instance_outputs

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        """``images [B, 3, H, W]`` uint8 -> boxes [B, D, 4], scores [B, D], classes [B, D], num [B], then
        the instance outputs."""
        outputs = self.model(images)
        det = self.model.postprocess(outputs, self.image_sizes.expand(images.shape[0], 2))  # type: ignore
        classes = det["detection_classes"]
        rows = torch.arange(classes.shape[1], device=classes.device)[None, :]
        valid = rows < det["num_detections"][:, None]
        ids = torch.where(valid, self.class_ids[classes], torch.zeros_like(classes))
        instances = tuple(det[name] for name in self.instance_outputs)
        return (det["detection_boxes"], det["detection_scores"], ids, det["num_detections"], *instances)


def instance_outputs(model: nn.Module, size: tuple[int, int]) -> tuple[str, ...]:
    """The INSTANCE_OUTPUTS `model`'s post-processing gives (run once on a blank image of `size`)."""
    images = torch.zeros((1, 3, *size), dtype=torch.uint8)
    with torch.no_grad():
        det = model.postprocess(model(images), torch.tensor([size], dtype=torch.int64))  # type: ignore
    return tuple(name for name in INSTANCE_OUTPUTS if name in det)


def input_size(model: ModelMessage) -> tuple[int, int]:
    """(H, W) the exported model takes: the fixed size of the resizer `model.image_resizer` builds."""
    size = builders.build_resizer(model).fixed_size
    if size is None:
        kind = "faster_rcnn" if isinstance(model, faster_rcnn_pb2.FasterRcnn) else (
            "center_net" if isinstance(model, center_net_pb2.CenterNet) else "ssd")
        chosen = model.image_resizer.WhichOneof("image_resizer_oneof")
        raise ConfigError(f"model.{kind}.image_resizer is {chosen}: export needs a fixed input size; use "
                          "fixed_shape_resizer, or keep_aspect_ratio_resizer with pad_to_max_dimension: true")
    return size


# ---- making the NMS loop exportable ---------------------------------------------------------------


def _greedy_keep_scriptable(suppresses: Tensor) -> Tensor:
    """`postprocess._greedy_keep` in ops both TorchScript and the ONNX exporter accept (`==`/`all`
    instead of `torch.equal`): ``suppresses [..., N, N]`` bool -> keep ``[..., N]`` bool."""
    keep = torch.ones(suppresses.shape[:-1], dtype=torch.bool, device=suppresses.device)
    for _ in range(suppresses.shape[-1]):  # bounded by N; stops at the fixed point
        new_keep = ~(suppresses & keep.unsqueeze(-2)).any(dim=-1)
        if bool((new_keep == keep).all()):
            break
        keep = new_keep
    return keep


@contextlib.contextmanager
def exportable_nms() -> Iterator[None]:
    """While tracing, NMS keeps its data-dependent loop (module docstring)."""
    from raredet.modeling import postprocess

    scripted = torch.jit.script_if_tracing(_greedy_keep_scriptable)
    with mock.patch.object(postprocess, "_greedy_keep", scripted):
        yield


def _iand_symbolic(g: Any, a: Any, b: Any) -> Any:
    return g.op("And", a, b)


def _argsort_symbolic(g: Any, x: Any, stable: bool, dim: int, descending: bool) -> Any:
    """aten::argsort.stable -> TopK over the whole axis (ONNX TopK keeps the lower index first on ties).
    Input cast to double: ONNX Runtime's TopK has no bool/uint8 kernel; double holds both exactly."""
    x = g.op("Cast", x, to_i=torch.onnx.TensorProtoDataType.DOUBLE)
    n = g.op("Gather", g.op("Shape", x), g.op("Constant", value_t=torch.tensor([dim], dtype=torch.int64)))
    _, indices = g.op("TopK", x, n, axis_i=dim, largest_i=int(descending), sorted_i=1, outputs=2)
    return indices


def register_onnx_symbolics() -> None:
    """Symbolics the TorchScript-based ONNX exporter lacks for the post-processing (module docstring)."""
    from torch.onnx.symbolic_helper import parse_args

    argsort = parse_args("v", "b", "i", "b")(_argsort_symbolic)  # constants arrive as Python values
    torch.onnx.register_custom_op_symbolic("aten::__iand_", _iand_symbolic, ONNX_OPSET)
    torch.onnx.register_custom_op_symbolic("aten::argsort", argsort, ONNX_OPSET)


# ---- writing the two formats ------------------------------------------------------------------------


def _example_batch(size: tuple[int, int], batch: int = 2, seed: int = 0) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, 3, *size), dtype=torch.uint8, generator=generator)


def _trace(module: ExportableDetector, example: Tensor) -> torch.jit.ScriptModule:
    with exportable_nms(), torch.no_grad(), warnings.catch_warnings():
        # The tracer warns about every Python int taken from a shape; the input size is fixed by design.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # torch 2.13 deprecates TorchScript, but it is the format asked for, and torch.export cannot
        # capture the NMS loop (module docstring).
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.trace(module, example, check_trace=False)


def save_torchscript(module: ExportableDetector, out: Path, extra: dict[str, str]) -> Callable[[Tensor], Any]:
    """Trace and write atomically; returns the reloaded file as a function of an image batch."""
    traced = _trace(module, _example_batch(module.input_size))
    files = {k: v.encode("utf-8") for k, v in extra.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript: see _trace
        atomic_write(out, lambda f: torch.jit.save(traced, f, _extra_files=files))
        loaded = torch.jit.load(str(out))

    def run(images: Tensor) -> list[np.ndarray]:
        with torch.no_grad():
            return [t.numpy() for t in loaded(images)]

    return run


def _onnx_bytes(module: ExportableDetector, extra: dict[str, str]) -> bytes:
    """The ONNX model (dynamic batch axis) with `extra` as metadata_props."""
    import onnx

    register_onnx_symbolics()
    with tempfile.TemporaryDirectory() as tmp, exportable_nms(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings and the exporter's own deprecation notice
        path = Path(tmp) / "model.onnx"
        names = module.output_names
        torch.onnx.export(module, (_example_batch(module.input_size),), str(path), dynamo=False,
                          opset_version=ONNX_OPSET, input_names=["images"], output_names=list(names),
                          dynamic_axes={name: {0: "batch"} for name in ("images", *names)})
        proto = onnx.load(str(path))
    for key, value in extra.items():
        proto.metadata_props.add(key=key, value=value)
    return proto.SerializeToString()


def save_onnx(module: ExportableDetector, out: Path, extra: dict[str, str]) -> Callable[[Tensor], Any]:
    """Export and write atomically; returns an onnxruntime session of the file as a function."""
    try:
        import onnx  # noqa: F401
        import onnxruntime
    except ImportError as err:
        raise ExportError(f"--format onnx needs the onnx and onnxruntime packages ({err}); "
                          "pip install 'raredet[export]'") from None
    atomic_write_bytes(out, _onnx_bytes(module, extra))
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    return lambda images: session.run(list(module.output_names), {"images": images.numpy()})


FORMATS: dict[str, Callable[[ExportableDetector, Path, dict[str, str]], Callable[[Tensor], Any]]] = {
    "torchscript": save_torchscript,
    "onnx": save_onnx,
}


# ---- checking and the command ---------------------------------------------------------------------


def _counterparts(want: Sequence[np.ndarray], got: Sequence[np.ndarray], b: int) -> np.ndarray:
    """[n, n] bool for image `b`'s n valid detections: row j of `got` and row i of `want` have the same
    class, boxes within BOX_TOLERANCE_PX and scores within SCORE_TOLERANCE (order-free: near-equal
    scores may swap)."""
    n = int(want[3][b])
    box_close = np.abs(got[0][b, :n, None, :] - want[0][b, None, :n, :]).max(axis=-1) <= BOX_TOLERANCE_PX
    score_close = np.abs(got[1][b, :n, None] - want[1][b, None, :n]) <= SCORE_TOLERANCE
    same_class = got[2][b, :n, None] == want[2][b, None, :n]
    return box_close & score_close & same_class


def _unmatched_rows(want: Sequence[np.ndarray], got: Sequence[np.ndarray], b: int) -> np.ndarray:
    """Rows of image `b`'s valid detections in `got` without a counterpart in `want` (`_counterparts`)."""
    return np.flatnonzero(~_counterparts(want, got, b).any(axis=1))


def instance_differences(expected: Sequence[Tensor | np.ndarray], got: Sequence[np.ndarray],
                         names: Sequence[str]) -> str | None:
    """None when every exported detection with a PyTorch counterpart (`_counterparts`) has instance
    outputs (`names`, the outputs after the four detection ones) within INSTANCE_TOLERANCES of that
    counterpart's, else what differs. NaN matches NaN. Tied alternatives (no counterpart) are not
    compared: they are other detections, with their own masks and keypoints."""
    want = [t.numpy() if isinstance(t, Tensor) else t for t in expected]
    worst: dict[str, tuple[int, float]] = {}
    for b, n in enumerate(want[3].tolist()):
        match = _counterparts(want, got, b)
        for k, name in enumerate(names, start=len(OUTPUT_NAMES)):
            g, w = got[k][b, :n].reshape(n, 1, -1), want[k][b, :n].reshape(1, n, -1)
            diff = np.where(np.isnan(g) & np.isnan(w), 0.0, np.abs(g - w)).max(axis=-1, initial=0.0)  # [n, n]
            close = diff <= INSTANCE_TOLERANCES[name]  # NaN against a number: not close
            bad = match.any(axis=1) & ~(match & close).any(axis=1)
            if bad.any():
                count, largest = worst.get(name, (0, 0.0))
                nearest = np.where(match, np.nan_to_num(diff, nan=np.inf), np.inf).min(axis=1)[bad].max()
                worst[name] = (count + int(bad.sum()), max(largest, float(nearest)))
    if not worst:
        return None
    return "; ".join(f"{name} of {count} detections differ by up to {largest:.3g} (tolerance "
                     f"{INSTANCE_TOLERANCES[name]:g})" for name, (count, largest) in worst.items())


class Candidates(NamedTuple):
    """What PyTorch's NMS chose from: boxes ``[B, A, 4]`` xyxy, scores ``[B, A, K]`` (column k is the
    label-map id ``class_ids[k]``). ``rounding_decides``: every candidate is one whose selection is
    down to float rounding (CenterNet's near-peaks), so none needs a tied score to pass."""

    boxes: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray
    rounding_decides: bool = False


def _tie_alternatives(got: Sequence[np.ndarray], b: int, rows: np.ndarray, candidates: Candidates) -> int:
    """How many of image `b`'s exported detections `rows` are equally good alternatives to PyTorch's:
    a candidate of PyTorch's own (that class, a box within BOX_TOLERANCE_PX, a score within
    TIE_TOLERANCE) whose score ties (within TIE_TOLERANCE) with at least one other candidate's, so that
    which of them NMS keeps is down to float rounding and the tie order of top-k (not to the export)."""
    flat = np.sort(candidates.scores[b].ravel())
    good = 0
    for j in rows:  # only the detections without a counterpart: usually none, at most D
        score, box, label = got[1][b, j], got[0][b, j], got[2][b, j]
        near = np.searchsorted(flat, score + TIE_TOLERANCE, "right") - np.searchsorted(
            flat, score - TIE_TOLERANCE, "left")
        column = np.flatnonzero(candidates.class_ids == label)
        if (near < 2 and not candidates.rounding_decides) or not column.size:
            continue
        same = (np.abs(candidates.scores[b, :, column[0]] - score) <= TIE_TOLERANCE) & (
            np.abs(candidates.boxes[b] - box).max(axis=-1) <= BOX_TOLERANCE_PX)
        good += int(same.any())
    return good


def compare_detections(expected: Sequence[Tensor], got: Sequence[np.ndarray],
                       candidates: Candidates | None = None) -> str | None:
    """None when the exported outputs match the PyTorch ones, else what differs (`checked_detections`)."""
    return checked_detections(expected, got, candidates)[0]


def checked_detections(expected: Sequence[Tensor], got: Sequence[np.ndarray],
                       candidates: Candidates | None = None) -> tuple[str | None, int]:
    """(None when the exported outputs match the PyTorch ones, else what differs; how many of `got`'s
    detections passed as tied alternatives).

    Match: the same number of detections per image, each with a counterpart of the same class, box and
    score within tolerance. With `candidates` (PyTorch's boxes and scores before NMS), a detection without
    a counterpart also passes when it is a tied alternative (`_tie_alternatives`) and the image's sorted
    scores agree: a barely trained model gives thousands of anchors the same score, and which of them
    fill the D slots then depends on float rounding in the last bit and on the tie order of top-k, which
    differ between PyTorch and ONNX Runtime (ONNX's TopK takes the lower index first; torch.topk leaves it
    to the kernel)."""
    want = [t.numpy() for t in expected]
    if not np.array_equal(want[3], got[3]):
        return f"num_detections {got[3].tolist()} instead of {want[3].tolist()}", 0
    missing, ties = _differences(want, got, candidates)
    if missing:
        return (f"{missing} detections have no counterpart within {BOX_TOLERANCE_PX} px and score "
                f"{SCORE_TOLERANCE} of the same class"), ties
    return None, ties


def _differences(want: Sequence[np.ndarray], got: Sequence[np.ndarray],
                 candidates: Candidates | None) -> tuple[int, int]:
    """(detections of `got` without a counterpart in `want` and not a tied alternative, tied
    alternatives) over the batch; `want` and `got` have the same num_detections."""
    missing = ties = 0
    for b, n in enumerate(want[3].tolist()):
        unmatched = _unmatched_rows(want, got, b)
        if unmatched.size and candidates is not None:
            scores_agree = np.abs(np.sort(got[1][b, :n]) - np.sort(want[1][b, :n])).max() <= SCORE_TOLERANCE
            if scores_agree:
                alternatives = _tie_alternatives(got, b, unmatched, candidates)
                missing, ties = missing + unmatched.size - alternatives, ties + alternatives
                continue
        missing += unmatched.size
    return missing, ties


def model_candidates(module: ExportableDetector, images: Tensor) -> Candidates | None:
    """PyTorch's candidates for `compare_detections` (SSD and CenterNet models; None for others). For
    CenterNet, the pixels within NEAR_PEAK of their neighbourhood's maximum: which of two pixels a hair
    apart is the peak (TF's 1e-6 rule) differs between PyTorch's and ONNX Runtime's float rounding."""
    scored_boxes = getattr(module.model, "scored_boxes", None)
    if scored_boxes is None:
        return None
    sizes = module.image_sizes.expand(images.shape[0], 2)
    center_net = isinstance(module.model, CenterNet)
    with torch.no_grad():
        outputs = module.model(images)
        extra = (NEAR_PEAK,) if center_net else ()
        boxes, scores = scored_boxes(outputs, sizes, *extra)
    return Candidates(boxes.numpy(), scores.numpy(), module.class_ids.numpy(), rounding_decides=center_net)


def _metadata(trained: TrainedModel, size: tuple[int, int],
              operating_points: str | os.PathLike[str] | None = None,
              outputs: Sequence[str] = OUTPUT_NAMES) -> dict[str, str]:
    info = {"input": f"images uint8 [B, 3, {size[0]}, {size[1]}] RGB", "outputs": list(outputs),
            "classes": "label-map ids (0 on padding rows)", "checkpoint": str(trained.checkpoint),
            "step": trained.step}
    extra = {"label_map.pbtxt": trained.label_map.to_pbtxt(), "pipeline.config": trained.config_text}
    if operating_points is not None:
        info["operating_points"] = str(operating_points)
        extra["operating_points.json"] = Path(operating_points).read_text(encoding="utf-8")
    return {**extra, "raredet.json": json.dumps(info)}


def export_model(model_dir: str | os.PathLike[str], format: str, out: str | os.PathLike[str], *,
                 pipeline_config_path: str | os.PathLike[str] | None = None,
                 operating_points: str | os.PathLike[str] | None = None,
                 label_map_path: str | os.PathLike[str] | None = None) -> str:
    """`raredet export`: write the newest checkpoint of `model_dir` as `format` to `out`, check it
    against PyTorch, and return a one-paragraph description. `operating_points` (an
    operating_points.json of `raredet eval`) puts its per-class thresholds into the graph: scores are
    mapped so that each class's threshold lands on the file's `score_threshold`, the NMS threshold.
    `model_dir` may be a model the TF OD API trained (`commands.trained`); `label_map_path` replaces the
    label map the file carries."""
    if format not in FORMATS:
        raise ConfigError(f"--format {format!r}: valid formats are {', '.join(FORMATS)}")
    trained = load_trained_model(model_dir, pipeline_config_path, label_map_path)
    if operating_points is not None:
        set_operating_points_from_file(trained, operating_points, review=False)
    size = input_size(builders.model_message(trained.pipeline))
    trained.model.eval()
    module = ExportableDetector(trained.model, size, trained.label_map.ids,
                                instance_outputs(trained.model, size)).eval()
    metadata = _metadata(trained, size, operating_points, module.output_names)
    run_exported = FORMATS[format](module, Path(out), metadata)
    check = _example_batch(size, batch=3, seed=1)  # another batch size than traced: the axis is dynamic
    with torch.no_grad():
        expected = module(check)
    got, candidates = run_exported(check), model_candidates(module, check)
    problem, ties = checked_detections(expected, got, candidates)
    if problem is None:
        problem = instance_differences(expected, got, module.instance_outputs)
    if problem is not None:
        raise ExportError(f"{out}: the exported model does not reproduce the PyTorch detections ({problem}); "
                          "please report this with the pipeline.config")
    total = int(expected[3].sum())
    checked = f"the same {total} detections as PyTorch on a random batch of 3"
    if module.instance_outputs:
        checked += f", with their {', '.join(module.instance_outputs)}"
    if ties:  # a barely trained model: many anchors share the best scores
        checked = (f"{total} detections on a random batch of 3: {total - ties} as PyTorch's, {ties} "
                   "other candidates of PyTorch's with the same class and score (tied scores: which of "
                   "them fill the slots is down to float rounding)")
    return "".join(f"{note}\n" for note in trained.notes) + (
            f"wrote {out} ({format}, {Path(out).stat().st_size / 1e6:.1f} MB) from {trained.checkpoint}\n"
            f"  input:   images uint8 [B, 3, {size[0]}, {size[1]}] RGB (resize first)\n"
            f"  outputs: {', '.join(module.output_names)} (classes are label-map ids)\n"
            f"  checked: {checked}")

