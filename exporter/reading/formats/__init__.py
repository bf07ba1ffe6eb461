"""The input formats the reader knows, one module each (an ``InputFormat``), tried in the order of ``FORMATS``.

Adding a format is one module here with its ``InputFormat`` subclass, and its line in ``FORMATS``.
"""

from __future__ import annotations

from larpix_dqm.exporter.reading.formats.base import InputFormat, OpenFile, SourceError
from larpix_dqm.exporter.reading.formats.packet_file import PacketFileFormat
from larpix_dqm.exporter.reading.formats.raw import RawFormat

#: Every format, in the order a file is tested against them.
FORMATS: tuple[InputFormat, ...] = (RawFormat(), PacketFileFormat())
#: The formats by name (a chunk's and a cursor's ``kind``).
BY_NAME: dict[str, InputFormat] = {f.name: f for f in FORMATS}


def detect(fh: OpenFile, path: str) -> InputFormat:
    """The format of an open file; SourceError (no_dataset) if it is in none, (bad_dtype) if malformed."""
    for fmt in FORMATS:
        if fmt.recognise(fh, path):
            return fmt
    raise SourceError("no_dataset", f"{path}: neither {' nor '.join(f.holds for f in FORMATS)}")
