"""Score calibration: the TF OD API's ``post_processing.calibration_config``, on plain arguments.

Kinds (builders translate the config message; semantics from the TF OD API's calibration builder):

- **temperature**: ``logits / scaler``, applied to the logits *before* the score converter.
- **piecewise linear** (``function_approximation``, ``class_id_function_approximations``): points
  ``(x_i, y_i)`` with ``x`` strictly increasing; a score ``s`` in ``[x_i, x_{i+1})`` becomes
  ``(1 - a) * y_i + a * y_{i+1}`` with ``a = (s - x_i) / (x_{i+1} - x_i)`` (the TF OD API's formula,
  so a score equal to some ``x_i`` maps to exactly ``y_i``); below ``x_0`` it is ``y_0`` and from the
  last ``x`` on the last ``y`` (constant extrapolation).
- **sigmoid** (``sigmoid_calibration``, ``class_id_sigmoid_calibrations``): Platt's
  ``y = 1 / (1 + exp(a * s + b))`` on the converted score ``s``.

Every kind but temperature acts on converted scores, column by column: ``scores [B, A, K]``, column
``k`` is label-map id ``k + 1`` (the TF OD API's class id ``k + 1``; its column 0 is background,
which raredet's model does not have). Columns without a map of their own pass through unchanged.

The module is a few elementwise ops, a comparison count and a gather (no loop, no searchsorted), so
it traces into TorchScript and ONNX unchanged; its tensors are non-persistent buffers (calibration
comes from the config, never from a checkpoint).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

IDENTITY, PIECEWISE_LINEAR, SIGMOID = 0, 1, 2

Points = tuple[Sequence[float], Sequence[float]]


class Calibration(nn.Module):
    """Calibration of ``num_classes`` score columns; build it with one of the class methods.

    ``temperature(logits)`` -> logits for the score converter; ``forward(scores)`` -> calibrated
    scores, both ``[..., K]``.
    """

    xs: Tensor
    ys: Tensor
    num_points: Tensor
    sigmoid_a: Tensor
    sigmoid_b: Tensor
    mapped: Tensor

    def __init__(self, num_classes: int, kind: int = IDENTITY, scaler: float = 1.0,
                 points: Mapping[int, Points] | None = None,
                 sigmoid: Mapping[int, tuple[float, float]] | None = None) -> None:
        super().__init__()
        if scaler <= 0 or not math.isfinite(scaler):
            raise ValueError(f"temperature scaler must be a positive finite number, got {scaler}")
        self.num_classes, self.kind, self.scaler = num_classes, kind, float(scaler)
        points, sigmoid = dict(points or {}), dict(sigmoid or {})
        for column in [*points, *sigmoid]:
            if not 0 <= column < num_classes:
                raise ValueError(f"calibration column {column} is outside 0..{num_classes - 1}")
        width = max([2, *(len(xs) for xs, _ in points.values())])
        xs = torch.full((num_classes, width), math.inf)  # +inf pads: never counted as "at or below s"
        ys = torch.zeros(num_classes, width)
        num_points = torch.full((num_classes,), 2, dtype=torch.int64)
        for column, (x, y) in points.items():
            _check_points(x, y, column)
            n = len(x)
            xs[column, :n] = torch.tensor(x, dtype=torch.float32)
            ys[column, :n] = torch.tensor(y, dtype=torch.float32)
            ys[column, n:] = float(y[-1])
            num_points[column] = n
        a, b = torch.full((num_classes,), -1.0), torch.zeros(num_classes)  # TF OD API defaults
        for column, (a_k, b_k) in sigmoid.items():
            a[column], b[column] = a_k, b_k
        mapped = torch.zeros(num_classes, dtype=torch.bool)
        mapped[list(points) + list(sigmoid)] = True
        self.register_buffer("xs", xs, persistent=False)
        self.register_buffer("ys", ys, persistent=False)
        self.register_buffer("num_points", num_points, persistent=False)
        self.register_buffer("sigmoid_a", a, persistent=False)
        self.register_buffer("sigmoid_b", b, persistent=False)
        self.register_buffer("mapped", mapped, persistent=False)

    # ---- constructors ----------------------------------------------------------------------------

    @classmethod
    def identity(cls, num_classes: int) -> Calibration:
        return cls(num_classes)

    @classmethod
    def temperature_scaling(cls, num_classes: int, scaler: float) -> Calibration:
        return cls(num_classes, scaler=scaler)

    @classmethod
    def piecewise_linear(cls, num_classes: int, points: Mapping[int, Points]) -> Calibration:
        """``points``: column index -> (xs, ys); columns not given pass through."""
        return cls(num_classes, PIECEWISE_LINEAR, points=points)

    @classmethod
    def piecewise_linear_all(cls, num_classes: int, x: Sequence[float], y: Sequence[float]) -> Calibration:
        """One map for every column (``function_approximation``)."""
        return cls.piecewise_linear(num_classes, {k: (x, y) for k in range(num_classes)})

    @classmethod
    def platt(cls, num_classes: int, params: Mapping[int, tuple[float, float]]) -> Calibration:
        """``params``: column index -> (a, b); columns not given pass through."""
        return cls(num_classes, SIGMOID, sigmoid=params)

    @classmethod
    def platt_all(cls, num_classes: int, a: float, b: float) -> Calibration:
        """One sigmoid for every column (``sigmoid_calibration``)."""
        return cls.platt(num_classes, {k: (a, b) for k in range(num_classes)})

    # ---- application -----------------------------------------------------------------------------

    def temperature(self, logits: Tensor) -> Tensor:
        """``logits [..., K]`` divided by the temperature (unchanged when there is none)."""
        return logits if self.scaler == 1.0 else logits / self.scaler

    def forward(self, scores: Tensor) -> Tensor:
        """Converted ``scores [..., K]`` -> calibrated scores ``[..., K]``."""
        if self.kind == PIECEWISE_LINEAR:
            return torch.where(self.mapped, self._interpolate(scores), scores)
        if self.kind == SIGMOID:
            platt = torch.sigmoid(-(self.sigmoid_a * scores + self.sigmoid_b))  # 1 / (1 + exp(a s + b))
            return torch.where(self.mapped, platt, scores)
        return scores

    def _interpolate(self, scores: Tensor) -> Tensor:
        """Piecewise-linear map of every column (module docstring): ``[..., K]`` -> ``[..., K]``."""
        xs = self.xs.expand(*scores.shape, self.xs.shape[-1])  # [..., K, P]
        ys = self.ys.expand_as(xs)
        at_or_below = (xs <= scores.unsqueeze(-1)).sum(dim=-1)  # [..., K]: points x_i <= s
        lo = (at_or_below - 1).clamp(0, xs.shape[-1] - 2).unsqueeze(-1)
        x_lo, x_hi = xs.gather(-1, lo).squeeze(-1), xs.gather(-1, lo + 1).squeeze(-1)
        y_lo, y_hi = ys.gather(-1, lo).squeeze(-1), ys.gather(-1, lo + 1).squeeze(-1)
        alpha = (scores - x_lo) / (x_hi - x_lo)
        inside = (1 - alpha) * y_lo + alpha * y_hi
        first, last = self.ys[:, 0], self.ys.gather(-1, (self.num_points - 1)[:, None]).squeeze(-1)
        # Outside [x_0, x_last] the map is constant; this also replaces the unused inf/nan there.
        return torch.where(at_or_below == 0, first, torch.where(at_or_below >= self.num_points, last, inside))

    def extra_repr(self) -> str:
        kind = {IDENTITY: "identity", PIECEWISE_LINEAR: "piecewise_linear", SIGMOID: "sigmoid"}[self.kind]
        return f"num_classes={self.num_classes}, kind={kind}, scaler={self.scaler:g}, " \
               f"mapped={self.mapped.nonzero().flatten().tolist()}"


def _check_points(x: Sequence[float], y: Sequence[float], column: int) -> None:
    """Points must be usable for interpolation (the config validation gives field paths first)."""
    if len(x) != len(y) or len(x) < 1:
        raise ValueError(f"calibration column {column}: need as many x as y values, at least one")
    if any(not (b > a) for a, b in zip(x, x[1:], strict=False)):
        raise ValueError(f"calibration column {column}: x values must be strictly increasing, got {list(x)}")
