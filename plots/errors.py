"""The plot options' error, apart from ``larpix_dqm.plots.engine`` so that a command can catch it without importing
matplotlib (``once --no-plots``, ``serve`` without ``-o``)."""

from __future__ import annotations


class PlotConfigError(ValueError):
    """Plot options that cannot work (unknown plot, bad extension, no geometry for a map)."""
