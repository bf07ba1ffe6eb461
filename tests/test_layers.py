"""Dependencies point one way (docs/architecture.md, "Dependencies"): every module of exporter/ and plots/
belongs to a layer, imports only from its own layer or the ones below, never from a sibling of its layer,
and no modules import each other in a circle. Importing the reading layer loads nothing above it.

Every import counts: at module level, inside a function and under ``TYPE_CHECKING`` (a type is a
dependency too). The package root is lazy (PEP 562), so ``from larpix_dqm.exporter import Monitor`` is an import of
the module the root takes ``Monitor`` from.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("exporter", "plots")  # the repository folders, imported as larpix_dqm.exporter and larpix_dqm.plots
ROOT_MODULE = "larpix_dqm.exporter"

#: Lowest first. A module may import from its own group, from nothing else of its layer, and from any
#: layer below. A group is one or more packages or modules (space-separated), or the package root alone.
LAYERS: tuple[tuple[str, ...], ...] = (
    (ROOT_MODULE,),  # the root: __version__, and the public names imported on first use
    ("larpix_dqm.exporter.build", "larpix_dqm.exporter.reading", "larpix_dqm.exporter.detector"),
    ("larpix_dqm.exporter.quality",),
    ("larpix_dqm.exporter.registry",),
    ("larpix_dqm.exporter.settings",),
    ("larpix_dqm.exporter.monitoring",),
    ("larpix_dqm.exporter.metrics", "larpix_dqm.plots"),
    ("larpix_dqm.exporter.web",),
    ("larpix_dqm.exporter.monitor",),
    ("larpix_dqm.exporter.runtime",),
    (
        "larpix_dqm.exporter.mixin",
        "larpix_dqm.exporter.simulate larpix_dqm.exporter.simulation",  # the simulator: its module and its parts
    ),
    ("larpix_dqm.exporter.cli",),
)


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(("larpix_dqm", *(parts[:-1] if parts[-1] == "__init__" else parts)))


def _ours(module: str) -> bool:
    """Whether ``module`` is one of larpix_dqm.exporter and larpix_dqm.plots, or in them."""
    return module.split(".")[:2] in (["larpix_dqm", "exporter"], ["larpix_dqm", "plots"])


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
        if isinstance(node, ast.ImportFrom) and node.module and _ours(node.module)
        for alias in node.names
    }


def _graph() -> dict[str, set[str]]:
    """Module -> the modules of exporter/ and plots/ it imports, each resolved to the module that defines it."""
    modules = _modules()
    exports = _root_exports(modules[ROOT_MODULE])
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, tree in modules.items():
        if name == ROOT_MODULE:
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
                    elif node.module == ROOT_MODULE and alias.name in exports:
                        targets.append(exports[alias.name])
                    else:
                        targets.append(node.module)
            else:
                continue
            graph[name].update(t for t in targets if _ours(t) and t != name)
    return graph


def _place(module: str) -> tuple[int, str]:
    """The layer (its index) and the group of ``module``."""
    for index, layer in enumerate(LAYERS):
        for group in layer:
            for prefix in group.split():
                if module == prefix or (prefix != ROOT_MODULE and module.startswith(prefix + ".")):
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
    graph["larpix_dqm.exporter.reading.tail"].add("larpix_dqm.exporter.quality.clock")
    graph["larpix_dqm.exporter.reading.files"].add("larpix_dqm.exporter.detector.geometry")
    assert _against_the_rule(graph) == [
        "larpix_dqm.exporter.reading.files imports larpix_dqm.exporter.detector.geometry",
        "larpix_dqm.exporter.reading.tail imports larpix_dqm.exporter.quality.clock",
    ]
    graph["larpix_dqm.exporter.quality.clock"].add("larpix_dqm.exporter.reading.tail")
    assert frozenset({"larpix_dqm.exporter.reading.tail", "larpix_dqm.exporter.quality.clock"}) in _circles(graph)


def _loaded_by(code: str) -> list[str]:
    """The modules of exporter/ and plots/, and h5py, loaded by running ``code`` in a fresh interpreter."""
    probe = (
        f"import sys\n{code}\n"
        "print('\\n'.join(m for m in sys.modules if m.split('.')[0] in ('larpix_dqm', 'exporter', 'plots', 'h5py')))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    return sorted(name for name in done.stdout.split() if not name.startswith("h5py."))


def test_importing_the_packet_constants_loads_only_them():
    assert _loaded_by("import larpix_dqm.exporter.reading.packets") == [
        "larpix_dqm",
        ROOT_MODULE,
        "larpix_dqm.exporter.reading",
        "larpix_dqm.exporter.reading.packets",
    ]
    assert _loaded_by(f"import {ROOT_MODULE}") == ["larpix_dqm", ROOT_MODULE]
    assert _loaded_by("import larpix_dqm") == ["larpix_dqm"]


def test_importing_the_bottom_layers_loads_nothing_above_them():
    bottom = [m for m in _modules() if _place(m)[0] <= 1]
    loaded = _loaded_by("\n".join(f"import {m}" for m in bottom))
    assert "h5py" in loaded  # files and the run configuration read HDF5
    assert [m for m in loaded if m not in ("h5py", "larpix_dqm") and _place(m)[0] > 1] == []


def test_the_public_names_come_from_the_modules_the_checks_resolve_them_to():
    import larpix_dqm.exporter

    public = {
        name: getattr(larpix_dqm.exporter, name).__module__
        for name in larpix_dqm.exporter.__all__
        if name != "__version__"
    }
    assert public == _root_exports(_modules()[ROOT_MODULE])


def test_nothing_imports_the_folders_by_their_repository_names():
    """``exporter`` and ``plots`` are folders of the repository, installed as larpix_dqm.exporter and
    larpix_dqm.plots only: an import by the bare name works in a checkout (its root is on sys.path) but not
    where the wheel is installed, and would load a second copy of every module it reaches."""
    bare = []
    for path in sorted(ROOT.rglob("*.py")):
        if {".git", "larpix_dqm", "build"} & set(path.relative_to(ROOT).parts):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            bare += [f"{path.relative_to(ROOT)}:{node.lineno} {n}" for n in names if n.split(".")[0] in PACKAGES]
    assert bare == []
    loaded = _loaded_by("import larpix_dqm.exporter.cli, larpix_dqm.plots.engine, larpix_dqm.plots.builtin.pixelmap")
    assert "larpix_dqm.plots.engine" in loaded and not [m for m in loaded if m.split(".")[0] in PACKAGES]
