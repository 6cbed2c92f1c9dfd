"""User-defined losses named in the config: `classification_loss { custom { name module } }`.

The user's module registers an elementwise function with the same contract as the built-in losses
(classification `(logits [B,A,K], targets [B,A,K], weights [B,A,K] or [B,A,1], **params) -> [B,A,K]`
or `[B,A]`; localization `(pred [B,A,4], target [B,A,4], weights [B,A]) -> [B,A]` on box encodings):

    from raredet.losses import register_classification_loss

    @register_classification_loss("my_loss")
    def my_loss(logits, targets, weights): ...

`get_custom_loss` imports the module named in the config and looks the name up.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

LossFn = Callable[..., Any]

# One plain dict per kind: the names user modules registered.
_CUSTOM_LOSSES: dict[str, dict[str, LossFn]] = {"classification": {}, "localization": {}}


def _register(kind: str, name: str, flag: str, value: bool) -> Callable[[LossFn], LossFn]:
    def decorator(fn: LossFn) -> LossFn:
        if value:
            setattr(fn, flag, True)  # read by DetectionLoss (see the decorators below)
        _CUSTOM_LOSSES[kind][name] = fn
        return fn

    return decorator


def register_classification_loss(name: str, background_column: bool = False) -> Callable[[LossFn], LossFn]:
    """Decorator: make `fn` available as `classification_loss { custom { name: "<name>" ... } }`.

    `background_column=True` for softmax-style losses: `DetectionLoss` then passes `K + 1` columns,
    a zero background logit first (as for `weighted_softmax`).
    """
    return _register("classification", name, "background_column", background_column)


def register_localization_loss(name: str, decoded_boxes: bool = False) -> Callable[[LossFn], LossFn]:
    """Decorator: make `fn` available as `localization_loss { custom { name: "<name>" ... } }`.

    `decoded_boxes=True` for losses on `xyxy` boxes (as `weighted_giou`) instead of box encodings.
    """
    return _register("localization", name, "decoded_boxes", decoded_boxes)


def get_custom_loss(kind: str, name: str, module: str) -> LossFn:
    """Import `module` and return the `kind` ("classification"/"localization") loss it registered."""
    if kind not in _CUSTOM_LOSSES:
        raise ValueError(f"kind must be one of {sorted(_CUSTOM_LOSSES)}, got {kind!r}")
    try:
        importlib.import_module(module)
    except ImportError as err:
        raise ValueError(
            f"cannot import module {module!r} for loss {name!r} ({err}); make it importable "
            "(install it or add its directory to PYTHONPATH)"
        ) from err
    registered = _CUSTOM_LOSSES[kind]
    if name not in registered:
        raise ValueError(
            f"module {module!r} registered no {kind} loss named {name!r}; registered: "
            f"{sorted(registered) or 'none'} (decorate it with raredet.losses.register_{kind}_loss)"
        )
    return registered[name]
