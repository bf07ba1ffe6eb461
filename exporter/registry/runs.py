"""Which run a file belongs to, and the data time a chunk of it spans.

A run is named by ``--run-pattern`` (a regular expression with a named group ``run``, searched in
the file's name), else by the run number the file's own metadata carries (an attribute ``run``,
``run_number`` or ``run_id`` of its ``meta`` group or ``_header``), else it is the file alone
(named by the file's stem).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import numpy as np

from larpix_dqm.exporter.reading.files import Chunk
from larpix_dqm.exporter.reading.formats.base import OpenFile, open_for_reading
from larpix_dqm.exporter.reading.packets import TIMESTAMP

PATTERN, METADATA, FILE = "pattern", "metadata", "file"
RUN_ATTRIBUTES = ("run", "run_number", "run_id")
#: A chunk's first timestamps are taken as its start only within this much before its accepted end
#: (a corrupt header a year off must not stretch a run).
MAX_CHUNK_SECONDS = 3600.0


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """The run pattern, or ValueError saying why it is not one (not a regex, or no group ``run``)."""
    try:
        compiled = re.compile(pattern)
    except re.error as err:
        raise ValueError(f"not a regular expression ({err})") from None
    if "run" not in compiled.groupindex:
        raise ValueError("needs a named group (?P<run>...) that captures the run's name")
    return compiled


@dataclass(frozen=True)
class RunName:
    """A run's name and where it came from (pattern, metadata or file)."""

    run: str
    source: str


def metadata_run(path: str, opened: OpenFile | None = None) -> str | None:
    """The run number the file's own metadata carries, or None (also when it cannot be read); from ``opened``,
    the file open already, when given and still open."""
    try:
        if opened:
            return _run_attribute(opened)
        with open_for_reading(path) as fh:
            return _run_attribute(OpenFile(fh))
    except (OSError, RuntimeError, ValueError, KeyError):
        return None


def _run_attribute(fh: OpenFile) -> str | None:
    """The first non-empty run attribute (``RUN_ATTRIBUTES``) of the open file's ``meta`` or ``_header``."""
    for group in ("meta", "_header"):
        attrs = fh[group].attrs if group in fh else {}
        for name in RUN_ATTRIBUTES:
            if name in attrs:
                value = attrs[name]
                value = value.decode() if isinstance(value, bytes) else value
                text = str(value.item() if isinstance(value, np.generic) else value).strip()
                if text:
                    return text
    return None


class RunNamer:
    """Names the run of each file, once per file."""

    def __init__(self, pattern: str | None = None) -> None:
        self.pattern = compile_pattern(pattern) if pattern else None
        self._names: dict[str, RunName] = {}

    def name(self, path: str, opened: OpenFile | None = None) -> RunName:
        """The run ``path`` belongs to (``opened``: the file, if it is open already)."""
        found = self._names.get(path)
        if found is None:
            found = self._names[path] = self._name(path, opened)
        return found

    def keep(self, paths: set[str]) -> None:
        """Forget the names of files not in ``paths`` (no longer tracked): a long run does not keep one per file."""
        self._names = {path: name for path, name in self._names.items() if path in paths}

    def _name(self, path: str, opened: OpenFile | None) -> RunName:
        if self.pattern is not None:
            match = self.pattern.search(os.path.basename(path))
            if match is not None and match.group("run"):
                return RunName(match.group("run"), PATTERN)
        number = metadata_run(path, opened)
        if number is not None:
            return RunName(number, METADATA)
        return RunName(os.path.splitext(os.path.basename(path))[0], FILE)


def chunk_span(chunk: Chunk) -> tuple[float, float] | None:
    """The data time (unix s) a counted chunk spans: from its first timestamp (message headers, or
    timestamp packets) to its file's data clock after it; None before the file has any time."""
    clock = chunk.cursor.clock.last
    if np.isnan(clock).all():
        return None
    end = float(np.nanmax(clock))
    if chunk.raw is not None and len(chunk.raw.starts):
        times = chunk.raw.timestamps().astype(np.float64)
    elif chunk.records is not None and len(chunk.records):
        records = chunk.records
        times = records["timestamp"][records["packet_type"] == TIMESTAMP].astype(np.float64)
    else:
        times = np.zeros(0)
    times = times[(times <= end) & (times >= end - MAX_CHUNK_SECONDS)]
    return (float(times.min()) if len(times) else end), end


class CurrentRun:
    """The run being read (``current``), from the chunks the ingest thread counts: a registry writer's view
    without a registry."""

    def __init__(self, namer: RunNamer) -> None:
        self.namer = namer
        self.current: str | None = None

    def on_chunk(self, chunk: Chunk) -> None:
        self.current = self.namer.name(chunk.cursor.path).run
