"""The numpy engine: counts a chunk of packet records into a ``State``, the reference implementation.

``count`` does, array by array, what the compiled kernels (``compiled.py``) do packet by packet;
``tests/test_compiled.py`` and ``tests/test_state.py`` compare them.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from larpix_dqm.exporter.detector.geometry import CHANNELS_PER_CHIP
from larpix_dqm.exporter.quality.slots import COLUMNS
from larpix_dqm.exporter.quality.state import MERGE_TICKS, PACKET_TYPES, SUMS, State
from larpix_dqm.exporter.quality.window import slot_ends
from larpix_dqm.exporter.reading.packets import (
    DATA,
    DATA_TRIGGER_TYPES,
    EXTERNAL_TRIGGER_BIT,
    IO_GROUPS,
    PERIODIC_TRIGGER,
    SYNC,
    SYNC_KIND_CODES,
    TICKS_PER_SYNC,
    TIMESTAMP,
    TRIGGER,
    latest_seconds,
)

#: Cells of a chunk's per-channel sums (slots x channels) up to which they are summed over all of them rather than
#: over the distinct ones, per data packet of the chunk (a module's 500 k-packet chunk: 0.8; 50 io_groups': 100).
DENSE_CELLS_PER_PACKET = 4
#: Window slot of data packets that are not self-triggered: counted, but they feed no rate or verdict.
NOT_SELF_TRIGGERED = -2


def count(state: State, packets: np.ndarray, slots: np.ndarray, ends: np.ndarray) -> None:
    """Count a chunk of packet records whose window ``slots`` and live bin ``ends`` (``AcceptedStamps.fill``)
    are known: the reference implementation of the compiled kernels, which do the same packet for packet."""
    ptype = packets["packet_type"]
    is_data = ptype == DATA
    other = np.flatnonzero(~is_data)  # data packets are counted per chip (and per link), summed at snapshot
    type_key = packets["io_group"][other].astype(np.int64) * (PACKET_TYPES + 1) + np.minimum(ptype[other], PACKET_TYPES)
    counts = np.bincount(type_key, minlength=IO_GROUPS * (PACKET_TYPES + 1)).reshape(IO_GROUPS, -1)
    state.packet_type_counts += counts[:, :PACKET_TYPES]
    data_rows = np.flatnonzero(is_data)
    record = np.dtype((np.void, packets.dtype.itemsize))  # one whole-record gather beats one per field
    data = np.ascontiguousarray(packets).view(record)[data_rows].view(packets.dtype)
    valid = data["valid_parity"] != 0
    # chips of clean packets, registered first: a parity error may have corrupted any field, so it
    # never creates a chip, but it counts on one that this chunk's clean packets show to exist
    rows = np.full(len(data), -1, np.int64)
    rows[valid] = state.chips.rows_for(data["io_group"][valid], data["io_channel"][valid], data["chip_id"][valid])
    state.fit(spare=True)
    data_slots = _rate_slots(state, data, slots[data_rows], rows, valid)
    flags = data["local_fifo"] | (data["shared_fifo"] << 2)
    if not valid.all():
        bad = ~valid
        count_parity_errors(
            state, data["io_group"][bad], data["io_channel"][bad], data["chip_id"][bad], flags[bad], data_slots[bad]
        )
        _add_data(state, data[valid], data_slots[valid], rows[valid], flags[valid])
    else:
        _add_data(state, data, data_slots, rows, flags)
    _note_old_hits(state, data["channel_id"], data_slots, ends[data_rows], rows, valid)
    seconds = latest_seconds(packets, packets["packet_type"] == TIMESTAMP, state.arrival_second)
    own = np.flatnonzero(valid & (data_slots != NOT_SELF_TRIGGERED))
    if len(own):
        times = seconds[data_rows[own]] * TICKS_PER_SYNC + data["timestamp"][own].astype(np.int64)
        _count_arrivals(state, rows[own] * CHANNELS_PER_CHIP + (data["channel_id"][own] & 63), times, data_slots[own])
    syncs = np.flatnonzero(ptype == SYNC)
    if len(syncs):
        _add_syncs(state, packets[syncs], slots[syncs])
    triggers = np.flatnonzero(ptype == TRIGGER)
    if len(triggers):
        _add_triggers(state, packets[triggers], slots[triggers])


def count_parity_errors(
    state: State,
    io_group: np.ndarray,
    io_channel: np.ndarray,
    chip_id: np.ndarray,
    flags: np.ndarray,
    slots: np.ndarray,
) -> None:
    """Count data packets with a parity error: on their chip if it is known (geometry or valid
    packets, this chunk's included), else on their io_group and io_channel; they create no chip."""
    rows = state.chips.lookup(io_group.astype(np.uint8), io_channel.astype(np.uint8), chip_id.astype(np.uint8))
    known = rows >= 0
    if known.any():
        cap = state.capacity
        counted = np.bincount(rows[known], minlength=cap)
        state.chip_parity += counted
        state.chip_packets += counted
        _add_window_flags(state, rows[known], slots[known], 0)
        _count_fifo_flags(state, rows[known], flags[known])
    unknown = ~known
    if unknown.any():
        key = io_group[unknown].astype(np.int64) * 256 + io_channel[unknown]
        _count_each(state.link_parity, key)


def _window_slots(slots: np.ndarray) -> tuple[list[int], np.ndarray]:
    """The window slots a chunk's packets fall in (a chunk of a second of data: one or two of the window's) and
    each packet's row among them plus 2: row 0 for the packets that are not self-triggered (slot -2), row 1 for
    those outside the window (slot -1); per-chunk arrays sized by the slots the chunk fills, not the window."""
    used = np.flatnonzero(np.bincount(slots[slots >= 0]))  # (the window's slots: a few small integers)
    rows = np.where(slots >= 0, np.searchsorted(used, slots) + 2, slots + 2)
    return used.tolist(), rows


def _add_data(state: State, data: np.ndarray, slots: np.ndarray, rows: np.ndarray, flags: np.ndarray) -> None:
    """Per-channel and per-chip sums of valid data packets (window ``slots``, chip ``rows``, FIFO ``flags``)."""
    if len(data) == 0:
        return
    io_group = data["io_group"]
    adc_code = data["dataword"]
    used, slot_rows = _window_slots(slots)
    # Cells slot_row x every channel + channel of the packets: slot_row 0 holds packets that are not self-triggered,
    # 1 self-triggered ones outside the window, then the filled slots; per-chunk arrays as long as the cells with
    # packets, not as the detector's channels (50 io_groups: 10 M cells a chunk, 100 k with packets).
    channels = state.capacity * CHANNELS_PER_CHIP
    key = slot_rows * channels + rows * CHANNELS_PER_CHIP + (data["channel_id"] & 63)
    cells, sum_of = _cells(key, (len(used) + 2) * channels)
    hits = sum_of(None)
    cell_row, channel = np.divmod(cells, channels)
    np.add.at(state.hits_total.reshape(-1), channel, hits)
    own = cell_row != 0
    np.add.at(state.self_hits.reshape(-1), channel[own], hits[own])
    np.add.at(state.chip_packets, channel // CHANNELS_PER_CHIP, hits)
    window = np.flatnonzero(cell_row >= 2)
    if len(window):
        adc = adc_code.astype(np.float64)
        sums = {
            "hits": hits[window],
            "adc": sum_of(adc)[window].astype(np.int64),
            "adc_sq": sum_of(adc * adc)[window].astype(np.int64),
        }
        _add_window(state, used, cell_row[window] - 2, channel[window], sums)
        _note_last_hits(state, used, cell_row[window] - 2, channel[window])
    _count_each(state.adc_counts, io_group.astype(np.int64) * 256 + adc_code)
    flagged = _count_fifo_flags(state, rows, flags)
    if len(flagged):
        full = flagged[(flags[flagged] & 10) != 0]
        _add_window_flags(state, rows[full], slots[full], 1)


def _count_each(counts: np.ndarray, flat: np.ndarray) -> None:
    """Add one to ``counts`` (any shape) at each of the ``flat`` indices: by ``np.add.at`` while they are fewer than
    its cells, else by a bincount over every cell (a small file's 100 packets: 1 us against 20 us)."""
    if len(flat) < counts.size:
        np.add.at(counts.reshape(-1), flat, 1)
    else:
        counts += np.bincount(flat, minlength=counts.size).reshape(counts.shape)


def _cells(key: np.ndarray, size: int) -> tuple[np.ndarray, Callable[[np.ndarray | None], np.ndarray]]:
    """The distinct cells of ``key`` (non-negative, below ``size``), ascending, and a function summing weights (None:
    one a packet) per cell: by a bincount over every cell while they are at most a few a packet (a chunk of a module),
    by sorting the keys when they are many more (a chunk of 50 io_groups: a bincount's 10 M cells cost 350 ms of
    page faults and zeros where 100 k have packets)."""
    if size <= DENSE_CELLS_PER_PACKET * len(key):
        counts = np.bincount(key, minlength=size)
        cells = np.flatnonzero(counts)

        def over_all(weights: np.ndarray | None) -> np.ndarray:
            return counts[cells] if weights is None else np.bincount(key, weights, size)[cells]

        return cells, over_all
    distinct, inverse = np.unique(key, return_inverse=True)

    def over_distinct(weights: np.ndarray | None) -> np.ndarray:
        return np.bincount(inverse, weights, len(distinct))

    return distinct, over_distinct


def _add_window(
    state: State, slots: list[int], slot_index: np.ndarray, channel: np.ndarray, sums: dict[str, np.ndarray]
) -> None:
    """Add the window cells (``slots[slot_index]``, flat ``channel`` row * 64 + id, in ascending slot index) with their
    ``sums`` (of some of ``slots.COLUMNS``, the others zero) to the window: as the slots' entries and to the window's
    sums."""
    bounds = np.searchsorted(slot_index, np.arange(len(slots) + 1))
    zero = np.zeros(len(channel), np.int64)
    for i, slot in enumerate(slots):
        part = slice(bounds[i], bounds[i + 1])
        state.slot_sums.add(slot, channel[part], *(sums[c][part] if c in sums else zero[part] for c in COLUMNS))
    for f in SUMS:
        if (counts := sums.get(str(f.sums))) is not None:
            np.add.at(getattr(state, f.name).reshape(-1), channel, counts.astype(np.int64, copy=False))


def _stable_order(keys: np.ndarray) -> np.ndarray:
    """A stable argsort of non-negative integer ``keys`` below 2**32, by 16-bit digits (numpy sorts those
    by radix: about twice as fast as a general stable sort of millions of keys)."""
    order = np.argsort((keys & 0xFFFF).astype(np.uint16), kind="stable")
    high = keys[order] >> 16
    return order[np.argsort(high.astype(np.uint16), kind="stable")] if high.any() else order


def _count_arrivals(state: State, channel: np.ndarray, times: np.ndarray, slots: np.ndarray) -> None:
    """Count the independent arrivals among self-triggered hits (flat ``channel`` row * 64 + id, ``times``
    second x TICKS_PER_SYNC + tick, window ``slots``, in packet order) as the kernel does hit by hit: a
    hit not within MERGE_TICKS after its channel's current arrival's first hit starts a new arrival.

    Vectorised by clusters, runs of a channel's hits each within MERGE_TICKS of the one before (times
    as cumulative gaps, capped at MERGE_TICKS + 1): a cluster's first hit after a longer gap is an
    arrival; only a cluster longer than MERGE_TICKS (a channel firing above 1 kHz) is walked arrival by
    arrival, and only a channel whose times go back (a sync and the second out of step) hit by hit.
    """
    order = _stable_order(channel)
    channel, times, slots = channel[order], times[order], slots[order]
    anchors = state.arrival_start.reshape(-1)
    first = np.concatenate(([True], channel[1:] != channel[:-1]))
    before = np.concatenate(([0], times[:-1]))
    before[first] = anchors[channel[first]]  # a channel's first hit follows its current arrival's first hit
    steps = times - before
    back = steps < 0
    irregular = np.isin(channel, channel[back]) if back.any() else back
    gaps = np.minimum(np.where(irregular, 0, steps), MERGE_TICKS + 1)
    cumulative = np.cumsum(gaps)
    arrival = gaps > MERGE_TICKS
    heads = np.flatnonzero(arrival | first)
    ends = np.concatenate((heads[1:], [len(channel)])) - 1
    starts = np.where(arrival[heads], cumulative[heads], cumulative[heads] - gaps[heads])  # a cluster's arrival
    long = cumulative[ends] - starts > MERGE_TICKS
    for start, end in zip(starts[long].tolist(), ends[long].tolist(), strict=True):
        while (i := int(np.searchsorted(cumulative, start + MERGE_TICKS, side="right"))) <= end:
            arrival[i], start = True, cumulative[i]
    start = 0
    for i in np.flatnonzero(irregular).tolist():
        start = int(anchors[channel[i]]) if first[i] else start
        if not 0 <= times[i] - start <= MERGE_TICKS:
            arrival[i], start = True, int(times[i])
    at = np.flatnonzero(arrival)
    if not len(at):  # every hit within its channel's current arrival
        return
    last = np.concatenate((channel[at][1:] != channel[at][:-1], [True]))
    anchors[channel[at][last]] = times[at][last]
    np.add.at(state.arrivals_total.reshape(-1), channel[at], 1)
    inside = at[slots[at] >= 0]
    used, slot_rows = _window_slots(slots[inside])
    channels = state.capacity * CHANNELS_PER_CHIP
    cells, counts = np.unique((slot_rows - 2) * channels + channel[inside], return_counts=True)
    slot_index, cell_channel = np.divmod(cells, channels)
    _add_window(state, used, slot_index, cell_channel, {"arrivals": counts})


def _count_fifo_flags(state: State, rows: np.ndarray, flags: np.ndarray) -> np.ndarray:
    """Count FIFO flags (bits: local half, local full, shared half, shared full) per chip; return the flagged indices."""
    flagged = np.flatnonzero(flags)
    for i, bit in enumerate((1, 2, 4, 8)):
        if len(flagged):
            state.chip_fifo[:, i] += np.bincount(rows[flagged[(flags[flagged] & bit) != 0]], minlength=state.capacity)
    return flagged


def _note_last_hits(state: State, slots: list[int], slot_index: np.ndarray, channel: np.ndarray) -> None:
    """Move each channel's last-hit time to the end of the newest window bin it has hits in: the window cells
    ``slots[slot_index]`` x flat ``channel`` (row * 64 + id; each chip's ring slots belong to its io_group's window)."""
    groups = state.chips.keys[channel // CHANNELS_PER_CHIP, 0].astype(np.int64)
    ends = slot_ends(state, groups, np.asarray(slots, np.int64)[slot_index])
    np.fmax.at(state.last_hit_end.reshape(-1), channel, ends)


def _note_old_hits(
    state: State, channel_id: np.ndarray, slots: np.ndarray, ends: np.ndarray, rows: np.ndarray, valid: np.ndarray
) -> None:
    """Move each channel's last-hit time to the bin end of its newest clean self-triggered hit that is
    outside the window (``slots`` -1): a chunk longer than the window keeps every channel's last hit."""
    old = np.flatnonzero((slots == -1) & valid & ~np.isnan(ends))
    if len(old):
        np.fmax.at(state.last_hit_end.reshape(-1), rows[old] * CHANNELS_PER_CHIP + (channel_id[old] & 63), ends[old])


def _rate_slots(state: State, data: np.ndarray, slots: np.ndarray, rows: np.ndarray, valid: np.ndarray) -> np.ndarray:
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
    _count_each(state.trigger_type_counts, groups)
    other_slots = slots[other]
    inside = other_slots >= 0
    _count_each(state.window_trigger_types, other_slots[inside] * size + groups[inside])
    periodic = other[(trigger == PERIODIC_TRIGGER) & valid[other]]
    if len(periodic):
        _add_pedestals(state, data[periodic], slots[periodic], rows[periodic])
    rate_slots = slots.copy()
    rate_slots[other] = NOT_SELF_TRIGGERED
    return rate_slots


def _add_pedestals(state: State, data: np.ndarray, slots: np.ndarray, rows: np.ndarray) -> None:
    """Count, ADC sum and ADC sum of squares of periodic-trigger packets, per channel and window slot."""
    if not (slots >= 0).any():  # none in the window: no window made for them (as the kernel does)
        return
    window = state.make("win_pedestal")
    inside = np.flatnonzero(slots >= 0)
    flat = window.shape[1] * CHANNELS_PER_CHIP
    key = slots[inside] * flat + rows[inside].astype(np.int64) * CHANNELS_PER_CHIP + (data["channel_id"][inside] & 63)
    adc = data["dataword"][inside].astype(np.float64)
    size = state.config.window_bins * flat
    for i, weights in enumerate((None, adc, adc * adc)):
        window[..., i] += np.bincount(key, weights, size).astype(np.int64).reshape(window.shape[:3])


def _add_window_flags(state: State, rows: np.ndarray, slots: np.ndarray, which: int) -> None:
    """Count rare per-chip flags (0: parity error, 1: a FIFO full) into the window."""
    inside = slots >= 0
    cap = state.capacity
    counts = np.bincount(slots[inside] * cap + rows[inside], minlength=state.config.window_bins * cap)
    state.win_flags[:, :, which] += counts.reshape(state.config.window_bins, cap)


def _add_syncs(state: State, syncs: np.ndarray, slots: np.ndarray) -> None:
    if len(syncs) == 0:
        return
    io_group, kind = syncs["io_group"], syncs["trigger_type"]
    for i, code in enumerate(SYNC_KIND_CODES):
        state.sync_counts[:, i] += np.bincount(io_group[kind == code], minlength=IO_GROUPS)
    is_s = kind == SYNC_KIND_CODES[0]
    offsets = syncs["timestamp"][is_s].astype(np.int64) - TICKS_PER_SYNC
    bucket = np.searchsorted(np.asarray(state.config.sync_offset_buckets_ticks), offsets, side="left")
    nbk = state.sync_offset_counts.shape[1]
    state.sync_offset_counts += np.bincount(
        io_group[is_s].astype(np.int64) * nbk + bucket, minlength=IO_GROUPS * nbk
    ).reshape(IO_GROUPS, nbk)
    state.sync_offset_sum += np.bincount(io_group[is_s], offsets, IO_GROUPS).astype(np.int64)
    s_slots = slots[is_s]
    s_groups = io_group[is_s]
    for slot in np.unique(s_slots[s_slots >= 0]):
        state.window_io_group[slot, :, 0] += np.bincount(s_groups[s_slots == slot], minlength=IO_GROUPS)


def _add_triggers(state: State, triggers: np.ndarray, slots: np.ndarray) -> None:
    external = (triggers["trigger_type"] & EXTERNAL_TRIGGER_BIT) != 0
    if not external.any():
        return
    groups, t_slots = triggers["io_group"][external], slots[external]
    state.trigger_counts += np.bincount(groups, minlength=IO_GROUPS)
    for slot in np.unique(t_slots[t_slots >= 0]):
        state.window_io_group[slot, :, 1] += np.bincount(groups[t_slots == slot], minlength=IO_GROUPS)
