"""Rates over data time: ``PacketRate`` (by packet type, parity errors) and ``TileRate``."""

from __future__ import annotations

import numpy as np
from matplotlib.axes import Axes
from matplotlib.colorbar import Colorbar
from matplotlib.figure import Figure

from larpix_dqm.exporter.reading.packets import DATA, PACKET_TYPE_NAMES
from larpix_dqm.plots.base import Plot, PlotContext
from larpix_dqm.plots.draw import KeptFigure, file_label, log_scale, no_data, time_axis, utc, window_text
from larpix_dqm.plots.pixels import ChipTiles
from larpix_dqm.plots.series import TimeSeries, unix_to_mpl

PARITY = len(PACKET_TYPE_NAMES)  # series index of parity errors, after the 8 packet types


def step_lines(ax: Axes, series: TimeSeries, columns: list[int], labels: list[str]) -> None:
    """One line per column of ``series.rates()`` at the bin centres; zero rates left out (log axes)."""
    edges = unix_to_mpl(series.edges())
    centres = (edges[:-1] + edges[1:]) / 2
    rates = series.rates()
    for column, label in zip(columns, labels):
        values = np.where(rates[:, column] > 0, rates[:, column], np.nan)
        sparse = np.isnan(values).mean() > 0.2  # rare packets: dots, or the line breaks into specks
        ax.plot(
            centres,
            values,
            label=label,
            linewidth=1.3,
            marker="o" if sparse else None,
            markersize=3,
        )


class PacketRate(Plot):
    """Packets per second by packet type over data time, and the fraction with a parity error."""

    def __init__(self) -> None:
        self.series = TimeSeries(PARITY + 1)
        self._kept = KeptFigure()

    def update(self, packets: np.ndarray, ctx: PlotContext) -> None:
        ptype = packets["packet_type"].astype(np.int64)
        known = ptype < PARITY
        self.series.add(ctx.times[known], ptype[known])
        bad = (ptype == DATA) & (packets["valid_parity"] == 0)
        self.series.add(ctx.times[bad], np.full(int(bad.sum()), PARITY))

    def draw(self, name: str, ctx: PlotContext, fig: Figure | None = None) -> Figure:
        totals = self.series.counts.sum(axis=0)
        present = [t for t in range(PARITY) if totals[t]]
        rate_ax, parity_ax = self._kept.axes(fig, 7.0, bool(present), lambda new: self._build(new, bool(present)))
        if not present:
            no_data(rate_ax)
        else:
            step_lines(rate_ax, self.series, present, [PACKET_TYPE_NAMES[t] for t in present])
            rate_ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), title="packet type", frameon=False)
            counts = self.series.counts
            with np.errstate(invalid="ignore", divide="ignore"):
                fraction = counts[:, PARITY] / counts[:, DATA]
            edges = unix_to_mpl(self.series.edges())
            parity_ax.plot((edges[:-1] + edges[1:]) / 2, fraction, color="#d62728", linewidth=1.3)
        parity_ax.set_ylim(bottom=0)
        errors = int(totals[PARITY])
        data = int(totals[DATA])
        share = f"{errors / data:.2e}" if data else "n/a"
        return self._kept.finish(
            f"{name}: {file_label(ctx)}",
            f"{int(totals[:PARITY].sum())} packets, {data} data, {errors} with a parity error ({share})  ·  "
            f"bins of {self.series.width:g} s  ·  up to {utc(self.series.edges()[-1] - self.series.width) if len(self.series.counts) else 'no data yet'}",
        )

    @staticmethod
    def _build(fig: Figure, data: bool) -> tuple[Axes, Axes]:
        """Rates over parity errors, sharing the time axis; log rates and dates once there are data."""
        rate_ax, parity_ax = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [2, 1]})
        fig.subplots_adjust(left=0.08, right=0.8, top=0.88, bottom=0.1, hspace=0.08)
        if data:
            log_scale(rate_ax, "y")
            time_axis(parity_ax)
        rate_ax.set_ylabel("packets per second [Hz]")
        rate_ax.grid(alpha=0.3)
        parity_ax.set_ylabel("parity-error fraction")
        parity_ax.grid(alpha=0.3)
        return rate_ax, parity_ax


class TileRate(Plot):
    """Data packets per second of each tile over data time (this file), beside each tile's
    hit rate over the metrics' window (the sum of ``larpix_chip_hit_rate_hertz`` over its chips).
    """

    def __init__(self) -> None:
        self.tiles: ChipTiles | None = None
        self.series: TimeSeries | None = None
        self._kept = KeptFigure()
        self._colorbar: Colorbar | None = None
        self._cax: Axes | None = None

    def _setup(self, ctx: PlotContext) -> tuple[ChipTiles, TimeSeries]:
        if self.tiles is None or self.series is None:
            self.tiles = ChipTiles(ctx.geometry)
            self.series = TimeSeries(self.tiles.n_series)
        return self.tiles, self.series

    def update(self, packets: np.ndarray, ctx: PlotContext) -> None:
        tiles, series = self._setup(ctx)
        data = packets["packet_type"] == DATA
        series.add(
            ctx.times[data],
            tiles.series(packets["io_group"][data], packets["io_channel"][data], packets["chip_id"][data]),
        )

    def draw(self, name: str, ctx: PlotContext, fig: Figure | None = None) -> Figure:
        tiles, series = self._setup(ctx)
        window = self._window_rates(ctx, tiles)
        rows = sorted({s for s in range(tiles.n_series) if series.counts[:, s].any()} | set(window))
        height = max(5.0, 2.9 + 0.3 * len(rows))
        data = bool(len(series.counts) and rows)
        heat_ax, bar_ax = self._kept.axes(fig, height, (height, data), lambda new: self._build(new, height, data))
        labels = [tiles.label(s) for s in rows]
        if data:
            rates = series.rates()[:, rows].T
            mesh = heat_ax.pcolormesh(
                unix_to_mpl(series.edges()), np.arange(len(rows) + 1) - 0.5, rates, cmap="viridis", vmin=0
            )
            if self._colorbar is None:
                self._colorbar = heat_ax.figure.colorbar(
                    mesh, cax=self._cax, orientation="horizontal", label="data packets per second [Hz]"
                )
            else:
                self._colorbar.update_normal(mesh)
        else:
            no_data(heat_ax)
        heat_ax.set_yticks(range(len(rows)), labels, fontsize=9)
        heat_ax.set_ylim(len(rows) - 0.5, -0.5)
        heat_ax.set_title(f"this file, bins of {series.width:g} s", fontsize=11)
        bar_ax.barh(range(len(rows)), [window.get(s, 0.0) for s in rows], color="#4c72b0")
        return self._kept.finish(f"{name}: {file_label(ctx)}", f"right: {window_text(ctx.snapshot)}")

    def _build(self, fig: Figure, height: float, data: bool) -> tuple[Axes, Axes]:
        """Heat map beside the window rates, sharing the tile axis; a colour bar axes (kept out of the
        parts emptied each cycle: its colour bar is updated) and dates with data."""
        bottom, axes_h = 1.6 / height, 1 - 2.6 / height  # inches: 1.6 below (time axis, colour bar), 1.0 above
        heat_ax = fig.add_axes((0.15, bottom, 0.6, axes_h))
        bar_ax = fig.add_axes((0.77, bottom, 0.21, axes_h), sharey=heat_ax)
        self._cax = fig.add_axes((0.3, 0.45 / height, 0.3, 0.14 / height)) if data else None
        self._colorbar = None
        if data:
            time_axis(heat_ax)
        bar_ax.set_xlabel("hit rate in the window [Hz]")
        bar_ax.set_title("window rate per tile", fontsize=11)
        bar_ax.grid(alpha=0.3, axis="x")
        bar_ax.tick_params(labelleft=False)
        return heat_ax, bar_ax

    @staticmethod
    def _window_rates(ctx: PlotContext, tiles: ChipTiles) -> dict[int, float]:
        """Window hit rate per tile series, summed over the snapshot's chips."""
        snapshot = ctx.snapshot
        keys = snapshot.chip_keys.astype(np.int64)
        which = tiles.series(keys[:, 0], keys[:, 1], keys[:, 2])
        sums = np.bincount(which, snapshot.chip_rate_hz, tiles.n_series)
        seen = np.bincount(which, minlength=tiles.n_series) > 0
        return {int(s): float(sums[s]) for s in np.flatnonzero(seen)}
