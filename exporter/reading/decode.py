"""Vectorised decoding of PACMAN messages (rawhdf5format ``msgs`` rows) into packet records.

The output matches, row for row, what ``larpix.format.pacman_msg_format.parse`` followed by
hdf5format's 2.4 encoding gives: one timestamp packet per data message, then one packet per
word (data, trigger or sync), in message order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from exporter.reading.packets import PACKET_DTYPE, SYNC, TIMESTAMP, TRIGGER

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
    """Join variable-length messages into one byte buffer; return it and the row lengths."""
    if len(msgs) == 0:
        return np.zeros(0, np.uint8), np.zeros(0, np.int64)
    try:
        lengths = np.fromiter(map(len, msgs), dtype=np.int64, count=len(msgs))
        buffer = np.concatenate(msgs).astype(np.uint8, copy=False)
    except (AttributeError, ValueError, TypeError) as err:
        raise PacmanDecodeError(f"messages must be 1-D uint8 arrays: {err}") from err
    if buffer.ndim != 1:
        raise PacmanDecodeError("messages must be 1-D uint8 arrays")
    return buffer, lengths


def decode_messages(msgs: Sequence[np.ndarray], io_groups: np.ndarray) -> DecodeResult:
    """Decode PACMAN messages (one uint8 array each) received on ``io_groups`` into packets.

    Messages that are not data messages or whose length is not 8 + 16·n bytes are skipped
    and counted in ``bad_messages``; words of unknown type in ``unknown_words``.
    """
    buffer, lengths = concatenate_messages(msgs)
    io_groups = np.asarray(io_groups, dtype=np.uint8)
    if io_groups.shape != lengths.shape:
        raise PacmanDecodeError(f"{len(lengths)} messages but {io_groups.shape[0]} io_group header entries")
    starts = np.zeros(len(lengths), np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    good = (lengths >= HEADER_BYTES) & ((lengths - HEADER_BYTES) % WORD_BYTES == 0)
    good[good] &= buffer[starts[good]] == MSG_TYPE_DATA
    bad_messages = int(len(lengths) - good.sum())
    keep = np.repeat(good, lengths)
    starts, lengths, io_groups = starts[good], lengths[good], io_groups[good]
    n_msgs = len(starts)

    # Words: every byte of the good messages except their 8-byte headers, 16 bytes a row.
    header_at = (starts[:, None] + np.arange(HEADER_BYTES)).reshape(-1)
    header_bytes = buffer[header_at].reshape(n_msgs, HEADER_BYTES)
    keep[header_at] = False
    raw_words = buffer[keep].reshape(-1, WORD_BYTES)
    words = raw_words.view(_WORD_VIEW).reshape(-1)
    n_words = (lengths - HEADER_BYTES) // WORD_BYTES
    word_msg = np.repeat(np.arange(n_msgs), n_words)

    kind = words["kind"]
    is_data, is_trig, is_sync = kind == WORD_DATA, kind == WORD_TRIGGER, kind == WORD_SYNC
    known = is_data | is_trig | is_sync
    unknown_words = int(len(words) - np.count_nonzero(known))
    if unknown_words:
        words, word_msg, raw_words = words[known], word_msg[known], raw_words[known]
        is_data, is_trig, is_sync = is_data[known], is_trig[known], is_sync[known]

    # Word rows, decoded as data words; trigger and sync words (zero LArPix bytes) fixed after.
    body = np.zeros(len(words), PACKET_DTYPE)
    decode_larpix_words(np.ascontiguousarray(raw_words[:, 8:]).view("<u8").reshape(-1), body)
    body["io_group"] = io_groups[word_msg]
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
    packets["io_group"][ts_rows] = io_groups
    packets["packet_type"][ts_rows] = TIMESTAMP
    packets["timestamp"][ts_rows] = np.ascontiguousarray(header_bytes[:, 1:5]).view("<u4").reshape(-1)
    return DecodeResult(packets, bad_messages, unknown_words)
