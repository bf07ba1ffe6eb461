"""A bounded per-chip history of a run (one row per chip every ``interval`` seconds of data time),
exported to JSON, CSV or Parquet (Parquet when pyarrow is installed)."""

from __future__ import annotations

import collections
import csv
import io
import json
import math
import os
from dataclasses import dataclass

import numpy as np

from larpix_dqm.exporter.quality.snapshot import Snapshot

COLUMNS = ("data_time", "io_group", "io_channel", "chip_id", "hit_rate_hz", "adc_mean", "adc_std", "status")


@dataclass(frozen=True)
class HistoryEntry:
    data_time: float
    chip_keys: np.ndarray
    values: np.ndarray  # (chips, 3) float32: rate, adc mean, adc std
    status: np.ndarray  # (chips,) int8: worst check status


class History:
    """Keeps at most ``length`` entries, one per ``interval`` seconds of data time."""

    def __init__(self, interval: float = 10.0, length: int = 360) -> None:
        self.interval = interval
        self.entries: collections.deque[HistoryEntry] = collections.deque(maxlen=length)

    def record(self, snapshot: Snapshot, status: np.ndarray) -> bool:
        """Add an entry if ``interval`` seconds of data time passed since the last one."""
        if math.isnan(snapshot.data_time) or (
            self.entries and snapshot.data_time - self.entries[-1].data_time < self.interval
        ):
            return False
        values = np.stack([snapshot.chip_rate_hz, snapshot.chip_adc_mean, snapshot.chip_adc_std], axis=1).astype(
            np.float32
        )
        self.entries.append(HistoryEntry(snapshot.data_time, snapshot.chip_keys.copy(), values, status.astype(np.int8)))
        return True

    def newest(self, max_rows: int | None = None) -> list[HistoryEntry]:
        """The entries (a copy: the ingest thread may append meanwhile), only the newest within ``max_rows`` rows."""
        entries = list(self.entries)
        if max_rows is None:
            return entries
        kept, rows = 0, 0
        for entry in reversed(entries):
            if rows + len(entry.chip_keys) > max_rows:
                break
            kept, rows = kept + 1, rows + len(entry.chip_keys)
        return entries[len(entries) - kept :]

    def rows(self, max_rows: int | None = None) -> dict[str, np.ndarray]:
        """All entries as columns (one row per chip and entry); only the newest within ``max_rows`` rows."""
        entries = self.newest(max_rows)
        if not entries:
            return {name: np.zeros(0) for name in COLUMNS}
        keys = np.concatenate([e.chip_keys for e in entries])
        values = np.concatenate([e.values for e in entries])
        return {
            "data_time": np.concatenate([np.full(len(e.chip_keys), e.data_time) for e in entries]),
            "io_group": keys[:, 0],
            "io_channel": keys[:, 1],
            "chip_id": keys[:, 2],
            "hit_rate_hz": values[:, 0],
            "adc_mean": values[:, 1],
            "adc_std": values[:, 2],
            "status": np.concatenate([e.status for e in entries]),
        }

    def text(self, fmt: str, max_rows: int | None = None) -> str:
        """The history as ``csv`` or ``json`` text (one record per chip and entry; the newest ``max_rows``)."""
        columns = self.rows(max_rows)
        rows = zip(*(columns[c].tolist() for c in COLUMNS))
        if fmt == "csv":
            out = io.StringIO()
            writer = csv.writer(out, lineterminator="\n")
            writer.writerow(COLUMNS)
            writer.writerows(rows)
            return out.getvalue()
        if fmt == "json":
            return json.dumps([dict(zip(COLUMNS, row)) for row in rows], allow_nan=True)
        raise ValueError(f"unknown history format {fmt!r}: use csv, json or parquet")

    def export(self, path: str | os.PathLike, fmt: str | None = None) -> str:
        """Write the history as json, csv or parquet (from the suffix unless ``fmt``); return the format."""
        fmt = (fmt or os.path.splitext(str(path))[1].lstrip(".") or "csv").lower()
        if fmt == "parquet":
            try:
                import pyarrow as pa
                import pyarrow.parquet as pq
            except ImportError:
                raise ValueError("parquet export needs pyarrow (pip install pyarrow); use csv or json") from None
            columns = self.rows()
            pq.write_table(pa.table({c: columns[c] for c in COLUMNS}), path)
        else:
            text = self.text(fmt)
            with open(path, "w", encoding="utf-8") as fh:
                fh.write(text)
        return fmt
