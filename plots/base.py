"""The fast plugin form: a ``Plot`` subclass reads decoded packets and the running statistics.

Predecessor-style plugins (any class with ``__call__(self, filename, fh, fig=None)``) keep
working; see ``docs/plots.md``. This form skips the temporary HDF5 file: ``update`` gets the
new packets of a file as a numpy structured array, ``draw`` gets the same ``Snapshot`` that
``/metrics`` is rendered from, so a plot and the metric for the same chip agree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
from matplotlib.figure import Figure

from larpix_dqm.exporter.detector.geometry import Geometry
from larpix_dqm.exporter.quality.snapshot import Snapshot


@dataclass(frozen=True)
class PlotContext:
    """What a plot is given besides the packets.

    ``snapshot`` is the latest published snapshot: per-chip and per-channel arrays over the
    same sliding window as the metrics. ``times`` is only filled in ``update``: the data time
    (unix seconds) of each new packet by the accumulator's rule (README "Data time"), empty
    elsewhere, NaN before the first accepted timestamp packet of its io_group in the file.
    ``dropped_packets`` counts packets of this file that plotting skipped because it fell
    behind ingest (0 normally); plots may say so in their title.
    """

    filename: str | None
    snapshot: Snapshot
    geometry: Geometry | None
    times: np.ndarray = field(default_factory=lambda: np.empty(0))
    dropped_packets: int = 0


class Plot:
    """Base class of fast plots; the class name is the plot name.

    ``per_file`` plots get one instance per input file (fed that file's packets through
    ``update``); the others (``per_file = False``) get one instance in total and draw from
    ``ctx.snapshot`` only. ``outputs`` names the images a plot makes (one by default, the
    class name; ``PixelMap`` makes ``PixelMap_<io_group>_<tile>``), and ``draw`` makes one
    of them, reusing ``fig`` (the figure it returned last time for that name) or a new
    ``matplotlib.figure.Figure``.
    """

    per_file: ClassVar[bool] = True
    needs_geometry: ClassVar[bool] = False

    @classmethod
    def plot_name(cls) -> str:
        return cls.__name__

    @classmethod
    def check(cls, geometry: Geometry | None) -> None:
        """Raise ``ValueError`` saying why this plot cannot draw with ``geometry`` (checked at start)."""
        if cls.needs_geometry and geometry is None:
            raise ValueError("needs a pixel geometry: give --geometry or set $PIXEL_GEOMETRY_PATH")

    def outputs(self, ctx: PlotContext) -> list[str]:
        """Names of the images this plot makes now."""
        return [self.plot_name()]

    def update(self, packets: np.ndarray, ctx: PlotContext) -> None:
        """Fold new packets (``larpix_dqm.exporter.reading.packets.PACKET_DTYPE`` records) into the plot's state."""

    def draw(self, name: str, ctx: PlotContext, fig: Figure | None = None) -> Figure:
        """Return the figure for output ``name``."""
        raise NotImplementedError
