"""Raw PACMAN files (larpix-control's rawhdf5format, as the DAQ writes them in SWMR mode): ``msgs``, one
variable-length PACMAN message a row, and ``msg_headers``, whose ``io_groups`` field names each message's
io_group. Read as ``Messages``, decoded to packets when counted."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, cast

import h5py
import numpy as np

from larpix_dqm.exporter.reading.decode import Messages, split_messages
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


class RawFormat(InputFormat):
    """PACMAN messages: a row is a message, written once both its ``msgs`` row (not empty) and its
    ``msg_headers`` row (an io_group, never 0) are: the writer fills the two datasets one after the other."""

    name: ClassVar[str] = "raw"
    holds: ClassVar[str] = "'msgs'+'msg_headers'"

    def recognise(self, fh: OpenFile, path: str) -> bool:
        if "msgs" not in fh or "msg_headers" not in fh:
            return False
        msgs, headers = rows_dataset(fh, "msgs", path), rows_dataset(fh, "msg_headers", path)
        names = stored_dtype(headers).names
        if names is None or "io_groups" not in names:
            raise SourceError("bad_dtype", f"{path}: msg_headers has no 'io_groups' field")
        if msgs.dtype.kind != "O" or h5py.check_vlen_dtype(msgs.dtype) is None:
            raise SourceError("bad_dtype", f"{path}: msgs is not a variable-length byte dataset")
        return True

    def created(self, fh: OpenFile) -> float | None:
        return attr_float(fh.get("meta"), "created")

    def length(self, fh: OpenFile) -> int:
        msgs, headers = fh["msgs"], fh["msg_headers"]
        msgs.id.refresh()
        headers.id.refresh()
        return min(len(msgs), len(headers))

    def read(self, fh: OpenFile, start: int, end: int) -> Stored:
        headers = read_rows(fh["msg_headers"], start, end)  # whole rows: cheaper than h5py's one-field type
        return fh["msgs"][start:end], np.ascontiguousarray(headers["io_groups"])

    def rows(self, stored: Stored) -> Rows:
        msgs, io_groups = stored  # msgs: an object array of uint8 arrays
        return split_messages(cast(Sequence[np.ndarray], msgs), io_groups)

    def unwritten_in(self, stored: Stored) -> int:
        msgs, io_groups = stored
        lengths = np.fromiter(map(len, msgs), np.int64, count=len(msgs))
        return trailing((lengths > 0) & (io_groups != 0))

    def digest(self, stored: Stored) -> str:
        """Digest of the messages' lengths and bytes, then their io_groups."""
        msgs, io_groups = stored

        def parts():
            for msg in msgs:
                yield len(msg).to_bytes(8, "little")
                yield msg.tobytes()
            yield io_groups.tobytes()

        return digest_of(parts())

    def rows_per_chunk(self, packets: int, messages: int, last: Rows | None = None, last_rows: int = 0) -> int:
        """Messages of the next chunk: at most ``messages``, and once the packets per message are known
        (from the chunk just read), about ``packets`` packets; before that, ``packets`` / 1000."""
        if not isinstance(last, Messages):  # the first chunk
            return min(messages, max(1, packets // 1000))
        per_message = max(1.0, last.size_bound / max(1, last_rows))
        return max(1, min(messages, int(packets / per_message)))
