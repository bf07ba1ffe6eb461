"""Dependencies point one way (docs/architecture.md, "Dependencies"): every module of exporter/ and plots/
belongs to a layer, imports only from its own layer or the ones below, never from a sibling of its layer,
and no modules import each other in a circle. Importing the reading layer loads nothing above it.

Every import counts: at module level, inside a function and under ``TYPE_CHECKING`` (a type is a
dependency too). The package root is lazy (PEP 562), so ``from exporter import Monitor`` is an import of
the module the root takes ``Monitor`` from.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("exporter", "plots")

#: Lowest first. A module may import from its own group, from nothing else of its layer, and from any
#: layer below. A group is one or more packages or modules (space-separated), or the package root alone.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("exporter",),  # the root: __version__, and the public names imported on first use
    ("exporter.build", "exporter.reading", "exporter.detector"),
    ("exporter.quality",),
    ("exporter.registry",),
    ("exporter.settings",),
    ("exporter.monitoring",),
    ("exporter.metrics", "plots"),
    ("exporter.web",),
    ("exporter.monitor",),
    ("exporter.runtime",),
    ("exporter.mixin", "exporter.simulate exporter.simulation"),  # the simulator: its module and its parts
    ("exporter.cli",),
)


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, ast.Module]:
    return {
        _module_name(path): ast.parse(path.read_text(), str(path))
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
    }


def _root_exports(root: ast.Module) -> dict[str, str]:
    """The names the package root hands out and the module each comes from (its ``TYPE_CHECKING`` imports)."""
    return {
        alias.asname or alias.name: node.module
        for node in ast.walk(root)
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PACKAGES
        for alias in node.names
    }


def _graph() -> dict[str, set[str]]:
    """Module -> the modules of exporter/ and plots/ it imports, each resolved to the module that defines it."""
    modules = _modules()
    exports = _root_exports(modules["exporter"])
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, tree in modules.items():
        if name == "exporter":
            continue  # the root imports lazily; its names are resolved where they are imported
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = []
                for alias in node.names:
                    submodule = f"{node.module}.{alias.name}"
                    if submodule in modules:
                        targets.append(submodule)
                    elif node.module == "exporter" and alias.name in exports:
                        targets.append(exports[alias.name])
                    else:
                        targets.append(node.module)
            else:
                continue
            graph[name].update(t for t in targets if t.split(".")[0] in PACKAGES and t != name)
    return graph


def _place(module: str) -> tuple[int, str]:
    """The layer (its index) and the group of ``module``."""
    for index, layer in enumerate(LAYERS):
        for group in layer:
            for prefix in group.split():
                if module == prefix or (prefix != "exporter" and module.startswith(prefix + ".")):
                    return index, group
    raise AssertionError(f"{module} is in no layer: add it to LAYERS and to docs/architecture.md")


def _circles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(frozenset(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _against_the_rule(graph: dict[str, set[str]]) -> list[str]:
    """The imports that point up, or across to a sibling of the importer's layer."""
    wrong = []
    for module, targets in sorted(graph.items()):
        layer, group = _place(module)
        for target in sorted(targets):
            target_layer, target_group = _place(target)
            if target_layer > layer or (target_layer == layer and target_group != group):
                wrong.append(f"{module} imports {target}")
    return wrong


def test_every_import_points_down_or_within_its_own_group():
    wrong = _against_the_rule(_graph())
    assert not wrong, "imports against docs/architecture.md's dependency rule:\n" + "\n".join(wrong)


def test_no_import_circles():
    circles = [sorted(c) for c in _circles(_graph())]
    assert not circles, f"modules importing each other in a circle: {circles}"


def test_the_checks_see_a_back_edge_a_sibling_edge_and_a_circle():
    graph = _graph()
    graph["exporter.reading.tail"].add("exporter.quality.clock")
    graph["exporter.reading.files"].add("exporter.detector.geometry")
    assert _against_the_rule(graph) == [
        "exporter.reading.files imports exporter.detector.geometry",
        "exporter.reading.tail imports exporter.quality.clock",
    ]
    graph["exporter.quality.clock"].add("exporter.reading.tail")
    assert frozenset({"exporter.reading.tail", "exporter.quality.clock"}) in _circles(graph)


def _loaded_by(code: str) -> list[str]:
    """The modules of exporter/ and plots/, and h5py, loaded by running ``code`` in a fresh interpreter."""
    probe = (
        f"import sys\n{code}\n"
        "print('\\n'.join(m for m in sys.modules if m.split('.')[0] in ('exporter', 'plots', 'h5py')))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    return sorted(name for name in done.stdout.split() if not name.startswith("h5py."))


def test_importing_the_packet_constants_loads_only_them():
    assert _loaded_by("import exporter.reading.packets") == ["exporter", "exporter.reading", "exporter.reading.packets"]
    assert _loaded_by("import exporter") == ["exporter"]


def test_importing_the_bottom_layers_loads_nothing_above_them():
    bottom = [m for m in _modules() if _place(m)[0] <= 1]
    loaded = _loaded_by("\n".join(f"import {m}" for m in bottom))
    assert "h5py" in loaded  # files and the run configuration read HDF5
    assert [m for m in loaded if m != "h5py" and _place(m)[0] > 1] == []


def test_the_public_names_come_from_the_modules_the_checks_resolve_them_to():
    import exporter

    public = {name: getattr(exporter, name).__module__ for name in exporter.__all__ if name != "__version__"}
    assert public == _root_exports(_modules()["exporter"])
