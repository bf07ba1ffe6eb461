"""Plots of larpix-dqm: the plugin framework and its public API; the built-in plots are in ``plots.builtin``.

Public API (what plugins and the exporter use; everything else is internal to this package):

- ``Plot``, ``PlotContext``: the fast plugin form and what it is given (``plots.base``);
- ``Snapshot``: the per-chip, per-channel and per-io_group arrays a plot draws from, documented
  field by field with shape, dtype and unit (``exporter.quality.snapshot``);
- ``discover``, ``Selection``: finding plugins in ``plots.builtin`` and in ``--plugin-dir``
  folders, and choosing among them (``plots.discovery``);
- ``PlotSettings``, ``PlotEngine``: drawing (``plots.engine``); ``PlotWorker``: the drawing
  process that draws while the exporter ingests and serves (``plots.worker``); ``PlotStore``:
  the images on disk (``plots.store``).

Predecessor-style plugins (any class with ``__call__(self, filename, fh, fig=None)``) are
accepted too (see ``docs/plots.md``). Names are imported on first use, so importing
``plots.store`` (the web pages do) does not import matplotlib.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Plot": "plots.base",
    "PlotContext": "plots.base",
    "Snapshot": "exporter.quality.snapshot",
    "discover": "plots.discovery",
    "Selection": "plots.discovery",
    "PlotSettings": "plots.engine",
    "PlotEngine": "plots.engine",
    "PlotWorker": "plots.worker",
    "PlotStore": "plots.store",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Import a public name from its module on first use (PEP 562)."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'plots' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
