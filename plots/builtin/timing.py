"""Timing histograms: ``TimestampHistograms`` (syncs, network delay) and ``TriggerHistograms``.

Times in ticks of the 10 MHz clocks (1 tick = 0.1 µs). Chip timestamps of data packets and
PACMAN times of sync and trigger packets both restart at each 'S' sync, once a second.
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from exporter.quality.accumulator import IO_GROUPS, SYNC_KIND_CODES
from exporter.reading.packets import DATA, EXTERNAL_TRIGGER_BIT, SYNC, TICKS_PER_SYNC, TRIGGER
from plots.base import Plot, PlotContext
from plots.draw import file_label, new_figure, no_data, titles
from plots.series import bin_counts

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


def _group_lines(ax, edges_display: np.ndarray, counts: np.ndarray, label_fmt: str = "io_group {}") -> bool:
    """Step lines of ``counts`` (io_groups, bins) for io_groups with entries; False if none."""
    groups = np.flatnonzero(counts.sum(axis=1))
    for g in groups:
        ax.stairs(counts[g], edges_display, label=label_fmt.format(g), linewidth=1.4)
    if len(groups):
        ax.legend(fontsize=9)
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
        self.delay_negative += int((delay < 0).sum())
        self.delay += delay_counts(delay, group[has])

    def draw(self, name: str, ctx: PlotContext, fig: Figure | None = None) -> Figure:
        fig = new_figure(fig, 5.2)
        sync_ax, delay_ax, stamp_ax = fig.subplots(1, 3)
        fig.subplots_adjust(left=0.06, right=0.98, top=0.8, bottom=0.14, wspace=0.3)
        if _group_lines(sync_ax, SYNC_EDGES, self.sync):
            used = SYNC_EDGES[:-1][self.sync.sum(axis=0) > 0] + 0.5
            sync_ax.set_xlim(min(used.min() - 5, -10), max(used.max() + 5, 10))  # zoom in, keep 0 centred-ish
        else:
            no_data(sync_ax, "no 'S' syncs yet")
        sync_ax.set_xlabel("'S' sync timestamp − 10,000,000 [ticks of 0.1 µs]")
        sync_ax.set_ylabel("syncs")
        sync_ax.set_title(f"sync offset ({self.sync_outside} outside ±50 ticks)", fontsize=11)
        shown = DELAY_EDGES.copy()
        shown[0] = 0.5  # the [0, 1) tick bin, drawn from half a tick on the log axis
        if _group_lines(delay_ax, shown * US_PER_TICK, self.delay):
            delay_ax.set_xscale("log")
            delay_ax.set_yscale("log")
            delay_ax.set_ylim(0.5, self.delay.max() * 3)
        else:
            no_data(delay_ax, "no receipt timestamps" if self.no_receipt else "no data yet")
        delay_ax.set_xlabel("receipt − chip timestamp [µs] (first bin: 0)")
        delay_ax.set_ylabel("data packets")
        delay_ax.set_title(f"network delay ({self.delay_negative} negative)", fontsize=11)
        if not _group_lines(stamp_ax, STAMP_EDGES * US_PER_TICK / 1000, self.stamps):
            no_data(stamp_ax)
        stamp_ax.axvline(TICKS_PER_SYNC * US_PER_TICK / 1000, color="#d62728", linestyle="--", linewidth=1)
        stamp_ax.set_xlabel("chip timestamp of data packets [ms since sync]")
        stamp_ax.set_ylabel("data packets")
        stamp_ax.set_title("data timestamps (beyond the line: sync missed)", fontsize=11)
        for ax in (sync_ax, delay_ax, stamp_ax):
            ax.grid(alpha=0.3)
        titles(
            fig,
            f"{name}: {file_label(ctx)}",
            f"{int(self.sync.sum()) + self.sync_outside} 'S' syncs, {int(self.stamps.sum())} data packets in 0–1.2 s",
        )
        return fig


_TICK_BITS = 33  # ticks fit in 33 bits; the (io_group, second) block sits above them
_PERIOD_BITS = 22  # seconds kept relative to the first one seen: ±24 days
_TICK_MASK = (1 << _TICK_BITS) - 1


def _pair(keys: np.ndarray, is_trigger: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Histograms of data − trigger times and of data packets per trigger, for whole seconds.

    ``keys`` are ``block << 33 | ticks`` with ``block = io_group << 22 | second``: data and
    triggers pair only within a block. Data of seconds without a trigger are never sorted.
    """
    trig_keys = keys[is_trigger]
    data_keys = keys[~is_trigger]
    trig_blocks = np.unique(trig_keys >> _TICK_BITS)
    data_keys = np.sort(data_keys[np.isin(data_keys >> _TICK_BITS, trig_blocks)])
    block_start = trig_keys & ~_TICK_MASK
    ticks = trig_keys & _TICK_MASK
    lo = block_start | np.clip(ticks + TRIGGER_EDGES[0], 0, _TICK_MASK)
    hi = block_start | np.clip(ticks + TRIGGER_EDGES[-1], 0, _TICK_MASK)
    left = np.searchsorted(data_keys, lo, side="left")
    n = np.searchsorted(data_keys, hi, side="left") - left
    index = np.repeat(left - np.concatenate([[0], np.cumsum(n)[:-1]]), n) + np.arange(int(n.sum()))
    dt = (data_keys[index] & _TICK_MASK) - np.repeat(ticks, n)
    groups = np.repeat(trig_keys >> (_TICK_BITS + _PERIOD_BITS), n)
    hist = bin_counts(dt.astype(np.float64), TRIGGER_EDGES.astype(np.float64), groups, IO_GROUPS)
    return hist, np.histogram(n, MULTIPLICITY_EDGES)[0], len(trig_keys)


class TriggerHistograms(Plot):
    """Data packet time minus external trigger time, per io_group, and data packets per trigger.

    Data and triggers are paired within the same io_group and second of data time. A
    second stays open (re-paired at each draw) until a second two later has been seen on
    its io_group, so pairs do not depend on where polls split the file.
    """

    def __init__(self) -> None:
        self.base: int | None = None
        self.open_keys = np.zeros(0, np.int64)
        self.open_trigger = np.zeros(0, bool)
        self.newest = np.full(IO_GROUPS, np.iinfo(np.int64).min)
        self.closed_dt = np.zeros((IO_GROUPS, len(TRIGGER_EDGES) - 1), np.int64)
        self.closed_multiplicity = np.zeros(len(MULTIPLICITY_EDGES) - 1, np.int64)
        self.closed_triggers = 0

    def update(self, packets: np.ndarray, ctx: PlotContext) -> None:
        ptype = packets["packet_type"]
        is_trigger = (ptype == TRIGGER) & ((packets["trigger_type"] & EXTERNAL_TRIGGER_BIT) != 0)
        keep = ((ptype == DATA) | is_trigger) & np.isfinite(ctx.times)
        if not keep.any():
            return
        period = np.floor(ctx.times[keep]).astype(np.int64)
        if self.base is None:
            self.base = int(period[0]) - (1 << _PERIOD_BITS) // 2
        period -= self.base
        group = packets["io_group"][keep].astype(np.int64)
        ok = (period >= 0) & (period < 1 << _PERIOD_BITS)
        period, group = period[ok], group[ok]
        ticks = np.clip(packets["timestamp"][keep][ok].astype(np.int64), 0, _TICK_MASK)
        for g in np.unique(group).tolist():
            self.newest[g] = max(self.newest[g], int(period[group == g].max()))
        keys = np.concatenate([self.open_keys, (group << _PERIOD_BITS | period) << _TICK_BITS | ticks])
        trigger = np.concatenate([self.open_trigger, is_trigger[keep][ok]])
        block = keys >> _TICK_BITS
        done = (block & ((1 << _PERIOD_BITS) - 1)) < self.newest[block >> _PERIOD_BITS] - 1
        dt, multiplicity, triggers = _pair(keys[done], trigger[done])
        self.closed_dt += dt
        self.closed_multiplicity += multiplicity
        self.closed_triggers += triggers
        self.open_keys, self.open_trigger = keys[~done], trigger[~done]

    def draw(self, name: str, ctx: PlotContext, fig: Figure | None = None) -> Figure:
        dt, multiplicity, triggers = _pair(self.open_keys, self.open_trigger)
        dt += self.closed_dt
        multiplicity += self.closed_multiplicity
        triggers += self.closed_triggers
        fig = new_figure(fig, 5.2)
        dt_ax, n_ax = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
        fig.subplots_adjust(left=0.07, right=0.98, top=0.8, bottom=0.14, wspace=0.25)
        if not _group_lines(dt_ax, TRIGGER_EDGES * US_PER_TICK, dt):
            no_data(dt_ax, "no data near an external trigger yet")
        dt_ax.axvline(0, color="#555555", linewidth=0.8)
        dt_ax.set_xlabel("data packet timestamp − external trigger time [µs]")
        dt_ax.set_ylabel(f"data packets per {(TRIGGER_EDGES[1] - TRIGGER_EDGES[0]) * US_PER_TICK:g} µs")
        dt_ax.set_title("data relative to external triggers", fontsize=11)
        labels = [
            f"{int(a)}" if b == a + 1 else f"{int(a)}+" if np.isinf(b) else f"{int(a)}–{int(b) - 1}"
            for a, b in zip(MULTIPLICITY_EDGES[:-1], MULTIPLICITY_EDGES[1:])
        ]
        n_ax.bar(range(len(multiplicity)), multiplicity, color="#4c72b0")
        n_ax.set_xticks(range(len(labels)), labels, rotation=45, fontsize=9)
        n_ax.set_xlabel(
            f"data packets within {TRIGGER_EDGES[0] * US_PER_TICK:g} … +{TRIGGER_EDGES[-1] * US_PER_TICK:g} µs"
        )
        n_ax.set_ylabel("external triggers")
        n_ax.set_title("data packets per trigger", fontsize=11)
        for ax in (dt_ax, n_ax):
            ax.grid(alpha=0.3)
        titles(fig, f"{name}: {file_label(ctx)}", f"{triggers} external triggers, {int(dt.sum())} data packets paired")
        return fig
