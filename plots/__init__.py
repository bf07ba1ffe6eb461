"""Plots of larpix-dqm: the plugin framework and its public API; the built-in plots are in ``larpix_dqm.plots.builtin``.

Public API (what plugins and the exporter use; everything else is internal to this package):

- ``Plot``, ``PlotContext``: the fast plugin form and what it is given (``larpix_dqm.plots.base``);
- ``Snapshot``: the per-chip, per-channel and per-io_group arrays a plot draws from, documented
  field by field with shape, dtype and unit (``larpix_dqm.exporter.quality.snapshot``);
- ``discover``, ``Selection``: finding plugins in ``larpix_dqm.plots.builtin`` and in ``--plugin-dir``
  folders, and choosing among them (``larpix_dqm.plots.discovery``);
- ``PlotSettings``, ``PlotEngine``: drawing (``larpix_dqm.plots.engine``); ``PlotWorker``: the drawing
  process that draws while the exporter ingests and serves (``larpix_dqm.plots.worker``); ``PlotStore``:
  the images on disk (``larpix_dqm.plots.store``).

Predecessor-style plugins (any class with ``__call__(self, filename, fh, fig=None)``) are
accepted too (see ``docs/plots.md``). Names are imported on first use, so importing
``larpix_dqm.plots.store`` (the web pages do) does not import matplotlib.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Plot": "larpix_dqm.plots.base",
    "PlotContext": "larpix_dqm.plots.base",
    "Snapshot": "larpix_dqm.exporter.quality.snapshot",
    "discover": "larpix_dqm.plots.discovery",
    "Selection": "larpix_dqm.plots.discovery",
    "PlotSettings": "larpix_dqm.plots.engine",
    "PlotEngine": "larpix_dqm.plots.engine",
    "PlotWorker": "larpix_dqm.plots.worker",
    "PlotStore": "larpix_dqm.plots.store",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Import a public name from its module on first use (PEP 562)."""
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
