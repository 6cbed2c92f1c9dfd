"""Object-graph key names by hand: TF's escaping of local names, variable and optimizer-slot keys."""

from __future__ import annotations

from raredet.tfcheckpoint.object_graph import escape_local_name, slot_of, variable_path

KERNEL = "model/layer_with_weights-0/kernel/.ATTRIBUTES/VARIABLE_VALUE"
SLOT = "model/layer_with_weights-0/kernel/.OPTIMIZER_SLOT/optimizer/m/.ATTRIBUTES/VARIABLE_VALUE"


def test_local_names_escape_dots_then_slashes():
    assert escape_local_name("conv.1/bias") == "conv..1.Sbias"
    assert escape_local_name("./") == "...S"  # "." -> ".." first, so the ".S" of "/" stays unambiguous


def test_variable_and_slot_keys():
    assert variable_path(KERNEL) == "model/layer_with_weights-0/kernel"
    assert variable_path("_CHECKPOINTABLE_OBJECT_GRAPH") is None
    assert slot_of(KERNEL) is None
    assert slot_of(SLOT) == ("model/layer_with_weights-0/kernel", "m")
