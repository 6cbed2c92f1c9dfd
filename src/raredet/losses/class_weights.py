"""Per-class loss weights: explicit, automatic from the training counts, or both.

Order of resolution (docs/architecture.md, "Class weighting semantics"):
1. Automatic scheme, if any, on counts `n_c` (training boxes, or images with `count="IMAGES"`):
   `INVERSE_FREQUENCY` 1/n, `SQRT_INVERSE_FREQUENCY` 1/sqrt(n), `EFFECTIVE_NUMBER` (1-beta)/(1-beta^n).
2. Rescale the automatic weights so that the total weight of the training boxes is unchanged:
   `sum_c N_c w_c = sum_c N_c` with `N_c` the training *box* counts (mean weight over boxes = 1).
3. Clip at `max_weight` (after the rescale, so the limit is in the units the table shows; clipping
   can leave the total slightly below the box count, which is what a user asking for a cap wants).
4. Explicit weights override, used exactly as given.
A class with no training examples under an automatic scheme gets a warning and weight 1.0 (the
weight of a class nobody mentioned) rather than an infinite weight.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class ClassWeight:
    """One resolved class weight. `count` is the count the scheme used (boxes or images)."""

    index: int
    id: int
    name: str
    count: int
    weight: float
    source: str  # "explicit", "auto:<SCHEME>" or "default"


def _effective_number(n: float, beta: float) -> float:
    return (1.0 - beta) / (1.0 - beta**n)


AUTO_SCHEMES: dict[str, Callable[[float, float], float]] = {
    "INVERSE_FREQUENCY": lambda n, beta: 1.0 / n,
    "SQRT_INVERSE_FREQUENCY": lambda n, beta: 1.0 / math.sqrt(n),
    "EFFECTIVE_NUMBER": _effective_number,
}
COUNT_MODES = ("BOXES", "IMAGES")


def _check_arguments(
    num: int,
    box_counts: Sequence[int],
    image_counts: Sequence[int],
    auto_scheme: str | None,
    beta: float,
    count: str,
    max_weight: float | None,
) -> None:
    if len(box_counts) != num or len(image_counts) != num:
        raise ValueError(f"class counts have {len(box_counts)}/{len(image_counts)} entries for {num} classes")
    if auto_scheme is not None and auto_scheme not in AUTO_SCHEMES:
        raise ValueError(
            f"auto.scheme: unknown scheme {auto_scheme!r}; valid: {', '.join(AUTO_SCHEMES)}"
        )
    if count not in COUNT_MODES:
        raise ValueError(f"auto.count: unknown {count!r}; valid: {', '.join(COUNT_MODES)}")
    if auto_scheme == "EFFECTIVE_NUMBER" and not 0.0 <= beta < 1.0:
        raise ValueError(f"auto.beta must be in [0, 1) for EFFECTIVE_NUMBER, got {beta}")
    if max_weight is not None and not max_weight > 0:
        raise ValueError(f"auto.max_weight must be > 0 (or unset), got {max_weight}")


def _check_explicit(explicit: Mapping[int, float], names: Sequence[str]) -> None:
    for index, value in explicit.items():
        if not 0 <= index < len(names):
            raise ValueError(f"explicit class weight for index {index}, but there are {len(names)} classes")
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(
                f"weight for class {names[index]!r} is {value}; give a finite value >= 0"
            )


def _auto_weights(
    names: Sequence[str], counts: Sequence[int], box_counts: Sequence[int], scheme: str, beta: float
) -> list[float | None]:
    """Rescaled automatic weights; None for classes without training examples."""
    raw: list[float | None] = [AUTO_SCHEMES[scheme](float(n), beta) if n > 0 else None for n in counts]
    for name, r in zip(names, raw, strict=True):
        if r is None:
            warnings.warn(
                f"class {name!r} has no training examples, so {scheme} cannot weight it; it keeps "
                "weight 1.0 (add examples or give it an explicit class_weights.weight)",
                stacklevel=3,
            )
    total = sum(n for n, r in zip(box_counts, raw, strict=True) if r is not None)
    weighted = sum(n * r for n, r in zip(box_counts, raw, strict=True) if r is not None)
    scale = total / weighted if weighted > 0 else 1.0
    return [None if r is None else r * scale for r in raw]


def resolve_class_weights(
    names: Sequence[str],
    ids: Sequence[int],
    box_counts: Sequence[int],
    image_counts: Sequence[int],
    explicit: Mapping[int, float] | None = None,
    auto_scheme: str | None = None,
    beta: float = 0.999,
    count: str = "BOXES",
    max_weight: float | None = None,
) -> list[ClassWeight]:
    """Resolve one weight per class (index order), see the module docstring for the order.

    `names`, `ids`, `box_counts`, `image_counts` are per contiguous class index `[K]`; `explicit`
    maps a class index to its hand-given weight (the caller resolved label-map names and ids).
    `max_weight` None or 0 means no clipping.
    """
    max_weight = max_weight or None
    explicit = explicit or {}
    _check_arguments(len(names), box_counts, image_counts, auto_scheme, beta, count, max_weight)
    _check_explicit(explicit, names)
    counts = box_counts if count == "BOXES" else image_counts
    auto = _auto_weights(names, counts, box_counts, auto_scheme, beta) if auto_scheme else [None] * len(names)
    resolved = []
    for index, (name, class_id, n, a) in enumerate(zip(names, ids, counts, auto, strict=True)):
        if index in explicit:
            weight, source = float(explicit[index]), "explicit"
        elif a is not None:
            weight, source = min(a, max_weight) if max_weight else a, f"auto:{auto_scheme}"
        else:
            weight, source = 1.0, "default"
        resolved.append(ClassWeight(index, int(class_id), name, int(n), weight, source))
    return resolved


def class_weight_tensor(weights: Sequence[ClassWeight]) -> Tensor:
    """The weights as a float32 tensor `[K]` in index order, for `DetectionLoss(class_weights=...)`."""
    return torch.tensor([w.weight for w in sorted(weights, key=lambda w: w.index)], dtype=torch.float32)


def resolve_class_alpha(num_classes: int, explicit: Mapping[int, float], names: Sequence[str]) -> Tensor:
    """Per-class focal alpha `[K]` for `weighted_sigmoid_focal(class_alpha=...)`.

    `explicit` maps class index to alpha; unlisted classes are NaN, which the focal loss reads as
    "use `alpha`".
    """
    alpha = torch.full((num_classes,), float("nan"))
    for index, value in explicit.items():
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"class_alpha for class {names[index]!r} is {value}; give a value in [0, 1]")
        alpha[index] = float(value)
    return alpha


def format_class_weight_table(weights: Sequence[ClassWeight]) -> str:
    """A fixed-width text table: index, id, name, count, weight, source (one row per class)."""
    header = ("index", "id", "name", "count", "weight", "source")
    rows = [(str(w.index), str(w.id), w.name, str(w.count), f"{w.weight:.4g}", w.source) for w in weights]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    numeric = {0, 1, 3, 4}

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(wd) if i in numeric else c.ljust(wd)
            for i, (c, wd) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return "\n".join([line(header), line(["-" * wd for wd in widths]), *(line(r) for r in rows)])
