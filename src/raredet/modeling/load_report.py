"""What a checkpoint load reports (`LoadReport`), the `fine_tune_checkpoint_type` values, and the
warning for tensors skipped for their shape: shared by the torch loader (`pretrained.py`) and the TF
loader (`tf_weights/`), which `pretrained.load_checkpoint_weights` dispatches to."""

from __future__ import annotations

from dataclasses import dataclass, field

CHECKPOINT_TYPES = ("classification", "detection", "full")


class CheckpointShapeWarning(UserWarning):
    """Some fine_tune_checkpoint tensors were skipped because their shape differs from the model's."""


@dataclass
class LoadReport:
    """Which checkpoint entries went where (names in the target module, each list sorted)."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape_mismatch: list[str] = field(default_factory=list)
    # name -> (shape in the file, shape in the model), for each entry of shape_mismatch
    mismatched_shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)
    # part -> (tensors loaded, tensors of that part in the model), for checkpoints mapped part by part
    parts: dict[str, tuple[int, int]] = field(default_factory=dict)
    # the weights convention the model computes with after the load ("" = unchanged)
    convention: str = ""

    def summary(self) -> str:
        text = (
            f"loaded {len(self.loaded)}, missing {len(self.missing)}, unexpected {len(self.unexpected)}, "
            f"shape mismatch {len(self.shape_mismatch)}"
        )
        if self.parts:
            text += "; " + self.parts_summary()
        if self.convention == "tf":
            text += "; computing with TF's conventions (TF 'SAME' padding, the TF OD API's input " \
                    "normalisation)"
        return text + (f"; {self.mismatch_details()}" if self.shape_mismatch else "")

    def parts_summary(self) -> str:
        """Per part: ``backbone 262/262 loaded, box_predictor 0/60 (left at its initialiser)``."""
        shown = []
        for part, (loaded, total) in self.parts.items():
            kept = "" if loaded == total else " (the rest left at its initialiser)" if loaded else \
                " (left at its initialiser)"
            shown.append(f"{part} {loaded}/{total} loaded{kept}")
        return ", ".join(shown)

    def mismatch_details(self, limit: int = 6) -> str:
        """The tensors not loaded for their shape, each with the file's and the model's shape."""
        shown = []
        for name in self.shape_mismatch[:limit]:
            file_shape, model_shape = self.mismatched_shapes.get(name, ((), ()))
            shown.append(f"{name} (file {list(file_shape)}, model {list(model_shape)})")
        more = len(self.shape_mismatch) - limit
        return "not loaded, shape differs: " + ", ".join(shown) + (f" and {more} more" if more > 0 else "")
