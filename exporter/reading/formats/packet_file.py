"""Packet files (larpix-control's hdf5format 2.4): the ``packets`` dataset, one packet record a row, and
``configs``, the chips' configuration registers (their channel masks and periodic triggers)."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from larpix_dqm.exporter.reading.formats.base import (
    InputFormat,
    OpenFile,
    Rows,
    SourceError,
    Stored,
    attr_float,
    digest_of,
    read_rows,
    rows_dataset,
    stored_dtype,
    trailing,
)
from larpix_dqm.exporter.reading.packets import REQUIRED_FIELDS


class PacketFileFormat(InputFormat):
    """Packet records: a row is a packet, unwritten while all its bytes are zero."""

    name: ClassVar[str] = "packets"
    stores_run_configuration: ClassVar[bool] = True
    holds: ClassVar[str] = "a 'packets' dataset"

    def recognise(self, fh: OpenFile, path: str) -> bool:
        if "packets" not in fh:
            return False
        dtype = stored_dtype(rows_dataset(fh, "packets", path))
        if dtype.hasobject:
            raise SourceError("bad_dtype", f"{path}: packets dataset has variable-length fields")
        names = dtype.names or ()
        missing = [f for f in REQUIRED_FIELDS if f not in names]
        if missing:
            raise SourceError("bad_dtype", f"{path}: packets dataset lacks fields {', '.join(missing)}")
        not_int = [f for f in REQUIRED_FIELDS if dtype[f].kind not in "ui"]
        if not_int:
            raise SourceError("bad_dtype", f"{path}: packets fields {', '.join(not_int)} are not integers")
        return True

    def created(self, fh: OpenFile) -> float | None:
        return attr_float(fh.get("_header"), "created")

    def length(self, fh: OpenFile) -> int:
        dset = fh["packets"]
        dset.id.refresh()
        return len(dset)

    def read(self, fh: OpenFile, start: int, end: int) -> Stored:
        return (read_rows(fh["packets"], start, end),)

    def rows(self, stored: Stored) -> Rows:
        return stored[0]

    def unwritten_in(self, stored: Stored) -> int:
        rows = stored[0]
        as_bytes = np.ascontiguousarray(rows).view(np.uint8).reshape(len(rows), -1)
        return trailing(np.asarray(as_bytes.any(axis=1)))

    def digest(self, stored: Stored) -> str:
        return digest_of([stored[0].tobytes()])
