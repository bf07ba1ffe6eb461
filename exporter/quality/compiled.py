"""Compiled accumulation: one numba pass per chunk that decodes and counts every packet.

``count_chunk`` does, packet for packet and counter for counter, what the numpy engine
(``engine.count``, the reference implementation) does; ``tests/test_compiled.py`` compares them.
The arrays it counts into are the fields of ``state.FIELDS`` marked for it, unpacked in the
table's order (``tests/test_state.py`` checks the names). Raw PACMAN messages are decoded and
counted in the same pass, never materialised as packet records. While the trigger pairing
(``triggers.py``) is active, ``count_chunk`` also places each chunk's hits and triggers on the time line;
until then the chunk that brings the first trigger is decoded (``decode_records``) and placed
(``place_packets``); ``pair_hits`` counts the held hits against the triggers. Each is tested against
its numpy reference.

It is one function with one copy of the counting code for both sources: a helper taking the
arrays would cost their reference counting on every packet (about 130 ns a packet), and numba
cannot inline a function of that many arguments.

The kernel stops early (returning a ``NEED_*`` code and its position in ``pos``) when Python has
to act first: register a new chip, make the pedestal window, grow the buffer of parity-error
packets whose chip is not known yet, or fold ``hits`` before a channel's sum could overflow; it
then resumes where it stopped, so every packet is counted once. Compiled code is cached on disk (numba's ``cache=True``); ``loader.KernelLoader``
loads or compiles it in a background thread, and the accumulator uses the numpy engine until then (for good
where numba cannot compile: ``not_compiled``, or an error while compiling).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import config, njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from larpix_dqm.exporter.quality.state import MERGE_TICKS
from larpix_dqm.exporter.reading.decode import WORD_DATA, WORD_SYNC, WORD_TRIGGER
from larpix_dqm.exporter.reading.packets import (
    DATA,
    EXTERNAL_TRIGGER_BIT,
    PERIODIC_TRIGGER,
    SYNC,
    SYNC_KIND_CODES,
    TICKS_PER_SYNC,
    TIMESTAMP,
    TRIGGER,
)

OK, NEED_CHIP, NEED_PEDESTAL, NEED_SPACE, NEED_FOLD = range(5)
#: A channel's count in ``hits`` after which they are folded (its int32 ADC sum of squares stays exact).
FOLD_AT = (2**31 - 1) // 255**2

_SYNC_S, _SYNC_H, _SYNC_C = SYNC_KIND_CODES
#: Columns of a deferred parity-error packet: io_group, io_channel, chip_id, FIFO flags, window slot.
DEFERRED_COLUMNS = 5
#: Words (of raw messages; packets of packet records) ahead whose counters ``count_chunk`` fetches into the cache
#: while counting the current one.
PREFETCH_AHEAD = 16


@intrinsic
def prefetch(typingctx, array, index):
    """Fetch the cache line of ``array[index]`` (a tuple of indices) for a read soon: a data packet's counters
    are at a random channel of arrays larger than the core's cache, and a miss costs more than the packet's
    counting; fetched ahead, the misses of several packets overlap. Never faults, changes nothing."""
    if not isinstance(array, types.Array) or not isinstance(index, types.BaseTuple) or len(index) != array.ndim:
        return None  # no such signature: numba reports the call as mistyped
    if not all(isinstance(kind, types.Integer) for kind in index):
        return None
    signature = types.void(array, index)

    def codegen(context, builder, sig, args):
        array_type, index_type = sig.args
        view = context.make_array(array_type)(context, builder, args[0])
        indices = [
            context.cast(builder, value, kind, types.intp)
            for value, kind in zip(cgutils.unpack_tuple(builder, args[1], len(index_type)), index_type)
        ]
        address = builder.bitcast(
            cgutils.get_item_pointer(context, builder, array_type, view, indices), ir.IntType(8).as_pointer()
        )
        i32 = ir.IntType(32)
        fetch = builder.module.declare_intrinsic(
            "llvm.prefetch", [address.type], ir.FunctionType(ir.VoidType(), [address.type, i32, i32, i32])
        )
        # a read, kept in every cache level, of data
        builder.call(fetch, [address, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return signature, codegen


@njit(cache=True, nogil=True)
def count_chunk(  # noqa: C901 - one pass over the packets: a branch per packet kind, inline for speed
    state, hits, touched, local_of, local_rows, keys, blocks, table, buckets, has_pedestal, deferred, pos, cur, cur_end,
    rows, slots, ends, groups, records, offsets, buffer, starts, words, msg_groups, pairing, second, receipts,
    trigger_words, found,
):  # fmt: skip
    """Count a chunk into ``state`` (the fields of ``state.kernel_fields(COUNT)``, in that order): packet ``records`` (rows of bytes; ``offsets`` of the ``REQUIRED_FIELDS`` in a row,
    all one byte but the timestamp of ``offsets[-1]`` bytes), or, when ``starts`` is not empty,
    raw messages (``starts`` into ``buffer``, ``words`` 16-byte words each after the 8-byte header,
    ``msg_groups``), in ``decode_messages``'s order: each message's timestamp packet, then its words.

    Clean data packets are counted into ``hits`` (int32; key, place, channel: count, ADC sum, ADC sum of
    squares, new arrivals; the key of rate slot s is ``keys[s + 2]``) and folded into the accumulator's arrays
    after the kernel returns (``fold_hits``): one cache line a packet, in an array that fits the core's cache for
    a slot, where the accumulator's own arrays would cost six cache misses a packet. A place is a chip row when
    ``local_of`` is empty (``hits`` has a place for every row); else a row gets the next place the first time it
    has a clean data packet (``local_of[row]``, -1 before; ``local_rows[place]``, ``pos[7]`` places given), so
    ``hits`` is as long as the chips a chunk touches, not the detector; when its places are all given, the kernel
    returns for a fold. ``touched`` (uint64, key, place) has a bit set for each channel with counts: the fold reads
    only those channels' counts, a cache line each (a chip's 64 are 16 lines: a small file's fold read 1 kB a hit),
    and leaves ``hits``, ``touched`` and the places empty.

    A self-triggered hit is a new independent arrival (``state.MERGE_TICKS``) unless it is within its
    channel's current one (``arrival_start``), timed on the data second of its io_group's latest
    timestamp packet and its own tick.

    ``pos``: packet or message to go on from, word in that message (-1: its timestamp packet), next
    accepted timestamp in ``rows``, deferred parity errors, words of unknown type, placed hits and triggers
    (below), places given in ``hits``. ``cur`` is each io_group's window slot, moved at the accepted timestamp rows
    (packets, or messages) to ``slots``; ``cur_end`` its live bin end, moved to ``ends``: the last-hit time of a
    hit outside the window.

    ``pairing`` (the trigger pairing is active): the chunk is placed for it as ``place_packets`` places it, in
    the same pass: its trigger words counted into ``trigger_words``, each io_group's data ``second`` moved at the
    accepted timestamps, the placed self-triggered hits (time, chip row, io_group) and external triggers (time,
    io_group) written to the five arrays ``found``, ``pos[5]`` and ``pos[6]`` of them so far (``receipts``:
    the packet records' receipt timestamps, or empty).
    """
    (
        packet_type_counts, sync_counts, trigger_counts, sync_offset_counts, sync_offset_sum, adc_counts, link_parity,
        trigger_type_counts, chip_packets, chip_parity, chip_fifo, last_hit_end, window_io_group, window_trigger_types,
        win_flags, win_pedestal, arrival_second, arrival_start,
    ) = state  # fmt: skip
    (
        at_group, at_channel, at_chip, at_type, at_parity, at_channel_id, at_time, at_adc, at_trig, at_local,
        at_shared, time_bytes,
    ) = offsets  # fmt: skip
    hit_times, hit_rows, hit_groups, trigger_times, trigger_groups = found
    raw = len(starts) > 0
    direct = len(local_of) == 0  # the chip rows are the places of ``hits``
    # messages start on 8-byte boundaries and the buffer ends on one (``split_messages``): whole-word loads
    words64, words32 = buffer.view(np.uint64), buffer.view(np.uint32)
    n = len(starts) if raw else len(records)
    i, w, j = pos[0], pos[1], pos[2]
    while i < n:
        # -- the packet at (i, w): its fields ------------------------------------------------
        if raw:
            g = np.int64(msg_groups[i])
            c = chip = channel = adc = trig = fifo = receipt = 0
            ticks = np.int64(0)
            valid = False
            if w < 0:
                ptype = TIMESTAMP
                o = starts[i]  # the message's data second, header bytes 1-4
                ticks = np.int64(buffer[o + 1]) | np.int64(buffer[o + 2]) << 8 | np.int64(buffer[o + 3]) << 16
                ticks |= np.int64(buffer[o + 4]) << 24
            elif w >= words[i]:
                i += 1
                w = -1
                continue
            else:
                o = starts[i] + 8 + 16 * w
                kind = buffer[o]
                if kind == WORD_DATA:
                    word = words64[(o + 8) >> 3]
                    parity = word ^ (word >> np.uint64(32))
                    parity ^= parity >> np.uint64(16)
                    parity ^= parity >> np.uint64(8)
                    parity ^= parity >> np.uint64(4)
                    parity ^= parity >> np.uint64(2)
                    parity ^= parity >> np.uint64(1)
                    valid = (parity & np.uint64(1)) != 0
                    ptype = np.int64(word & np.uint64(3))
                    c = np.int64(buffer[o + 1])
                    chip = np.int64((word >> np.uint64(2)) & np.uint64(255))
                    channel = np.int64((word >> np.uint64(10)) & np.uint64(63))
                    adc = np.int64((word >> np.uint64(48)) & np.uint64(255))
                    ticks = np.int64((word >> np.uint64(16)) & np.uint64(0x7FFFFFFF))
                    trig = np.int64((word >> np.uint64(56)) & np.uint64(3))
                    fifo = np.int64((word >> np.uint64(58)) & np.uint64(15))
                    if pairing:  # the PACMAN's receipt time, header bytes 2-5
                        receipt = np.int64((words64[o >> 3] >> np.uint64(16)) & np.uint64(0xFFFFFFFF))
                elif kind == WORD_TRIGGER or kind == WORD_SYNC:
                    ptype = TRIGGER if kind == WORD_TRIGGER else SYNC
                    trig = np.int64(buffer[o + 1])
                    ticks = np.int64(words32[(o + 4) >> 2])
                else:  # a word of unknown type: counted, no packet
                    pos[4] += 1
                    w += 1
                    continue
        else:
            g = np.int64(records[i, at_group])
            c, chip, channel = (
                np.int64(records[i, at_channel]),
                np.int64(records[i, at_chip]),
                np.int64(records[i, at_channel_id]),
            )
            ptype, valid = np.int64(records[i, at_type]), records[i, at_parity] != 0
            adc, trig = np.int64(records[i, at_adc]), np.int64(records[i, at_trig])
            fifo = (np.int64(records[i, at_local]) | (np.int64(records[i, at_shared]) << 2)) & 255
            ticks = np.int64(0)
            if ptype == SYNC or ptype == DATA or ptype == TIMESTAMP or ptype == TRIGGER:  # timestamps read
                for b in range(time_bytes):
                    ticks |= np.int64(records[i, at_time + b]) << (8 * b)
            receipt = receipts[i] if len(receipts) else 0
        if w < 0 or not raw:  # a packet row, or a message's timestamp: the accepted ones move the windows
            while j < len(rows) and rows[j] <= i:
                cur[groups[j]] = slots[j]
                cur_end[groups[j]] = ends[j]
                if pairing:
                    second[groups[j]] = ticks
                j += 1
        s = cur[g]

        # -- count it (a NEED_* return changes nothing) ---------------------------------------
        if ptype != DATA:
            if ptype < 8:
                packet_type_counts[g, ptype] += 1
            if ptype == TIMESTAMP:
                arrival_second[g] = ticks
            if ptype == SYNC:
                if trig == _SYNC_S:
                    sync_counts[g, 0] += 1
                    offset = ticks - TICKS_PER_SYNC
                    bucket = 0
                    while bucket < len(buckets) and buckets[bucket] < offset:
                        bucket += 1
                    sync_offset_counts[g, bucket] += 1
                    sync_offset_sum[g] += offset
                    if s >= 0:
                        window_io_group[s, g, 0] += 1
                elif trig == _SYNC_H:
                    sync_counts[g, 1] += 1
                elif trig == _SYNC_C:
                    sync_counts[g, 2] += 1
            elif ptype == TRIGGER:
                if pairing:
                    for bit in range(trigger_words.shape[1]):
                        if (trig >> bit) & 1:
                            trigger_words[g, bit] += 1
                    if trig & EXTERNAL_TRIGGER_BIT and second[g] >= 0:
                        k = pos[6]
                        trigger_times[k] = second[g] * TICKS_PER_SYNC + ticks
                        trigger_groups[k] = g
                        pos[6] = k + 1
                if trig & EXTERNAL_TRIGGER_BIT:
                    trigger_counts[g] += 1
                    if s >= 0:
                        window_io_group[s, g, 1] += 1
        else:
            # the counters of the data word (packet row) PREFETCH_AHEAD on: fetched now, in the cache when it is counted
            i2, w2, ahead = i + PREFETCH_AHEAD, w + PREFETCH_AHEAD, False
            g2 = c2 = chip2 = ch2 = kind2 = 0
            if raw:
                i2 = i
                while i2 < n and w2 >= words[i2]:  # past the end of message i2: on in the next ones
                    w2 -= words[i2]
                    i2 += 1
                if i2 < n:
                    o2 = starts[i2] + 8 + 16 * w2
                    if buffer[o2] == WORD_DATA:
                        word2 = words64[(o2 + 8) >> 3]
                        g2, c2, ahead = np.int64(msg_groups[i2]), np.int64(buffer[o2 + 1]), True
                        chip2 = np.int64((word2 >> np.uint64(2)) & np.uint64(255))
                        ch2 = np.int64((word2 >> np.uint64(10)) & np.uint64(63))
                        kind2 = np.int64((word2 >> np.uint64(56)) & np.uint64(3))
            elif i2 < n and records[i2, at_type] == DATA:
                g2, c2, ahead = np.int64(records[i2, at_group]), np.int64(records[i2, at_channel]), True
                chip2, ch2 = np.int64(records[i2, at_chip]), np.int64(records[i2, at_channel_id]) & 63
                kind2 = np.int64(records[i2, at_trig]) & 3
            if ahead and blocks[g2] >= 0:
                row2 = table[(np.int64(blocks[g2]) << 16) | (c2 << 8) | chip2]
                place2 = row2 if direct or row2 < 0 else local_of[row2]
                key2 = keys[cur[g2] + 2] if kind2 == 0 else keys[0]
                if place2 >= 0 and key2 >= 0:
                    prefetch(hits, (key2, place2, ch2, 0))
                    if kind2 == 0:
                        prefetch(arrival_start, (row2, ch2))
            kind = trig & 3
            row = -1
            block = blocks[g]
            if block >= 0:
                row = table[(np.int64(block) << 16) | (c << 8) | chip]
            if valid and row < 0:
                pos[0], pos[1], pos[2] = i, w, j
                return NEED_CHIP
            if valid and kind == PERIODIC_TRIGGER and s >= 0 and not has_pedestal:
                pos[0], pos[1], pos[2] = i, w, j
                return NEED_PEDESTAL
            if not valid and row < 0 and pos[3] >= len(deferred):
                pos[0], pos[1], pos[2] = i, w, j
                return NEED_SPACE
            rate_slot = s if kind == 0 else -2  # -2: not self-triggered, counted but no rate and no verdict
            key = keys[rate_slot + 2]  # row of ``hits``: 0 not self-triggered, 1 outside the window, 2... a slot
            ch = channel & 63
            place = row if direct or not valid else local_of[row]
            if valid and (place < 0 and pos[7] == len(local_rows) or place >= 0 and hits[key, place, ch, 0] >= FOLD_AT):
                pos[0], pos[1], pos[2] = i, w, j
                return NEED_FOLD
            if valid and place < 0:  # the chip's first clean data packet since the last fold
                place = pos[7]
                local_of[row] = place
                local_rows[place] = row
                pos[7] = place + 1
            if kind != 0:
                trigger_type_counts[g, kind] += 1
                if s >= 0:
                    window_trigger_types[s, g, kind] += 1
            if not valid:  # a parity error may have corrupted any field: counted, nothing more
                if row < 0:  # its chip may still appear in this chunk: decided after it
                    k = pos[3]
                    deferred[k, 0] = g
                    deferred[k, 1] = c
                    deferred[k, 2] = chip
                    deferred[k, 3] = fifo
                    deferred[k, 4] = rate_slot
                    pos[3] = k + 1
                else:
                    chip_parity[row] += 1
                    chip_packets[row] += 1
                    if rate_slot >= 0:
                        win_flags[rate_slot, row, 0] += 1
                    for bit in range(4):
                        if fifo & (1 << bit):
                            chip_fifo[row, bit] += 1
            else:
                hits[key, place, ch, 0] += 1
                touched[key, place] |= np.uint64(1) << np.uint64(ch)
                if key == 1 and not last_hit_end[row, ch] >= cur_end[g]:  # outside the window (NaN: no time)
                    end = cur_end[g]
                    if end == end:
                        last_hit_end[row, ch] = end
                adc_counts[g, adc] += 1
                if rate_slot >= 0:
                    hits[key, place, ch, 1] += adc
                    hits[key, place, ch, 2] += adc * adc
                if fifo:
                    if rate_slot >= 0 and fifo & 10:
                        win_flags[rate_slot, row, 1] += 1
                    for bit in range(4):
                        if fifo & (1 << bit):
                            chip_fifo[row, bit] += 1
                if kind == 0:  # a new arrival unless at most MERGE_TICKS after the current one's first hit
                    time = arrival_second[g] * TICKS_PER_SYNC + ticks
                    if not 0 <= time - arrival_start[row, ch] <= MERGE_TICKS:
                        arrival_start[row, ch] = time
                        hits[key, place, ch, 3] += 1
                    if pairing and second[g] >= 0:
                        k = pos[5]
                        hit_times[k] = second[g] * TICKS_PER_SYNC + ticks
                        if receipt > 0 and ticks > receipt:  # the chip's clock ahead of the PACMAN's: the period before
                            hit_times[k] -= TICKS_PER_SYNC
                        hit_rows[k] = row
                        hit_groups[k] = g
                        pos[5] = k + 1
                if kind == PERIODIC_TRIGGER and s >= 0:
                    win_pedestal[s, row, ch, 0] += 1
                    win_pedestal[s, row, ch, 1] += adc
                    win_pedestal[s, row, ch, 2] += adc * adc
        if raw:
            w += 1
        else:
            i += 1
    pos[0], pos[1], pos[2] = i, w, j
    return OK


@njit(cache=True, nogil=True)
def fold_hits(
    state, hits, touched, local_of, local_rows, key_slots, row_groups, newest_bin, bins, bin_seconds, entries, key_ends
):
    """Add a chunk's ``hits`` (see ``count_chunk``; the places of chip rows ``local_rows``) to ``state`` (the fields of
    ``state.kernel_fields(FOLD)``, in that order), as the numpy engine's ``_add_data`` does: all-time and
    self-triggered counts, window sums over the slots, arrivals, and each channel's last-hit time (end of the newest
    window bin with a hit: ``window.slot_ends``, from each io_group's ``newest_bin``, a window of ``bins`` bins
    of ``bin_seconds``); ``key_slots``: the rate slot of each key. The window slots'
    entries (``slots.SlotSums``: channel, then a sum per ``slots.COLUMNS``) go to ``entries``, a key's before
    ``key_ends[key]``, for the caller to add. Leaves ``hits``, ``touched`` and ``local_of`` empty, for the next chunk."""
    (
        chip_packets, hits_total, self_hits, last_hit_end, arrivals_total,
        window_hits, window_adc, window_adc_sq, window_arrivals,
    ) = state  # fmt: skip
    entry_channel, entry_hits, entry_adc, entry_adc_sq, entry_arrivals = entries
    e = 0
    for key in range(touched.shape[0]):
        slot = key_slots[key]
        for place in range(len(local_rows)):
            channels = touched[key, place]
            if channels == 0:
                continue
            touched[key, place] = 0
            row = local_rows[place]
            g = row_groups[row]
            for ch in range(hits.shape[2]):
                if (channels >> np.uint64(ch)) & np.uint64(1) == 0:
                    continue
                n = hits[key, place, ch, 0]
                adc, adc_sq, arrivals = hits[key, place, ch, 1], hits[key, place, ch, 2], hits[key, place, ch, 3]
                hits[key, place, ch, :] = 0  # the buffer goes on to the next chunk
                hits_total[row, ch] += n
                chip_packets[row] += n
                if key != 0:
                    self_hits[row, ch] += n
                    arrivals_total[row, ch] += arrivals
                if slot >= 0:
                    entry_channel[e] = row * hits.shape[2] + ch
                    entry_hits[e] = n
                    entry_adc[e] = adc
                    entry_adc_sq[e] = adc_sq
                    entry_arrivals[e] = arrivals
                    e += 1
                    window_hits[row, ch] += n
                    window_adc[row, ch] += adc
                    window_adc_sq[row, ch] += adc_sq
                    window_arrivals[row, ch] += arrivals
                    newest = newest_bin[g]
                    end = (newest - (newest - slot) % bins + 1) * bin_seconds
                    if not last_hit_end[row, ch] >= end:
                        last_hit_end[row, ch] = end
        key_ends[key] = e
    if len(local_of):
        for row in local_rows:
            local_of[row] = -1


#: The packet record fields ``decode_records`` fills, in the order of its ``fields`` argument.
DECODED_FIELDS = (
    "io_group", "io_channel", "chip_id", "packet_type", "downstream_marker", "parity", "valid_parity", "channel_id",
    "timestamp", "dataword", "trigger_type", "local_fifo", "shared_fifo", "register_address", "register_data",
    "first_packet", "receipt_timestamp",
)  # fmt: skip


@njit(cache=True, nogil=True)
def decode_records(fields, words64, starts, words, msg_groups):
    """Decode raw messages into packet records as ``Messages.decode`` does, field for field: each message's
    timestamp packet, then its data, trigger and sync words (others skipped). ``fields`` are the record
    array's ``DECODED_FIELDS`` (the others stay zero), ``words64`` the message buffer as 64-bit words
    (messages and words start on 8-byte boundaries). Returns the records written and the words skipped."""
    (
        io_group, io_channel, chip_id, packet_type, downstream_marker, parity, valid_parity, channel_id, timestamp,
        dataword, trigger_type, local_fifo, shared_fifo, register_address, register_data, first_packet, receipt,
    ) = fields  # fmt: skip
    row = 0
    unknown = 0
    for m in range(len(starts)):
        g = msg_groups[m]
        at = starts[m] // 8
        io_group[row] = g
        packet_type[row] = TIMESTAMP
        timestamp[row] = (words64[at] >> np.uint64(8)) & np.uint64(0xFFFFFFFF)
        row += 1
        for k in range(words[m]):
            head = words64[at + 1 + 2 * k]
            kind = head & np.uint64(0xFF)
            if kind != WORD_DATA and kind != WORD_TRIGGER and kind != WORD_SYNC:
                unknown += 1
                continue
            w = words64[at + 2 + 2 * k]
            io_group[row] = g
            packet_type[row] = w & np.uint64(3)
            chip_id[row] = (w >> np.uint64(2)) & np.uint64(0xFF)
            channel_id[row] = (w >> np.uint64(10)) & np.uint64(0x3F)
            timestamp[row] = (w >> np.uint64(16)) & np.uint64(0x7FFFFFFF)
            first_packet[row] = (w >> np.uint64(47)) & np.uint64(1)
            dataword[row] = (w >> np.uint64(48)) & np.uint64(0xFF)
            trigger_type[row] = (w >> np.uint64(56)) & np.uint64(3)
            local_fifo[row] = (w >> np.uint64(58)) & np.uint64(3)
            shared_fifo[row] = (w >> np.uint64(60)) & np.uint64(3)
            downstream_marker[row] = (w >> np.uint64(62)) & np.uint64(1)
            parity[row] = (w >> np.uint64(63)) & np.uint64(1)
            register_address[row] = (w >> np.uint64(10)) & np.uint64(0xFF)
            register_data[row] = (w >> np.uint64(18)) & np.uint64(0xFF)
            odd = w ^ (w >> np.uint64(32))
            odd ^= odd >> np.uint64(16)
            odd ^= odd >> np.uint64(8)
            odd ^= odd >> np.uint64(4)
            odd ^= odd >> np.uint64(2)
            odd ^= odd >> np.uint64(1)
            valid_parity[row] = odd & np.uint64(1)
            if kind == WORD_DATA:
                io_channel[row] = (head >> np.uint64(8)) & np.uint64(0xFF)
                receipt[row] = (head >> np.uint64(16)) & np.uint64(0xFFFFFFFF)
            else:
                packet_type[row] = TRIGGER if kind == WORD_TRIGGER else SYNC
                trigger_type[row] = (head >> np.uint64(8)) & np.uint64(0xFF)
                timestamp[row] = (head >> np.uint64(32)) & np.uint64(0xFFFFFFFF)
                valid_parity[row] = 0
                if kind == WORD_SYNC:
                    dataword[row] = (head >> np.uint64(16)) & np.uint64(1)
            row += 1
    return row, unknown


@njit(cache=True, nogil=True)
def place_packets(
    records, offsets, receipts, stamp, second, blocks, table, trigger_words, hit_times, hit_rows, hit_groups,
    trigger_times, trigger_groups,
):  # fmt: skip
    """``triggers.place_packets`` in one pass over packet ``records`` (``count_chunk``'s rows of bytes and
    ``offsets``; ``receipts``: their receipt timestamps, or empty): count the trigger words, move ``second``
    at the ``stamp`` rows, write the placed hits and external triggers. Returns how many of each."""
    at_group, at_channel, at_chip, at_type, at_parity, _, at_time, _, at_trig, _, _, time_bytes = offsets
    found_hits = 0
    found_triggers = 0
    for i in range(len(records)):
        g = np.int64(records[i, at_group])
        ticks = np.int64(0)
        for b in range(time_bytes):
            ticks |= np.int64(records[i, at_time + b]) << (8 * b)
        if stamp[i]:
            second[g] = ticks
        s = second[g]
        ptype = records[i, at_type]
        kinds = np.int64(records[i, at_trig])
        if ptype == TRIGGER:
            for bit in range(trigger_words.shape[1]):
                if (kinds >> bit) & 1:
                    trigger_words[g, bit] += 1
            if kinds & EXTERNAL_TRIGGER_BIT and s >= 0:
                trigger_times[found_triggers] = s * TICKS_PER_SYNC + ticks
                trigger_groups[found_triggers] = g
                found_triggers += 1
        elif ptype == DATA and records[i, at_parity] != 0 and kinds & 3 == 0 and s >= 0:
            block = blocks[g]
            if block < 0:
                continue
            row = table[(np.int64(block) << 16) | (np.int64(records[i, at_channel]) << 8) | records[i, at_chip]]
            if row < 0:
                continue
            time = s * TICKS_PER_SYNC + ticks
            if len(receipts) and receipts[i] > 0 and ticks > receipts[i]:
                time -= TICKS_PER_SYNC
            hit_times[found_hits] = time
            hit_rows[found_hits] = row
            hit_groups[found_hits] = g
            found_hits += 1
    return found_hits, found_triggers


@njit(cache=True, nogil=True)
def pair_hits(
    times, rows, groups, start, end, known, closing, window, delay_bins, beam_chip_hits, beam_delays, beam_delay_sum,
    counts,
):  # fmt: skip
    """``triggers.pair_hits`` in one pass over the held hits, in any order, instead of sorting them: classify those
    in [``start``, ``end``) against the ascending ``known`` triggers, and count into ``counts`` each ascending
    ``closing`` trigger's hits, their delays and their sum per hit io_group."""
    for i in range(len(times)):
        t = times[i]
        if start <= t < end:
            before = np.searchsorted(known, t, side="right") - 1
            outside = 0 if before >= 0 and t < known[before] + window else 1
            beam_chip_hits[rows[i], outside] += 1
        if len(closing) == 0 or t < closing[0] or t >= closing[-1] + window:
            continue
        for c in range(np.searchsorted(closing, t - window, side="right"), np.searchsorted(closing, t, side="right")):
            counts[c] += 1
            delay = t - closing[c]
            beam_delays[groups[i], min(delay * delay_bins // window, delay_bins - 1)] += 1
            beam_delay_sum[groups[i]] += delay


def not_compiled() -> str | None:
    """Why numba would run these kernels as Python bytecode (far slower than the numpy engine), or None:
    ``NUMBA_DISABLE_JIT`` makes ``njit`` return the plain functions (compiling errors raise instead)."""
    disabled = getattr(config, "DISABLE_JIT", False)  # set from the environment when numba is imported
    return "NUMBA_DISABLE_JIT is set" if disabled else None
