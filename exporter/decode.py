"""Vectorised decoding of PACMAN messages (rawhdf5format ``msgs`` rows) into packet records.

The output matches, row for row, what ``larpix.format.pacman_msg_format.parse`` followed by
hdf5format's 2.4 encoding gives: one timestamp packet per data message, then one packet per
word (data, trigger or sync), in message order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .packets import PACKET_DTYPE, SYNC, TIMESTAMP, TRIGGER

HEADER_BYTES = 8
WORD_BYTES = 16
MSG_TYPE_DATA = ord("D")
WORD_DATA, WORD_TRIGGER, WORD_SYNC = ord("D"), ord("T"), ord("S")

# One 16-byte PACMAN word seen through every layout it can have (fields overlap on purpose):
# data '<cBLxx8s', trigger '<2cxxL8x', sync '<2cBxL8x'.
_WORD_VIEW = np.dtype(
    {
        "names": ["kind", "byte1", "byte2", "receipt", "time", "larpix"],
        "formats": ["u1", "u1", "u1", "<u4", "<u4", "<u8"],
        "offsets": [0, 1, 2, 2, 4, 8],
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
    """Fill packet records ``out`` from 64-bit LArPix data words (little-endian bit order)."""
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
    out["valid_parity"] = (np.bitwise_count(word) & np.uint8(1)).astype(np.uint8)


def concatenate_messages(msgs: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Join variable-length messages into one byte buffer; return it and the row lengths."""
    if len(msgs) == 0:
        return np.zeros(0, np.uint8), np.zeros(0, np.int64)
    try:
        lengths = np.fromiter((m.shape[0] for m in msgs), dtype=np.int64, count=len(msgs))
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
    well_formed = (lengths >= HEADER_BYTES) & ((lengths - HEADER_BYTES) % WORD_BYTES == 0)
    well_formed[well_formed] &= buffer[starts[well_formed]] == MSG_TYPE_DATA
    bad_messages = int(len(lengths) - well_formed.sum())
    starts, lengths, io_groups = starts[well_formed], lengths[well_formed], io_groups[well_formed]

    n_words = (lengths - HEADER_BYTES) // WORD_BYTES
    total_words = int(n_words.sum())
    word_msg = np.repeat(np.arange(len(starts)), n_words)
    first_word = np.zeros(len(starts), np.int64)
    np.cumsum(n_words[:-1], out=first_word[1:])
    word_rank = np.arange(total_words) - first_word[word_msg]
    word_offsets = starts[word_msg] + HEADER_BYTES + WORD_BYTES * word_rank
    raw_words = buffer[word_offsets[:, None] + np.arange(WORD_BYTES)]
    words = raw_words.view(_WORD_VIEW).reshape(-1)

    header_bytes = buffer[starts[:, None] + np.arange(1, 5)] if len(starts) else np.zeros((0, 4), np.uint8)
    header_time = np.ascontiguousarray(header_bytes).view("<u4").reshape(-1)

    kind = words["kind"]
    known = (kind == WORD_DATA) | (kind == WORD_TRIGGER) | (kind == WORD_SYNC)
    unknown_words = int(total_words - known.sum())

    # Output rows: message i's timestamp packet, then its known words in order.
    known_per_msg = np.bincount(word_msg[known], minlength=len(starts))
    ts_rows = np.arange(len(starts)) + np.concatenate(([0], np.cumsum(known_per_msg)[:-1]))
    packets = np.zeros(len(starts) + int(known.sum()), PACKET_DTYPE)
    ts = packets[ts_rows]
    ts["io_group"] = io_groups
    ts["packet_type"] = TIMESTAMP
    ts["timestamp"] = header_time
    packets[ts_rows] = ts

    word_rows = np.ones(len(packets), bool)
    word_rows[ts_rows] = False
    body = np.zeros(int(known.sum()), PACKET_DTYPE)
    w = words[known]
    body["io_group"] = io_groups[word_msg[known]]
    is_data, is_trig, is_sync = w["kind"] == WORD_DATA, w["kind"] == WORD_TRIGGER, w["kind"] == WORD_SYNC

    data = body[is_data]
    decode_larpix_words(w["larpix"][is_data], data)
    data["io_channel"] = w["byte1"][is_data]
    data["receipt_timestamp"] = w["receipt"][is_data]
    body[is_data] = data

    trig = body[is_trig]
    trig["packet_type"] = TRIGGER
    trig["trigger_type"] = w["byte1"][is_trig]
    trig["timestamp"] = w["time"][is_trig]
    body[is_trig] = trig

    sync = body[is_sync]
    sync["packet_type"] = SYNC
    sync["trigger_type"] = w["byte1"][is_sync]
    sync["dataword"] = w["byte2"][is_sync] & 1
    sync["timestamp"] = w["time"][is_sync]
    body[is_sync] = sync

    packets[word_rows] = body
    return DecodeResult(packets, bad_messages, unknown_words)
