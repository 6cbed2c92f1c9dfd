"""The import graph of src/raredet: no circle, no upward import, config messages read only at the top.

The layers (docs/architecture.md, "Who may import whom"): `cli` -> `commands/` -> `builders` -> the
library (`engine`, `losses`, `data`, `modeling`, `evaluation`, `config`, `tfcheckpoint`) -> `protos`,
`fileio`, `errors`.
Every import counts, including those inside functions: a function-level import is how a circle hides.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
LIBRARY = ("raredet.config", "raredet.data", "raredet.modeling", "raredet.losses", "raredet.engine",
           "raredet.evaluation", "raredet.tfcheckpoint")
UPPER = ("raredet.builders", "raredet.commands", "raredet.cli")
# Message modules that are data, not configuration: tf.Example records are what a TFRecord holds; the
# tensor bundle and object graph are what a TensorFlow checkpoint holds.
DATA_MESSAGES = {"raredet.protos.example_pb2", "raredet.protos.tensor_bundle_pb2",
                 "raredet.protos.trackable_object_graph_pb2"}
# Bottom-floor readers of foreign formats: they import nothing of raredet but errors, fileio and protos.
FLOOR_READERS = ("raredet.tfcheckpoint",)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted((SRC / "raredet").rglob("*.py")) if "_pb2" not in p.name}


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The raredet modules `path` imports anywhere in its body; `from pkg import mod` names `pkg.mod`."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                package = name.split(".") if is_package else name.split(".")[:-1]
                package = package[: len(package) - node.level + 1]
                base = ".".join(package + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in known or sub.endswith("_pb2") else base)
    return {m for m in found if _within(m, "raredet")}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def test_the_graph_is_the_whole_package(graph: dict[str, set[str]]) -> None:
    # Not vacuous: every layer is there, with the edges the layout says it has.
    for name in ("raredet.cli", "raredet.builders", "raredet.config", "raredet.config.load",
                 "raredet.commands.train", "raredet.commands.trained", "raredet.engine.train",
                 "raredet.losses.detection_loss", "raredet.data.stats"):
        assert name in graph
    assert len(graph) >= 60
    assert "raredet.builders" in graph["raredet.commands.train"]
    assert "raredet.engine.components" in graph["raredet.builders.training"]
    assert "raredet.config.label_map" in graph["raredet.config.load"]
    assert "raredet.protos.pipeline_pb2" in graph["raredet.config.load"]
    assert sum(len(v) for v in graph.values()) >= 150


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle among the modules of `graph`, or None (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node], _ = 1, path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt in graph and nxt not in state and (found := visit(nxt)):
                return found
        state[node], _ = 2, path.pop()
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_cycle_finder_finds_a_circle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_circle(graph: dict[str, set[str]]) -> None:
    assert _cycle(graph) is None


def test_library_never_imports_builders_or_commands(graph: dict[str, set[str]]) -> None:
    upward = sorted(f"{m} -> {dep}" for m, deps in graph.items() if any(_within(m, lib) for lib in LIBRARY)
                    for dep in deps if any(_within(dep, up) for up in UPPER))
    assert upward == []
    assert not [d for d in graph["raredet.builders"] if _within(d, "raredet.commands") or d == "raredet.cli"]


def test_config_messages_are_read_only_by_builders_config_and_commands(graph: dict[str, set[str]]) -> None:
    allowed = ("raredet.builders", "raredet.config", "raredet.commands", "raredet.protos")
    readers = sorted(f"{m} -> {dep}" for m, deps in graph.items() for dep in deps
                     if dep.endswith("_pb2") and dep not in DATA_MESSAGES
                     and not any(_within(m, a) for a in allowed))
    assert readers == []


def test_floor_readers_import_only_errors_fileio_and_protos(graph: dict[str, set[str]]) -> None:
    allowed = ("raredet.errors", "raredet.fileio", "raredet.protos", *FLOOR_READERS)
    modules = [m for m in graph if any(_within(m, f) for f in FLOOR_READERS)]
    assert "raredet.tfcheckpoint.reader" in modules  # not vacuous
    wrong = sorted(f"{m} -> {dep}" for m in modules for dep in graph[m]
                   if not any(_within(dep, a) for a in allowed))
    assert wrong == []
