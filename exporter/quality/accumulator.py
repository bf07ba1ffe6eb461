"""The accumulator: drives each chunk through the windows and one engine into a ``State``, and
summarises it into a ``Snapshot``.

``Accumulator.add`` takes chunks of packet records (any structured array carrying the fields of
``packets.REQUIRED_FIELDS``), ``add_chunk`` chunks read from a file (raw messages too); the
windows move first (``window.move``), then the compiled kernels (``compiled.py``) or the numpy
engine (``engine.py``) count the chunk into the arrays declared in ``state.FIELDS``.
``Accumulator.snapshot`` returns an immutable ``Snapshot`` (``summary.summarize``) that the
exposition and the plots read without touching the live arrays.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Mapping
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from larpix_dqm.exporter.detector.geometry import CHANNELS_PER_CHIP, Geometry
from larpix_dqm.exporter.detector.runconfig import RunConfig
from larpix_dqm.exporter.quality import engine, triggers, window
from larpix_dqm.exporter.quality.clock import DetectorClock
from larpix_dqm.exporter.quality.config import COMPILED, ENGINES, NUMPY, QualityConfig
from larpix_dqm.exporter.quality.loader import KernelLoader
from larpix_dqm.exporter.quality.slots import Piece, empty_piece
from larpix_dqm.exporter.quality.snapshot import Snapshot, prefer_finite
from larpix_dqm.exporter.quality.state import BY_NAME, COUNT, FOLD, WINDOW_FILE, State, kernel_fields
from larpix_dqm.exporter.quality.summary import ChipLayout, summarize
from larpix_dqm.exporter.quality.window import Placed
from larpix_dqm.exporter.reading.cursor import DataClock
from larpix_dqm.exporter.reading.decode import Messages, split_messages
from larpix_dqm.exporter.reading.packets import DATA, IO_GROUPS, PACKET_DTYPE, REQUIRED_FIELDS, TIMESTAMP, TRIGGER

if TYPE_CHECKING:
    from larpix_dqm.exporter.detector.chips import ChipIndex
    from larpix_dqm.exporter.quality.reference import Reference
    from larpix_dqm.exporter.reading.files import Chunk

__all__ = [
    "COMPILED",
    "ENGINES",
    "IO_GROUPS",
    "NUMPY",
    "Accumulator",
    "QualityConfig",
    "Snapshot",
    "load_evaluation_kernels",
    "load_kernels",
    "prefer_finite",
]

FIFO_FLAGS = (("local", "half"), ("local", "full"), ("shared", "half"), ("shared", "full"))
#: What the kernels read a chunk from: packet records or raw messages.
Source = np.ndarray | Messages
#: The counting kernels of this process, loaded by the first accumulator that wants them.
KERNELS = KernelLoader("larpix_dqm.exporter.quality.compiled", "compiled ingest")
#: The evaluation's kernels (``compiled_verdicts.py``), loaded by the second snapshot of a large state (by the first
#: once the counting kernels are wanted).
EVALUATION_KERNELS = KernelLoader("larpix_dqm.exporter.quality.compiled_verdicts", "compiled evaluation")
#: Channels from which a snapshot is judged by the evaluation's kernels (below, numpy takes a few ms).
COMPILE_EVALUATION_AFTER_CHANNELS = 100_000
#: Packets a run counts on the numpy path before the kernels start loading: numba's import and the kernels'
#: load cost ~0.3-0.8 s and ~110 MB, which a file of fewer packets does not win back (`once --no-plots` on raw
#: 6-word files, whole processes: 1.37 M packets 0.93 s on numpy, 1.29 s loading at 1 M; 8 M packets 3.1 s on
#: numpy, 2.5 s loading at 2 M, 2.2 s at 1 M).
COMPILE_AFTER_PACKETS = 2_000_000
#: CPU seconds a run spends counting on the numpy path before the kernels start loading, whatever its packets:
#: what 2 M packets take on numpy, and what a large detector's chunks take sooner (~0.25 s a chunk at 40,000
#: chips): rent until the rent paid matches the price of buying.
COMPILE_AFTER_NUMPY_SECONDS = 1.0
LOAD_WAIT_SECONDS = 1.0
#: Stand-ins for what a chunk does not have (the kernel's arguments are arrays of fixed types):
#: the pedestal window before a run has periodic triggers, raw messages, packet records.
_NO_PEDESTAL = np.zeros((1, 1, CHANNELS_PER_CHIP, 3), np.int64)
_NO_MESSAGES = (np.zeros(0, np.uint8), np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.uint8))
_NO_RECEIPTS = np.zeros(0, np.int64)
_NOT_PLACING = tuple(np.zeros(0, np.int64) for _ in triggers.Found._fields)
_NO_RECORDS = (np.zeros((0, PACKET_DTYPE.itemsize), np.uint8), np.zeros(len(REQUIRED_FIELDS) + 1, np.int64))
#: Chip rows one fold of the compiled counting takes (``HitsBuffer``): 8 MB of ``hits`` a window slot at most. A module
#: (6,400 chips) and a 2x2 detector count with a place for each of their chips; a state of 40,000 folds ~5 times a chunk.
HIT_PLACES = 8192
#: The places of a ``HitsBuffer`` with one for every chip row: the rows themselves.
_NO_PLACES = np.zeros(0, np.int64)
#: The rate slots of ``hits`` before the window's (``chunk_keys``): not self-triggered, outside the window.
_OUTSIDE_SLOTS = np.array([-2, -1], np.int64)


def compiled_records(packets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Packet records as the kernel reads them: rows of bytes, and the byte offset of each of
    ``REQUIRED_FIELDS`` plus the timestamp's width; other layouts (wider or signed fields) are
    copied to ``PACKET_DTYPE`` first. One compiled signature serves every packet file format."""
    offsets = _record_offsets(packets.dtype)
    if offsets is None or not packets.flags.writeable:  # (numba compiles read-only arrays as another type)
        copy = np.zeros(len(packets), PACKET_DTYPE)
        for name in REQUIRED_FIELDS:
            copy[name] = packets[name]
        packets, offsets = copy, _record_offsets(PACKET_DTYPE)
    rows = np.ascontiguousarray(packets).view(np.uint8).reshape(len(packets), packets.dtype.itemsize)
    return rows, np.array(offsets, np.int64)


@functools.lru_cache(maxsize=16)
def _record_offsets(dtype: np.dtype) -> tuple[int, ...] | None:
    """``compiled_records``' offsets for records of ``dtype``, None when the kernel cannot read them as they are (found
    once a dtype: 30 us, a tenth of a small file's counting)."""
    fields: dict[str, Any] = dict(dtype.fields or {})
    usable = all(fields[n][0].kind == "u" and fields[n][0].itemsize == 1 for n in REQUIRED_FIELDS if n != "timestamp")
    if not usable or fields["timestamp"][0] not in (np.dtype("<u4"), np.dtype("<u8")):
        return None
    return (*(fields[name][1] for name in REQUIRED_FIELDS), fields["timestamp"][0].itemsize)


def load_kernels(wait: float) -> bool:
    """Load (or compile) the kernels now, waiting up to ``wait`` seconds; whether they are ready."""
    KERNELS.start(_warm_up)
    return KERNELS.ready(wait)


def _warm_up() -> None:
    """Run the kernels once on a raw message and on packet records (counting and its fold, decoding, the trigger
    pairing's two steps), so that numba loads or compiles them all before the first chunk."""
    word = (11 << 2) | (5 << 10) | (100 << 16) | (1 << 62)  # chip 11, channel 5: a data packet, for the fold
    word |= (1 - word.bit_count() % 2) << 63  # odd parity
    data = b"D" + bytes([1]) + bytes(6) + word.to_bytes(8, "little")
    header = b"D" + (1_700_000_000).to_bytes(4, "little") + bytes(3)
    message = np.frombuffer(header + b"S" + bytes(15) + data, np.uint8)
    messages = split_messages([message], np.array([1], np.uint8))
    for source in (messages, messages.decode()):
        state = State(QualityConfig(engine=COMPILED))
        stamps = source.timestamp_packets() if isinstance(source, Messages) else source
        count_compiled(state, source, window.move(state, stamps, DataClock(), 1_700_000_000.0))
    records = decode_compiled(messages)
    found = place_compiled(state, records, records["packet_type"] == TIMESTAMP, np.full(IO_GROUPS, -1, np.int64))
    pair_compiled(state, *found[:3], 0, 1, found.hit_times[:1], found.hit_times[:1], 1)


def decode_compiled(messages: Messages) -> np.ndarray:
    """The messages' packet records from the compiled decoder: ``Messages.decode``'s, field for field, in about a
    tenth of its time (the trigger pairing of a raw chunk on the kernels reads them)."""
    kernels = KERNELS.kernels
    records = np.zeros(messages.size_bound, PACKET_DTYPE)
    fields = tuple(records[name] for name in kernels.DECODED_FIELDS)
    rows, unknown = kernels.decode_records(
        fields, messages.buffer.view(np.uint64), messages.starts, messages.words, messages.io_groups
    )
    messages.count_unknown_words(unknown)
    return records[:rows]


def place_compiled(state: triggers.State, packets: np.ndarray, stamp: np.ndarray, second: np.ndarray) -> triggers.Found:
    """``triggers.place_packets`` by the kernels: the same counts, seconds and placed hits and triggers, in one
    pass instead of a dozen over the chunk (the trigger pairing's inputs on the kernels)."""
    records, offsets = compiled_records(packets)
    names = packets.dtype.names or ()
    receipts = packets["receipt_timestamp"].astype(np.int64) if "receipt_timestamp" in names else _NO_RECEIPTS
    times, rows, groups, trigger_times, trigger_groups = (np.empty(len(packets), np.int64) for _ in range(5))
    placed_hits, placed_triggers = KERNELS.kernels.place_packets(
        records, offsets, receipts, stamp, second, *state.chips.tables(), state.trigger_words, times, rows, groups,
        trigger_times, trigger_groups,
    )  # fmt: skip
    return triggers.Found(
        times[:placed_hits],
        rows[:placed_hits],
        groups[:placed_hits],
        trigger_times[:placed_triggers],
        trigger_groups[:placed_triggers],
    )


def pair_compiled(
    state: triggers.State,
    times: np.ndarray,
    rows: np.ndarray,
    groups: np.ndarray,
    start: int,
    end: int,
    known: np.ndarray,
    closing: np.ndarray,
    window: int,
) -> np.ndarray:
    """``triggers.pair_hits`` by the kernels: the same counts in one pass over the held hits, without sorting them."""
    counts = np.zeros(len(closing), np.int64)
    KERNELS.kernels.pair_hits(
        times, rows, groups, start, end, known, closing, window, triggers.DELAY_BINS, state.beam_chip_hits,
        state.beam_delays, state.beam_delay_sum, counts,
    )  # fmt: skip
    return counts


COMPILED_STEPS = triggers.Steps(place_compiled, pair_compiled)


def load_evaluation_kernels(wait: float) -> bool:
    """Load (or compile) the evaluation's kernels now, waiting up to ``wait`` seconds; whether they are ready."""
    EVALUATION_KERNELS.start(_warm_up_evaluation)
    return EVALUATION_KERNELS.ready(wait)


def _warm_up_evaluation() -> None:
    """Summarise a one-chip state with the evaluation's kernels, with and without a reference, so that numba
    loads or compiles them."""
    state = State(QualityConfig(engine=COMPILED))
    state.register(np.array([[1, 1, 11]], np.uint8))
    every = np.ones((1, CHANNELS_PER_CHIP), bool)
    layout = ChipLayout(np.zeros(1, np.int64), np.ones(1, bool), every, np.ones(1, bool), ~every)
    for rates in (None, np.ones((1, CHANNELS_PER_CHIP))):
        summarize(state, layout, rates, EVALUATION_KERNELS.kernels)


class HitsBuffer:
    """The compiled counting's per-chunk ``hits`` (key, place, channel, 4) and ``touched`` (key, place: a bit a channel
    with counts), kept by the accumulator from chunk to chunk and left all zero by the fold (``compiled.fold_hits``): a
    fresh buffer a chunk costs a page fault for each page written (2.6 us a 4 kB page). Its keys are the slots a chunk uses
    (``chunk_keys``), not the window's. Its places are the chip rows themselves while the state has at most
    ``places`` rows; beyond, the rows a chunk touches get places as they come, and a chunk that touches more is folded
    each time they are all given (``compiled.count_chunk``): what stays resident is the most keys one chunk has used
    (3-4 in a backlog) x ``places`` x 1 kB, whatever the detector. It keeps the arrays the counting pass places a
    chunk's hits and triggers in for the trigger pairing as well (``placed``)."""

    def __init__(self, places: int = HIT_PLACES) -> None:
        self.places = places
        self.hits = np.zeros((0, 0, CHANNELS_PER_CHIP, 4), np.int32)
        self.touched = np.zeros((0, 0), np.uint64)
        self.local_of = np.zeros(0, np.int64)  # place of each chip row in ``hits``, -1 when none
        self.local_rows = np.zeros(0, np.int64)  # chip row of each place
        self._placed = _NOT_PLACING  # empty: replaced by the first chunk placed
        self._entries = empty_piece()

    def take(self, keys: int, capacity: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Zeroed ``hits`` and ``touched`` of ``keys`` keys (new ones when these grew) for a state of ``capacity``
        chip rows, and their places: the place of each row (all -1) and the row of each place; none (the rows are
        the places) when ``hits`` has a place for every row."""
        places = min(self.places, capacity)
        if self.hits.shape[0] < keys or self.hits.shape[1] < places:
            shape = (max(keys, self.hits.shape[0]), max(places, self.hits.shape[1]), CHANNELS_PER_CHIP, 4)
            self.hits = np.zeros(shape, np.int32)
            self.touched = np.zeros(self.hits.shape[:2], np.uint64)
            self.local_rows = np.zeros(self.hits.shape[1], np.int64)
        if capacity <= self.places:
            return self.hits[:keys], self.touched[:keys], _NO_PLACES, _NO_PLACES
        if len(self.local_of) < capacity:
            self.local_of = np.full(capacity, -1, np.int64)
        return self.hits[:keys], self.touched[:keys], self.local_of, self.local_rows

    def entries(self, packets: int) -> Piece:
        """The arrays the fold puts the window slots' entries of a chunk of ``packets`` packets in (at most one a
        packet; longer ones kept from an earlier chunk)."""
        if len(self._entries[0]) < packets:
            self._entries = tuple(np.empty(packets, a.dtype) for a in empty_piece())
        return self._entries

    def placed(self, packets: int) -> tuple[np.ndarray, ...]:
        """``triggers.Found``'s arrays for a chunk of ``packets`` packets to be placed in (longer ones kept from an
        earlier chunk): new ones each chunk faulted in up to 12 MB of pages a 500 k-packet chunk (a 5 M-packet file with
        triggers: 64 k page faults in all, against 41 k with these kept and 30 k without triggers)."""
        if len(self._placed[0]) < packets:
            self._placed = tuple(np.empty(packets, np.int64) for _ in triggers.Found._fields)
        return self._placed


def chunk_keys(state: State, cur: np.ndarray, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rows of ``hits`` a chunk counts into: for each rate slot + 2 (-2 not self-triggered, -1 outside the
    window, then the window's slots) its key (-1: a slot no io_group is in during the chunk), and each key's rate
    slot; the slots are the io_groups' at the chunk's start (``cur``) and those it moves to (``slots``)."""
    used = np.zeros(state.config.window_bins, bool)
    used[cur[cur >= 0]] = True
    used[slots[slots >= 0]] = True
    key_slots = np.concatenate((_OUTSIDE_SLOTS, np.flatnonzero(used)))
    keys = np.full(state.config.window_bins + 2, -1, np.int64)
    keys[key_slots + 2] = np.arange(len(key_slots))
    return keys, key_slots


def count_compiled(
    state: State, source: Source, placed: Placed, buffer: HitsBuffer | None = None, pairing: bool = False
) -> triggers.Found:
    """Count a chunk whose windows have moved (``window.move``) with the compiled kernels, registering
    chips and growing buffers where they stop; the numpy engine's ``engine.count`` does the same. ``buffer``: the
    accumulator's, reused from chunk to chunk (a new one without it). ``pairing``
    (the trigger pairing is active): also place the chunk for it, as ``place_compiled`` would; returns the placed hits
    and triggers (none without ``pairing``)."""
    kernels = KERNELS.kernels
    buckets = np.asarray(state.config.sync_offset_buckets_ticks, np.float64)
    deferred = np.zeros((64, kernels.DEFERRED_COLUMNS), np.int64)
    pos = np.zeros(8, np.int64)
    if isinstance(source, Messages):
        pos[1] = -1  # the first message's timestamp packet comes first
        raw, records = (source.buffer, source.starts, source.words, source.io_groups), _NO_RECORDS
    else:
        raw, records = _NO_MESSAGES, compiled_records(source)
    accepted = placed.accepted
    cur, cur_end = placed.before.astype(np.int64), placed.before_ends.astype(np.float64)
    rows, slots, groups = (
        accepted.rows.astype(np.int64),
        placed.slots.astype(np.int64),
        accepted.groups.astype(np.uint8),
    )
    ends = placed.ends.astype(np.float64)
    keys, key_slots = chunk_keys(state, cur, slots)
    registered_at = -1
    counted = kernel_fields(COUNT)
    packets = source.size_bound if isinstance(source, Messages) else len(source)
    buffer = HitsBuffer() if buffer is None else buffer
    found = buffer.placed(packets) if pairing else _NOT_PLACING
    receipts = _NO_RECEIPTS
    if pairing and not isinstance(source, Messages) and "receipt_timestamp" in (source.dtype.names or ()):
        receipts = source["receipt_timestamp"].astype(np.int64)
    pairing_arrays = (pairing, state.triggers.second, receipts, state.trigger_words, found)
    row_groups = np.zeros(0, np.int64)  # the io_group of each chip row
    while True:
        blocks, table = state.chips.tables()
        arrays = tuple(_NO_PEDESTAL if f.lazy and not state.made(f.name) else getattr(state, f.name) for f in counted)
        hits, touched, local_of, local_rows = buffer.take(len(key_slots), state.capacity)
        status = kernels.count_chunk(
            arrays, hits, touched, local_of, local_rows, keys, blocks, table, buckets, state.made("win_pedestal"),
            deferred, pos, cur, cur_end, rows, slots, ends, groups, *records, *raw, *pairing_arrays,
        )  # fmt: skip
        given = local_rows[: pos[7]] if len(local_of) else np.arange(len(state.chips))
        if len(row_groups) != len(state.chips):  # once, and after chips were registered
            row_groups = state.chips.keys[:, 0].astype(np.int64)
        _fold_hits(state, hits, touched, local_of, given, key_slots, row_groups, buffer.entries(packets))
        pos[7] = 0
        if status == kernels.OK:
            break
        if status == kernels.NEED_PEDESTAL:
            state.make("win_pedestal")
        elif status == kernels.NEED_SPACE:
            deferred = np.concatenate([deferred, np.zeros_like(deferred)])
        elif status == kernels.NEED_CHIP:  # register the new chips of the rest of the chunk, as numpy does
            if pos[0] == registered_at:
                raise RuntimeError(f"compiled ingest: packet {pos[0]} needs a chip registration did not make")
            registered_at = int(pos[0])
            rest = source.since(int(pos[0])).decode() if isinstance(source, Messages) else source[int(pos[0]) :]
            data = rest[(rest["packet_type"] == DATA) & (rest["valid_parity"] != 0)]
            state.register(np.stack([data["io_group"], data["io_channel"], data["chip_id"]], axis=1), spare=True)
        # NEED_FOLD: ``hits`` was folded (and zeroed) above; the next round counts into it again
    if pos[3]:  # parity errors whose chip was unknown when the kernel met them
        engine.count_parity_errors(state, *deferred[: pos[3]].T)
    if isinstance(source, Messages):
        source.count_unknown_words(int(pos[4]))
    placed_hits, placed_triggers = int(pos[5]), int(pos[6])
    return triggers.Found(*(a[:placed_hits] for a in found[:3]), *(a[:placed_triggers] for a in found[3:]))


def _fold_hits(
    state: State,
    hits: np.ndarray,
    touched: np.ndarray,
    local_of: np.ndarray,
    rows: np.ndarray,
    key_slots: np.ndarray,
    row_groups: np.ndarray,
    entries: Piece,
) -> None:
    """Add the kernel's counts of clean data packets, of chip ``rows`` (one a place, or the rows are the places when
    ``local_of`` is empty; ``row_groups`` the io_group of each row), to the state and empty ``hits`` and the places
    (``compiled.fold_hits``); the window slots' entries pass through ``entries`` (copied out: it is reused)."""
    if not len(rows) or not touched[:, : len(rows)].any():
        return
    arrays = tuple(getattr(state, f.name) for f in kernel_fields(FOLD))
    key_ends = np.zeros(len(key_slots), np.int64)
    KERNELS.kernels.fold_hits(
        arrays, hits, touched, local_of, rows, key_slots, row_groups, state.newest_bin, state.config.window_bins,
        float(state.config.bin_seconds), entries, key_ends,
    )  # fmt: skip
    start = 0
    for slot, end in zip(key_slots.tolist(), key_ends.tolist(), strict=True):
        if slot >= 0:
            state.slot_sums.add(slot, *(a[start:end].copy() for a in entries))
        start = end


def _same_expectations(a: RunConfig, b: RunConfig) -> bool:
    """Whether two run configurations expect the same chips and mask the same channels."""
    return (
        a.network == b.network
        and a.masked.keys() == b.masked.keys()
        and all(np.array_equal(mask, b.masked[key]) for key, mask in a.masked.items())
    )


class Accumulator:
    """Counts chunks into its ``State`` on either engine and summarises it; knows the geometry and the
    run configuration, which say of each chip what the data does not."""

    #: The window file's arrays of ``state.FIELDS`` (``runtime/checkpoint.py``); the slots' entries go with them.
    WINDOW_FILE = WINDOW_FILE

    def __init__(
        self, config: QualityConfig | None = None, geometry: Geometry | None = None, run_config: RunConfig | None = None
    ) -> None:
        self.config = config or QualityConfig()
        self.state = State(self.config)
        self._counted = 0  # packets counted, until the kernels are wanted
        self._numpy_seconds = 0.0  # CPU seconds of counting on the numpy path, until the kernels are wanted
        self._kernels_wanted = False
        self._load_waited = False  # whether a chunk has waited for the kernels (once, when they are due)
        self._hits = HitsBuffer()  # the compiled counting's, reused from chunk to chunk
        self._snapshot_large = False  # whether a snapshot had COMPILE_EVALUATION_AFTER_CHANNELS or more
        self.geometry = geometry
        self.run_config = run_config or RunConfig()
        self._geo_row = np.zeros(0, np.int64)  # geometry row of each chip row (-1: not in it), cached as rows appear
        self._run_rows = 0  # chip rows whose network membership and masks are cached below
        self._in_network = np.zeros(0, bool)
        self._masked = np.zeros((0, CHANNELS_PER_CHIP), bool)
        #: (256,) the io_groups this exporter counts and judges (``QualityConfig.io_groups``; all without it)
        self.served = np.zeros(IO_GROUPS, bool)
        self.served[list(self.config.io_groups) or slice(None)] = True
        if geometry is not None and geometry.has_io_mapping and len(geometry.chips):
            self.state.register(self._own_chips(geometry.chips))
        if self.run_config.network is not None:
            self.state.register(self._own_chips(np.array(sorted(self.run_config.network), np.uint8).reshape(-1, 3)))

    def _own_chips(self, keys: np.ndarray) -> np.ndarray:
        """The chip keys (io_group, io_channel, chip_id) of the io_groups served."""
        return keys[self.served[keys[:, 0]]]

    def _own_records(self, packets: np.ndarray) -> np.ndarray:
        """The packets of the io_groups served; the others are counted as foreign (another shard's)."""
        if self.served.all():
            return packets
        mine = self.served[packets["io_group"]]
        if mine.all():
            return packets
        self.state.foreign_packets += np.bincount(packets["io_group"][~mine], minlength=IO_GROUPS)
        return packets[mine]

    def _own_messages(self, messages: Messages) -> Messages:
        """The raw messages of the io_groups served; the others' packets (their words, and the timestamp packet
        each header makes) are counted as foreign."""
        mine = self.served[messages.io_groups]
        if mine.all():
            return messages
        foreign = ~mine
        self.state.foreign_packets += np.bincount(
            messages.io_groups[foreign], messages.words[foreign] + 1, IO_GROUPS
        ).astype(np.int64)
        return messages.select(mine)

    def __getattr__(self, name: str) -> np.ndarray:
        """The state's arrays, read as the accumulator's own (``acc.hits_total``: ``acc.state.hits_total``)."""
        if name in BY_NAME:
            return getattr(self.state, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def chips(self) -> ChipIndex:
        """The chips seen (or declared), in row order."""
        return self.state.chips

    @property
    def clock(self) -> DetectorClock:
        """The data clock of every io_group."""
        return self.state.clock

    @property
    def data_time(self) -> float:
        """Newest accepted data time over all io_groups (NaN before any)."""
        return self.state.clock.data_time

    # -- checkpoint ---------------------------------------------------------------------
    def export_state(self, slots: bool = True) -> dict[str, np.ndarray]:
        """Everything needed to continue exactly where this accumulator is (arrays, trimmed); without the window
        slots' entries unless ``slots`` (``State.export``)."""
        return self.state.export(slots)

    def import_state(self, arrays: Mapping[str, np.ndarray]) -> bool:
        """Continue from ``export_state`` output; returns False when the window cannot continue
        (other window shape, no window arrays, or a checkpoint from before the per-io_group clocks):
        counters are restored, the window starts empty."""
        return self.state.restore(arrays)

    # -- accumulation -------------------------------------------------------------------
    @property
    def compiled(self) -> bool:
        """Whether chunks go through the compiled kernels now (numpy until they are loaded)."""
        return self.config.engine == COMPILED and KERNELS.ready()

    def expect(self, new_bytes: int) -> None:
        """Files of ``new_bytes`` bytes with no row read yet are about to be read (a backlog): when they hold
        ``COMPILE_AFTER_PACKETS`` or more even at ``PACKET_DTYPE``'s 36 bytes a packet (packet files; raw files take
        16-18), the kernels start loading now, while the first chunks are read and counted on numpy."""
        if self.config.engine == COMPILED and new_bytes >= COMPILE_AFTER_PACKETS * PACKET_DTYPE.itemsize:
            self._kernels_wanted = True
            KERNELS.start(_warm_up)

    def _use_kernels(self, packets: int) -> bool:
        """Whether a chunk of ``packets`` goes through the compiled kernels. They start loading in the
        background once the run has ``COMPILE_AFTER_PACKETS``, or has spent ``COMPILE_AFTER_NUMPY_SECONDS``
        counting on numpy (a small file is done on the numpy path before numba would have been imported; a
        large detector's chunks are not), or sooner for a large backlog (``expect``); the chunk that first reaches
        one of these thresholds waits ``LOAD_WAIT_SECONDS`` at most for them (from numba's cache they load in well
        under a second; compiling takes longer). The evaluation's start loading too once the chips are many."""
        if self.config.engine != COMPILED:
            return False
        self._counted += packets
        due = self._counted >= COMPILE_AFTER_PACKETS or self._numpy_seconds >= COMPILE_AFTER_NUMPY_SECONDS
        wait = due and not self._load_waited
        if wait:
            self._load_waited = self._kernels_wanted = True
            KERNELS.start(_warm_up)
        if self._kernels_wanted and len(self.chips) * CHANNELS_PER_CHIP >= COMPILE_EVALUATION_AFTER_CHANNELS:
            self._evaluation_kernels()  # ready by the first publication
        return KERNELS.ready(LOAD_WAIT_SECONDS if wait else 0.0)

    def add_chunk(self, chunk: Chunk, wall_now: float) -> None:
        """Fold a chunk read from a file; raw messages are decoded and counted in one compiled pass."""
        raw = chunk.raw if chunk.records is None else None
        if raw is None:
            self.add(chunk.packets, chunk.cursor.clock, wall_now)
        elif self._use_kernels(raw.size_bound):
            self._count_messages(self._own_messages(raw), chunk.cursor.clock, wall_now)
        else:  # decoded through the chunk, which keeps the packets for its other readers (once's plots)
            self._add_records(self._own_records(chunk.packets), chunk.cursor.clock, wall_now, compiled=False)

    def add(self, packets: np.ndarray, clock: DataClock, wall_now: float) -> None:
        """Fold a chunk of packet records into the counters and windows."""
        packets = self._own_records(packets)
        self._add_records(packets, clock, wall_now, self._use_kernels(len(packets)))

    def _add_records(self, packets: np.ndarray, clock: DataClock, wall_now: float, compiled: bool) -> None:
        """Move the clocks and windows over a chunk of packet records, then count it on either engine."""
        if len(packets) == 0:
            return
        placed = window.move(self.state, packets, clock, wall_now)
        if compiled:
            if self._count_compiled(packets, placed, packets["timestamp"], packets["io_group"]):
                return
        else:
            started = time.thread_time()
            groups, accepted = packets["io_group"], placed.accepted
            slots = accepted.fill(groups, placed.slots, placed.before)
            engine.count(self.state, packets, slots, accepted.fill(groups, placed.ends, placed.before_ends))
            self._numpy_seconds += time.thread_time() - started
        self.state.triggers.add(
            self.state, packets, placed.accepted.rows, COMPILED_STEPS if compiled else triggers.NUMPY_STEPS
        )

    def add_messages(self, messages: Messages, clock: DataClock, wall_now: float) -> None:
        """Fold a chunk of raw PACMAN data messages: decoded and counted in one compiled pass (decoded
        to packet records first on the numpy engine)."""
        messages = self._own_messages(messages)
        if self._use_kernels(messages.size_bound):
            self._count_messages(messages, clock, wall_now)
        else:
            self._add_records(messages.decode(), clock, wall_now, compiled=False)

    def _count_messages(self, messages: Messages, clock: DataClock, wall_now: float) -> None:
        """Move the clocks and windows over raw messages (their timestamp packets), then run the kernels."""
        if len(messages.starts) == 0:
            return
        triggers_before = int(self.state.packet_type_counts[:, TRIGGER].sum())
        placed = window.move(self.state, messages.timestamp_packets(), clock, wall_now)
        if self._count_compiled(messages, placed, messages.timestamps(), messages.io_groups):
            return
        triggered = int(self.state.packet_type_counts[:, TRIGGER].sum()) > triggers_before
        self.state.triggers.add_messages(
            self.state, messages, placed.accepted.rows, triggered, decode_compiled, COMPILED_STEPS
        )

    def _count_compiled(self, source: Source, placed: Placed, stamps: np.ndarray, stamp_groups: np.ndarray) -> bool:
        """Count a chunk on the kernels; while the trigger pairing is active, place the chunk for it in the same
        pass and pair it (True: paired; ``stamps`` and ``stamp_groups``: each packet's or message's timestamp and
        io_group). Until then the pairing looks at the chunk after counting (``TriggerWindows.add``)."""
        pairing = self.state.triggers
        if not pairing.active:
            count_compiled(self.state, source, placed, self._hits)
            return False
        rows = placed.accepted.rows
        stamped, groups = stamps[rows].astype(np.int64), stamp_groups[rows].astype(np.int64)
        fresh = pairing.fresh(groups, stamped)
        found = count_compiled(self.state, source, placed, self._hits, pairing=True)
        pairing.add_found(self.state, found, groups, stamped, fresh, COMPILED_STEPS)
        return True

    def finish(self) -> None:
        """The input has ended (``once`` read its file whole): pair the triggers still waiting for later data."""
        self.state.triggers.flush(self.state, COMPILED_STEPS if self._use_kernels(0) else triggers.NUMPY_STEPS)

    # -- what is known of each chip besides its counts ---------------------------------
    def start_run(self, io_groups: list[int] | None = None) -> None:
        """Start a new run now for ``io_groups`` (every io_group with data by default): their learnt
        rates start again from their live time now (a new run's files, a new configuration)."""
        ends = self.state.window_end
        for g in np.flatnonzero(~np.isnan(ends)).tolist() if io_groups is None else io_groups:
            if not np.isnan(ends[g]):
                self.state.start_run(g, float(ends[g]) + 1.0)

    def note_rates(self, good: np.ndarray) -> None:
        """Keep which chips' rate checks were ok or unknown at this evaluation (``checks.rates_good``): only
        their data teach the learnt rates at the next one (``summary.learn``)."""
        self.state.rates_good[: len(good)] = good

    def set_run_config(self, run_config: RunConfig) -> None:
        """Judge from now on with this run configuration (networks, masks), e.g. one read from a file; one
        that expects other chips or masks other channels starts a new run (``start_run``)."""
        if not _same_expectations(self.run_config, run_config):
            self.start_run()
        self.run_config = run_config
        self._run_rows = 0
        if run_config.network is not None:
            self.state.register(self._own_chips(np.array(sorted(run_config.network), np.uint8).reshape(-1, 3)))

    @property
    def geo_row(self) -> np.ndarray:
        """(chips,) geometry row of each chip row, -1 where the geometry does not have it."""
        n = len(self.chips)
        if n > len(self._geo_row):
            new = (
                [
                    -1 if (found := self.geometry.row_of(*key)) is None else found
                    for key in self.chips.keys[len(self._geo_row) : n].tolist()
                ]
                if self.geometry is not None
                else [-1] * (n - len(self._geo_row))
            )
            self._geo_row = np.concatenate([self._geo_row, np.array(new, np.int64)])
        return self._geo_row[:n]

    def _run_config_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """Per chip row: in a network (n,) and masked channels (n, 64), cached as rows appear."""
        n = len(self.chips)
        if n > self._run_rows:
            keys = self.chips.keys[self._run_rows : n]
            self._in_network = np.concatenate([self._in_network[: self._run_rows], self.run_config.in_network(keys)])
            self._masked = np.concatenate([self._masked[: self._run_rows], self.run_config.masked_channels(keys)])
            self._run_rows = n
        return self._in_network[:n], self._masked[:n]

    def layout(self) -> ChipLayout:
        """What the geometry and the run configuration say of each chip row now."""
        n = len(self.chips)
        geo_row = self.geo_row
        known = geo_row >= 0
        tiles = np.full(n, -1, np.int64)
        in_geometry = np.ones(n, bool)
        # connected per the geometry, or seen with data at least once; only chips in the run's networks if any
        expected = self.state.hits_total[:n] > 0
        if self.geometry is not None:
            tiles[known] = self.geometry.tiles[geo_row[known]]
            expected[known] |= self.geometry.connected[geo_row[known]]
            if self.geometry.has_io_mapping:
                in_geometry = known
        in_network, masked = self._run_config_rows()
        expected &= in_network[:, None]
        return ChipLayout(tiles, in_geometry, expected, in_network, masked)

    def snapshot(self, reference: Reference | None = None) -> Snapshot:
        """The state summarised (``summary.summarize``), its verdicts against ``reference`` when given."""
        rates = None if reference is None else reference.aligned_rates(self.chips.keys)
        return summarize(self.state, self.layout(), rates, self._evaluation_kernels())

    def _evaluation_kernels(self) -> ModuleType | None:
        """The evaluation's kernels for a large state (``COMPILE_EVALUATION_AFTER_CHANNELS``) on the compiled
        engine, loading in the background from its second snapshot (a one-shot run such as ``once``
        evaluates once, and numba's import would cost it more than numpy's evaluation), or from its first once
        the counting kernels are wanted (numba is imported anyway); None (numpy) until they are loaded."""
        if self.config.engine != COMPILED or len(self.chips) * CHANNELS_PER_CHIP < COMPILE_EVALUATION_AFTER_CHANNELS:
            return None
        if not (self._snapshot_large or self._kernels_wanted):
            self._snapshot_large = True
            return None
        EVALUATION_KERNELS.start(_warm_up_evaluation)
        return EVALUATION_KERNELS.kernels if EVALUATION_KERNELS.ready() else None
