"""Finding plot plugins: the modules of this package and of each ``--plugin-dir``.

A plot is a public class defined in a public module (name not starting with ``_``): a
``Plot`` subclass (the fast form) or any class defining ``__call__`` (the predecessor's
form). A module that fails to import is reported by file and skipped; so is a second class
with a name already taken.
"""

from __future__ import annotations

import fnmatch
import hashlib
import importlib
import importlib.util
import inspect
import logging
import pkgutil
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from larpix_dqm.plots.base import Plot

log = logging.getLogger(__name__)
FAST, LEGACY = "fast", "legacy"


@dataclass(frozen=True)
class PluginSpec:
    """One plot class: its name (the class name), the class, its form and where it came from."""

    name: str
    cls: type[Any]
    kind: str
    source: str

    @property
    def per_file(self) -> bool:
        return self.kind == LEGACY or self.cls.per_file


@dataclass
class Catalog:
    """Plot classes by name, and the problems met while looking for them (by module or class)."""

    plugins: dict[str, PluginSpec] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    def add_module(self, module: ModuleType, source: str) -> None:
        for spec in plot_classes(module, source):
            taken = self.plugins.get(spec.name)
            if taken is not None:
                self.errors[f"{spec.name} ({source})"] = f"plot name already defined in {taken.source}; skipped"
                log.error("plot %s in %s: name already defined in %s; skipped", spec.name, source, taken.source)
                continue
            self.plugins[spec.name] = spec

    def references(self) -> tuple[list[tuple[str, str, str, str, str]], dict[str, str]]:
        """The catalog as plain data for another process: (name, module, class, kind, source) per plot, errors.

        Classes of ``--plugin-dir`` modules cannot be pickled (their module names are made up
        at import); ``from_references`` finds them again after ``discover`` imported the folders.
        """
        plots = [(s.name, s.cls.__module__, s.cls.__qualname__, s.kind, s.source) for s in self.plugins.values()]
        return plots, dict(self.errors)

    @classmethod
    def from_references(cls, references: tuple[list[tuple[str, str, str, str, str]], dict[str, str]]) -> Catalog:
        """The catalog ``references`` describes, its classes imported (or taken from modules already imported)."""
        plots, errors = references
        catalog = cls(errors=dict(errors))
        for name, module, qualname, kind, source in plots:
            found: Any = sys.modules.get(module) or importlib.import_module(module)
            for part in qualname.split("."):
                found = getattr(found, part)
            catalog.plugins[name] = PluginSpec(name, found, kind, source)
        return catalog


def _defines_call(cls: type) -> bool:
    return any("__call__" in vars(k) for k in cls.__mro__ if k is not object)


def plot_classes(module: ModuleType, source: str) -> list[PluginSpec]:
    """The plot classes a module defines (imported ones are not its own)."""
    specs = []
    for name, obj in vars(module).items():
        if name.startswith("_") or not inspect.isclass(obj) or obj.__module__ != module.__name__:
            continue
        if issubclass(obj, Plot):
            if obj.draw is not Plot.draw:  # a subclass without draw is a base for others
                specs.append(PluginSpec(name, obj, FAST, source))
        elif _defines_call(obj):
            specs.append(PluginSpec(name, obj, LEGACY, source))
    return specs


def _import_file(path: Path) -> ModuleType:
    digest = hashlib.sha1(str(path.parent.resolve()).encode()).hexdigest()[:10]
    name = f"larpix_dqm_plugins_{digest}.{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def _describe(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"


def discover(plugin_dirs: Sequence[str | Path] = ()) -> Catalog:
    """Built-in plots first, then each plugin folder's ``*.py`` files in name order."""
    from larpix_dqm.plots import builtin

    catalog = Catalog()
    for info in sorted(pkgutil.iter_modules(builtin.__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        try:
            module = importlib.import_module(f"larpix_dqm.plots.builtin.{info.name}")
        except Exception as err:  # a built-in must not take the others down either
            catalog.errors[f"plots/builtin/{info.name}.py"] = _describe(err)
            log.exception("built-in plot module larpix_dqm.plots.builtin.%s failed to import; skipped", info.name)
            continue
        catalog.add_module(module, f"plots/builtin/{info.name}.py")
    for folder in plugin_dirs:
        folder = Path(folder)
        if not folder.is_dir():
            catalog.errors[str(folder)] = "plugin folder does not exist"
            log.error("plugin folder %s does not exist", folder)
            continue
        if str(folder.resolve()) not in sys.path:
            sys.path.append(str(folder.resolve()))  # plugins may import helper modules beside them
        for path in sorted(folder.glob("*.py")):
            if path.name.startswith("_"):
                continue
            try:
                module = _import_file(path)
            except (Exception, SystemExit) as err:
                catalog.errors[str(path)] = _describe(err)
                log.error("plot plugin %s failed to import (%s); skipped, the other plots go on", path, _describe(err))
                continue
            catalog.add_module(module, str(path))
    return catalog


class Selection:
    """Which plots and images ``--plots`` asks for: names or shell patterns, of plots or images.

    ``PixelMap`` selects every pixel map, ``PixelMap_2_1`` one of them, ``PixelMap_1_*``
    those of io_group 1; no pattern at all selects everything.
    """

    def __init__(self, patterns: Iterable[str] = ()) -> None:
        self.patterns = [p for p in patterns if p]

    def plugin(self, name: str) -> bool:
        """Whether any image of plot class ``name`` may be selected."""
        if not self.patterns:
            return True
        return any(fnmatch.fnmatchcase(name, p) or p.startswith(name + "_") for p in self.patterns)

    def image(self, plugin: str, image: str) -> bool:
        """Whether image ``image`` of plot class ``plugin`` is selected."""
        if not self.patterns:
            return True
        return any(fnmatch.fnmatchcase(plugin, p) or fnmatch.fnmatchcase(image, p) for p in self.patterns)

    def explicit(self, name: str) -> bool:
        """Whether plot class ``name`` was asked for by a pattern (not by selecting everything)."""
        return bool(self.patterns) and self.plugin(name)

    def unmatched(self, names: Iterable[str]) -> list[str]:
        """Patterns that select none of ``names``."""
        names = list(names)
        return [p for p in self.patterns if not any(Selection([p]).plugin(n) for n in names)]
