"""Data-quality accumulation: exact counters and sliding windows in data time, all numpy.

``Accumulator.add`` takes chunks of packet records (any structured array carrying the
fields of ``packets.REQUIRED_FIELDS``) and ``Accumulator.snapshot`` returns an immutable
``Snapshot`` that the collector and the plots read without touching the live arrays.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from exporter.detector.chips import ChipIndex
from exporter.detector.geometry import CHANNELS_PER_CHIP, Geometry
from exporter.quality.clock import DataClock, forward_fill, plausible_timestamps
from exporter.quality.status import ChannelStatus
from exporter.reading.packets import DATA, EXTERNAL_TRIGGER_BIT, SYNC, TICKS_PER_SYNC, TRIGGER

IO_GROUPS = 256
PACKET_TYPES = 8
SYNC_KIND_CODES = (ord("S"), ord("H"), ord("C"))
FIFO_FLAGS = (("local", "half"), ("local", "full"), ("shared", "half"), ("shared", "full"))


@dataclass(frozen=True)
class QualityConfig:
    """Window and threshold settings (documented defaults; see README)."""

    window_seconds: float = 60.0
    window_bins: int = 12
    noisy_rate_hz: float = 10.0
    #: A channel with no hit is silent only once a typical channel (the median active one)
    #: would have this many hits in the window: P(0 | 5 expected) < 1 %.
    silent_min_expected_hits: float = 5.0
    adc_buckets: tuple[float, ...] = tuple(range(16, 257, 16))
    sync_offset_buckets_ticks: tuple[float, ...] = (-1000, -100, -10, -1, 0, 1, 10, 100, 1000)

    @property
    def bin_seconds(self) -> float:
        return self.window_seconds / self.window_bins


@dataclass(frozen=True)
class Snapshot:
    """Immutable view of the data quality at one moment; arrays are copies."""

    chip_keys: np.ndarray
    chip_tiles: np.ndarray
    chip_packets: np.ndarray
    chip_parity_errors: np.ndarray
    chip_fifo_flags: np.ndarray
    chip_status_counts: np.ndarray
    chip_window_packets: np.ndarray
    chip_window_parity_errors: np.ndarray
    chip_window_fifo_full: np.ndarray
    chip_rate_hz: np.ndarray
    chip_adc_mean: np.ndarray
    chip_adc_std: np.ndarray
    channel_status: np.ndarray
    channel_expected: np.ndarray
    channel_rate_hz: np.ndarray
    channel_adc_mean: np.ndarray
    channel_adc_std: np.ndarray
    channel_hits_total: np.ndarray
    io_groups: np.ndarray
    packet_type_counts: np.ndarray
    sync_counts: np.ndarray
    trigger_counts: np.ndarray
    sync_rate_hz: np.ndarray
    trigger_rate_hz: np.ndarray
    io_group_rate_hz: np.ndarray
    io_group_last_time: np.ndarray
    sync_offset_bucket_counts: np.ndarray
    sync_offset_sum_ticks: np.ndarray
    adc_bucket_counts: np.ndarray
    adc_sum: np.ndarray
    data_time: float
    covered_seconds: float
    config: QualityConfig = field(repr=False)


def _mean_std(n: np.ndarray, s: np.ndarray, ss: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation from count, sum and sum of squares (NaN where n == 0)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = s / n
        var = np.maximum(ss / n - mean * mean, 0.0)
    return mean, np.sqrt(var)


class Accumulator:
    """Owns the running per-chip, per-channel and per-io_group arrays."""

    # Grown together by _alloc_chip_arrays (rows: chips in index order).
    chip_packets: np.ndarray
    chip_parity: np.ndarray
    chip_fifo: np.ndarray
    hits_total: np.ndarray
    win_hits: np.ndarray
    win_adc: np.ndarray
    win_adc_sq: np.ndarray
    win_flags: np.ndarray
    geo_row: np.ndarray

    def __init__(self, config: QualityConfig | None = None, geometry: Geometry | None = None) -> None:
        self.config = config or QualityConfig()
        self.geometry = geometry
        self.chips = ChipIndex()
        self._capacity = 0
        nb = self.config.window_bins
        self.packet_type_counts = np.zeros((IO_GROUPS, PACKET_TYPES), np.int64)
        self.sync_counts = np.zeros((IO_GROUPS, len(SYNC_KIND_CODES)), np.int64)
        self.trigger_counts = np.zeros(IO_GROUPS, np.int64)
        self.sync_offset_counts = np.zeros((IO_GROUPS, len(self.config.sync_offset_buckets_ticks) + 1), np.int64)
        self.sync_offset_sum = np.zeros(IO_GROUPS, np.int64)
        self.adc_counts = np.zeros((IO_GROUPS, 256), np.int64)
        self.io_group_last_time = np.full(IO_GROUPS, np.nan)
        self.window_io_group = np.zeros((nb, IO_GROUPS, 2), np.int64)  # 'S' syncs, external triggers
        self.newest_bin = -1
        self.data_time = math.nan
        self.first_time = math.nan
        self.implausible_timestamps = 0
        self._alloc_chip_arrays(0)
        if geometry is not None and geometry.has_io_mapping and len(geometry.chips):
            self._register(geometry.chips)

    # -- checkpoint ---------------------------------------------------------------------
    _SCALARS = ("newest_bin", "data_time", "first_time", "implausible_timestamps")
    _GROUP_ARRAYS = (
        "packet_type_counts",
        "sync_counts",
        "trigger_counts",
        "sync_offset_counts",
        "sync_offset_sum",
        "adc_counts",
        "io_group_last_time",
    )
    _CHIP_ARRAYS = ("chip_packets", "chip_parity", "chip_fifo", "hits_total")
    _WINDOW_ARRAYS = ("win_hits", "win_adc", "win_adc_sq", "win_flags", "window_io_group")

    def export_state(self) -> dict[str, np.ndarray]:
        """Everything needed to continue exactly where this accumulator is (arrays, trimmed)."""
        n = len(self.chips)
        state = {
            "chip_keys": self.chips.keys.copy(),
            "window_shape": np.array([self.config.window_seconds, self.config.window_bins]),
        }
        state.update({name: np.asarray(getattr(self, name)) for name in self._SCALARS + self._GROUP_ARRAYS})
        state.update({name: getattr(self, name)[:n] for name in self._CHIP_ARRAYS})
        state.update(
            {
                name: getattr(self, name)[:, :n] if name.startswith("win_") else getattr(self, name)
                for name in self._WINDOW_ARRAYS
            }
        )
        return state

    def import_state(self, state: dict[str, np.ndarray]) -> bool:
        """Continue from ``export_state`` output; returns False when the window shape differs
        (counters are restored, the window starts empty)."""
        self._register(state["chip_keys"])
        rows = self.chips.lookup(*state["chip_keys"].T)
        for name in self._SCALARS:
            setattr(self, name, state[name].item())
        for name in self._GROUP_ARRAYS:
            getattr(self, name)[...] = state[name]
        for name in self._CHIP_ARRAYS:
            getattr(self, name)[rows] = state[name]
        same_window = tuple(state["window_shape"]) == (self.config.window_seconds, self.config.window_bins)
        if same_window:
            for name in self._WINDOW_ARRAYS:
                target = getattr(self, name)
                if name.startswith("win_"):
                    target[:, rows] = state[name]
                else:
                    target[...] = state[name]
        else:
            self.newest_bin = int(self._bin_of(self.data_time)) if not math.isnan(self.data_time) else -1
        return same_window

    # -- chip storage -------------------------------------------------------------------
    def _alloc_chip_arrays(self, capacity: int) -> None:
        nb, old = self.config.window_bins, self._capacity
        shapes = {
            "chip_packets": (capacity,),
            "chip_parity": (capacity,),
            "chip_fifo": (capacity, 4),
            "hits_total": (capacity, CHANNELS_PER_CHIP),
        }
        for name, shape in shapes.items():
            grown = np.zeros(shape, np.int64)
            if old:
                grown[:old] = getattr(self, name)
            setattr(self, name, grown)
        # Per-bin sums fit int32 (a bin is seconds long; 255 * hits < 2**31 up to ~1.7 MHz per
        # channel); squared ADC sums need int64. Smaller arrays: less memory, cheaper checkpoints.
        for name, width, dtype in (
            ("win_hits", CHANNELS_PER_CHIP, np.int32),
            ("win_adc", CHANNELS_PER_CHIP, np.int32),
            ("win_adc_sq", CHANNELS_PER_CHIP, np.int64),
            ("win_flags", 2, np.int32),
        ):
            grown = np.zeros((nb, capacity, width), dtype)
            if old:
                grown[:, :old] = getattr(self, name)
            setattr(self, name, grown)
        geo_rows = np.full(capacity, -1, np.int64)
        if old:
            geo_rows[:old] = self.geo_row
        self.geo_row = geo_rows
        self._capacity = capacity

    def _register(self, keys: np.ndarray) -> np.ndarray:
        rows = self.chips.add(keys)
        self._fit_capacity()
        return rows

    def _fit_capacity(self) -> None:
        n = len(self.chips)
        if n > self._capacity:
            start = self._capacity
            self._alloc_chip_arrays(max(n, 2 * self._capacity, 64))
            if self.geometry is not None:
                for row in range(start, n):
                    g, c, chip = self.chips.keys[row]
                    found = self.geometry.row_of(g, c, chip)
                    self.geo_row[row] = -1 if found is None else found

    # -- time ---------------------------------------------------------------------------
    def _window_slots(self, packets: np.ndarray, clock: DataClock, wall_now: float) -> np.ndarray:
        """Window slot of each packet (-1: outside the window or no data time yet).

        A packet's data time is that of the latest preceding plausible timestamp packet of the
        same file (``clock`` holds it across chunks); the window advances to the newest one.
        """
        ts_rows, stamps, implausible = plausible_timestamps(packets, wall_now)
        self.implausible_timestamps += implausible
        if len(ts_rows):
            groups = packets["io_group"][ts_rows]
            for group in np.unique(groups):
                newest = stamps[groups == group].max()
                self.io_group_last_time[group] = np.fmax(self.io_group_last_time[group], newest)
            self.first_time = float(np.fmin(self.first_time, stamps.min()))
            self._advance(float(np.fmax(self.data_time, stamps.max())))
        slots = forward_fill(
            ts_rows, self._slot_of(stamps), len(packets), self._slot_of(np.array([clock.last_time]))[0]
        )
        if len(ts_rows):
            clock.last_time = float(stamps[-1])
        return slots

    def _bin_of(self, times: np.ndarray | float) -> np.ndarray:
        """Window bin number of data times; the one formula for packets and for the window edge."""
        with np.errstate(invalid="ignore"):
            return np.floor(np.asarray(times, np.float64) / self.config.bin_seconds)

    def _slot_of(self, times: np.ndarray) -> np.ndarray:
        """Ring slot of each data time, -1 for times outside the window (unknown, late, ahead)."""
        bins = self._bin_of(times)
        with np.errstate(invalid="ignore"):
            inside = (bins > self.newest_bin - self.config.window_bins) & (bins <= self.newest_bin)
        return np.where(inside, np.nan_to_num(bins, nan=0).astype(np.int64) % self.config.window_bins, -1)

    def _advance(self, data_time: float) -> None:
        """Move the window forward to ``data_time``, clearing bins that fall out of it."""
        self.data_time = data_time
        newest = int(self._bin_of(data_time))
        nb = self.config.window_bins
        if newest <= self.newest_bin:
            return
        for b in range(max(self.newest_bin + 1, newest - nb + 1), newest + 1):
            slot = b % nb
            self.win_hits[slot] = 0
            self.win_adc[slot] = 0
            self.win_adc_sq[slot] = 0
            self.win_flags[slot] = 0
            self.window_io_group[slot] = 0
        self.newest_bin = newest

    # -- accumulation -------------------------------------------------------------------
    def add(self, packets: np.ndarray, clock: DataClock, wall_now: float) -> None:
        """Fold a chunk of packets into the counters and windows."""
        if len(packets) == 0:
            return
        ptype = packets["packet_type"]
        is_data = ptype == DATA
        other = np.flatnonzero(~is_data)  # data packets are counted per channel, and summed at snapshot
        type_key = packets["io_group"][other].astype(np.int64) * (PACKET_TYPES + 1) + np.minimum(
            ptype[other], PACKET_TYPES
        )
        counts = np.bincount(type_key, minlength=IO_GROUPS * (PACKET_TYPES + 1)).reshape(IO_GROUPS, -1)
        self.packet_type_counts += counts[:, :PACKET_TYPES]
        slots = self._window_slots(packets, clock, wall_now)
        data_rows = np.flatnonzero(is_data)
        record = np.dtype((np.void, packets.dtype.itemsize))  # one whole-record gather beats one per field
        data = np.ascontiguousarray(packets).view(record)[data_rows].view(packets.dtype)
        self._add_data(data, slots[data_rows])
        syncs = np.flatnonzero(ptype == SYNC)
        if len(syncs):
            self._add_syncs(packets[syncs], slots[syncs])
        triggers = np.flatnonzero(ptype == TRIGGER)
        if len(triggers):
            self._add_triggers(packets[triggers], slots[triggers])

    def _add_data(self, data: np.ndarray, slots: np.ndarray) -> None:
        """Per-channel and per-chip sums of data packets, ``slots`` being their window slots."""
        if len(data) == 0:
            return
        io_group = data["io_group"]
        rows = self.chips.rows_for(io_group, data["io_channel"], data["chip_id"])
        self._fit_capacity()
        cap, nb = self._capacity, self.config.window_bins
        n_flat = cap * CHANNELS_PER_CHIP
        channel = rows.astype(np.int64) * CHANNELS_PER_CHIP + (data["channel_id"] & 63)
        adc_code = data["dataword"]
        # Flat keys (slot + 1) * n_flat + channel: key row 0 holds packets outside the window, so
        # one bincount gives the all-time hits and every window slot's hits, without gathers.
        key = (slots + 1) * n_flat + channel
        size = (nb + 1) * n_flat
        hits = np.bincount(key, minlength=size).reshape(nb + 1, cap, -1)
        per_channel = hits.sum(axis=0)
        self.hits_total += per_channel
        self.chip_packets += per_channel.sum(axis=1)
        self.win_hits += hits[1:]
        if hits[1:].any():
            adc = adc_code.astype(np.float64)
            self.win_adc += np.bincount(key, adc, size)[n_flat:].astype(np.int64).reshape(nb, cap, -1)
            self.win_adc_sq += np.bincount(key, adc * adc, size)[n_flat:].astype(np.int64).reshape(nb, cap, -1)
        self.adc_counts += np.bincount(io_group.astype(np.int64) * 256 + adc_code, minlength=IO_GROUPS * 256).reshape(
            IO_GROUPS, 256
        )
        bad = np.flatnonzero(data["valid_parity"] == 0)
        if len(bad):
            self.chip_parity += np.bincount(rows[bad], minlength=cap)
            self._add_window_flags(rows[bad], slots[bad], 0)
        flags = data["local_fifo"] | (data["shared_fifo"] << 2)
        flagged = np.flatnonzero(flags)
        if len(flagged):
            for i, bit in enumerate((1, 2, 4, 8)):  # local half, local full, shared half, shared full
                self.chip_fifo[:, i] += np.bincount(rows[flagged[(flags[flagged] & bit) != 0]], minlength=cap)
            full = flagged[(flags[flagged] & 10) != 0]
            self._add_window_flags(rows[full], slots[full], 1)

    def _add_window_flags(self, rows: np.ndarray, slots: np.ndarray, which: int) -> None:
        """Count rare per-chip flags (0: parity error, 1: a FIFO full) into the window."""
        inside = slots >= 0
        cap = self._capacity
        counts = np.bincount(slots[inside] * cap + rows[inside], minlength=self.config.window_bins * cap)
        self.win_flags[:, :, which] += counts.reshape(self.config.window_bins, cap)

    def _add_syncs(self, syncs: np.ndarray, slots: np.ndarray) -> None:
        if len(syncs) == 0:
            return
        io_group, kind = syncs["io_group"], syncs["trigger_type"]
        for i, code in enumerate(SYNC_KIND_CODES):
            self.sync_counts[:, i] += np.bincount(io_group[kind == code], minlength=IO_GROUPS)
        is_s = kind == SYNC_KIND_CODES[0]
        offsets = syncs["timestamp"][is_s].astype(np.int64) - TICKS_PER_SYNC
        bucket = np.searchsorted(np.asarray(self.config.sync_offset_buckets_ticks), offsets, side="left")
        nbk = self.sync_offset_counts.shape[1]
        self.sync_offset_counts += np.bincount(
            io_group[is_s].astype(np.int64) * nbk + bucket, minlength=IO_GROUPS * nbk
        ).reshape(IO_GROUPS, nbk)
        self.sync_offset_sum += np.bincount(io_group[is_s], offsets, IO_GROUPS).astype(np.int64)
        s_slots = slots[is_s]
        s_groups = io_group[is_s]
        for slot in np.unique(s_slots[s_slots >= 0]):
            self.window_io_group[slot, :, 0] += np.bincount(s_groups[s_slots == slot], minlength=IO_GROUPS)

    def _add_triggers(self, triggers: np.ndarray, slots: np.ndarray) -> None:
        external = (triggers["trigger_type"] & EXTERNAL_TRIGGER_BIT) != 0
        if not external.any():
            return
        groups, t_slots = triggers["io_group"][external], slots[external]
        self.trigger_counts += np.bincount(groups, minlength=IO_GROUPS)
        for slot in np.unique(t_slots[t_slots >= 0]):
            self.window_io_group[slot, :, 1] += np.bincount(groups[t_slots == slot], minlength=IO_GROUPS)

    # -- snapshot -----------------------------------------------------------------------
    def covered_seconds(self) -> float:
        """Seconds of data time the window's contents span (at least 1 s, the timestamp resolution)."""
        if math.isnan(self.data_time):
            return self.config.window_seconds
        end = self.data_time + 1.0  # timestamp packets have one-second resolution
        window_start = (self.newest_bin - self.config.window_bins + 1) * self.config.bin_seconds
        span = end - max(window_start, self.first_time)
        return float(min(max(span, 1.0), self.config.window_seconds))

    def expected_channels(self) -> np.ndarray:
        """(chips, 64) bool: connected per the geometry, or seen with data at least once."""
        n = len(self.chips)
        expected = self.hits_total[:n] > 0
        if self.geometry is not None:
            known = self.geo_row[:n] >= 0
            expected[known] |= self.geometry.connected[self.geo_row[:n][known]]
        return expected

    def snapshot(self) -> Snapshot:
        """Copy out everything the exposition and the plots need."""
        n = len(self.chips)
        covered = self.covered_seconds()
        hits = self.win_hits[:, :n].sum(axis=0)
        adc = self.win_adc[:, :n].sum(axis=0)
        adc_sq = self.win_adc_sq[:, :n].sum(axis=0)
        channel_rate = hits / covered
        channel_mean, channel_std = _mean_std(hits, adc, adc_sq)
        status = np.full((n, CHANNELS_PER_CHIP), ChannelStatus.NONE, np.int8)
        active_rates = channel_rate[hits > 0]
        typical_hits = float(np.median(active_rates)) * covered if len(active_rates) else 0.0
        live = typical_hits >= self.config.silent_min_expected_hits
        expected = self.expected_channels()
        status[expected & live] = ChannelStatus.SILENT
        status[hits > 0] = ChannelStatus.ACTIVE
        status[channel_rate > self.config.noisy_rate_hz] = ChannelStatus.NOISY
        status_counts = np.stack([(status == s).sum(axis=1) for s in ChannelStatus.judged()], 1)
        chip_hits = hits.sum(axis=1)
        window_flags = self.win_flags[:, :n].sum(axis=0)
        chip_mean, chip_std = _mean_std(chip_hits, adc.sum(axis=1), adc_sq.sum(axis=1))
        tiles = np.full(n, -1, np.int64)
        if self.geometry is not None:
            known = self.geo_row[:n] >= 0
            tiles[known] = self.geometry.tiles[self.geo_row[:n][known]]
        window_groups = self.window_io_group.sum(axis=0) / covered
        chip_groups = self.chips.keys[:, 0].astype(np.int64)
        type_counts = self.packet_type_counts.copy()
        np.add.at(type_counts[:, DATA], chip_groups, self.chip_packets[:n])
        group_hits = np.zeros(IO_GROUPS)
        np.add.at(group_hits, chip_groups, chip_hits)
        active_groups = np.union1d(np.flatnonzero(type_counts.sum(axis=1)), chip_groups)
        edges = np.concatenate([self.config.adc_buckets, [np.inf]])
        below = np.clip(np.floor(edges), -1, 255).astype(np.int64) + 1  # values <= edge
        adc_cum = np.concatenate([np.zeros((IO_GROUPS, 1), np.int64), np.cumsum(self.adc_counts, axis=1)], axis=1)
        adc_buckets = adc_cum[:, below]
        return Snapshot(
            chip_keys=self.chips.keys.copy(),
            chip_tiles=tiles,
            chip_packets=self.chip_packets[:n].copy(),
            chip_parity_errors=self.chip_parity[:n].copy(),
            chip_fifo_flags=self.chip_fifo[:n].copy(),
            chip_status_counts=status_counts,
            chip_window_packets=chip_hits,
            chip_window_parity_errors=window_flags[:, 0],
            chip_window_fifo_full=window_flags[:, 1],
            chip_rate_hz=chip_hits / covered,
            chip_adc_mean=chip_mean,
            chip_adc_std=chip_std,
            channel_status=status,
            channel_expected=expected,
            channel_rate_hz=channel_rate,
            channel_adc_mean=channel_mean,
            channel_adc_std=channel_std,
            channel_hits_total=self.hits_total[:n].copy(),
            io_groups=active_groups.astype(np.int64),
            packet_type_counts=type_counts,
            sync_counts=self.sync_counts.copy(),
            trigger_counts=self.trigger_counts.copy(),
            sync_rate_hz=window_groups[:, 0],
            trigger_rate_hz=window_groups[:, 1],
            io_group_rate_hz=group_hits / covered,
            io_group_last_time=self.io_group_last_time.copy(),
            sync_offset_bucket_counts=np.cumsum(self.sync_offset_counts, axis=1),
            sync_offset_sum_ticks=self.sync_offset_sum.copy(),
            adc_bucket_counts=adc_buckets,
            adc_sum=(self.adc_counts * np.arange(256)).sum(axis=1),
            data_time=self.data_time,
            covered_seconds=covered,
            config=self.config,
        )
