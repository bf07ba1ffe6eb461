"""``FIFOFlags``: how often data packets carry FIFO half-full / full flags, and on which chips."""

from __future__ import annotations

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from larpix_dqm.exporter.quality.accumulator import FIFO_FLAGS
from larpix_dqm.exporter.reading.packets import DATA
from larpix_dqm.plots.base import Plot, PlotContext
from larpix_dqm.plots.draw import KeptFigure, file_label, log_scale, no_data, time_axis
from larpix_dqm.plots.series import TimeSeries, unix_to_mpl

FLAG_LABELS = [f"{fifo} FIFO {level}" for fifo, level in FIFO_FLAGS]
FLAG_COLOURS = ["#9ecae1", "#08519c", "#fdae6b", "#a63603"]
TOP_CHIPS = 15


class FIFOFlags(Plot):
    """Left: fraction of data packets with each FIFO flag over data time (this file).
    Right: the chips with the most flagged packets since the exporter started (``larpix_chip_fifo_flags_total``).
    """

    def __init__(self) -> None:
        self.series = TimeSeries(1 + len(FIFO_FLAGS))  # data packets, then one series per flag
        self._kept = KeptFigure()

    def update(self, packets: np.ndarray, ctx: PlotContext) -> None:
        data = packets["packet_type"] == DATA
        times = ctx.times[data]
        self.series.add(times, np.zeros(len(times), np.int64))
        local, shared = packets["local_fifo"][data], packets["shared_fifo"][data]
        for i, flagged in enumerate((local & 1, local & 2, shared & 1, shared & 2)):
            hit = flagged != 0
            self.series.add(times[hit], np.full(int(hit.sum()), i + 1))

    def draw(self, name: str, ctx: PlotContext, fig: Figure | None = None) -> Figure:
        counts = self.series.counts
        flags = bool(counts[:, 1:].any())
        chips = self._most_flagged(ctx)
        time_ax, chip_ax = self._kept.axes(fig, 6.0, (flags, bool(chips)), lambda new: self._build(new, flags))
        edges = unix_to_mpl(self.series.edges())
        centres = (edges[:-1] + edges[1:]) / 2
        if flags:
            with np.errstate(invalid="ignore", divide="ignore"):
                fractions = counts[:, 1:] / counts[:, :1]
            for i, label in enumerate(FLAG_LABELS):
                values = np.where(fractions[:, i] > 0, fractions[:, i], np.nan)
                time_ax.plot(centres, values, label=label, color=FLAG_COLOURS[i], linewidth=1.3)
            time_ax.legend(loc="best", fontsize=9)
        else:
            no_data(time_ax, "no FIFO flags in this file" if counts.any() else "no data yet")
        self._chips(chip_ax, ctx, chips)
        totals = counts.sum(axis=0)
        flagged = ", ".join(f"{int(n)} {label}" for n, label in zip(totals[1:], FLAG_LABELS))
        return self._kept.finish(f"{name}: {file_label(ctx)}", f"{int(totals[0])} data packets in this file: {flagged}")

    @staticmethod
    def _build(fig: Figure, flags: bool) -> tuple[Axes, Axes]:
        """Flag fractions over time (log, dates once there are flags) beside the most flagged chips."""
        time_ax, chip_ax = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
        fig.subplots_adjust(left=0.07, right=0.98, top=0.85, bottom=0.12, wspace=0.35)
        if flags:
            log_scale(time_ax, "y")
            time_axis(time_ax)
        time_ax.set_ylabel("fraction of data packets flagged")
        time_ax.set_title("this file", fontsize=11)
        time_ax.grid(alpha=0.3)
        chip_ax.set_title("most flagged chips since start", fontsize=11)
        chip_ax.set_xlabel("flagged data packets")
        return time_ax, chip_ax

    @staticmethod
    def _most_flagged(ctx: PlotContext) -> list[int]:
        """Snapshot rows of the chips with the most flagged packets, most first (none without flags)."""
        flags = ctx.snapshot.chip_fifo_flags
        total = flags.sum(axis=1) if len(flags) else np.zeros(0)
        return [int(i) for i in np.argsort(-total, kind="stable")[:TOP_CHIPS] if total[i] > 0]

    @staticmethod
    def _chips(ax: Axes, ctx: PlotContext, order: list[int]) -> None:
        """Stacked horizontal bars of the chips with the most flagged packets (snapshot totals)."""
        snapshot = ctx.snapshot
        if not order:
            no_data(ax, "no FIFO flags so far")
            ax.set_yticks([])
            return
        flags = snapshot.chip_fifo_flags
        labels = ["-".join(map(str, snapshot.chip_keys[i].tolist())) for i in order]
        left = np.zeros(len(order))
        for k, label in enumerate(FLAG_LABELS):
            values = flags[order, k].astype(float)
            ax.barh(range(len(order)), values, left=left, color=FLAG_COLOURS[k], label=label)
            left += values
        ax.set_yticks(range(len(order)), labels, fontsize=9)
        ax.set_ylabel("chip (io_group-io_channel-chip_id)")
        ax.set_ylim(max(len(order), 8) - 0.5, -0.5)  # top down, bars no fatter than for 8 chips
        ax.grid(alpha=0.3, axis="x")
