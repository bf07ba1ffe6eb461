"""What a predecessor-style plugin receives: an in-memory h5py file of the new packets.

``larpix-monitor`` handed its plugins a temporary HDF5 file whose ``packets`` dataset held
the packets read since the last call. Here the file lives in memory only (core driver, no
backing store) and carries the ``hdf5format`` 2.4 dtype and ``_header`` group.
"""

from __future__ import annotations

import itertools
import time

import h5py
import numpy as np

from larpix_dqm.exporter.reading.packets import PACKET_DTYPE

_names = itertools.count()


def as_packet_dtype(packets: np.ndarray) -> np.ndarray:
    """The packets as ``PACKET_DTYPE`` records (fields an older file lacks are zero)."""
    if packets.dtype == PACKET_DTYPE:
        return packets
    out = np.zeros(len(packets), PACKET_DTYPE)
    for name in PACKET_DTYPE.names or ():
        if packets.dtype.names and name in packets.dtype.names:
            out[name] = packets[name]
    return out


def packets_file(packets: np.ndarray) -> h5py.File:
    """An open in-memory HDF5 file with a ``packets`` dataset (close it when done)."""
    fh = h5py.File(f"larpix-dqm-new-packets-{next(_names)}.h5", "w", driver="core", backing_store=False)
    header = fh.create_group("_header")
    now = time.time()
    header.attrs["version"] = "2.4"
    header.attrs["created"] = now
    header.attrs["modified"] = now
    fh.create_dataset("packets", data=as_packet_dtype(packets))
    return fh
