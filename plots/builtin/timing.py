"""Timing histograms: ``TimestampHistograms`` (syncs, network delay) and ``TriggerHistograms``.

Times in ticks of the 10 MHz clocks (1 tick = 0.1 µs). Chip timestamps of data packets and
PACMAN times of sync and trigger packets both restart at each 'S' sync, once a second.
"""

from __future__ import annotations

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from larpix_dqm.exporter.reading.packets import (
    DATA,
    EXTERNAL_TRIGGER_BIT,
    IO_GROUPS,
    SYNC,
    SYNC_KIND_CODES,
    TICKS_PER_SYNC,
    TRIGGER,
)
from larpix_dqm.plots.base import Plot, PlotContext
from larpix_dqm.plots.draw import KeptFigure, file_label, log_scale, no_data
from larpix_dqm.plots.series import bin_counts

US_PER_TICK = 0.1
SYNC_EDGES = np.arange(-50, 52) - 0.5  # ticks, one bin per tick offset
DELAY_EDGES = np.concatenate([[0.0], 2.0 ** np.arange(0, 33, 0.5)])  # ticks, [0, 1) then log bins
STAMP_EDGES = np.arange(0, 1_200_001, 10_000) * 10.0  # ticks: 10 ms bins up to 1.2 s
TRIGGER_EDGES = np.arange(-1_000, 3_001, 20)  # ticks: data − trigger from −100 µs to +300 µs
MULTIPLICITY_EDGES = np.array([0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, np.inf])


def delay_counts(delay: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Histogram of delays (ticks) on ``DELAY_EDGES``: [0, 1), then half-octaves, by arithmetic."""
    with np.errstate(divide="ignore"):
        bins = np.where(delay >= 1, np.floor(2 * np.log2(np.maximum(delay, 1))).astype(np.int64) + 1, 0)
    inside = (delay >= 0) & (bins < len(DELAY_EDGES) - 1)
    flat = groups[inside].astype(np.int64) * (len(DELAY_EDGES) - 1) + bins[inside]
    return np.bincount(flat, minlength=IO_GROUPS * (len(DELAY_EDGES) - 1)).reshape(IO_GROUPS, -1)


def _group_lines(ax: Axes, edges_display: np.ndarray, counts: np.ndarray, label_fmt: str = "io_group {}") -> bool:
    """Step lines of ``counts`` (io_groups, bins) for io_groups with entries; False if none."""
    groups = np.flatnonzero(counts.sum(axis=1))
    for g in groups:
        ax.stairs(counts[g], edges_display, label=label_fmt.format(g), linewidth=1.4)
    if len(groups):
        ax.legend(fontsize=9, loc="upper right")  # "best" scans every line: slow
    return bool(len(groups))


class TimestampHistograms(Plot):
    """'S' sync offsets from 1e7 ticks, network delay (receipt − chip timestamp), chip timestamps."""

    def __init__(self) -> None:
        self.sync = np.zeros((IO_GROUPS, len(SYNC_EDGES) - 1), np.int64)
        self.sync_outside = 0
        self.delay = np.zeros((IO_GROUPS, len(DELAY_EDGES) - 1), np.int64)
        self.delay_negative = 0
        self.no_receipt = 0
        self.stamps = np.zeros((IO_GROUPS, len(STAMP_EDGES) - 1), np.int64)
        self._kept = KeptFigure()

    def update(self, packets: np.ndarray, ctx: PlotContext) -> None:
        ptype = packets["packet_type"]
        syncs = packets[(ptype == SYNC) & (packets["trigger_type"] == SYNC_KIND_CODES[0])]
        offset = syncs["timestamp"].astype(np.int64) - TICKS_PER_SYNC
        counted = bin_counts(offset, SYNC_EDGES, syncs["io_group"], IO_GROUPS)
        self.sync += counted
        self.sync_outside += len(syncs) - int(counted.sum())
        is_data = ptype == DATA
        stamp = packets["timestamp"][is_data].astype(np.int64)  # field by field: no copy of whole records
        group = packets["io_group"][is_data]
        self.stamps += bin_counts(stamp.astype(np.float64), STAMP_EDGES, group, IO_GROUPS)
        receipt = packets["receipt_timestamp"][is_data].astype(np.int64)
        has = receipt > 0
        self.no_receipt += int((~has).sum())
        delay = receipt[has] - stamp[has]
        delay[delay < 0] += TICKS_PER_SYNC  # stamped before the 'S' sync that reset the receipt clock
        self.delay_negative += int((delay < 0).sum())
        self.delay += delay_counts(delay, group[has])

    def draw(self, name: str, ctx: PlotContext, fig: Figure | None = None) -> Figure:
        delays = bool(self.delay.any())
        sync_ax, delay_ax, stamp_ax = self._kept.axes(
            fig, 5.2, (bool(self.sync.any()), delays), lambda new: self._build(new, delays)
        )
        if _group_lines(sync_ax, SYNC_EDGES, self.sync):
            used = SYNC_EDGES[:-1][self.sync.sum(axis=0) > 0] + 0.5
            sync_ax.set_xlim(min(used.min() - 5, -10), max(used.max() + 5, 10))  # zoom in, keep 0 centred-ish
        else:
            no_data(sync_ax, "no 'S' syncs yet")
        sync_ax.set_title(f"sync offset ({self.sync_outside} outside ±50 ticks)", fontsize=11)
        shown = DELAY_EDGES.copy()
        shown[0] = 0.5  # the [0, 1) tick bin, drawn from half a tick on the log axis
        if _group_lines(delay_ax, shown * US_PER_TICK, self.delay):
            delay_ax.set_ylim(0.5, self.delay.max() * 3)
        else:
            no_data(delay_ax, "no receipt timestamps" if self.no_receipt else "no data yet")
        delay_ax.set_title(f"network delay ({self.delay_negative} negative)", fontsize=11)
        if not _group_lines(stamp_ax, STAMP_EDGES * US_PER_TICK / 1000, self.stamps):
            no_data(stamp_ax)
        stamp_ax.axvline(TICKS_PER_SYNC * US_PER_TICK / 1000, color="#d62728", linestyle="--", linewidth=1)
        return self._kept.finish(
            f"{name}: {file_label(ctx)}",
            f"{int(self.sync.sum()) + self.sync_outside} 'S' syncs, {int(self.stamps.sum())} data packets in 0–1.2 s",
        )

    @staticmethod
    def _build(fig: Figure, delays: bool) -> tuple[Axes, Axes, Axes]:
        """The three histograms' axes and labels; the delays on log scales once there are some."""
        sync_ax, delay_ax, stamp_ax = fig.subplots(1, 3)
        fig.subplots_adjust(left=0.06, right=0.98, top=0.8, bottom=0.14, wspace=0.3)
        sync_ax.set_xlabel("'S' sync timestamp − 10,000,000 [ticks of 0.1 µs]")
        sync_ax.set_ylabel("syncs")
        if delays:
            log_scale(delay_ax, "x")
            log_scale(delay_ax, "y")
        delay_ax.set_xlabel("receipt − chip timestamp [µs] (first bin: 0)")
        delay_ax.set_ylabel("data packets")
        stamp_ax.set_xlabel("chip timestamp of data packets [ms since sync]")
        stamp_ax.set_ylabel("data packets")
        stamp_ax.set_title("data timestamps (beyond the line: sync missed)", fontsize=11)
        for ax in (sync_ax, delay_ax, stamp_ax):
            ax.grid(alpha=0.3)
        return sync_ax, delay_ax, stamp_ax


_GROUP_SHIFT = 44  # keys are io_group << 44 | ticks since the file's start (2**44 ticks: 20 days)
_TICK_MASK = (1 << _GROUP_SHIFT) - 1
_REACH = int(TRIGGER_EDGES[-1] - TRIGGER_EDGES[0])  # ticks a trigger's pairing window spans


def sync_periods(
    packet_type: np.ndarray, trigger_type: np.ndarray, io_group: np.ndarray, start: np.ndarray
) -> np.ndarray:
    """Sync period of each packet: ``start[io_group]`` plus the 'S' syncs of its io_group before it
    (the sync itself opens the next period); advances ``start`` past this chunk's syncs."""
    is_sync = (packet_type == SYNC) & (trigger_type == SYNC_KIND_CODES[0])
    period = start[io_group]  # a copy: fancy indexing
    for g in np.unique(io_group[is_sync]).tolist():
        mine = io_group == g
        count = np.cumsum(is_sync[mine])
        period[mine] += count
        start[g] += int(count[-1])
    return period


def chip_ticks(timestamp: np.ndarray, receipt_timestamp: np.ndarray, period: np.ndarray) -> np.ndarray:
    """Ticks since the file's start of data packets: a rollover adds 1e7 ticks per 'S' sync, and
    a chip timestamp ahead of the PACMAN receipt time belongs to the previous sync period."""
    ticks = timestamp.astype(np.int64)
    receipt = receipt_timestamp.astype(np.int64)
    earlier = (receipt > 0) & (ticks > receipt)
    return (period - earlier) * TICKS_PER_SYNC + ticks


def _pair(trig_keys: np.ndarray, data_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Histograms of data − trigger times and of data packets per trigger (keys: io_group << 44 | ticks).

    Only the data within some trigger's window are sorted: a few triggers meet a million held data."""
    lo = trig_keys + int(TRIGGER_EDGES[0])
    hi = trig_keys + int(TRIGGER_EDGES[-1])
    starts = np.sort(lo)  # (the windows' ends sorted: the starts + _REACH)
    near = np.searchsorted(starts, data_keys, "right") > np.searchsorted(starts + _REACH, data_keys, "right")
    data_keys = np.sort(data_keys[near])
    left = np.searchsorted(data_keys, lo, side="left")
    n = np.searchsorted(data_keys, hi, side="left") - left
    index = np.repeat(left - np.concatenate([[0], np.cumsum(n)[:-1]]), n) + np.arange(int(n.sum()))
    dt = data_keys[index] - np.repeat(trig_keys, n)
    groups = np.repeat(trig_keys >> _GROUP_SHIFT, n)
    hist = bin_counts(dt.astype(np.float64), TRIGGER_EDGES.astype(np.float64), groups, IO_GROUPS)
    return hist, np.histogram(n, MULTIPLICITY_EDGES)[0], len(trig_keys)


class TriggerHistograms(Plot):
    """Data packet time minus external trigger time, per io_group, and data packets per trigger.

    Times are chip and PACMAN clock ticks, rebuilt per io_group across 'S' sync resets
    (DESIGN 7 "Clocks"), so the pairs do not depend on the PACMAN's unix time at all. A trigger
    is paired once its io_group is two sync periods further; data are kept as long as a
    trigger not yet paired could reach them, so pairs do not depend on where polls split the file.
    """

    def __init__(self) -> None:
        self.periods = np.ones(IO_GROUPS, np.int64)  # current sync period per io_group (1: before the first)
        self.open_triggers = np.zeros(0, np.int64)
        self.held_data = np.zeros(0, np.int64)
        self.closed_dt = np.zeros((IO_GROUPS, len(TRIGGER_EDGES) - 1), np.int64)
        self.closed_multiplicity = np.zeros(len(MULTIPLICITY_EDGES) - 1, np.int64)
        self.closed_triggers = 0
        self._kept = KeptFigure()

    def update(self, packets: np.ndarray, ctx: PlotContext) -> None:
        ptype, kind, io_group = packets["packet_type"], packets["trigger_type"], packets["io_group"]
        is_trigger = (ptype == TRIGGER) & ((kind & EXTERNAL_TRIGGER_BIT) != 0)
        is_data = ptype == DATA
        period = sync_periods(ptype, kind, io_group, self.periods)  # field by field: no copy of whole records
        data = (io_group[is_data].astype(np.int64) << _GROUP_SHIFT) | chip_ticks(
            packets["timestamp"][is_data], packets["receipt_timestamp"][is_data], period[is_data]
        )
        trig = (io_group[is_trigger].astype(np.int64) << _GROUP_SHIFT) | (
            period[is_trigger] * TICKS_PER_SYNC + packets["timestamp"][is_trigger].astype(np.int64)
        )
        self.held_data = np.concatenate([self.held_data, data])
        self.open_triggers = np.concatenate([self.open_triggers, trig])
        cutoff = (self.periods - 1) * TICKS_PER_SYNC  # nothing earlier than this can still come
        done = (self.open_triggers & _TICK_MASK) + int(TRIGGER_EDGES[-1]) < cutoff[self.open_triggers >> _GROUP_SHIFT]
        if done.any():
            dt, multiplicity, triggers = _pair(self.open_triggers[done], self.held_data)
            self.closed_dt += dt
            self.closed_multiplicity += multiplicity
            self.closed_triggers += triggers
            self.open_triggers = self.open_triggers[~done]
        stale = (self.held_data & _TICK_MASK) + _REACH < cutoff[self.held_data >> _GROUP_SHIFT]
        self.held_data = self.held_data[~stale]

    def draw(self, name: str, ctx: PlotContext, fig: Figure | None = None) -> Figure:
        dt, multiplicity, triggers = _pair(self.open_triggers, self.held_data)
        dt += self.closed_dt
        multiplicity += self.closed_multiplicity
        triggers += self.closed_triggers
        dt_ax, n_ax = self._kept.axes(fig, 5.2, bool(dt.any()), self._build)
        if not _group_lines(dt_ax, TRIGGER_EDGES * US_PER_TICK, dt):
            no_data(dt_ax, "no data near an external trigger yet")
        dt_ax.axvline(0, color="#555555", linewidth=0.8)
        n_ax.bar(range(len(multiplicity)), multiplicity, color="#4c72b0")
        return self._kept.finish(
            f"{name}: {file_label(ctx)}", f"{triggers} external triggers, {int(dt.sum())} data packets paired"
        )

    @staticmethod
    def _build(fig: Figure) -> tuple[Axes, Axes]:
        """Time differences beside the multiplicity bars, with their labels."""
        dt_ax, n_ax = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
        fig.subplots_adjust(left=0.07, right=0.98, top=0.8, bottom=0.14, wspace=0.25)
        dt_ax.set_xlabel("data packet timestamp − external trigger time [µs]")
        dt_ax.set_ylabel(f"data packets per {(TRIGGER_EDGES[1] - TRIGGER_EDGES[0]) * US_PER_TICK:g} µs")
        dt_ax.set_title("data relative to external triggers", fontsize=11)
        labels = [
            f"{int(a)}" if b == a + 1 else f"{int(a)}+" if np.isinf(b) else f"{int(a)}–{int(b) - 1}"
            for a, b in zip(MULTIPLICITY_EDGES[:-1], MULTIPLICITY_EDGES[1:])
        ]
        n_ax.set_xticks(range(len(labels)), labels, rotation=45, fontsize=9)
        n_ax.set_xlabel(
            f"data packets within {TRIGGER_EDGES[0] * US_PER_TICK:g} … +{TRIGGER_EDGES[-1] * US_PER_TICK:g} µs"
        )
        n_ax.set_ylabel("external triggers")
        n_ax.set_title("data packets per trigger", fontsize=11)
        for ax in (dt_ax, n_ax):
            ax.grid(alpha=0.3)
        return dt_ax, n_ax
