"""The window's per-channel sums of each slot (hits, ADC, squared ADC, arrivals), kept only for the channels with
hits in the slot: a large detector's channels have hits in few of its slots (50 io_groups at 0.05 Hz a channel:
22 %), where a dense (slot, chip, channel) array a sum held the rest as zeros (655 MB of 50 io_groups' state).

A slot is a list of pieces, each a few entries (a channel: chip row x 64 + channel id, and its sums) as a chunk's
counting added them; a channel may have entries in several pieces, whose sum is its slot's. The pieces are merged
when they become many; a slot is emptied when the window moves past it, its entries taken out of the window's
sums over the slots (``State.clear``).
"""

from __future__ import annotations

import numpy as np

#: The sums an entry holds, in order, and their types: a slot's sums fit int32 (255 x hits < 2**31 up to ~1.7 MHz a
#: channel), its squared ADC sum needs int64; 24 bytes an entry with its channel (int32).
COLUMNS = ("hits", "adc", "adc_sq", "arrivals")
DTYPES = (np.int32, np.int32, np.int64, np.int32)
CHANNEL_DTYPE = np.int32
#: The window file's arrays of a slot: its channels, then its sums (``slot_names``); an older window file held each
#: sum as one dense (slot, chip, channel) array of these names instead.
DENSE_NAMES = ("win_hits", "win_adc", "win_adc_sq", "win_arrivals")
#: Pieces of a slot beyond which they are merged (a channel then has one entry in the merged piece).
MERGE_PIECES = 32

#: One piece: channels, then a sum per ``COLUMNS``.
Piece = tuple[np.ndarray, ...]


def empty_piece() -> Piece:
    """A piece without entries."""
    return (np.zeros(0, CHANNEL_DTYPE), *(np.zeros(0, dtype) for dtype in DTYPES))


def _joined(pieces: list[Piece]) -> Piece:
    """The entries of ``pieces`` as one piece (the piece itself when there is one)."""
    if len(pieces) == 1:
        return pieces[0]
    if not pieces:
        return empty_piece()
    return tuple(np.concatenate([p[i] for p in pieces]) for i in range(len(COLUMNS) + 1))


def merged(pieces: list[Piece]) -> Piece:
    """The entries of ``pieces`` with one entry a channel (their sums added), in ascending channel order."""
    channel, *values = _joined(pieces)
    order = np.argsort(channel)  # any order among a channel's entries: their sums are added
    channel = channel[order]
    if not len(channel):
        return (channel, *(v[order] for v in values))
    heads = np.flatnonzero(np.r_[True, channel[1:] != channel[:-1]])
    return (channel[heads], *(np.add.reduceat(v[order], heads).astype(v.dtype) for v in values))


class SlotSums:
    """The entries of each of the window's ``slots`` slots, in pieces (see the module's docstring)."""

    def __init__(self, slots: int) -> None:
        self._pieces: list[list[Piece]] = [[] for _ in range(slots)]
        self._merged = [True] * slots  # whether a slot's (single) piece has one entry a channel, in channel order

    def __len__(self) -> int:
        """The window's slots."""
        return len(self._pieces)

    def add(self, slot: int, channel: np.ndarray, *values: np.ndarray) -> None:
        """Add entries to ``slot``: ``channel`` (chip row x 64 + channel id) and a sum per ``COLUMNS`` each (the
        arrays are kept: the caller gives up the ones it passes)."""
        if not len(channel):
            return
        pieces = self._pieces[slot]
        self._merged[slot] = False
        typed = (v.astype(t, copy=False) for v, t in zip(values, DTYPES, strict=True))
        pieces.append((channel.astype(CHANNEL_DTYPE, copy=False), *typed))
        if len(pieces) > MERGE_PIECES:  # the later pieces alone while they are fewer entries than the first
            later = sum(len(p[0]) for p in pieces[1:])
            self._pieces[slot] = [pieces[0], merged(pieces[1:])] if later < len(pieces[0][0]) else [merged(pieces)]

    def piece(self, slot: int) -> Piece:
        """The entries of ``slot``, as one piece (kept as its only piece)."""
        joined = _joined(self._pieces[slot])
        self._pieces[slot] = [joined] if len(joined[0]) else []
        return joined

    def merged(self, slot: int) -> Piece:
        """The entries of ``slot`` merged (``merged``), kept as its only piece: the same entries whatever the chunks
        that added them."""
        if not self._merged[slot]:
            self.put(slot, merged(self._pieces[slot]))
            self._merged[slot] = True
        return _joined(self._pieces[slot])

    def put(self, slot: int, piece: Piece) -> None:
        """Make ``piece`` the entries of ``slot``."""
        self._pieces[slot] = [piece] if len(piece[0]) else []
        self._merged[slot] = len(self._pieces[slot]) == 0


def slot_names(slot: int) -> tuple[str, ...]:
    """The window file's arrays of ``slot``'s entries: its channels, then a sum per ``COLUMNS``."""
    return tuple(f"slot{slot}_{name}" for name in ("channel", *COLUMNS))


def is_slot_name(name: str) -> bool:
    """Whether ``name`` is one of the window file's arrays of a slot's entries (``slot_names``)."""
    head, _, column = name.partition("_")
    return head.startswith("slot") and head[4:].isdigit() and column in ("channel", *COLUMNS)
