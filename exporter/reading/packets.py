"""The LArPix packet record (hdf5format 2.4 ``packets`` dtype) and packet-type names."""

from __future__ import annotations

import functools

import numpy as np

#: io_group is one byte: per-io_group arrays have this many rows.
IO_GROUPS = 256

#: Structured dtype of the ``packets`` dataset of larpix hdf5format 2.4 (36 bytes a row).
PACKET_DTYPE = np.dtype(
    [
        ("io_group", "u1"),
        ("io_channel", "u1"),
        ("chip_id", "u1"),
        ("packet_type", "u1"),
        ("downstream_marker", "u1"),
        ("parity", "u1"),
        ("valid_parity", "u1"),
        ("channel_id", "u1"),
        ("timestamp", "u8"),
        ("dataword", "u1"),
        ("trigger_type", "u1"),
        ("local_fifo", "u1"),
        ("shared_fifo", "u1"),
        ("register_address", "u1"),
        ("register_data", "u1"),
        ("direction", "u1"),
        ("local_fifo_events", "u1"),
        ("shared_fifo_events", "u2"),
        ("counter", "u4"),
        ("fifo_diagnostics_enabled", "u1"),
        ("first_packet", "u1"),
        ("receipt_timestamp", "u4"),
    ]
)

#: Fields the data-quality accumulation needs; packet files of format 2.0-2.4 all carry them.
REQUIRED_FIELDS = (
    "io_group",
    "io_channel",
    "chip_id",
    "packet_type",
    "valid_parity",
    "channel_id",
    "timestamp",
    "dataword",
    "trigger_type",
    "local_fifo",
    "shared_fifo",
)

DATA, TEST, CONFIG_WRITE, CONFIG_READ, TIMESTAMP, MESSAGE, SYNC, TRIGGER = range(8)


def io_groups_in(groups: np.ndarray) -> list[int]:
    """The distinct io_groups of ``groups``, ascending; counted when they are uint8 (as stored by the DAQ), which
    costs a few microseconds where ``np.unique`` sorts them."""
    if groups.dtype == np.uint8:
        return np.flatnonzero(np.bincount(groups)).tolist()
    return np.unique(groups).tolist()


def in_range(records: np.ndarray) -> tuple[np.ndarray, int]:
    """The packet records whose ``REQUIRED_FIELDS`` fit ``PACKET_DTYPE``'s types, and how many did not: a file may
    store them wider or signed, and an io_group, chip or channel below 0 or over 255 is a corrupt record, which no
    counter has a place for. The records themselves, not copied, when their stored types hold nothing else."""
    wider = _wider_fields(records.dtype)
    if not wider:
        return records, 0
    fits = np.ones(len(records), bool)
    for name in wider:
        values = records[name]
        fits &= (values >= 0) & (values <= np.iinfo(PACKET_DTYPE[name]).max)
    dropped = len(fits) - int(np.count_nonzero(fits))
    return (records[fits] if dropped else records), dropped


@functools.lru_cache(maxsize=16)
def _wider_fields(dtype: np.dtype) -> tuple[str, ...]:
    """The ``REQUIRED_FIELDS`` whose stored type in ``dtype`` holds values ``PACKET_DTYPE``'s does not."""
    return tuple(name for name in REQUIRED_FIELDS if not np.can_cast(dtype[name], PACKET_DTYPE[name], "safe"))


#: Label value of ``packet_type`` for each LArPix packet type code.
PACKET_TYPE_NAMES = (
    "data",
    "test",
    "config_write",
    "config_read",
    "timestamp",
    "message",
    "sync",
    "trigger",
)

#: Clock ticks between two 'S' syncs: the chip clock runs at 10 MHz and syncs come each second.
TICKS_PER_SYNC = 10_000_000
CLOCK_HZ = 10_000_000.0

#: ``trigger_type`` of a sync packet: 'S' (the once-a-second sync), 'H' (heartbeat), 'C' (clock switch).
SYNC_KIND_CODES = (ord("S"), ord("H"), ord("C"))

#: Bit set in a trigger packet's ``trigger_type`` for an external trigger.
EXTERNAL_TRIGGER_BIT = 2

#: What made a chip digitise a data packet (``trigger_type`` of a data packet, word bits 56-57).
SELF_TRIGGER, EXTERNAL_TRIGGER, CROSS_TRIGGER, PERIODIC_TRIGGER = range(4)
#: Label value of ``trigger_type`` for each data trigger type code.
DATA_TRIGGER_TYPES = ("self", "external", "cross", "periodic")


def latest_seconds(packets: np.ndarray, stamp: np.ndarray, carried: np.ndarray) -> np.ndarray:
    """Per packet, the data second of its io_group's latest timestamp packet (rows ``stamp`` marks) at or before
    it; before the chunk's first, ``carried[io_group]`` (-1: none yet), which then moves to the newest."""
    seconds = np.empty(len(packets), np.int64)
    groups = packets["io_group"]
    for g in io_groups_in(groups):
        mine = np.flatnonzero(groups == g)
        values = np.concatenate(([carried[g]], packets["timestamp"][mine[stamp[mine]]].astype(np.int64)))
        seconds[mine] = values[np.cumsum(stamp[mine])]
        carried[g] = values[-1]
    return seconds
