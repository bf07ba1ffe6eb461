"""Drawing helpers shared by the built-in plots: figure sizes, map layouts, pixel status layers.

Figures are ``matplotlib.figure.Figure`` objects (no pyplot state), 1280 px wide at 100 dpi,
so text stays readable when a browser or a Grafana panel shows them at that width. Map
layouts are computed, not solved (no constrained layout): cheaper and the same every time.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from typing import Literal

import numpy as np
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.collections import PathCollection
from matplotlib.colorbar import Colorbar
from matplotlib.colors import LogNorm, Normalize, to_rgba
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle
from matplotlib.text import Text
from matplotlib.ticker import LogFormatter, NullFormatter

from larpix_dqm.exporter.quality.snapshot import Snapshot
from larpix_dqm.exporter.quality.status import ChannelStatus
from larpix_dqm.plots.base import PlotContext
from larpix_dqm.plots.cached import CachedFigure
from larpix_dqm.plots.pixels import TileGrid

DPI = 100
WIDTH_IN = 12.8
NO_DATA_COLOUR = "#e4e4e4"
SILENT_COLOUR = "#8a8a8a"
UNKNOWN_COLOUR = "#a6bddb"
NOISY_COLOUR = "#ff1f1f"
INEFFICIENT_COLOUR = "#ff9f1c"
RING_SIZE = 60.0  # points squared
RATE_CMAP, MEAN_CMAP, STD_CMAP = "viridis", "plasma", "magma"

# Map layout, inches.
_LEFT, _RIGHT, _TOP = 0.8, 0.15, 1.05
_IN_GROUP_GAP, _GROUP_GAP = 0.12, 0.6
_BELOW_MAP, _COLORBAR, _BELOW_COLORBAR, _LEGEND = 0.55, 0.13, 0.5, 0.35


def new_figure(fig: Figure | None, height_in: float, cached: bool = False) -> Figure:
    """A cleared figure of the standard width: ``fig`` reused when given (and a ``CachedFigure`` if ``cached``).

    New figures get an Agg canvas of their own, so PNGs come straight from its raster (``larpix_dqm.plots.engine.render``).
    """
    if fig is None or (cached and not isinstance(fig, CachedFigure)):
        fig = (CachedFigure if cached else Figure)(figsize=(WIDTH_IN, height_in), dpi=DPI)
        FigureCanvasAgg(fig)
        return fig
    fig.clear()
    fig.set_size_inches(WIDTH_IN, height_in)
    fig.set_dpi(DPI)
    return fig


def file_label(ctx: PlotContext) -> str:
    """The file name as titles show it, with a warning when plotting skipped packets."""
    name = os.path.basename(ctx.filename or "")
    if ctx.dropped_packets:
        name += f"  (plotting fell behind: {ctx.dropped_packets} packets not shown)"
    return name


def utc(seconds: float) -> str:
    """'2023-11-14 22:13:20 UTC', or 'no data yet' for NaN."""
    if seconds != seconds:
        return "no data yet"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(seconds))


def window_text(snapshot: Snapshot) -> str:
    """How the snapshot's window reads in a subtitle: the data-time span it covers, and whether the window
    is still filling (a first picture after a few seconds of data says so)."""
    covered, window = snapshot.covered_seconds, snapshot.config.window_seconds
    filling = f" (of a {window:g} s window, still filling)" if covered < window else ""
    return f"last {round(covered, 1):g} s of data time up to {utc(snapshot.data_time)}{filling}"


def titles(fig: Figure, title: str, subtitle: str) -> tuple[Text, Text]:
    """Bold title and a grey subtitle, at the top of the figure; returned so a kept figure can change them."""
    height = fig.get_size_inches()[1]
    return (
        fig.text(0.5, 1 - 0.12 / height, title, ha="center", va="top", fontsize=13, weight="bold"),
        fig.text(0.5, 1 - 0.42 / height, subtitle, ha="center", va="top", fontsize=10, color="#444444"),
    )


def map_layout(
    fig: Figure, groups: list[int], aspect: float, max_map_height_in: float = 6.5
) -> tuple[list[list[Axes]], list[Axes]]:
    """Rows of maps: ``groups[i]`` maps side by side over one horizontal colour bar each.

    ``aspect`` is height / width of the data; returns the map axes by group and the colour
    bar axes. Sets the figure height to fit.
    """
    n_maps, n_groups = sum(groups), len(groups)
    fixed = _LEFT + _RIGHT + (n_maps - n_groups) * _IN_GROUP_GAP + (n_groups - 1) * _GROUP_GAP
    map_w = (WIDTH_IN - fixed) / n_maps
    map_h = map_w * aspect
    if map_h > max_map_height_in:
        map_h, map_w = max_map_height_in, max_map_height_in / aspect
    height = _TOP + map_h + _BELOW_MAP + _COLORBAR + _BELOW_COLORBAR + _LEGEND
    fig.set_size_inches(WIDTH_IN, height)
    slack = (WIDTH_IN - fixed - n_maps * map_w) / 2
    x = _LEFT + slack
    bottom = _LEGEND + _BELOW_COLORBAR + _COLORBAR + _BELOW_MAP
    maps, bars = [], []
    for g, count in enumerate(groups):
        start = x
        axes = []
        for i in range(count):
            ax = fig.add_axes((x / WIDTH_IN, bottom / height, map_w / WIDTH_IN, map_h / height))
            ax.set_aspect("equal", adjustable="box")
            ax.set_xlabel("x [mm]")
            if g == 0 and i == 0:
                ax.set_ylabel("y [mm]")
            if i > 0:
                ax.tick_params(labelleft=False)
            axes.append(ax)
            x += map_w + (_IN_GROUP_GAP if i < count - 1 else 0)
        width = x - start
        bar_bottom = _LEGEND + _BELOW_COLORBAR
        bars.append(fig.add_axes((start / WIDTH_IN, bar_bottom / height, width / WIDTH_IN, _COLORBAR / height)))
        maps.append(axes)
        x += _GROUP_GAP
    return maps, bars


_SUPERSCRIPTS = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


class PlainLogFormatter(LogFormatter):
    """Base-10 log tick labels in plain text, 10³ or 2×10⁻¹: matplotlib's own are mathtext, whose parser took
    a fifth of the CPU of ``once``'s 8-plot draw."""

    def _num_to_string(self, x: float, vmin: float, vmax: float) -> str:
        """The label of ``x`` as ``LogFormatterSciNotation`` gives it, 2.1×10³ on a view within a decade included."""
        fx = math.log10(x)
        exponent = round(fx) if math.isclose(fx, round(fx)) else math.floor(fx)
        coefficient: float = 10.0 ** (fx - exponent)
        if math.isclose(coefficient, round(coefficient)):
            coefficient = round(coefficient)
        power = "10" + str(exponent).translate(_SUPERSCRIPTS)
        return power if coefficient == 1 else f"{coefficient:g}×{power}"


def log_scale(ax: Axes, which: Literal["x", "y"]) -> None:
    """Put ``ax``'s ``which`` axis ("x" or "y") on a log scale labelled by ``PlainLogFormatter``."""
    axis = ax.xaxis if which == "x" else ax.yaxis
    (ax.set_xscale if which == "x" else ax.set_yscale)("log")
    axis.set_major_formatter(PlainLogFormatter())
    axis.set_minor_formatter(PlainLogFormatter(labelOnlyBase=False))


def colour_bar(fig: Figure, image: ScalarMappable, cax: Axes, label: str, extend: str = "neither") -> Colorbar:
    """Horizontal colour bar under a map; log scales label their decades only (no crowding), in plain text."""
    bar = fig.colorbar(image, cax=cax, orientation="horizontal", label=label, extend=extend)
    if isinstance(image.norm, LogNorm):
        bar.formatter = PlainLogFormatter()
        bar.ax.xaxis.set_minor_formatter(NullFormatter())
    return bar


def nice_ceil(value: float) -> float:
    """The smallest of 1, 2, 5 times a power of ten that is at least ``value`` (> 0)."""
    decade = 10.0 ** math.floor(math.log10(value))
    return next(m * decade for m in (1, 2, 5, 10) if m * decade >= value * (1 - 1e-12))


def rate_norm(snapshot: Snapshot, rates: np.ndarray) -> LogNorm:
    """Log scale from one hit in a full window up to the highest rate, rounded up to 1, 2 or 5 times a
    power of ten: the limits, and so the colour bar, change rarely, and it is redrawn only then."""
    low = 1.0 / max(snapshot.config.window_seconds, snapshot.covered_seconds)
    finite = rates[np.isfinite(rates)]
    high = float(finite.max()) if len(finite) else 0.0
    return LogNorm(low, nice_ceil(max(high, 10 * low)))


def robust_norm(values: np.ndarray, floor: float | None = None) -> Normalize:
    """Linear scale over the 1st to 99th percentile, so one odd pixel does not wash out the rest;
    widened to multiples of a round step (a tenth of the range or more), so it changes rarely."""
    finite = values[np.isfinite(values)]
    if not len(finite):
        return Normalize(0, 1)
    low, high = (float(v) for v in np.percentile(finite, [1, 99]))
    if floor is not None:
        low = max(low, floor)
    if high <= low:
        low, high = low - 1, high + 1
    step = nice_ceil((high - low) / 10)
    low, high = math.floor(low / step) * step, math.ceil(high / step) * step
    if floor is not None:
        low = max(low, floor)
    return Normalize(low, high)


def status_layer(codes: np.ndarray) -> np.ndarray:
    """RGBA image of status codes (-1 where no pixel): not expected light grey, silent grey, unknown blue-grey, rest clear."""
    rgba = np.zeros((*codes.shape, 4))
    rgba[codes == ChannelStatus.NONE] = to_rgba(NO_DATA_COLOUR)
    rgba[codes == ChannelStatus.SILENT] = to_rgba(SILENT_COLOUR)
    rgba[codes == ChannelStatus.UNKNOWN] = to_rgba(UNKNOWN_COLOUR)
    return rgba


class TilePanel:
    """One tile on a map axes, built once and updated in place: status layer, values, rings.

    Redrawing a map changes only the arrays of its images, its colour limits and the ring
    positions, so the axes, ticks and colour bar are not rebuilt every cycle (most of the cost).
    The status layer and rings are set only when the status codes change, and the colour bar
    follows its own ``scale``, set only when it is drawn: a ``CachedFigure`` keeps both as groups
    and draws only the values and rings each cycle.
    """

    def __init__(self, ax: Axes, grid: TileGrid, norm: Normalize, cmap: str) -> None:
        self.grid = grid
        extent = grid.extent
        self.status = ax.imshow(
            np.zeros((*grid.shape, 4)), origin="lower", extent=extent, interpolation="nearest", zorder=1
        )
        self.values = ax.imshow(
            np.ma.masked_all(grid.shape),
            norm=norm,
            cmap=cmap,
            origin="lower",
            extent=extent,
            interpolation="nearest",
            zorder=2,
        )
        self.rings: dict[int, PathCollection] = {
            status: ax.scatter(
                np.zeros(0), np.zeros(0), s=RING_SIZE, facecolors="none", edgecolors=colour, linewidths=1.4, zorder=3
            )
            for status, colour in ((ChannelStatus.NOISY, NOISY_COLOUR), (ChannelStatus.INEFFICIENT, INEFFICIENT_COLOUR))
        }
        self.codes: np.ndarray | None = None
        #: What the colour bar shows: the image's scale, set only when the bar is drawn (``show_scale``).
        self.scale = ScalarMappable(type(norm)(norm.vmin, norm.vmax), cmap)

    def show_scale(self, limits: tuple[float, float]) -> None:
        """Set the colour bar's limits (a ``CachedFigure.group`` ``prepare``: called only when it is drawn)."""
        self.scale.set_clim(*limits)

    @property
    def artists(self) -> list[Artist]:
        """What changes every draw (for ``CachedFigure.dynamic``); the status layer changes with ``status_key``."""
        return [self.values, *self.rings.values()]

    @property
    def status_key(self) -> bytes | None:
        """What the status layer shows (a ``CachedFigure.keys`` value)."""
        return None if self.codes is None else self.codes.tobytes()

    def update(self, values: np.ndarray, codes: np.ndarray, norm: Normalize) -> None:
        """Show ``values`` (NaN transparent) over the status layer of ``codes`` (``grid.image`` arrays), scaled by ``norm``."""
        if self.codes is None or not np.array_equal(codes, self.codes):
            self.codes = codes
            self.status.set_data(status_layer(codes))
            for status, rings in self.rings.items():
                rings.set_offsets(np.column_stack(self.grid.centres(codes == status)))
        self.values.set_data(np.ma.masked_invalid(values))
        self.values.set_clim(norm.vmin, norm.vmax)


def tile_outline(ax: Axes, grid: TileGrid, label: str | None = None) -> list[Artist]:
    """Thin frame around a tile, with an optional label in its top-left corner; returns the artists."""
    left, right, bottom, top = grid.extent
    frame = ax.add_patch(
        Rectangle((left, bottom), right - left, top - bottom, fill=False, linewidth=0.6, edgecolor="#333333", zorder=4)
    )
    if not label:
        return [frame]
    pad = 2 * grid.pitch
    return [
        frame,
        ax.text(
            left + pad,
            top - pad,
            label,
            ha="left",
            va="top",
            fontsize=9,
            zorder=5,
            bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "alpha": 0.75, "linewidth": 0},
        ),
    ]


def status_legend(fig: Figure, noisy_rate_hz: float) -> None:
    """Legend (bottom of the figure) for the pixel status marks."""
    rings = [
        Line2D(
            [],
            [],
            linestyle="none",
            marker="o",
            markersize=RING_SIZE**0.5,
            markerfacecolor="none",
            markeredgecolor=colour,
            markeredgewidth=1.4,
            label=label,
        )
        for colour, label in (
            (NOISY_COLOUR, f"noisy: too many hits, > {noisy_rate_hz:g} Hz"),
            (INEFFICIENT_COLOUR, "inefficient: too few hits"),
        )
    ]
    handles = [
        Patch(facecolor=SILENT_COLOUR, label="silent: proven dead"),
        Patch(facecolor=UNKNOWN_COLOUR, label="unknown: no hit yet, not enough data"),
        *rings,
        Patch(facecolor=NO_DATA_COLOUR, label="not expected"),
    ]
    fig.legend(handles=handles, loc="lower center", ncols=5, frameon=False, fontsize=9, bbox_to_anchor=(0.5, 0.0))


def time_axis(ax: Axes) -> None:
    """Format an x axis of matplotlib dates (see ``unix_to_mpl``) as UTC data time."""
    locator = AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    ax.set_xlabel("data time [UTC]")


def no_data(ax: Axes, message: str = "no data yet") -> None:
    """Grey message in the middle of an empty axes."""
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="#777777", fontsize=11)


class KeptFigure:
    """A plot's figure built once and emptied of its data every cycle, for plots that draw new artists.

    ``axes(fig, height, key, build)`` returns the parts ``build`` made, their ``Axes`` emptied of
    lines, patches, collections, texts, images and legends but with their scales, labels, titles
    and tick objects kept: making axes and their ticks anew is most of what a small plot costs.
    ``build(fig)`` makes the parts on a new or cleared figure; it runs again when ``key`` (what
    the layout depends on: which panels have data, the figure height) changes, or when ``fig``
    is not the kept figure.
    """

    def __init__(self) -> None:
        self.fig: Figure | None = None
        self.key: object = None
        self.parts: tuple = ()
        self.title: Text | None = None
        self.subtitle: Text | None = None

    def axes(self, fig: Figure | None, height_in: float, key: object, build: Callable[[Figure], tuple]) -> tuple:
        """The kept parts (``build``'s return value), emptied; rebuilt when needed."""
        if fig is None or fig is not self.fig or key != self.key:
            self.fig = new_figure(fig, height_in)
            self.parts = build(self.fig)
            self.title, self.subtitle = titles(self.fig, "", "")
            self.key = key
            return self.parts
        for ax in self.parts:
            if not isinstance(ax, Axes):
                continue
            for artist in [*ax.lines, *ax.patches, *ax.collections, *ax.texts, *ax.images]:
                artist.remove()
            ax.containers.clear()
            legend = ax.get_legend()
            if legend is not None:
                legend.remove()
            ax.relim()
            ax.set_autoscale_on(True)
            ax.set_prop_cycle(None)  # colours start over, as on a new axes
        return self.parts

    def finish(self, title: str, subtitle: str) -> Figure:
        """Set the figure's titles; returns the figure."""
        assert self.fig is not None and self.title is not None and self.subtitle is not None
        self.title.set_text(title)
        self.subtitle.set_text(subtitle)
        return self.fig
