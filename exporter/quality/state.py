"""The accumulator's state, declared once: every array it counts into, in one table (``FIELDS``).

Allocation, growth as chips appear, clearing of window slots, the checkpoint's arrays (saved and
restored) and the kernels' argument lists are all derived from the table, so a new per-packet
quantity is one ``Field`` here, its counting in ``engine.py`` (numpy) and ``compiled.py`` (numba),
and its summary in ``summary.py``; ``tests/test_state.py`` fails until they agree.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from larpix_dqm.exporter.detector.chips import ChipIndex
from larpix_dqm.exporter.detector.geometry import CHANNELS_PER_CHIP
from larpix_dqm.exporter.quality.clock import DetectorClock
from larpix_dqm.exporter.quality.config import QualityConfig
from larpix_dqm.exporter.quality.slots import (
    CHANNEL_DTYPE,
    COLUMNS,
    DENSE_NAMES,
    DTYPES,
    Piece,
    SlotSums,
    empty_piece,
    is_slot_name,
    slot_names,
)
from larpix_dqm.exporter.quality.triggers import DELAY_BINS, HITS_EDGES, TRIGGER_BITS, TriggerWindows
from larpix_dqm.exporter.reading.packets import DATA_TRIGGER_TYPES, IO_GROUPS, SYNC_KIND_CODES

PACKET_TYPES = 8
#: Hits of a channel at most this many 10 MHz ticks after its arrival's first hit are one arrival (1 ms).
MERGE_TICKS = 10_000
#: ``arrival_start`` of a channel without an arrival yet: so far back that any hit starts one.
NO_ARRIVAL = -(2**62)

# -- scopes: the leading axes of a field ---------------------------------------------------------
#: (256, ...): one row per io_group.
IO_GROUP = "io_group"
#: (chips, ...): one row per chip, grown as chips appear.
CHIP = "chip"
#: (window bins, 256, ...): one io_group row per window slot.
SLOT_IO_GROUP = "slot_io_group"
#: (window bins, chips, ...): one chip row per window slot.
SLOT_CHIP = "slot_chip"
# -- checkpoint files ----------------------------------------------------------------------------
#: Written with every checkpoint.
COUNTERS = "counters"
#: Written to the window file, less often than the counters (``runtime/checkpoint.py``).
WINDOW = "window"
#: What evaluations learnt (the sequential tests, the learnt rates): written to the window file with the window
#: (every poll's checkpoint is left with a third of its bytes), restored whenever found, whatever the window;
#: after a crash it catches up with the counters at the next evaluation, the data counted since its write taken
#: in one step.
LEARNING = "learning"
# -- the kernels counting into a field (``compiled.py``) -------------------------------------------
#: ``count_chunk``: every packet.
COUNT = "count"
#: ``fold_hits``: the clean data packets ``count_chunk`` gathered.
FOLD = "fold"
#: A trailing axis as long as the sync-offset histogram (the configured buckets + 1).
SYNC_BUCKETS = -1


@dataclass(frozen=True)
class Field:
    """One array of the state: its scope (leading axes), trailing axes, dtype, initial value, the
    checkpoint file it is saved in (None: derived, not saved) and the kernels that count into it."""

    name: str
    scope: str
    tail: tuple[int, ...]
    dtype: type = np.int64
    fill: float = 0
    checkpoint: str | None = COUNTERS
    kernels: tuple[str, ...] = ()
    #: May be missing from a checkpoint (added after the first checkpoint version): restored as empty.
    optional: bool = False
    #: Made on first use (runs without its packets never pay for it); until then absent.
    lazy: bool = False
    #: Missing from a checkpoint (added after it was written): restored as a copy of this field instead.
    restore_from: str | None = None
    #: Counted since its io_group's run started: emptied for the io_group's chips at a run boundary.
    per_run: bool = False
    #: The slots' sum (``slots.COLUMNS``) this one is the sum of over the window's slots, kept as the slots are
    #: counted into and cleared, so a summary reads one array, not every slot; rebuilt from the slots on restore.
    sums: str | None = None

    @property
    def per_chip(self) -> bool:
        return self.scope in (CHIP, SLOT_CHIP)

    @property
    def per_slot(self) -> bool:
        return self.scope in (SLOT_IO_GROUP, SLOT_CHIP)

    @property
    def windowed(self) -> bool:
        """Part of the sliding window: restored only when the window continues."""
        return self.per_slot or self.checkpoint == WINDOW or self.sums is not None


FIELDS: tuple[Field, ...] = (
    # all-time counters per io_group
    Field("packet_type_counts", IO_GROUP, (PACKET_TYPES,), kernels=(COUNT,), optional=True),  # but data packets
    Field("sync_counts", IO_GROUP, (len(SYNC_KIND_CODES),), kernels=(COUNT,), optional=True),  # 'S', 'H', 'C'
    Field("trigger_counts", IO_GROUP, (), kernels=(COUNT,), optional=True),  # external trigger packets
    Field("sync_offset_counts", IO_GROUP, (SYNC_BUCKETS,), kernels=(COUNT,), optional=True),  # 'S' offset histogram
    Field("sync_offset_sum", IO_GROUP, (), kernels=(COUNT,), optional=True),  # ticks
    Field("adc_counts", IO_GROUP, (256,), kernels=(COUNT,), optional=True),  # clean data packets by dataword
    Field("link_parity", IO_GROUP, (256,), kernels=(COUNT,), optional=True),  # parity errors of unknown chips
    Field("trigger_type_counts", IO_GROUP, (len(DATA_TRIGGER_TYPES),), kernels=(COUNT,)),  # but self-triggered
    # packets of io_groups another shard serves (``QualityConfig.io_groups``), dropped before counting
    Field("foreign_packets", IO_GROUP, (), optional=True),
    # all-time counters per chip
    Field("chip_packets", CHIP, (), kernels=(COUNT, FOLD)),  # data packets, parity errors included
    Field("chip_parity", CHIP, (), kernels=(COUNT,)),
    Field("chip_fifo", CHIP, (4,), kernels=(COUNT,)),  # local half, local full, shared half, shared full
    Field("hits_total", CHIP, (CHANNELS_PER_CHIP,), kernels=(FOLD,)),  # clean data packets
    # the self-triggered ones since the run started (the learnt rates)
    Field("self_hits", CHIP, (CHANNELS_PER_CHIP,), kernels=(FOLD,), per_run=True),
    # live time (``dead_seconds``) of the end of the window bin of each channel's newest hit (NaN: none
    # yet), from every packet whatever the chunk's span: how long a channel has been silent, over any span
    Field("last_hit_end", CHIP, (CHANNELS_PER_CHIP,), np.float64, np.nan, kernels=(COUNT, FOLD)),
    # live time per io_group: its data time minus the gaps in its data (``window.DEAD_GAP_SECONDS``), the
    # time its windows, silences and learnt rates run on; where it started and where its run started
    Field("dead_seconds", IO_GROUP, (), np.float64, optional=True),
    Field("live_start", IO_GROUP, (), np.float64, np.nan, checkpoint=WINDOW, optional=True),
    Field("run_start", IO_GROUP, (), np.float64, np.nan, optional=True),
    # the sliding window, one slot per bin (its per-channel sums: ``State.slot_sums``, ``slots.py``)
    Field("window_io_group", SLOT_IO_GROUP, (2,), checkpoint=WINDOW, kernels=(COUNT,)),  # 'S' syncs, ext. triggers
    Field("window_trigger_types", SLOT_IO_GROUP, (len(DATA_TRIGGER_TYPES),), kernels=(COUNT,), optional=True),
    Field("win_flags", SLOT_CHIP, (2,), np.int32, checkpoint=WINDOW, kernels=(COUNT,)),  # parity, FIFO full
    # periodic-trigger packets: count, ADC sum, ADC sum of squares
    Field("win_pedestal", SLOT_CHIP, (CHANNELS_PER_CHIP, 3), kernels=(COUNT,), optional=True, lazy=True),
    # where each io_group's window ends: its newest bin, its data time, the others' clock when it last advanced
    Field("newest_bin", IO_GROUP, (), fill=-1, checkpoint=WINDOW),
    Field("window_end", IO_GROUP, (), np.float64, np.nan, checkpoint=WINDOW),
    Field("window_reference", IO_GROUP, (), np.float64, np.nan, checkpoint=WINDOW),
    # independent arrivals: a channel's self-triggered hits at most MERGE_TICKS after the first hit of its
    # current arrival are that arrival (a steep track re-triggers a pixel ~100 times in 1 ms); the
    # verdicts count arrivals, as independent as Poisson's model wants them. The data second of each
    # io_group's latest timestamp packet (-1 before any), and the time (second x TICKS_PER_SYNC + tick)
    # of each channel's current arrival's first hit:
    Field("arrival_second", IO_GROUP, (), fill=-1, kernels=(COUNT,), optional=True),
    Field("arrival_start", CHIP, (CHANNELS_PER_CHIP,), fill=NO_ARRIVAL, kernels=(COUNT,), optional=True),
    Field("arrivals_total", CHIP, (CHANNELS_PER_CHIP,), kernels=(FOLD,), per_run=True, restore_from="self_hits"),
    # the window's sums over its slots per channel (derived, not checkpointed): what the summary reads
    Field("window_hits", CHIP, (CHANNELS_PER_CHIP,), checkpoint=None, kernels=(FOLD,), sums="hits"),
    Field("window_adc", CHIP, (CHANNELS_PER_CHIP,), checkpoint=None, kernels=(FOLD,), sums="adc"),
    Field("window_adc_sq", CHIP, (CHANNELS_PER_CHIP,), checkpoint=None, kernels=(FOLD,), sums="adc_sq"),
    Field("window_arrivals", CHIP, (CHANNELS_PER_CHIP,), checkpoint=None, kernels=(FOLD,), sums="arrivals"),
    # the sequential inefficiency test (``verdicts.advance_cusum``), advanced at each evaluation from the
    # arrivals and live time since the last: its CUSUM per channel, the arrivals_total it has seen, the
    # arrivals and occupancy-weighted live seconds learnt while the channel was good, and the live time
    # of the chip's last evaluation (NaN: none yet this run; an older checkpoint starts it there)
    Field("cusum", CHIP, (CHANNELS_PER_CHIP,), np.float64, checkpoint=LEARNING, optional=True, per_run=True),
    Field("cusum_seen", CHIP, (CHANNELS_PER_CHIP,), checkpoint=LEARNING, optional=True, per_run=True),
    Field("cusum_good", CHIP, (CHANNELS_PER_CHIP, 4), np.float64, checkpoint=LEARNING, optional=True, per_run=True),
    Field("cusum_time", CHIP, (), np.float64, np.nan, checkpoint=LEARNING, optional=True, per_run=True),
    # the learnt rates, from data judged good only (``summary.learn``): per channel, the arrivals and live
    # seconds of the spans between evaluations in which its chip's rate checks were ok or unknown
    # (``rates_good``, kept by ``Accumulator.note_rates``) and it was neither silent, inefficient nor noisy;
    # the arrivals_total and live time of the chip's last evaluation (NaN: none yet this run, whose first
    # learns everything since the run started)
    Field("learnt", CHIP, (CHANNELS_PER_CHIP, 2), np.float64, checkpoint=LEARNING, optional=True, per_run=True),
    Field("learnt_seen", CHIP, (CHANNELS_PER_CHIP,), checkpoint=LEARNING, optional=True, per_run=True),
    Field("learnt_time", CHIP, (), np.float64, np.nan, checkpoint=LEARNING, optional=True, per_run=True),
    Field("rates_good", CHIP, (), np.int8, 1, checkpoint=LEARNING, optional=True, per_run=True),
    # the trigger-correlated view (``triggers.py``, counted by both engines through ``TriggerWindows``):
    # trigger words per bit of their trigger_type; per io_group of the trigger, closed external triggers by
    # hits in their drift window (``HITS_EDGES`` buckets) and those hits' sum; per io_group of the hit,
    # trigger-to-hit delays and their sum (ticks); per io_group, data time inside a drift window (ticks)
    # and seconds with data; per chip, self-triggered hits inside a drift window and outside
    Field("trigger_words", IO_GROUP, (TRIGGER_BITS,), optional=True),
    Field("beam_trigger_hits", IO_GROUP, (len(HITS_EDGES) + 1,), optional=True),
    Field("beam_trigger_hit_sum", IO_GROUP, (), optional=True),
    Field("beam_delays", IO_GROUP, (DELAY_BINS,), optional=True),
    Field("beam_delay_sum", IO_GROUP, (), optional=True),  # ticks
    Field("beam_window_ticks", IO_GROUP, (), optional=True),
    Field("beam_live_seconds", IO_GROUP, (), optional=True),
    Field("beam_chip_hits", CHIP, (2,), optional=True),
)
BY_NAME = {f.name: f for f in FIELDS}
#: The window's sums over its slots (``Field.sums``).
SUMS = tuple(f for f in FIELDS if f.sums is not None)
#: The window's arrays.
WINDOW_ARRAYS = tuple(f.name for f in FIELDS if f.checkpoint == WINDOW)
#: The window file's arrays (``runtime/checkpoint.py``) of ``FIELDS``: the window's and what evaluations learnt; with
#: them, each slot's entries (``in_window_file``).
WINDOW_FILE = tuple(f.name for f in FIELDS if f.checkpoint in (WINDOW, LEARNING))


def in_window_file(name: str) -> bool:
    """Whether the checkpoint array ``name`` belongs in the window file: one of ``WINDOW_FILE``, a slot's entries, or
    (read from an older window file) a dense array of the slots' sums."""
    return name in WINDOW_FILE or is_slot_name(name) or name in DENSE_NAMES


def _source(f: Field, arrays: Mapping[str, np.ndarray]) -> str:
    """The checkpoint array field ``f`` is restored from: its own, else (an older checkpoint) its ``restore_from``."""
    return f.name if f.name in arrays or f.restore_from is None else f.restore_from


def _as_block(rows: np.ndarray) -> np.ndarray | slice:
    """Chip ``rows`` as a slice when they are one ascending run (a slice reads and writes at memory speed; an index
    array copies), else as they are."""
    if len(rows) and rows[-1] - rows[0] + 1 == len(rows) and bool(np.all(np.diff(rows) == 1)):
        return slice(int(rows[0]), int(rows[-1]) + 1)
    return rows


def _slot_piece(arrays: Mapping[str, np.ndarray], slot: int, slotted: bool) -> Piece:
    """The entries of ``slot`` in checkpoint ``arrays`` (chip rows as there): its arrays, or (an older window file)
    the channels with hits in the slot's rows of the dense arrays (the arrivals those of the hits when it has none)."""
    if slotted:
        return tuple(arrays[name] for name in slot_names(slot))
    hits = arrays[DENSE_NAMES[0]][slot]
    chip, channel = np.nonzero(hits)
    sums = [hits[chip, channel]] + [arrays[name][slot][chip, channel] for name in DENSE_NAMES[1:3]]
    arrivals = arrays[DENSE_NAMES[3]][slot][chip, channel] if DENSE_NAMES[3] in arrays else sums[0]
    return (chip * CHANNELS_PER_CHIP + channel, *sums, arrivals)


def _renumbered(piece: Piece, rows: np.ndarray | slice) -> Piece:
    """``piece``'s entries with the checkpoint's chip rows turned into the state's ``rows`` (one per checkpoint row)."""
    channel, *values = piece
    chip, within = np.divmod(channel.astype(np.int64), CHANNELS_PER_CHIP)
    state_rows = np.arange(rows.start, rows.stop)[chip] if isinstance(rows, slice) else rows[chip]
    typed = (v.astype(t, copy=False) for v, t in zip(values, DTYPES, strict=True))
    return ((state_rows * CHANNELS_PER_CHIP + within).astype(CHANNEL_DTYPE), *typed)


@functools.cache
def kernel_fields(kernel: str) -> tuple[Field, ...]:
    """The fields ``kernel`` counts into, in the order of its ``state`` argument (found once: asked every chunk)."""
    return tuple(f for f in FIELDS if kernel in f.kernels)


class State:
    """The arrays of ``FIELDS`` (as attributes of the same names), the chips they have rows for and
    the data clock; what an accumulator counts into and a snapshot is summarised from."""

    def __init__(self, config: QualityConfig) -> None:
        self.config = config
        self.chips = ChipIndex()
        self.clock = DetectorClock()
        self.triggers = TriggerWindows(config.drift_window_ticks)
        self.capacity = 0
        self.slot_sums = SlotSums(config.window_bins)
        for f in FIELDS:
            setattr(self, f.name, None if f.lazy else self._empty(f, 0))

    if TYPE_CHECKING:  # every field is an instance attribute of its name, set in __init__

        def __getattr__(self, name: str) -> np.ndarray: ...

        def __setattr__(self, name: str, value: Any) -> None: ...

    def _shape(self, f: Field, chips: int) -> tuple[int, ...]:
        lead = {
            IO_GROUP: (IO_GROUPS,),
            CHIP: (chips,),
            SLOT_IO_GROUP: (self.config.window_bins, IO_GROUPS),
            SLOT_CHIP: (self.config.window_bins, chips),
        }[f.scope]
        buckets = len(self.config.sync_offset_buckets_ticks) + 1
        return lead + tuple(buckets if n == SYNC_BUCKETS else n for n in f.tail)

    def _empty(self, f: Field, chips: int) -> np.ndarray:
        """A new array of field ``f``; zeros from calloc, whose pages take memory (and time) only once written:
        the window's slots of a large detector are not paid for before data reaches them."""
        if f.fill == 0:
            return np.zeros(self._shape(f, chips), f.dtype)
        return np.full(self._shape(f, chips), f.fill, f.dtype)

    def bin_of(self, times: np.ndarray | float) -> np.ndarray:
        """Window bin number of data times; the one formula for packets and for the window edge."""
        with np.errstate(invalid="ignore"):
            return np.floor(np.asarray(times, np.float64) / self.config.bin_seconds)

    def made(self, name: str) -> bool:
        """Whether the (lazy) field ``name`` has been made."""
        return getattr(self, name) is not None

    def make(self, name: str) -> np.ndarray:
        """The field ``name``, made empty if it was not yet (lazy fields)."""
        if getattr(self, name) is None:
            setattr(self, name, self._empty(BY_NAME[name], self.capacity))
        return getattr(self, name)

    # -- chips ----------------------------------------------------------------------------------
    def register(self, keys: np.ndarray, in_order: bool = False, spare: bool = False) -> np.ndarray:
        """Rows of chip ``keys`` (n, 3), registering the new ones (``ChipIndex.add``); the arrays grow to hold them
        (``fit``)."""
        rows = self.chips.add(keys, in_order)
        self.fit(spare)
        return rows

    def fit(self, spare: bool = False) -> None:
        """Grow the per-chip arrays to every registered chip (by a quarter at least, 64 rows at least: a large
        detector's state is not doubled by its last chips). Chips found in the data (``spare``) get a quarter more
        rows than they need at once: more follow (without a geometry, 50 io_groups' first chunk at 0.05 Hz a channel
        shows 91 % of their chips, and growing for the rest copied 340 MB of state, 1.1 s)."""
        n = len(self.chips)
        if n <= self.capacity:
            return
        old, capacity = self.capacity, max(n + n // 4 if spare else n, self.capacity + self.capacity // 4, 64)
        for f in FIELDS:
            current = getattr(self, f.name)
            if not f.per_chip or current is None:
                continue
            grown = self._empty(f, capacity)
            if f.scope == CHIP:
                grown[:old] = current
            else:
                grown[:, :old] = current
            setattr(self, f.name, grown)
        self.capacity = capacity

    def group_rows(self, groups: int | list[int]) -> np.ndarray | slice:
        """Chip rows of io_group(s) ``groups`` (a slice when they are contiguous: as a geometry registers them, or
        every chip's); looked up in a table of the 256 io_groups (``np.isin`` sorts: 0.14 ms a module's chips)."""
        chosen = np.zeros(IO_GROUPS, bool)
        chosen[groups] = True
        return _as_block(np.flatnonzero(chosen[self.chips.keys[:, 0]]))

    def clear(self, groups: list[int], slots: tuple[int, ...]) -> None:
        """Empty the window slots of io_groups ``groups``: their chips' entries and rows and their own (taken out of
        the window's sums). Io_groups whose windows move together are cleared at once: without a geometry their
        chips' rows interleave, and all of them are one slice where each alone is an index array (1.4 ms a module's
        io_group)."""
        chosen = np.zeros(IO_GROUPS, bool)
        chosen[groups] = True
        for slot in slots:
            channel, *values = self.slot_sums.piece(slot)
            if not len(channel):
                continue
            gone = chosen[self.chips.keys[channel // CHANNELS_PER_CHIP, 0]]
            every = bool(gone.all())
            index = (channel if every else channel[gone]).astype(np.int64)
            for f in SUMS:
                taken = values[COLUMNS.index(str(f.sums))]
                np.subtract.at(
                    getattr(self, f.name).reshape(-1), index, (taken if every else taken[gone]).astype(np.int64)
                )
            kept = ~gone
            self.slot_sums.put(slot, empty_piece() if every else (channel[kept], *(v[kept] for v in values)))
        rows = self.group_rows(groups)
        for f in FIELDS:
            array = getattr(self, f.name)
            if not f.per_slot or array is None:
                continue
            for slot in slots:
                array[slot, rows if f.per_chip else groups] = f.fill

    def start_run(self, g: int, at: float) -> None:
        """Start io_group ``g``'s run at live time ``at``: its chips' ``per_run`` counts start again."""
        self.run_start[g] = at
        rows = self.group_rows(g)
        for f in FIELDS:
            array = getattr(self, f.name)
            if f.per_run and array is not None:
                array[rows] = f.fill

    # -- checkpoint -----------------------------------------------------------------------------
    def export(self, slots: bool = True) -> dict[str, np.ndarray]:
        """The checkpointed fields, trimmed to the registered chips, with the chip keys, the window's
        shape and the clock: everything needed to continue exactly here; with the window slots' entries
        when ``slots`` (merged first, ``SlotSums.merged``: the same whichever engine counted them)."""
        n = len(self.chips)
        arrays = {
            "chip_keys": self.chips.keys.copy(),
            "window_shape": np.array([self.config.window_seconds, self.config.window_bins]),
            **self.clock.export_state(),
            **self.triggers.export_state(self.chips.keys),
        }
        for f in FIELDS:
            array = getattr(self, f.name)
            if f.checkpoint is None or array is None:
                continue
            arrays[f.name] = array[:n] if f.scope == CHIP else array[:, :n] if f.scope == SLOT_CHIP else array
        for slot in range(len(self.slot_sums) if slots else 0):
            arrays.update(zip(slot_names(slot), self.slot_sums.merged(slot), strict=True))
        return arrays

    def restore(self, arrays: Mapping[str, np.ndarray]) -> bool:
        """Continue from ``export`` output; False when the window cannot continue (other window shape,
        no window arrays, or a checkpoint from before the per-io_group clocks): the counters are
        restored, the window starts at each io_group's clock, empty. KeyError names a missing array."""
        # a fresh state gives the chips the rows they had: one block, read straight into the state's arrays (``_put``)
        rows = _as_block(self.register(arrays["chip_keys"], in_order=True))
        for f in FIELDS:
            if not f.windowed and (f.name in arrays or not f.optional):
                self._put(f, rows, arrays, _source(f, arrays))
        self.triggers.import_state(self, arrays)
        if "clock_head" not in arrays:
            return False
        self.clock.import_state(arrays)
        for name in ("live_start", "run_start"):  # a checkpoint from before live time: since the last clock step
            if name not in arrays:
                getattr(self, name)[...] = self.clock.span_start
        shape = (self.config.window_seconds, self.config.window_bins)
        slotted = all(name in arrays for slot in range(shape[1]) for name in slot_names(slot))
        dense = all(name in arrays for name in DENSE_NAMES[:3])  # an older window file (arrivals: from the hits)
        same = (
            tuple(arrays["window_shape"]) == shape
            and (slotted or dense)
            and all(_source(BY_NAME[name], arrays) in arrays or BY_NAME[name].optional for name in WINDOW_ARRAYS)
        )
        if same:
            for f in FIELDS:
                if f.windowed and _source(f, arrays) in arrays:
                    self._put(f, rows, arrays, _source(f, arrays))
            source = arrays if slotted else {name: arrays[name] for name in DENSE_NAMES if name in arrays}  # read once
            for slot in range(shape[1]):
                self.slot_sums.put(slot, _renumbered(_slot_piece(source, slot, slotted), rows))
        else:
            known = ~np.isnan(self.clock.head)
            self.window_end[known] = self.live_start[known] = self.clock.head[known] - self.dead_seconds[known]
            self.newest_bin[known] = self.bin_of(self.window_end[known]).astype(np.int64)
        for f in SUMS:  # the window's sums, over the slots' entries now
            total = getattr(self, f.name).reshape(-1)
            total[:] = 0
            for slot in range(shape[1]):
                channel, *values = self.slot_sums.piece(slot)
                np.add.at(total, channel.astype(np.int64), values[COLUMNS.index(str(f.sums))].astype(np.int64))
        return same

    def _put(self, f: Field, rows: np.ndarray | slice, arrays: Mapping[str, np.ndarray], name: str) -> None:
        """Restore field ``f`` of chip ``rows`` from array ``name`` of ``arrays``; straight into the state's own array
        when ``arrays`` can (a checkpoint file's ``read_into``) and the rows are one block of it."""
        target = self.make(f.name)
        read_into = getattr(arrays, "read_into", None)
        if isinstance(rows, slice) and read_into is not None:  # (a block of an index array would be a copy)
            block = target[rows] if f.scope == CHIP else target[:, rows] if f.scope == SLOT_CHIP else target
            if read_into(name, block):
                return
        value = arrays[name]
        if f.scope == CHIP:
            target[rows] = value
        elif f.scope == SLOT_CHIP:
            target[:, rows] = value
        else:
            target[...] = value
