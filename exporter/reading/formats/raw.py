"""Raw PACMAN files (larpix-control's rawhdf5format, as the DAQ writes them in SWMR mode): ``msgs``, one
variable-length PACMAN message a row, and ``msg_headers``, whose ``io_groups`` field names each message's
io_group. Read as ``Messages``, decoded to packets when counted."""

from __future__ import annotations

from typing import ClassVar

import h5py
import numpy as np

from larpix_dqm.exporter.reading.decode import Messages, split_messages
from larpix_dqm.exporter.reading.formats.base import InputFormat, Rows, SourceError, attr_float, digest, trailing


class RawFormat(InputFormat):
    """PACMAN messages: a row is a message, written once both its ``msgs`` row (not empty) and its
    ``msg_headers`` row (an io_group, never 0) are: the writer fills the two datasets one after the other."""

    name: ClassVar[str] = "raw"
    holds: ClassVar[str] = "'msgs'+'msg_headers'"

    def recognise(self, fh: h5py.File, path: str) -> bool:
        if "msgs" not in fh or "msg_headers" not in fh:
            return False
        headers = fh["msg_headers"]
        if headers.dtype.names is None or "io_groups" not in headers.dtype.names:
            raise SourceError("bad_dtype", f"{path}: msg_headers has no 'io_groups' field")
        if fh["msgs"].dtype.kind != "O" or h5py.check_vlen_dtype(fh["msgs"].dtype) is None:
            raise SourceError("bad_dtype", f"{path}: msgs is not a variable-length byte dataset")
        return True

    def created(self, fh: h5py.File) -> float | None:
        return attr_float(fh.get("meta"), "created")

    def length(self, fh: h5py.File) -> int:
        msgs, headers = fh["msgs"], fh["msg_headers"]
        msgs.id.refresh()
        headers.id.refresh()
        return min(len(msgs), len(headers))

    def fetch(self, fh: h5py.File, start: int, end: int) -> Rows:
        return split_messages(fh["msgs"][start:end], _io_groups(fh, start, end))

    def unwritten(self, fh: h5py.File, start: int, end: int) -> int:
        lengths = np.fromiter(map(len, fh["msgs"][start:end]), np.int64, count=end - start)
        return trailing((lengths > 0) & (_io_groups(fh, start, end) != 0))

    def head_digest(self, fh: h5py.File, rows: int) -> str:
        """Digest of the first messages' lengths and bytes, then their io_groups."""

        def parts():
            for msg in fh["msgs"][:rows]:
                yield len(msg).to_bytes(8, "little")
                yield msg.tobytes()
            yield _io_groups(fh, 0, rows).tobytes()

        return digest(parts())

    def rows_per_chunk(self, packets: int, messages: int, last: Rows | None = None, last_rows: int = 0) -> int:
        """Messages of the next chunk: at most ``messages``, and once the packets per message are known
        (from the chunk just read), about ``packets`` packets; before that, ``packets`` / 1000."""
        if not isinstance(last, Messages):  # the first chunk
            return min(messages, max(1, packets // 1000))
        per_message = max(1.0, last.size_bound / max(1, last_rows))
        return max(1, min(messages, int(packets / per_message)))


def _io_groups(fh: h5py.File, start: int, end: int) -> np.ndarray:
    return fh["msg_headers"].fields("io_groups")[start:end]
