"""Data-quality accumulation: exact counters and sliding windows in data time, all numpy.

``Accumulator.add`` takes chunks of packet records (any structured array carrying the
fields of ``packets.REQUIRED_FIELDS``) and ``Accumulator.snapshot`` returns an immutable
``Snapshot`` that the collector and the plots read without touching the live arrays.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from exporter.detector.chips import ChipIndex
from exporter.detector.geometry import CHANNELS_PER_CHIP, Geometry
from exporter.detector.runconfig import RunConfig
from exporter.quality.clock import IO_GROUPS, TOLERANCE_SECONDS, DataClock, DetectorClock, Reading
from exporter.quality.loader import KernelLoader
from exporter.quality.snapshot import Snapshot
from exporter.quality.status import ChannelStatus
from exporter.quality.verdicts import VerdictInputs, judge
from exporter.reading.decode import Messages, split_messages
from exporter.reading.packets import (
    DATA,
    DATA_TRIGGER_TYPES,
    EXTERNAL_TRIGGER_BIT,
    PACKET_DTYPE,
    PERIODIC_TRIGGER,
    REQUIRED_FIELDS,
    SELF_TRIGGER,
    SYNC,
    SYNC_KIND_CODES,
    TICKS_PER_SYNC,
    TRIGGER,
)

if TYPE_CHECKING:
    from exporter.quality.reference import Reference
    from exporter.reading.files import Chunk

PACKET_TYPES = 8
#: Window slot of data packets that are not self-triggered: counted, but they feed no rate or verdict.
NOT_SELF_TRIGGERED = -2
FIFO_FLAGS = (("local", "half"), ("local", "full"), ("shared", "half"), ("shared", "full"))
#: Accumulation engines: numba kernels (the default), or the numpy reference implementation.
COMPILED, NUMPY = "compiled", "numpy"
ENGINES = (COMPILED, NUMPY)
#: What the kernels read a chunk from: packet records or raw messages.
Source = np.ndarray | Messages
#: The kernels of this process, loaded by the first accumulator that wants them.
KERNELS = KernelLoader()
#: Packets a run counts on the numpy path before the kernels start loading (numba's import and the
#: kernels' load take about a second of a core, more than a small file's whole ingest).
COMPILE_AFTER_PACKETS = 1_000_000
LOAD_WAIT_SECONDS = 1.0
#: Stand-ins for what a chunk does not have (the kernel's arguments are arrays of fixed types):
#: the pedestal window before a run has periodic triggers, raw messages, packet records.
_NO_PEDESTAL = np.zeros((1, 1, CHANNELS_PER_CHIP, 3), np.int64)
_NO_MESSAGES = (np.zeros(0, np.uint8), np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.uint8))
_NO_RECORDS = (np.zeros((0, PACKET_DTYPE.itemsize), np.uint8), np.zeros(len(REQUIRED_FIELDS) + 1, np.int64))


@dataclass(frozen=True)
class QualityConfig:
    """Window and threshold settings (documented defaults; see README)."""

    window_seconds: float = 60.0
    window_bins: int = 12
    noisy_rate_hz: float = 10.0
    #: Detector-wide probability of at least one false verdict per evaluation (exporter/quality/verdicts.py).
    false_alarm_probability: float = 0.01
    #: ``compiled`` (numba kernels, loaded in the background; numpy until then) or ``numpy`` (the reference).
    engine: str = COMPILED
    adc_buckets: tuple[float, ...] = tuple(range(16, 257, 16))
    sync_offset_buckets_ticks: tuple[float, ...] = (-1000, -100, -10, -1, 0, 1, 10, 100, 1000)

    @property
    def bin_seconds(self) -> float:
        return self.window_seconds / self.window_bins


def prefer_finite(preferred: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    """``preferred`` where it is a number, ``fallback`` elsewhere: e.g. the periodic-trigger pedestal where
    the run has periodic triggers, the self-triggered ADC mean otherwise (``fallback`` if shapes differ)."""
    if np.shape(preferred) != np.shape(fallback):
        return fallback
    return np.where(np.isfinite(preferred), preferred, fallback)


def compiled_records(packets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Packet records as the kernel reads them: rows of bytes, and the byte offset of each of
    ``REQUIRED_FIELDS`` plus the timestamp's width; other layouts (wider or signed fields) are
    copied to ``PACKET_DTYPE`` first. One compiled signature serves every packet file format."""
    fields: dict[str, Any] = dict(packets.dtype.fields or {})

    def byte(name: str) -> bool:
        return fields[name][0].kind == "u" and fields[name][0].itemsize == 1

    usable = all(byte(n) for n in REQUIRED_FIELDS if n != "timestamp") and fields["timestamp"][0] in (
        np.dtype("<u4"),
        np.dtype("<u8"),
    )
    if not usable or not packets.flags.writeable:  # (numba compiles read-only arrays as another type)
        copy = np.zeros(len(packets), PACKET_DTYPE)
        for name in REQUIRED_FIELDS:
            copy[name] = packets[name]
        packets = copy
    fields = dict(packets.dtype.fields or {})
    offsets = [fields[name][1] for name in REQUIRED_FIELDS] + [fields["timestamp"][0].itemsize]
    rows = np.ascontiguousarray(packets).view(np.uint8).reshape(len(packets), packets.dtype.itemsize)
    return rows, np.array(offsets, np.int64)


def load_kernels(wait: float) -> bool:
    """Load (or compile) the kernels now, waiting up to ``wait`` seconds; whether they are ready."""
    KERNELS.start(_warm_up)
    return KERNELS.ready(wait)


def _warm_up() -> None:
    """Run the kernel once on a raw message and on packet records, so that numba loads or compiles it."""
    message = np.frombuffer(b"D" + (1_700_000_000).to_bytes(4, "little") + bytes(3) + b"S" + bytes(15), np.uint8)
    messages = split_messages([message], np.array([1], np.uint8))
    for source in (messages, messages.decode()):
        acc = Accumulator(QualityConfig(engine=COMPILED))
        stamps = source.timestamp_packets() if isinstance(source, Messages) else source
        acc._run_kernel(source, *acc._window_slots(stamps, DataClock(), 1_700_000_000.0))


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
    self_hits: np.ndarray
    last_hit_end: np.ndarray
    win_hits: np.ndarray
    win_adc: np.ndarray
    win_adc_sq: np.ndarray
    win_flags: np.ndarray
    geo_row: np.ndarray

    def __init__(
        self, config: QualityConfig | None = None, geometry: Geometry | None = None, run_config: RunConfig | None = None
    ) -> None:
        self.config = config or QualityConfig()
        self._counted = 0  # packets counted, until the kernels are wanted
        self._kernels_wanted = False
        self.geometry = geometry
        self.run_config = run_config or RunConfig()
        self._run_rows = 0  # chip rows whose network membership and masks are cached below
        self._in_network = np.zeros(0, bool)
        self._masked = np.zeros((0, CHANNELS_PER_CHIP), bool)
        self.trigger_type_counts = np.zeros((IO_GROUPS, len(DATA_TRIGGER_TYPES)), np.int64)
        self.window_trigger_types = np.zeros((self.config.window_bins, IO_GROUPS, len(DATA_TRIGGER_TYPES)), np.int64)
        #: (bins, chips, 64, 3): count, ADC sum, ADC sum of squares of periodic-trigger packets; made on first use.
        self.win_pedestal: np.ndarray | None = None
        self.chips = ChipIndex()
        self.clock = DetectorClock()
        self._capacity = 0
        nb = self.config.window_bins
        self.packet_type_counts = np.zeros((IO_GROUPS, PACKET_TYPES), np.int64)
        self.sync_counts = np.zeros((IO_GROUPS, len(SYNC_KIND_CODES)), np.int64)
        self.trigger_counts = np.zeros(IO_GROUPS, np.int64)
        self.sync_offset_counts = np.zeros((IO_GROUPS, len(self.config.sync_offset_buckets_ticks) + 1), np.int64)
        self.sync_offset_sum = np.zeros(IO_GROUPS, np.int64)
        self.adc_counts = np.zeros((IO_GROUPS, 256), np.int64)
        self.link_parity = np.zeros((IO_GROUPS, 256), np.int64)  # parity errors of unknown chips, per io_channel
        self.window_io_group = np.zeros((nb, IO_GROUPS, 2), np.int64)  # 'S' syncs, external triggers
        self.newest_bin = np.full(IO_GROUPS, -1, np.int64)  # each io_group's window ends with this bin
        self.window_end = np.full(IO_GROUPS, np.nan)  # data time each io_group's window ends at
        self.window_reference = np.full(IO_GROUPS, np.nan)  # the other io_groups' clock when it last advanced
        self._alloc_chip_arrays(0)
        if geometry is not None and geometry.has_io_mapping and len(geometry.chips):
            self._register(geometry.chips)
        if self.run_config.network is not None:
            self._register(np.array(sorted(self.run_config.network), np.uint8).reshape(-1, 3))

    @property
    def data_time(self) -> float:
        """Newest accepted data time over all io_groups (NaN before any)."""
        return self.clock.data_time

    # -- checkpoint ---------------------------------------------------------------------
    _GROUP_ARRAYS = (
        "packet_type_counts",
        "sync_counts",
        "trigger_counts",
        "sync_offset_counts",
        "sync_offset_sum",
        "adc_counts",
        "link_parity",
    )
    _CHIP_ARRAYS = ("chip_packets", "chip_parity", "chip_fifo", "hits_total", "self_hits", "last_hit_end")
    #: The sliding window (its arrays and where each io_group's window ends): the checkpoint writes
    #: them less often than the counters.
    WINDOW_ARRAYS = (
        "win_hits",
        "win_adc",
        "win_adc_sq",
        "win_flags",
        "window_io_group",
        "newest_bin",
        "window_end",
        "window_reference",
    )

    def export_state(self) -> dict[str, np.ndarray]:
        """Everything needed to continue exactly where this accumulator is (arrays, trimmed)."""
        n = len(self.chips)
        state = {
            "chip_keys": self.chips.keys.copy(),
            "window_shape": np.array([self.config.window_seconds, self.config.window_bins]),
            "trigger_type_counts": self.trigger_type_counts,
            "window_trigger_types": self.window_trigger_types,
            **self.clock.export_state(),
        }
        if self.win_pedestal is not None:
            state["win_pedestal"] = self.win_pedestal[:, :n]
        state.update({name: np.asarray(getattr(self, name)) for name in self._GROUP_ARRAYS})
        state.update({name: getattr(self, name)[:n] for name in self._CHIP_ARRAYS})
        state.update(
            {
                name: getattr(self, name)[:, :n] if name.startswith("win_") else getattr(self, name)
                for name in self.WINDOW_ARRAYS
            }
        )
        return state

    def import_state(self, state: dict[str, np.ndarray]) -> bool:
        """Continue from ``export_state`` output; returns False when the window cannot continue
        (other window shape, no window arrays, or a checkpoint from before the per-io_group clocks):
        counters are restored, the window starts empty."""
        self._register(state["chip_keys"])
        rows = self.chips.lookup(*state["chip_keys"].T)
        for name in self._GROUP_ARRAYS:
            if name in state:
                getattr(self, name)[...] = state[name]
        for name in self._CHIP_ARRAYS:
            getattr(self, name)[rows] = state[name]
        self.trigger_type_counts[...] = state["trigger_type_counts"]
        if "clock_head" not in state:
            return False
        self.clock.import_state(state)
        same_window = tuple(state["window_shape"]) == (self.config.window_seconds, self.config.window_bins) and all(
            name in state for name in self.WINDOW_ARRAYS
        )
        if same_window:
            for name in self.WINDOW_ARRAYS:
                target = getattr(self, name)
                if name.startswith("win_"):
                    target[:, rows] = state[name]
                else:
                    target[...] = state[name]
            if "window_trigger_types" in state:
                self.window_trigger_types[...] = state["window_trigger_types"]
            if "win_pedestal" in state:
                self._pedestal_window()[:, rows] = state["win_pedestal"]
        else:
            known = ~np.isnan(self.clock.head)
            self.window_end[known] = self.clock.head[known]
            self.newest_bin[known] = self._bin_of(self.clock.head[known]).astype(np.int64)
        return same_window

    # -- chip storage -------------------------------------------------------------------
    def _alloc_chip_arrays(self, capacity: int) -> None:
        nb, old = self.config.window_bins, self._capacity
        shapes = {
            "chip_packets": (capacity,),
            "chip_parity": (capacity,),
            "chip_fifo": (capacity, 4),
            "hits_total": (capacity, CHANNELS_PER_CHIP),
            "self_hits": (capacity, CHANNELS_PER_CHIP),
        }
        for name, shape in shapes.items():
            grown = np.zeros(shape, np.int64)
            if old:
                grown[:old] = getattr(self, name)
            setattr(self, name, grown)
        # Data time of the end of the window bin of each channel's newest hit (NaN: none yet): how
        # long a channel has been silent, over any span, at the window's bin resolution.
        last_hit_end = np.full((capacity, CHANNELS_PER_CHIP), np.nan)
        if old:
            last_hit_end[:old] = self.last_hit_end
        self.last_hit_end = last_hit_end
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
        if self.win_pedestal is not None:
            grown = np.zeros((nb, capacity, CHANNELS_PER_CHIP, 3), np.int64)
            grown[:, :old] = self.win_pedestal
            self.win_pedestal = grown
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
    def _window_slots(
        self, packets: np.ndarray, clock: DataClock, wall_now: float
    ) -> tuple[Reading, np.ndarray, np.ndarray]:
        """Read the chunk's timestamp packets and move the windows: the accepted timestamps, the window
        slot of each (-1: outside its io_group's window) and of each io_group before the chunk; a
        packet's slot is that of its io_group's latest accepted timestamp at or before it (``Reading.fill``).

        The data-time rule is ``DetectorClock``'s (quality/clock.py). Each io_group's window ends
        at its own clock, restarts where that clock stepped, and, while the io_group sends
        nothing, follows the other io_groups once they have passed both its clock and where they were
        when it last advanced (after ``TOLERANCE_SECONDS``): a stopped io_group's rates fall to zero while
        a skewed one keeps its own, and one read ahead of the others (a backlog whose chunks hold one
        io_group's data before another's) is not pushed past its own data.
        """
        head_before = self.clock.head.copy()
        reading = self.clock.read(packets, clock, wall_now)
        head = self.clock.head
        reference = self.clock.others_median()
        advanced = ~np.isnan(head) & ~(head == head_before)
        stalled = ~np.isnan(head) & ~advanced
        self.window_reference[advanced] = reference[advanced]
        fresh = stalled & np.isnan(self.window_reference)
        self.window_reference[fresh] = reference[fresh]
        behind = np.minimum(reference - self.window_reference, reference - head)
        push = np.maximum(behind - TOLERANCE_SECONDS, 0.0)
        end = np.where(stalled, head + np.nan_to_num(push), head)
        for g in reading.rebased:
            self.window_end[g] = head[g]
            self._restart(g)
        self.window_end = np.fmax(self.window_end, end)
        for g in np.flatnonzero(self._bin_of(self.window_end) > self.newest_bin).tolist():
            self._advance(g)
        slots = self._slot_of(reading.times, reading.groups)
        before = self._slot_of(reading.before, np.arange(IO_GROUPS))
        for g, index in reading.rebased.items():  # times on the clock before the step are not in the new window
            slots[:index][reading.groups[:index] == g] = -1
            before[g] = -1
        return reading, slots, before

    def _bin_of(self, times: np.ndarray | float) -> np.ndarray:
        """Window bin number of data times; the one formula for packets and for the window edge."""
        with np.errstate(invalid="ignore"):
            return np.floor(np.asarray(times, np.float64) / self.config.bin_seconds)

    def _slot_of(self, times: np.ndarray, groups: np.ndarray) -> np.ndarray:
        """Ring slot of each data time in its io_group's window, -1 outside it (unknown, late, ahead)."""
        bins = self._bin_of(times)
        newest = self.newest_bin[groups]
        with np.errstate(invalid="ignore"):
            inside = (bins > newest - self.config.window_bins) & (bins <= newest)
        return np.where(inside, np.nan_to_num(bins, nan=0).astype(np.int64) % self.config.window_bins, -1)

    def _group_rows(self, g: int) -> np.ndarray | slice:
        """Chip rows of io_group ``g`` (a slice when they are contiguous, as a geometry registers them)."""
        rows = np.flatnonzero(self.chips.keys[:, 0] == g)
        if len(rows) and rows[-1] - rows[0] + 1 == len(rows):
            return slice(int(rows[0]), int(rows[-1]) + 1)
        return rows

    def _clear(self, g: int, slots: range | list[int]) -> None:
        """Empty the window slots of io_group ``g`` (its chips and its sync/trigger counts)."""
        rows = self._group_rows(g)
        for slot in slots:
            for name in ("win_hits", "win_adc", "win_adc_sq", "win_flags"):
                getattr(self, name)[slot, rows] = 0
            self.window_io_group[slot, g] = 0
            self.window_trigger_types[slot, g] = 0
            if self.win_pedestal is not None:
                self.win_pedestal[slot, rows] = 0

    def _advance(self, g: int) -> None:
        """Move io_group ``g``'s window forward to its end, clearing bins that fall out of it."""
        newest = int(self._bin_of(self.window_end[g]))
        nb = self.config.window_bins
        if newest <= self.newest_bin[g]:
            return
        self._clear(g, [b % nb for b in range(max(int(self.newest_bin[g]) + 1, newest - nb + 1), newest + 1)])
        self.newest_bin[g] = newest

    def _restart(self, g: int) -> None:
        """Empty io_group ``g``'s window and start it again at its clock (after a clock step)."""
        self._clear(g, range(self.config.window_bins))
        self.newest_bin[g] = int(self._bin_of(self.clock.head[g]))

    # -- accumulation -------------------------------------------------------------------
    @property
    def compiled(self) -> bool:
        """Whether chunks go through the compiled kernels now (numpy until they are loaded)."""
        return self.config.engine == COMPILED and KERNELS.ready()

    def _use_kernels(self, packets: int) -> bool:
        """Whether a chunk of ``packets`` goes through the compiled kernels. They start loading in the
        background once the run has ``COMPILE_AFTER_PACKETS`` (a small file is done on the numpy path
        before numba would have been imported), and that chunk waits ``LOAD_WAIT_SECONDS`` at most
        for them (from numba's cache they load in well under a second; compiling takes longer)."""
        if self.config.engine != COMPILED:
            return False
        self._counted += packets
        if self._counted >= COMPILE_AFTER_PACKETS and not self._kernels_wanted:
            self._kernels_wanted = True
            KERNELS.start(_warm_up)
            return KERNELS.ready(LOAD_WAIT_SECONDS)
        return KERNELS.ready()

    def add_chunk(self, chunk: Chunk, wall_now: float) -> None:
        """Fold a chunk read from a file; raw messages are decoded and counted in one compiled pass."""
        raw = chunk.raw if chunk.records is None else None
        if raw is None:
            self.add(chunk.packets, chunk.cursor.clock, wall_now)
        elif self._use_kernels(raw.size_bound):
            self._count_messages(raw, chunk.cursor.clock, wall_now)
        else:  # decoded through the chunk, which keeps the packets for its other readers (once's plots)
            self._add_records(chunk.packets, chunk.cursor.clock, wall_now, compiled=False)

    def add(self, packets: np.ndarray, clock: DataClock, wall_now: float) -> None:
        """Fold a chunk of packet records into the counters and windows."""
        self._add_records(packets, clock, wall_now, self._use_kernels(len(packets)))

    def _add_records(self, packets: np.ndarray, clock: DataClock, wall_now: float, compiled: bool) -> None:
        """Move the clocks and windows over a chunk of packet records, then count it on either path."""
        if len(packets) == 0:
            return
        reading, row_slots, before = self._window_slots(packets, clock, wall_now)
        if compiled:
            self._run_kernel(packets, reading, row_slots, before)
        else:
            self._add_numpy(packets, reading.fill(packets["io_group"], row_slots, before))

    def add_messages(self, messages: Messages, clock: DataClock, wall_now: float) -> None:
        """Fold a chunk of raw PACMAN data messages: decoded and counted in one compiled pass (decoded
        to packet records first on the numpy path)."""
        if self._use_kernels(messages.size_bound):
            self._count_messages(messages, clock, wall_now)
        else:
            self._add_records(messages.decode(), clock, wall_now, compiled=False)

    def _count_messages(self, messages: Messages, clock: DataClock, wall_now: float) -> None:
        """Move the clocks and windows over raw messages (their timestamp packets), then run the kernel."""
        if len(messages.starts) == 0:
            return
        reading, row_slots, before = self._window_slots(messages.timestamp_packets(), clock, wall_now)
        self._run_kernel(messages, reading, row_slots, before)

    def _run_kernel(self, source: Source, reading: Reading, row_slots: np.ndarray, before: np.ndarray) -> None:
        """Run the compiled kernel over a chunk, registering chips and growing buffers where it stops."""
        kernels = KERNELS.kernels
        buckets = np.asarray(self.config.sync_offset_buckets_ticks, np.float64)
        deferred = np.zeros((64, kernels.DEFERRED_COLUMNS), np.int64)
        pos = np.zeros(5, np.int64)
        if isinstance(source, Messages):
            pos[1] = -1  # the first message's timestamp packet comes first
            raw, records = (source.buffer, source.starts, source.words, source.io_groups), _NO_RECORDS
        else:
            raw, records = _NO_MESSAGES, compiled_records(source)
        cur = before.astype(np.int64)
        rows, slots, groups = reading.rows.astype(np.int64), row_slots.astype(np.int64), reading.groups.astype(np.uint8)
        registered_at = -1
        while True:
            blocks, table = self.chips.tables()
            pedestal = self.win_pedestal if self.win_pedestal is not None else _NO_PEDESTAL
            hits = np.zeros((self.config.window_bins + 2, self._capacity, CHANNELS_PER_CHIP, 3), np.int32)
            touched = np.zeros(len(hits), bool)
            status = kernels.count_chunk(
                kernels.state_arrays(self, pedestal, hits, touched), blocks, table, buckets,
                self.win_pedestal is not None, deferred, pos, cur, rows, slots, groups, *records, *raw,
            )  # fmt: skip
            self._fold_hits(hits, touched)
            if status == kernels.OK:
                break
            if status == kernels.NEED_PEDESTAL:
                self._pedestal_window()
            elif status == kernels.NEED_SPACE:
                deferred = np.concatenate([deferred, np.zeros_like(deferred)])
            elif status == kernels.NEED_CHIP:  # register the new chips of the rest of the chunk, as numpy does
                if pos[0] == registered_at:
                    raise RuntimeError(f"compiled ingest: packet {pos[0]} needs a chip registration did not make")
                registered_at = int(pos[0])
                rest = source.since(int(pos[0])).decode() if isinstance(source, Messages) else source[int(pos[0]) :]
                data = rest[(rest["packet_type"] == DATA) & (rest["valid_parity"] != 0)]
                self._register(np.stack([data["io_group"], data["io_channel"], data["chip_id"]], axis=1))
            # NEED_FOLD: ``hits`` was folded above; the next round counts into a fresh one
        if pos[3]:  # parity errors whose chip was unknown when the kernel met them
            self._add_parity_errors(*deferred[: pos[3]].T)
        if isinstance(source, Messages):
            source.count_unknown_words(int(pos[4]))

    def _fold_hits(self, hits: np.ndarray, touched: np.ndarray) -> None:
        """Add the kernel's counts of clean data packets to the counters and windows (``fold_hits``)."""
        if not touched.any():
            return
        cap = hits.shape[1]
        row_groups = np.zeros(cap, np.int64)
        row_groups[: len(self.chips)] = self.chips.keys[:, 0]
        KERNELS.kernels.fold_hits(
            hits, touched, row_groups, self._slot_ends(), self.hits_total, self.self_hits, self.chip_packets, self.win_hits,
            self.win_adc, self.win_adc_sq, self.last_hit_end,
        )  # fmt: skip

    def _add_numpy(self, packets: np.ndarray, slots: np.ndarray) -> None:
        """The reference implementation of ``add`` (the compiled kernels do the same, packet for packet)."""
        ptype = packets["packet_type"]
        is_data = ptype == DATA
        other = np.flatnonzero(~is_data)  # data packets are counted per chip (and per link), summed at snapshot
        type_key = packets["io_group"][other].astype(np.int64) * (PACKET_TYPES + 1) + np.minimum(
            ptype[other], PACKET_TYPES
        )
        counts = np.bincount(type_key, minlength=IO_GROUPS * (PACKET_TYPES + 1)).reshape(IO_GROUPS, -1)
        self.packet_type_counts += counts[:, :PACKET_TYPES]
        data_rows = np.flatnonzero(is_data)
        record = np.dtype((np.void, packets.dtype.itemsize))  # one whole-record gather beats one per field
        data = np.ascontiguousarray(packets).view(record)[data_rows].view(packets.dtype)
        valid = data["valid_parity"] != 0
        # chips of clean packets, registered first: a parity error may have corrupted any field, so it
        # never creates a chip, but it counts on one that this chunk's clean packets show to exist
        rows = np.full(len(data), -1, np.int64)
        rows[valid] = self.chips.rows_for(data["io_group"][valid], data["io_channel"][valid], data["chip_id"][valid])
        self._fit_capacity()
        data_slots = self._rate_slots(data, slots[data_rows], rows, valid)
        flags = data["local_fifo"] | (data["shared_fifo"] << 2)
        if not valid.all():
            bad = ~valid
            self._add_parity_errors(
                data["io_group"][bad], data["io_channel"][bad], data["chip_id"][bad], flags[bad], data_slots[bad]
            )
            self._add_data(data[valid], data_slots[valid], rows[valid], flags[valid])
        else:
            self._add_data(data, data_slots, rows, flags)
        syncs = np.flatnonzero(ptype == SYNC)
        if len(syncs):
            self._add_syncs(packets[syncs], slots[syncs])
        triggers = np.flatnonzero(ptype == TRIGGER)
        if len(triggers):
            self._add_triggers(packets[triggers], slots[triggers])

    def _add_parity_errors(
        self, io_group: np.ndarray, io_channel: np.ndarray, chip_id: np.ndarray, flags: np.ndarray, slots: np.ndarray
    ) -> None:
        """Count data packets with a parity error: on their chip if it is known (geometry or valid
        packets, this chunk's included), else on their io_group and io_channel; they create no chip."""
        rows = self.chips.lookup(io_group.astype(np.uint8), io_channel.astype(np.uint8), chip_id.astype(np.uint8))
        known = rows >= 0
        if known.any():
            cap = self._capacity
            counted = np.bincount(rows[known], minlength=cap)
            self.chip_parity += counted
            self.chip_packets += counted
            self._add_window_flags(rows[known], slots[known], 0)
            self._count_fifo_flags(rows[known], flags[known])
        unknown = ~known
        if unknown.any():
            key = io_group[unknown].astype(np.int64) * 256 + io_channel[unknown]
            self.link_parity += np.bincount(key, minlength=IO_GROUPS * 256).reshape(IO_GROUPS, 256)

    def _add_data(self, data: np.ndarray, slots: np.ndarray, rows: np.ndarray, flags: np.ndarray) -> None:
        """Per-channel and per-chip sums of valid data packets (window ``slots``, chip ``rows``, FIFO ``flags``)."""
        if len(data) == 0:
            return
        io_group = data["io_group"]
        cap, nb = self._capacity, self.config.window_bins
        n_flat = cap * CHANNELS_PER_CHIP
        channel = rows.astype(np.int64) * CHANNELS_PER_CHIP + (data["channel_id"] & 63)
        adc_code = data["dataword"]
        # Flat keys (slot + 2) * n_flat + channel: key row 0 holds packets that are not self-triggered,
        # row 1 self-triggered ones outside the window, so one bincount gives the all-time hits, the
        # self-triggered ones and every window slot's hits, without gathers.
        key = (slots + 2) * n_flat + channel
        size = (nb + 2) * n_flat
        hits = np.bincount(key, minlength=size).reshape(nb + 2, cap, -1)
        per_channel = hits.sum(axis=0)
        self.hits_total += per_channel
        self.self_hits += per_channel - hits[0]
        self.chip_packets += per_channel.sum(axis=1)
        window = hits[2:]
        self.win_hits += window
        self._note_last_hits(window)
        if window.any():
            adc = adc_code.astype(np.float64)
            self.win_adc += np.bincount(key, adc, size)[2 * n_flat :].astype(np.int64).reshape(nb, cap, -1)
            self.win_adc_sq += np.bincount(key, adc * adc, size)[2 * n_flat :].astype(np.int64).reshape(nb, cap, -1)
        self.adc_counts += np.bincount(io_group.astype(np.int64) * 256 + adc_code, minlength=IO_GROUPS * 256).reshape(
            IO_GROUPS, 256
        )
        flagged = self._count_fifo_flags(rows, flags)
        if len(flagged):
            full = flagged[(flags[flagged] & 10) != 0]
            self._add_window_flags(rows[full], slots[full], 1)

    def _count_fifo_flags(self, rows: np.ndarray, flags: np.ndarray) -> np.ndarray:
        """Count FIFO flags (bits: local half, local full, shared half, shared full) per chip; return the flagged indices."""
        flagged = np.flatnonzero(flags)
        for i, bit in enumerate((1, 2, 4, 8)):
            if len(flagged):
                self.chip_fifo[:, i] += np.bincount(
                    rows[flagged[(flags[flagged] & bit) != 0]], minlength=self._capacity
                )
        return flagged

    def _slot_ends(self) -> np.ndarray:
        """(256, window bins) float: the data time each io_group's window slot ends at (a hit's last-hit time)."""
        nb, newest = self.config.window_bins, self.newest_bin[:, None]
        return ((newest - (newest - np.arange(nb)) % nb + 1) * self.config.bin_seconds).astype(np.float64)

    def _note_last_hits(self, hits: np.ndarray) -> None:
        """Move each channel's last-hit time to the end of the newest window bin it has hits in.

        ``hits`` is (slots, chip rows, 64); each chip's ring slots belong to its io_group's window.
        """
        nb, n = self.config.window_bins, len(self.chips)
        ends = self._slot_ends()[self.chips.keys[:, 0].astype(np.int64)]
        last = self.last_hit_end[:n]
        for slot in np.flatnonzero(hits[:, :n].reshape(nb, -1).any(axis=1)).tolist():
            end = ends[:, slot]
            hit = hits[slot, :n] > 0
            last[hit] = np.fmax(last[hit], np.broadcast_to(end[:, None], hit.shape)[hit])

    def _rate_slots(self, data: np.ndarray, slots: np.ndarray, rows: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """Count the data packets that are not self-triggered by trigger type, fold clean periodic ones
        (chip ``rows``) into the pedestal window, and return the window slots of the packets that feed rates and channel statuses:
        the self-triggered ones (-1 for the rest).

        External, cross and periodic triggers make every enabled channel fire whatever its health; they
        are still counted (all-time counters, ADC histogram), but they must not make a dead channel active
        or a healthy one noisy. Self-triggered counts are the remainder, taken at snapshot time.
        """
        other = np.flatnonzero(data["trigger_type"] & 3)
        if len(other) == 0:  # a self-triggered run: nothing to split
            return slots
        trigger = (data["trigger_type"][other] & 3).astype(np.int64)
        groups = data["io_group"][other].astype(np.int64) * len(DATA_TRIGGER_TYPES) + trigger
        size = IO_GROUPS * len(DATA_TRIGGER_TYPES)
        self.trigger_type_counts += np.bincount(groups, minlength=size).reshape(IO_GROUPS, -1)
        other_slots = slots[other]
        inside = other_slots >= 0
        self.window_trigger_types += np.bincount(
            other_slots[inside] * size + groups[inside], minlength=self.config.window_bins * size
        ).reshape(self.window_trigger_types.shape)
        periodic = other[(trigger == PERIODIC_TRIGGER) & valid[other]]
        if len(periodic):
            self._add_pedestals(data[periodic], slots[periodic], rows[periodic])
        rate_slots = slots.copy()
        rate_slots[other] = NOT_SELF_TRIGGERED
        return rate_slots

    def _pedestal_window(self) -> np.ndarray:
        """The periodic-trigger window, made on first use (runs without periodic triggers never pay for it)."""
        if self.win_pedestal is None:
            self.win_pedestal = np.zeros((self.config.window_bins, self._capacity, CHANNELS_PER_CHIP, 3), np.int64)
        return self.win_pedestal

    def _add_pedestals(self, data: np.ndarray, slots: np.ndarray, rows: np.ndarray) -> None:
        """Count, ADC sum and ADC sum of squares of periodic-trigger packets, per channel and window slot."""
        if not (slots >= 0).any():  # none in the window: no window made for them (as the kernel does)
            return
        window = self._pedestal_window()
        inside = np.flatnonzero(slots >= 0)
        flat = window.shape[1] * CHANNELS_PER_CHIP
        key = (
            slots[inside] * flat + rows[inside].astype(np.int64) * CHANNELS_PER_CHIP + (data["channel_id"][inside] & 63)
        )
        adc = data["dataword"][inside].astype(np.float64)
        size = self.config.window_bins * flat
        for i, weights in enumerate((None, adc, adc * adc)):
            window[..., i] += np.bincount(key, weights, size).astype(np.int64).reshape(window.shape[:3])

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
    def span_seconds(self) -> np.ndarray:
        """(256,) seconds of data time each io_group's window spans: from the later of its window
        start and its last clock step to its newest time + 1 s (timestamps have one-second
        resolution), between 1 s and the window; the whole window for io_groups without a time."""
        window, nb = self.config.window_seconds, self.config.window_bins
        end = self.window_end
        window_start = (self.newest_bin - nb + 1) * self.config.bin_seconds
        span = end + 1.0 - np.fmax(window_start, self.clock.span_start)
        return np.where(np.isnan(end), window, np.clip(span, 1.0, window))

    def covered_seconds(self) -> float:
        """Seconds of data time the windows span: the longest io_group span (the window before any data)."""
        known = ~np.isnan(self.window_end)
        return float(self.span_seconds()[known].max()) if known.any() else self.config.window_seconds

    def chip_clock(self) -> tuple[np.ndarray, np.ndarray]:
        """Per chip row: its io_group's data time now (end of the newest second) and how long that
        io_group has run without a clock step; the verdicts judge silences and learnt rates over these."""
        groups = self.chips.keys[:, 0].astype(np.int64)
        now = self.window_end[groups] + 1.0  # timestamp packets have one-second resolution
        run = np.fmax(now - self.clock.span_start[groups], 1.0)
        return now, np.where(np.isnan(now), 0.0, run)

    def set_run_config(self, run_config: RunConfig) -> None:
        """Judge from now on with this run configuration (networks, masks), e.g. one read from a file."""
        self.run_config = run_config
        self._run_rows = 0
        if run_config.network is not None:
            self._register(np.array(sorted(run_config.network), np.uint8).reshape(-1, 3))

    def _run_config_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """Per chip row: in a network (n,) and masked channels (n, 64), cached as rows appear."""
        n = len(self.chips)
        if n > self._run_rows:
            keys = self.chips.keys[self._run_rows : n]
            self._in_network = np.concatenate([self._in_network[: self._run_rows], self.run_config.in_network(keys)])
            self._masked = np.concatenate([self._masked[: self._run_rows], self.run_config.masked_channels(keys)])
            self._run_rows = n
        return self._in_network[:n], self._masked[:n]

    def expected_channels(self) -> np.ndarray:
        """(chips, 64) bool: connected per the geometry, or seen with data at least once; only chips in the
        run's networks when it has any."""
        n = len(self.chips)
        expected = self.hits_total[:n] > 0
        if self.geometry is not None:
            known = self.geo_row[:n] >= 0
            expected[known] |= self.geometry.connected[self.geo_row[:n][known]]
        expected &= self._run_config_rows()[0][:, None]
        return expected

    def snapshot(self, reference: Reference | None = None) -> Snapshot:
        """Copy out everything the exposition and the plots need; verdicts against ``reference`` when given."""
        n = len(self.chips)
        covered = self.covered_seconds()
        group_span = self.span_seconds()
        chip_groups = self.chips.keys[:, 0].astype(np.int64)
        chip_span = group_span[chip_groups]
        hits = self.win_hits[:, :n].sum(axis=0)
        adc = self.win_adc[:, :n].sum(axis=0)
        adc_sq = self.win_adc_sq[:, :n].sum(axis=0)
        channel_rate = hits / chip_span[:, None]
        channel_mean, channel_std = _mean_std(hits, adc, adc_sq)
        tiles = np.full(n, -1, np.int64)
        in_geometry = np.ones(n, bool)
        if self.geometry is not None:
            known = self.geo_row[:n] >= 0
            tiles[known] = self.geometry.tiles[self.geo_row[:n][known]]
            if self.geometry.has_io_mapping:
                in_geometry = known
        now, run = self.chip_clock()
        last_hit = self.last_hit_end[:n]
        # a silence is judged since the channel's last hit, at most over the span judged (since the last clock step)
        since = np.fmax(last_hit, (now - run)[:, None])
        expected = self.expected_channels()
        chip_judged, masked = self._run_config_rows()
        masked = masked & expected
        verdicts = judge(
            VerdictInputs(
                window_hits=hits,
                hits_total=self.self_hits[:n],
                silence_seconds=np.nan_to_num(np.maximum(now[:, None] - since, 0.0)),
                window_seconds=chip_span,
                run_seconds=run,
                expected=expected & ~masked,  # masked channels and chips in no network get no verdict
                # occupancy groups: the tile, else (no geometry) the io_group
                groups=np.where(tiles >= 0, tiles, -1 - chip_groups),
                reference_rate_hz=None if reference is None else reference.aligned_rates(self.chips.keys),
            ),
            self.config.false_alarm_probability,
            self.config.noisy_rate_hz,
        )
        status = verdicts.channel_status
        status[masked] = ChannelStatus.MASKED
        masked_active = (masked & (hits > 0)).sum(axis=1)
        status_counts = np.stack([(status == s).sum(axis=1) for s in ChannelStatus.judged()], 1)
        chip_hits = hits.sum(axis=1)
        window_flags = self.win_flags[:, :n].sum(axis=0)
        chip_mean, chip_std = _mean_std(chip_hits, adc.sum(axis=1), adc_sq.sum(axis=1))
        window_groups = self.window_io_group.sum(axis=0) / group_span[:, None]
        type_counts = self.packet_type_counts.copy()
        np.add.at(type_counts[:, DATA], chip_groups, self.chip_packets[:n])
        type_counts[:, DATA] += self.link_parity.sum(axis=1)
        group_hits = np.zeros(IO_GROUPS)
        np.add.at(group_hits, chip_groups, chip_hits)
        active_groups = np.union1d(np.flatnonzero(type_counts.sum(axis=1)), chip_groups)
        edges = np.concatenate([self.config.adc_buckets, [np.inf]])
        below = np.clip(np.floor(edges), -1, 255).astype(np.int64) + 1  # values <= edge
        adc_cum = np.concatenate([np.zeros((IO_GROUPS, 1), np.int64), np.cumsum(self.adc_counts, axis=1)], axis=1)
        adc_buckets = adc_cum[:, below]
        # the arrays count the other trigger types; self-triggered packets are the rest of the data packets
        trigger_counts = self.trigger_type_counts.copy()
        trigger_counts[:, SELF_TRIGGER] = type_counts[:, DATA] - trigger_counts.sum(axis=1)
        trigger_rates = self.window_trigger_types.sum(axis=0) / group_span[:, None]
        trigger_rates[:, SELF_TRIGGER] = group_hits / group_span
        pedestal = (
            self.win_pedestal[:, :n].sum(axis=0)
            if self.win_pedestal is not None
            else np.zeros((n, CHANNELS_PER_CHIP, 3), np.int64)
        )
        channel_ped_mean, channel_ped_std = _mean_std(pedestal[..., 0], pedestal[..., 1], pedestal[..., 2])
        chip_ped = pedestal.sum(axis=1)
        chip_ped_mean, chip_ped_std = _mean_std(chip_ped[:, 0], chip_ped[:, 1], chip_ped[:, 2])
        return Snapshot(
            chip_keys=self.chips.keys.copy(),
            chip_tiles=tiles,
            chip_expected=in_geometry,
            chip_span_seconds=chip_span,
            chip_packets=self.chip_packets[:n].copy(),
            chip_parity_errors=self.chip_parity[:n].copy(),
            link_parity_errors=self.link_parity.copy(),
            chip_fifo_flags=self.chip_fifo[:n].copy(),
            chip_status_counts=status_counts,
            chip_window_packets=chip_hits,
            chip_window_parity_errors=window_flags[:, 0],
            chip_window_fifo_full=window_flags[:, 1],
            chip_rate_hz=chip_hits / chip_span,
            chip_expected_hits=verdicts.chip_expected_hits,
            chip_dead=verdicts.chip_dead,
            chip_unknown=verdicts.chip_unknown,
            chip_adc_mean=chip_mean,
            chip_adc_std=chip_std,
            channel_status=status,
            channel_expected=expected,
            channel_rate_hz=channel_rate,
            channel_expected_hz=verdicts.channel_expected_hz,
            channel_adc_mean=channel_mean,
            channel_adc_std=channel_std,
            channel_hits_total=self.hits_total[:n].copy(),
            io_groups=active_groups.astype(np.int64),
            packet_type_counts=type_counts,
            sync_counts=self.sync_counts.copy(),
            trigger_counts=self.trigger_counts.copy(),
            sync_rate_hz=window_groups[:, 0],
            trigger_rate_hz=window_groups[:, 1],
            io_group_rate_hz=group_hits / group_span,
            io_group_last_time=self.clock.head.copy(),
            io_group_span_seconds=group_span,
            io_group_clock_offset=self.clock.offsets(),
            sync_offset_bucket_counts=np.cumsum(self.sync_offset_counts, axis=1),
            sync_offset_sum_ticks=self.sync_offset_sum.copy(),
            adc_bucket_counts=adc_buckets,
            adc_sum=(self.adc_counts * np.arange(256)).sum(axis=1),
            data_time=self.data_time,
            covered_seconds=covered,
            silent_channel_hits=verdicts.silent_channel_hits,
            dead_chip_hits=verdicts.dead_chip_hits,
            config=self.config,
            chip_judged=chip_judged.copy(),
            chip_masked_active=masked_active,
            trigger_type_counts=trigger_counts,
            trigger_type_rate_hz=trigger_rates,
            chip_periodic_rate_hz=chip_ped[:, 0] / chip_span,
            chip_pedestal_mean=chip_ped_mean,
            chip_pedestal_std=chip_ped_std,
            channel_pedestal_mean=channel_ped_mean,
            channel_pedestal_std=channel_ped_std,
            channel_periodic_hits=pedestal[..., 0].copy(),
        )
