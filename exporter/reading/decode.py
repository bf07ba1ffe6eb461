"""Vectorised decoding of PACMAN messages (rawhdf5format ``msgs`` rows) into packet records.

The output matches, row for row, what ``larpix.format.pacman_msg_format.parse`` followed by
hdf5format's 2.4 encoding gives: one timestamp packet per data message, then one packet per
word (data, trigger or sync), in message order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from larpix_dqm.exporter.reading.packets import PACKET_DTYPE, SYNC, TIMESTAMP, TRIGGER

HEADER_BYTES = 8
WORD_BYTES = 16
MSG_TYPE_DATA = ord("D")
WORD_DATA, WORD_TRIGGER, WORD_SYNC = ord("D"), ord("T"), ord("S")

# One 16-byte PACMAN word seen through every layout it can have (fields overlap on purpose):
# data '<cBLxx8s', trigger '<2cxxL8x', sync '<2cBxL8x'. The 8-byte LArPix word of a data
# word (bytes 8-15) is taken from the raw bytes, as a contiguous copy.
_WORD_VIEW = np.dtype(
    {
        "names": ["kind", "byte1", "byte2", "receipt", "time"],
        "formats": ["u1", "u1", "u1", "<u4", "<u4"],
        "offsets": [0, 1, 2, 2, 4],
        "itemsize": WORD_BYTES,
    }
)


class PacmanDecodeError(ValueError):
    """Raised when the message array itself is unusable (wrong element type or shape)."""


@dataclass(frozen=True)
class DecodeResult:
    """Decoded packets plus counts of what could not be decoded (skipped, never fatal)."""

    packets: np.ndarray
    bad_messages: int
    unknown_words: int


def _bits(word: np.ndarray, start: int, width: int) -> np.ndarray:
    """Extract ``width`` bits starting at bit ``start`` of 64-bit LArPix words, as uint8."""
    return ((word >> np.uint64(start)) & np.uint64((1 << width) - 1)).astype(np.uint8)


def decode_larpix_words(word: np.ndarray, out: np.ndarray) -> None:
    """Fill packet records ``out`` from contiguous 64-bit LArPix words (little-endian bit order)."""
    out["packet_type"] = _bits(word, 0, 2)
    out["chip_id"] = _bits(word, 2, 8)
    out["channel_id"] = _bits(word, 10, 6)
    out["timestamp"] = (word >> np.uint64(16)) & np.uint64(0x7FFFFFFF)
    out["first_packet"] = _bits(word, 47, 1)
    out["dataword"] = _bits(word, 48, 8)
    out["trigger_type"] = _bits(word, 56, 2)
    out["local_fifo"] = _bits(word, 58, 2)
    out["shared_fifo"] = _bits(word, 60, 2)
    out["downstream_marker"] = _bits(word, 62, 1)
    out["parity"] = _bits(word, 63, 1)
    out["register_address"] = _bits(word, 10, 8)
    out["register_data"] = _bits(word, 18, 8)
    out["valid_parity"] = np.bitwise_count(word) & np.uint8(1)


def concatenate_messages(msgs: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Join variable-length messages into one byte buffer, zero-padded to whole 8-byte words;
    return it and the row lengths."""
    if len(msgs) == 0:
        return np.zeros(0, np.uint8), np.zeros(0, np.int64)
    try:
        lengths = np.fromiter(map(len, msgs), dtype=np.int64, count=len(msgs))
        total = int(lengths.sum())
        buffer = np.zeros(total + -total % 8, np.uint8)
        np.concatenate(msgs, out=buffer[:total], casting="same_kind")
    except (AttributeError, ValueError, TypeError) as err:
        raise PacmanDecodeError(f"messages must be 1-D uint8 arrays: {err}") from err
    return buffer, lengths


class Messages:
    """A chunk of PACMAN data messages in one byte buffer (malformed ones left out and counted):
    where each starts, how many 16-byte words follow its 8-byte header, and its io_group.

    Words of unknown type are counted by whoever decodes the words first (``decode``, or the
    compiled accumulation through ``count_unknown_words``), else on demand.
    """

    def __init__(
        self,
        buffer: np.ndarray,
        starts: np.ndarray,
        words: np.ndarray,
        io_groups: np.ndarray,
        bad_messages: int,
        headerless: int = 0,
    ) -> None:
        self.buffer = buffer  # uint8, zero-padded to whole 8-byte words; messages start on 8-byte boundaries
        self.starts = starts  # int64
        self.words = words  # int64
        self.io_groups = io_groups  # uint8
        self.bad_messages = bad_messages
        self.headerless = headerless  # messages left out because their header names io_group 0 (never written)
        self._unknown_words: int | None = None
        self._timestamps: np.ndarray | None = None

    @property
    def unknown_words(self) -> int:
        """Words of a type that is neither data, trigger nor sync (skipped)."""
        if self._unknown_words is None:
            kinds = self.buffer[self.word_offsets()]
            known = (kinds == WORD_DATA) | (kinds == WORD_TRIGGER) | (kinds == WORD_SYNC)
            self._unknown_words = int(len(kinds) - np.count_nonzero(known))
        return self._unknown_words

    def count_unknown_words(self, count: int) -> None:
        """Take the count of unknown words from a decoder that has seen every word."""
        self._unknown_words = count

    @property
    def size_bound(self) -> int:
        """Packets these messages decode to at most (words of unknown type included), known without decoding."""
        return len(self.starts) + int(self.words.sum())

    @property
    def size(self) -> int:
        """Packets these messages decode to: a timestamp packet each, plus their known words."""
        return self.size_bound - self.unknown_words

    def timestamps(self) -> np.ndarray:
        """(messages,) uint32, read-only: each message's timestamp (header bytes 1-4), read once (the clock, the
        counting, the run names and the trigger pairing each want them)."""
        if self._timestamps is None:
            headers = self.buffer.view("<u8")[self.starts >> 3]  # messages start on 8-byte boundaries
            self._timestamps = ((headers >> np.uint64(8)) & np.uint64(0xFFFFFFFF)).astype(np.uint32)
            self._timestamps.setflags(write=False)
        return self._timestamps

    def timestamp_packets(self) -> np.ndarray:
        """The messages' timestamp packets alone, one per message, in order (what the data clock reads)."""
        packets = np.zeros(len(self.starts), PACKET_DTYPE)
        packets["io_group"] = self.io_groups
        packets["packet_type"] = TIMESTAMP
        packets["timestamp"] = self.timestamps()
        return packets

    def select(self, mask: np.ndarray) -> Messages:
        """The messages ``mask`` selects (e.g. a shard's io_groups)."""
        return Messages(self.buffer, self.starts[mask], self.words[mask], self.io_groups[mask], 0)

    def since(self, message: int) -> Messages:
        """The messages from index ``message`` on."""
        return Messages(self.buffer, self.starts[message:], self.words[message:], self.io_groups[message:], 0)

    def word_offsets(self) -> np.ndarray:
        """Byte offset in ``buffer`` of every word, message by message."""
        total = int(self.words.sum())
        before = np.zeros(len(self.words), np.int64)
        np.cumsum(self.words[:-1], out=before[1:])
        index = np.arange(total, dtype=np.int64) - np.repeat(before, self.words)
        return np.repeat(self.starts + HEADER_BYTES, self.words) + WORD_BYTES * index

    def decode(self) -> np.ndarray:
        """The packet records, as ``decode_messages`` gives them (the numpy reference decoder)."""
        n_msgs = len(self.starts)
        offsets = self.word_offsets()
        # words start on 8-byte boundaries of a buffer of whole 8-byte words: two 8-byte loads a word
        halves = self.buffer.view("<u8")[(offsets // 8)[:, None] + np.arange(2)]
        raw_words = halves.view(np.uint8)
        words = raw_words.view(_WORD_VIEW).reshape(-1)
        word_msg = np.repeat(np.arange(n_msgs), self.words)
        kind = words["kind"]
        is_data, is_trig, is_sync = kind == WORD_DATA, kind == WORD_TRIGGER, kind == WORD_SYNC
        known = is_data | is_trig | is_sync
        self._unknown_words = int(len(known) - np.count_nonzero(known))
        if not known.all():
            words, word_msg, halves = words[known], word_msg[known], halves[known]
            is_data, is_trig, is_sync = is_data[known], is_trig[known], is_sync[known]

        # Word rows, decoded as data words; trigger and sync words (zero LArPix bytes) fixed after.
        body = np.zeros(len(words), PACKET_DTYPE)
        decode_larpix_words(np.ascontiguousarray(halves[:, 1]), body)
        body["io_group"] = self.io_groups[word_msg]
        body["io_channel"] = np.where(is_data, words["byte1"], 0)
        body["receipt_timestamp"] = np.where(is_data, words["receipt"], 0)
        for mask, ptype in ((is_trig, TRIGGER), (is_sync, SYNC)):
            rows = np.flatnonzero(mask)
            if len(rows):
                body["packet_type"][rows] = ptype
                body["trigger_type"][rows] = words["byte1"][rows]
                body["timestamp"][rows] = words["time"][rows]
                body["valid_parity"][rows] = 0
                if ptype == SYNC:
                    body["dataword"][rows] = words["byte2"][rows] & 1

        # Interleave: each message's timestamp packet, then its words.
        packets = np.zeros(n_msgs + len(words), PACKET_DTYPE)
        words_before = np.zeros(n_msgs, np.int64)
        np.cumsum(np.bincount(word_msg, minlength=n_msgs)[:-1], out=words_before[1:])
        ts_rows = np.arange(n_msgs) + words_before
        record = np.dtype((np.void, PACKET_DTYPE.itemsize))  # whole-record copies: far faster than field by field
        packets.view(record)[np.arange(len(words)) + word_msg + 1] = body.view(record)
        packets["io_group"][ts_rows] = self.io_groups
        packets["packet_type"][ts_rows] = TIMESTAMP
        packets["timestamp"][ts_rows] = self.timestamps()
        return packets


def split_messages(msgs: Sequence[np.ndarray], io_groups: np.ndarray) -> Messages:
    """Join PACMAN messages (one uint8 array each) received on ``io_groups`` into ``Messages``.

    Messages that are not data messages or whose length is not 8 + 16·n bytes are left out
    and counted in ``bad_messages``; words of unknown type in ``unknown_words``. A message whose
    header names io_group 0 (a ``msg_headers`` row the writer never filled: PACMAN io_groups start
    at 1) is left out and counted in ``headerless``, so no io_group 0 is ever created from it.
    """
    buffer, lengths = concatenate_messages(msgs)
    if (lengths % 8).any():  # keep every message on an 8-byte boundary: the compiled decoder loads whole words
        buffer, _ = concatenate_messages([m for m, n in zip(msgs, lengths.tolist()) if n % 8 == 0])
        lengths = np.where(lengths % 8, 0, lengths)  # (malformed anyway: counted as bad messages)
    io_groups = np.asarray(io_groups, dtype=np.uint8)
    if io_groups.shape != lengths.shape:
        raise PacmanDecodeError(f"{len(lengths)} messages but {io_groups.shape[0]} io_group header entries")
    starts = np.zeros(len(lengths), np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    good = (lengths >= HEADER_BYTES) & ((lengths - HEADER_BYTES) % WORD_BYTES == 0)
    good[good] &= buffer[starts[good]] == MSG_TYPE_DATA
    bad_messages = int(len(lengths) - np.count_nonzero(good))
    headed = io_groups != 0
    headerless = int(np.count_nonzero(good & ~headed))
    good &= headed
    return Messages(
        buffer, starts[good], (lengths[good] - HEADER_BYTES) // WORD_BYTES, io_groups[good], bad_messages, headerless
    )


def decode_messages(msgs: Sequence[np.ndarray], io_groups: np.ndarray) -> DecodeResult:
    """Decode PACMAN messages (one uint8 array each) received on ``io_groups`` into packets.

    Messages that are not data messages or whose length is not 8 + 16·n bytes are skipped
    and counted in ``bad_messages``; words of unknown type in ``unknown_words``.
    """
    messages = split_messages(msgs, io_groups)
    packets = messages.decode()
    return DecodeResult(packets, messages.bad_messages, messages.unknown_words)
