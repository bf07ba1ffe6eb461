"""``BeamTriggers``: the charge after the last external (beam) triggers, hits per trigger and per tile.

Pairs triggers and hits as ``larpix_dqm.exporter.quality.triggers`` does, so the plot and the ``beam_*`` metrics agree:
every packet is placed at (data second of its io_group's latest timestamp packet) x 10 MHz + its tick (a
data packet stamped after its PACMAN receipt time belongs to the second before); a trigger is paired with the
self-triggered hits of every io_group in the drift window after it once every io_group still sending data is
``SETTLE_TICKS`` past that window, so chunks and io_groups read out of step pair the same hits. Unlike the
metrics, the plot keeps each of the last ``N_TRIGGERS`` triggers' hits per tile, to show where the beam lands.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from larpix_dqm.exporter.detector.geometry import Geometry
from larpix_dqm.exporter.quality.config import QualityConfig
from larpix_dqm.exporter.quality.triggers import COINCIDENT_TICKS, NO_TIME, SETTLE_TICKS, STOPPED_TICKS
from larpix_dqm.exporter.reading.packets import (
    DATA,
    EXTERNAL_TRIGGER_BIT,
    IO_GROUPS,
    TICKS_PER_SYNC,
    TIMESTAMP,
    TRIGGER,
    latest_seconds,
)
from larpix_dqm.plots.base import Plot, PlotContext
from larpix_dqm.plots.draw import KeptFigure, file_label, no_data
from larpix_dqm.plots.pixels import ChipTiles

#: How many of the latest external triggers the plot shows.
N_TRIGGERS = 200
#: The drift window after a trigger in which its charge arrives (200 µs: ``--drift-window-us``'s default).
WINDOW_TICKS = QualityConfig().drift_window_ticks
US_PER_TICK = 0.1
EMPTY_COLOUR = "#d62728"
CMAP = "viridis"


@dataclass(frozen=True)
class TriggerHits:
    """One paired trigger: its time (ticks: unix second x 10 MHz + tick), hits in its window, hits per bin."""

    time: int
    hits: int
    bins: np.ndarray  # the bins (``Bins.of``) with hits, each once
    counts: np.ndarray  # hits in each


class Bins:
    """Where a hit counts on the right panel: its (io_group, tile) with an io-mapped geometry, else its
    (io_group, io_channel) as ``io_group << 8 | io_channel``."""

    def __init__(self, geometry: Geometry | None) -> None:
        self.geometry = geometry
        self.tiles = ChipTiles(geometry) if geometry is not None and geometry.has_io_mapping else None
        self.size = self.tiles.n_series if self.tiles is not None else IO_GROUPS << 8

    def of(self, group: np.ndarray, channel: np.ndarray, chip: np.ndarray) -> np.ndarray:
        """The bin of each hit (tiles: ``ChipTiles.unknown`` for chips outside the geometry)."""
        if self.tiles is None:
            return group << 8 | channel
        return self.tiles.series(group, channel, chip)


class BeamTriggers(Plot):
    """Left: hits per trigger for the last ``N_TRIGGERS`` external triggers (self-triggered data hits on every
    io_group within ``WINDOW_TICKS`` after the trigger word), with the fraction that brought charge. Right:
    those triggers' hits summed per tile on the anode's tile layout (a tile without hits is hatched red: a
    tile the beam misses stands out); without an io-mapped geometry, bars per (io_group, io_channel)."""

    def __init__(self) -> None:
        self.bins: Bins | None = None
        self.active = False  # an external trigger was seen: hits are held from then on
        self.second = np.full(IO_GROUPS, -1, np.int64)  # data second of each io_group's latest timestamp packet
        self.frontier = np.full(IO_GROUPS, NO_TIME, np.int64)  # newest time each io_group has shown
        self.expected = np.zeros(0, np.int64)  # io_groups of the geometry: waited for before their first data
        self.settled = NO_TIME  # triggers whose window ends before this are paired
        self.last_paired = NO_TIME
        self.open = np.zeros(0, np.int64)  # trigger times not yet paired
        self.hit_times = np.zeros(0, np.int64)  # hits an open trigger may still need
        self.hit_bins = np.zeros(0, np.int64)
        self.seen = np.zeros(0, bool)  # bins that sent a hit since the first trigger (bars: those drawn)
        self.recent: deque[TriggerHits] = deque(maxlen=N_TRIGGERS)
        self.paired = 0  # triggers paired in total
        self._kept = KeptFigure()

    # -- pairing ----------------------------------------------------------------------------------
    def update(self, packets: np.ndarray, ctx: PlotContext) -> None:
        if self.bins is None:
            self.bins = Bins(ctx.geometry)
            self.seen = np.zeros(self.bins.size, bool)
            if self.bins.tiles is not None and ctx.geometry is not None:
                self.expected = np.unique(ctx.geometry.chips[:, 0]).astype(np.int64)
        ptype = packets["packet_type"]
        groups = packets["io_group"].astype(np.int64)
        stamp = ptype == TIMESTAMP
        external = np.flatnonzero((ptype == TRIGGER) & ((packets["trigger_type"] & EXTERNAL_TRIGGER_BIT) != 0))
        if not len(external) and not self.active:  # idle: only follow the seconds
            seconds = packets["timestamp"][stamp].astype(np.int64)
            for g in np.unique(groups[stamp]).tolist():
                self.second[g] = int(seconds[groups[stamp] == g][-1])
            self._advance(groups[stamp], seconds * TICKS_PER_SYNC)
            return
        seconds = latest_seconds(packets, stamp, self.second)
        ticks = packets["timestamp"].astype(np.int64)
        placed = seconds >= 0
        external = external[placed[external]]
        self.active |= len(external) > 0
        if not self.active:
            return
        hits = np.flatnonzero(
            (ptype == DATA) & (packets["valid_parity"] != 0) & ((packets["trigger_type"] & 3) == 0) & placed
        )
        hit_times = seconds[hits] * TICKS_PER_SYNC + ticks[hits]
        if "receipt_timestamp" in (packets.dtype.names or ()):
            receipt = packets["receipt_timestamp"][hits].astype(np.int64)
            hit_times -= np.where((receipt > 0) & (ticks[hits] > receipt), TICKS_PER_SYNC, 0)
        trigger_times = seconds[external] * TICKS_PER_SYNC + ticks[external]
        stamps = np.flatnonzero(stamp & placed)
        for times, at in ((hit_times, hits), (trigger_times, external), (seconds[stamps] * TICKS_PER_SYNC, stamps)):
            self._advance(groups[at], times)
        channels = packets["io_channel"][hits].astype(np.int64)
        hit_bins = self.bins.of(groups[hits], channels, packets["chip_id"][hits].astype(np.int64))
        self.seen[hit_bins] = True
        self.open = np.r_[self.open, trigger_times]
        self.hit_times = np.r_[self.hit_times, hit_times]
        self.hit_bins = np.r_[self.hit_bins, hit_bins]
        self._settle(self._reached() - SETTLE_TICKS)

    def _advance(self, groups: np.ndarray, times: np.ndarray) -> None:
        """Move the io_groups' frontiers to the newest of ``times``; when data begin, the geometry's io_groups
        count as there from then, so triggers wait for one whose data come later (up to ``STOPPED_TICKS``)."""
        if not len(groups):
            return
        if self.frontier.max() == NO_TIME:
            self.frontier[self.expected] = int(times.min())
        np.maximum.at(self.frontier, groups, times)

    def _reached(self) -> int:
        """The time up to which every io_group still sending data has shown its data."""
        known = self.frontier[self.frontier > NO_TIME]
        if not len(known):
            return NO_TIME
        return int(known[known >= known.max() - STOPPED_TICKS].min())

    def _distinct(self) -> np.ndarray:
        """The open triggers, ascending, without those coincident with an earlier one or the last paired one."""
        opened = np.sort(self.open)
        distinct = np.r_[True, np.diff(opened) > COINCIDENT_TICKS] if len(opened) else np.zeros(0, bool)
        return opened[distinct & (np.abs(opened - self.last_paired) > COINCIDENT_TICKS)]

    def _settle(self, settled: int) -> None:
        """Pair the triggers whose windows end before ``settled``; drop the hits no open trigger can need."""
        if settled <= self.settled:
            return
        triggers = self._distinct()
        closing = triggers + WINDOW_TICKS <= settled
        paired = self._pair(triggers[closing])
        self.recent.extend(paired)
        self.paired += len(paired)
        if paired:
            self.last_paired = paired[-1].time
        self.open, self.settled = triggers[~closing], settled
        keep = self.hit_times >= min(int(self.open.min()) if len(self.open) else settled, settled)
        self.hit_times, self.hit_bins = self.hit_times[keep], self.hit_bins[keep]

    def _pair(self, triggers: np.ndarray) -> list[TriggerHits]:
        """The held hits in the window of each of ``triggers`` (ascending)."""
        order = np.argsort(self.hit_times, kind="stable")
        times, bins = self.hit_times[order], self.hit_bins[order]
        first = np.searchsorted(times, triggers, side="left")
        last = np.searchsorted(times, triggers + WINDOW_TICKS, side="left")
        out = []
        for t, a, b in zip(triggers.tolist(), first.tolist(), last.tolist()):
            where, counts = np.unique(bins[a:b], return_counts=True)
            out.append(TriggerHits(t, b - a, where, counts))
        return out

    def ready(self) -> list[TriggerHits]:
        """The open triggers whose windows every io_group has passed, paired provisionally (their hits may still
        change by late data; the end of a file read whole shows its last triggers so)."""
        triggers = self._distinct()
        return self._pair(triggers[triggers + WINDOW_TICKS <= self._reached()])

    def shown(self) -> list[TriggerHits]:
        """The last ``N_TRIGGERS`` triggers: those paired, then the ``ready`` ones."""
        return [*self.recent, *self.ready()][-N_TRIGGERS:]

    # -- drawing ----------------------------------------------------------------------------------
    def draw(self, name: str, ctx: PlotContext, fig: Figure | None = None) -> Figure:
        bins = self.bins or Bins(ctx.geometry)
        ready = self.ready()
        shown = [*self.recent, *ready][-N_TRIGGERS:]
        counts = np.array([t.hits for t in shown], np.int64)
        totals = np.zeros(bins.size, np.int64)
        for t in shown:
            totals[t.bins] += t.counts
        groups = _io_groups(bins)
        hist_ax, *maps = self._kept.axes(fig, 5.2, (bins.tiles is None, groups), lambda new: _build(new, groups))
        if not shown:
            for ax in (hist_ax, *maps):
                no_data(ax, "no external trigger yet")
            hist_ax.set_title("hits per trigger", fontsize=11)
            return self._kept.finish(f"{name}: {file_label(ctx)}", "no external trigger yet")
        charged = int((counts > 0).sum())
        _histogram(hist_ax, counts)
        hist_ax.set_title(f"hits per trigger: {charged / len(shown):.0%} with charge", fontsize=11)
        if groups:
            empty = _tile_maps(maps, bins, totals, groups)
            where = f"tiles without hits (hatched): {empty}"
        else:
            empty = _channel_bars(maps[0], totals, self.seen | (totals > 0))
            where = f"io_channels with data but no hit in the windows (red ×): {empty}"
        return self._kept.finish(
            f"{name}: {file_label(ctx)}",
            f"last {len(shown)} of {self.paired + len(ready)} external triggers, {charged} with charge, "
            f"{counts.mean():.1f} hits per trigger  ·  {where}",
        )


def _io_groups(bins: Bins) -> tuple[int, ...]:
    """The io_groups drawn as anode panels (none: one bar chart)."""
    if bins.tiles is None or bins.geometry is None:
        return ()
    return tuple(np.unique(bins.geometry.chips[:, 0]).tolist())


def _build(fig: Figure, groups: tuple[int, ...]) -> tuple[Axes, ...]:
    """The histogram beside one anode panel per io_group, or beside one bar chart."""
    ratios = [1.6, *([1.0] * len(groups))] if groups else [1.0, 1.4]
    axes = fig.subplots(1, len(ratios), gridspec_kw={"width_ratios": ratios})
    fig.subplots_adjust(left=0.06, right=0.98, top=0.8, bottom=0.14, wspace=0.3)
    hist_ax, *right = axes
    hist_ax.set_xlabel(f"self-triggered hits, every io_group, {WINDOW_TICKS * US_PER_TICK:g} µs after the trigger")
    hist_ax.set_ylabel("external triggers")
    hist_ax.grid(alpha=0.3)
    for ax, group in zip(right, groups):
        ax.set_aspect("equal")
        ax.set_xlabel("x [mm]")
        ax.set_title(f"io_group {group}: hits per tile", fontsize=11)
    if groups:
        right[0].set_ylabel("y [mm]")
    else:
        right[0].set_xlabel("io_group-io_channel")
        right[0].set_ylabel("hits in the triggers' windows")
        right[0].set_title("hits per io_channel", fontsize=11)
        right[0].grid(alpha=0.3, axis="y")
    return tuple(axes)


def _histogram(ax: Axes, counts: np.ndarray) -> None:
    """Triggers per number of hits: one bin per hit count up to 60, else about 50 equal bins."""
    top = int(counts.max())
    step = 1 if top <= 60 else int(np.ceil((top + 1) / 50))
    edges = np.arange(0, top + step + 1, step) - 0.5
    ax.stairs(np.histogram(counts, edges)[0], edges, fill=True, color="#4c72b0")
    ax.axvline(float(counts.mean()), color="#555555", linestyle="--", linewidth=1)


def _tile_maps(axes: list[Axes], bins: Bins, totals: np.ndarray, groups: tuple[int, ...]) -> int:
    """Each io_group's tiles at their places, coloured by hits, those without hits hatched red; returns how many."""
    tiles, geometry = bins.tiles, bins.geometry
    assert tiles is not None and geometry is not None
    norm = Normalize(0, max(1, int(totals[: tiles.unknown].max(initial=0))))
    cmap = colormaps[CMAP]
    empty = 0
    for ax, group in zip(axes, groups):
        extents = []
        for series, (g, tile) in enumerate(tiles.pairs):
            if g != group:
                continue
            left, right, bottom, top = extent = _tile_extent(geometry, g, tile)
            extents.append(extent)
            hits = int(totals[series])
            empty += hits == 0
            patch = Rectangle(
                (left, bottom),
                right - left,
                top - bottom,
                facecolor=cmap(norm(hits)) if hits else "white",
                edgecolor="#333333" if hits else EMPTY_COLOUR,
                linewidth=0.8 if hits else 2.0,
                hatch=None if hits else "xx",
            )
            ax.add_patch(patch)
            ax.text(
                (left + right) / 2,
                (bottom + top) / 2,
                f"tile {tile}\n{hits:,}" if hits else f"tile {tile}\nno hits",
                ha="center",
                va="center",
                fontsize=8,
                color="black" if hits else EMPTY_COLOUR,
                bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "alpha": 0.8, "linewidth": 0},
            )
        if extents:
            box = np.array(extents)
            ax.set_xlim(box[:, 0].min(), box[:, 1].max())
            ax.set_ylim(box[:, 2].min(), box[:, 3].max())
    return empty


def _tile_extent(geometry: Geometry, io_group: int, tile: int) -> tuple[float, float, float, float]:
    """(left, right, bottom, top) in mm of a tile's connected pixels, half a pitch around their centres."""
    rows = (geometry.chips[:, 0] == io_group) & (geometry.tiles == tile)
    x, y = geometry.x[rows][geometry.connected[rows]], geometry.y[rows][geometry.connected[rows]]
    half = geometry.pixel_pitch / 2
    return float(x.min()) - half, float(x.max()) + half, float(y.min()) - half, float(y.max()) + half


def _channel_bars(ax: Axes, totals: np.ndarray, drawn: np.ndarray) -> int:
    """Hits per (io_group, io_channel) with data, those without hits in the windows marked red; returns how many."""
    where = np.flatnonzero(drawn)
    values = totals[where]
    ax.bar(range(len(where)), values, color="#4c72b0")
    zero = np.flatnonzero(values == 0)
    ax.plot(zero, np.zeros(len(zero)), linestyle="none", marker="x", markersize=9, color=EMPTY_COLOUR)
    ax.set_xticks(range(len(where)), [f"{b >> 8}-{b & 255}" for b in where.tolist()], rotation=90, fontsize=7)
    return len(zero)
