"""The import graph of src/raredet: no circle, no upward import, config messages read only at the top.

The layers (docs/architecture.md, "Who may import whom"): `cli` -> `commands/` -> `builders` -> the
library (`engine`, `losses`, `data`, `modeling`, `evaluation`, `config`, `tfcheckpoint`) -> `protos`,
`fileio`, `errors`; `FLOORS` below is that order for every top-level package, and no import climbs it.
Circles are checked between modules and between packages (two packages can import each other through
different modules without any module circle).
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
# Every top-level package and module of raredet (`raredet` is the root __init__), bottom floor first.
# A module imports only from its own package and from packages on lower floors; packages on the same
# floor import none of each other. Derived from the code (the edges in `test_package_graph_is_known`),
# then made as strict as the code allows where the design cares: config/ sits beside modeling/ and
# evaluation/, so config never imports model code and neither the models nor the metrics read config;
# data/ needs config/ (label maps), losses/ needs modeling/ (box geometry, Faster R-CNN's sampling).
FLOORS: tuple[tuple[str, ...], ...] = (
    ("raredet", "errors", "fileio", "protos", "zoo"),
    ("tfcheckpoint",),  # a foreign file format, read with errors, fileio and protos only
    ("config", "evaluation", "modeling"),
    ("data", "losses"),
    ("engine",),
    ("builders",),
    ("commands",),
    ("cli",),
    ("__main__",),
)


def _module_name(path: Path, src: Path = SRC) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules(src: Path = SRC) -> dict[str, Path]:
    return {_module_name(p, src): p for p in sorted((src / "raredet").rglob("*.py")) if "_pb2" not in p.name}


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


def _graph(src: Path = SRC) -> dict[str, set[str]]:
    """Module -> the raredet modules it imports, for every module under `src`/raredet."""
    modules = _modules(src)
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return _graph()


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


def _package(module: str) -> str:
    """The top-level package or module of raredet that `module` is in (`raredet` for the root)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Package -> the other packages its modules import."""
    packages: dict[str, set[str]] = {_package(m): set() for m in graph}
    for module, deps in graph.items():
        packages[_package(module)].update(_package(d) for d in deps if _package(d) != _package(module))
    return packages


def _not_downward(graph: dict[str, set[str]], floors: tuple[tuple[str, ...], ...]) -> list[str]:
    """Every import between packages that does not go to a lower floor, as `module -> module (why)`."""
    floor = {package: i for i, packages in enumerate(floors) for package in packages}
    wrong = []
    for module, deps in graph.items():
        here = _package(module)
        for dep in deps:
            there = _package(dep)
            if here == there:
                continue
            if here not in floor or there not in floor:
                wrong.append(f"{module} -> {dep} ({here if here not in floor else there} has no floor)")
            elif floor[there] >= floor[here]:
                way = "up" if floor[there] > floor[here] else "sideways"
                wrong.append(f"{module} -> {dep} ({way}: {here} on floor {floor[here]}, "
                             f"{there} on floor {floor[there]})")
    return sorted(wrong)


def test_every_package_has_one_floor(graph: dict[str, set[str]]) -> None:
    declared = [p for floor in FLOORS for p in floor]
    assert len(declared) == len(set(declared))
    assert set(declared) == set(_package_graph(graph))


def test_no_package_circle(graph: dict[str, set[str]]) -> None:
    assert _cycle(_package_graph(graph)) is None


def test_no_import_climbs_the_floors(graph: dict[str, set[str]]) -> None:
    assert _not_downward(graph, FLOORS) == []


def test_package_graph_is_known(graph: dict[str, set[str]]) -> None:
    # Not vacuous: the packages import each other as the floors say they may, and these edges exist.
    packages = _package_graph(graph)
    assert {"builders", "engine", "modeling"} <= packages["commands"]
    assert {"engine", "losses", "modeling", "config", "data"} <= packages["builders"]
    assert {"losses", "modeling", "evaluation"} <= packages["engine"]
    assert "modeling" in packages["losses"] and "config" in packages["data"]
    assert packages["cli"] == {"commands", "errors"}  # cli holds no logic: it calls commands/ only
    assert packages["__main__"] == {"cli"}
    assert not packages["config"] & {"modeling", "data", "losses", "engine", "builders"}


def _plant(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / "raredet" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


def test_checkers_catch_a_planted_package_circle_and_upward_edges(tmp_path: Path) -> None:
    # Two packages that import each other through different modules (no module circle), and a
    # function-local import sideways: the leaks of the 2026-12-06 review (config -> modeling,
    # modeling <-> losses).
    src = _plant(tmp_path, {
        "__init__.py": "",
        "errors.py": "",
        "config/__init__.py": "",
        "config/text.py": "def message():\n    from raredet.modeling.ssd import NAMES\n    return NAMES\n",
        "modeling/__init__.py": "",
        "modeling/ssd.py": "from raredet.errors import ConfigError\nNAMES = ()\n",
        "modeling/faster_rcnn.py": "from raredet.losses.faster_rcnn import sample\n",
        "losses/__init__.py": "",
        "losses/faster_rcnn.py": "from raredet.modeling import ssd\n",
    })
    planted = _graph(src)
    assert planted["raredet.config.text"] == {"raredet.modeling.ssd"}
    assert _cycle(planted) is None
    assert _cycle(_package_graph(planted)) == ["modeling", "losses", "modeling"]
    assert _not_downward(planted, FLOORS) == [
        "raredet.config.text -> raredet.modeling.ssd (sideways: config on floor 2, modeling on floor 2)",
        "raredet.modeling.faster_rcnn -> raredet.losses.faster_rcnn (up: modeling on floor 2, losses on "
        "floor 3)",
    ]
    assert _not_downward(planted, (("raredet", "errors"), ("modeling",), ("losses",))) == [
        "raredet.config.text -> raredet.modeling.ssd (config has no floor)",
        "raredet.modeling.faster_rcnn -> raredet.losses.faster_rcnn (up: modeling on floor 1, losses on "
        "floor 2)",
    ]


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
