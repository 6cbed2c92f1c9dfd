"""The object graph of a TF2 checkpoint: which object path and variable name each checkpoint key belongs to.

The key `_CHECKPOINTABLE_OBJECT_GRAPH` holds a serialized TrackableObjectGraph. Node 0 is the object that
was saved; each node lists its children (node id, local name), its attributes (the checkpoint key and
`full_name`, the variable's own name) and, on an optimizer, its slot variables. TensorFlow names every
object by the first path that a breadth-first walk from node 0 (children in their stored order) reaches
it by, each local name escaped ("." -> "..", "/" -> ".S") and joined by "/"; a variable's key is that
path + "/.ATTRIBUTES/VARIABLE_VALUE", and a slot variable's path is
`<variable path>/.OPTIMIZER_SLOT/<optimizer path>/<slot name>`. Graphs TensorFlow writes may hold
cycles (tf.train.Checkpoint(root=m) lists itself as a child); the walk visits each node once, so a cycle
never loops. A child or slot reference to a node that does not exist is an error.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from pathlib import Path

from google.protobuf.message import DecodeError

from raredet.errors import CheckpointError
from raredet.protos.trackable_object_graph_pb2 import TrackableObjectGraph

OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
VARIABLE_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
SLOT_MARKER = "/.OPTIMIZER_SLOT/"


def escape_local_name(name: str) -> str:
    return name.replace(".", "..").replace("/", ".S")


@dataclass(frozen=True)
class KeyNames:
    object_path: str
    full_name: str


def parse_object_graph(index: Path, value: bytes) -> TrackableObjectGraph:
    """The checked object graph held by `_CHECKPOINTABLE_OBJECT_GRAPH` in the checkpoint at `index`."""
    try:
        graph = TrackableObjectGraph.FromString(value)
    except DecodeError as err:
        raise CheckpointError(f"{index}: key {OBJECT_GRAPH_KEY!r}: the object graph does not parse ({err}): "
                              "the checkpoint is corrupted") from None
    _check_references(index, graph)
    return graph


def _check_references(index: Path, graph: TrackableObjectGraph) -> None:
    count = len(graph.nodes)
    for node_id, node in enumerate(graph.nodes):
        refs = [(f"child {c.local_name!r}", c.node_id) for c in node.children]
        for slot in node.slot_variables:
            refs += [(f"slot {slot.slot_name!r} variable", slot.original_variable_node_id),
                     (f"slot {slot.slot_name!r}", slot.slot_variable_node_id)]
        for what, target in refs:
            if not 0 <= target < count:
                raise CheckpointError(f"{index}: key {OBJECT_GRAPH_KEY!r}: node {node_id}'s {what} points "
                                      f"to node {target}, but the graph has {count} nodes: the checkpoint "
                                      "is corrupted")


def node_paths(graph: TrackableObjectGraph) -> dict[int, str]:
    """Each node's object path, as TensorFlow names it: first reached breadth-first from node 0."""
    if not graph.nodes:
        return {}
    paths = {0: ""}
    queue = deque([0])
    while queue:
        node_id = queue.popleft()
        for child in graph.nodes[node_id].children:
            if child.node_id not in paths:
                name = escape_local_name(child.local_name)
                paths[child.node_id] = f"{paths[node_id]}/{name}" if paths[node_id] else name
                queue.append(child.node_id)
    _add_slot_paths(graph, paths)
    return paths


def _add_slot_paths(graph: TrackableObjectGraph, paths: dict[int, str]) -> None:
    """Slot variables are not children: their path joins the variable's and the optimizer's."""
    reached = dict(paths)  # only objects reached through children own slots, as in TensorFlow
    for node_id, optimizer_path in reached.items():
        for slot in graph.nodes[node_id].slot_variables:
            variable_path = reached.get(slot.original_variable_node_id)
            if variable_path is not None and slot.slot_variable_node_id not in paths:
                paths[slot.slot_variable_node_id] = (f"{variable_path}{SLOT_MARKER}{optimizer_path}/"
                                                     f"{escape_local_name(slot.slot_name)}")


def key_names(graph: TrackableObjectGraph) -> dict[str, KeyNames]:
    """checkpoint key -> (object path of its node, full_name), for every attribute of a reachable node."""
    out: dict[str, KeyNames] = {}
    for node_id, path in node_paths(graph).items():
        for attribute in graph.nodes[node_id].attributes:
            out.setdefault(attribute.checkpoint_key, KeyNames(path, attribute.full_name))
    return out


def variable_path(key: str) -> str | None:
    """The object path of a variable-value key (its key without /.ATTRIBUTES/VARIABLE_VALUE), else None."""
    return key[: -len(VARIABLE_SUFFIX)] if key.endswith(VARIABLE_SUFFIX) else None


def slot_of(key: str) -> tuple[str, str] | None:
    """(variable object path, slot name) of an optimizer slot key, else None."""
    path = variable_path(key)
    if path is None or SLOT_MARKER not in path:
        return None
    variable, rest = path.split(SLOT_MARKER, 1)
    return variable, rest.rsplit("/", 1)[-1]
