"""One-shot processing of a single file: the statistics, metrics (and plots) ``once`` writes."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import orjson

from larpix_dqm.exporter.detector.geometry import Geometry
from larpix_dqm.exporter.detector.runconfig import RunConfig, RunConfigError
from larpix_dqm.exporter.metrics.exposition import render
from larpix_dqm.exporter.metrics.families import FamilyBuilder
from larpix_dqm.exporter.metrics.health import Health
from larpix_dqm.exporter.monitor import Monitor, unexpected_chips
from larpix_dqm.exporter.quality.channels import channel_list
from larpix_dqm.exporter.quality.config import COMPILED
from larpix_dqm.exporter.quality.evaluation import Evaluation
from larpix_dqm.exporter.quality.snapshot import Snapshot
from larpix_dqm.exporter.quality.status import ChannelStatus
from larpix_dqm.exporter.reading.files import Chunk, FileReader
from larpix_dqm.exporter.reading.formats import detect
from larpix_dqm.exporter.reading.formats.base import OpenFile, SourceError, open_for_reading
from larpix_dqm.exporter.reading.tail import DirectoryTail, InputSpec
from larpix_dqm.exporter.runtime.ingest import count_chunk, note_reading

#: ``process_file`` hands ``on_evaluation`` an evaluation every this many seconds of the file's data time.
EVALUATE_EVERY_SECONDS = 10.0
#: Statuses whose channel lists the summary carries only when asked (``once --channels``): they hold most of
#: a detector's channels (409,600 at an ND-LAr module), and their counts are in the totals anyway.
LISTED_WHEN_ASKED = (ChannelStatus.ACTIVE, ChannelStatus.UNKNOWN)


def snapshot_totals(snapshot: Snapshot, health: Health) -> dict:
    """The file's totals: packets, data packets, parity errors, decode errors by kind (``health``: what serve's
    ``larpix_exporter_decode_errors_total`` would count), chips, channels by status, the window's span (what
    ``once`` prints; the summary's ``totals``)."""
    return {
        "packets": int(snapshot.packet_type_counts.sum()),
        "data_packets": int(snapshot.chip_packets.sum()),
        "parity_errors": int(snapshot.chip_parity_errors.sum() + snapshot.link_parity_errors.sum()),
        "decode_errors": dict(health.decode_errors),
        "chips": len(snapshot.chip_keys),
        "channels": {s.label: int(n) for s, n in zip(ChannelStatus.judged(), snapshot.chip_status_counts.sum(axis=0))}
        if len(snapshot.chip_keys)
        else {},
        "window_seconds": snapshot.covered_seconds,
    }


def snapshot_summary(snapshot: Snapshot, health: Health, every_list: bool = False) -> dict:
    """The totals, per-chip statistics and the channel lists of the problem statuses (of every status with
    ``every_list``) as (n, 4) arrays of io_group, io_channel, chip_id, channel_id: what ``summary_json`` writes."""
    labels = [s.label for s in ChannelStatus.judged()]
    adc_mean = [None if math.isnan(v) else v for v in snapshot.chip_adc_mean.tolist()]  # NaN: null
    adc_std = [None if math.isnan(v) else v for v in snapshot.chip_adc_std.tolist()]
    masked_active = snapshot.chip_masked_active if len(snapshot.chip_masked_active) else np.zeros(len(adc_mean), int)
    columns = zip(  # one list per column: a Python object per value, not a numpy scalar (6,400 chips: 0.1 s less)
        snapshot.chip_keys.tolist(),
        snapshot.chip_packets.tolist(),
        snapshot.chip_parity_errors.tolist(),
        snapshot.chip_fifo_flags.tolist(),
        snapshot.chip_rate_hz.tolist(),
        adc_mean,
        adc_std,
        snapshot.chip_status_counts.tolist(),
        masked_active.tolist(),
    )
    chips = [
        {
            "io_group": key[0],
            "io_channel": key[1],
            "chip_id": key[2],
            "packets": packets,
            "parity_errors": parity,
            "fifo_flags": fifo,
            "hit_rate_hz": rate,
            "adc_mean": mean,
            "adc_std": std,
            "channels": dict(zip(labels, counts)),
            "masked_active_channels": masked,
        }
        for key, packets, parity, fifo, rate, mean, std, counts, masked in columns
    ]
    return {
        "totals": snapshot_totals(snapshot, health),
        "chips": chips,
        "channels": {
            s.label: channel_list(snapshot, (s.label,))  # no Python object per channel (409,600 at ND-LAr)
            for s in ChannelStatus.judged()
            if every_list or s not in LISTED_WHEN_ASKED
        },
        "unexpected_chips": unexpected_chips(snapshot),
        "link_parity_errors": [
            {"io_group": g, "io_channel": c, "parity_errors": int(snapshot.link_parity_errors[g, c])}
            for g, c in np.argwhere(snapshot.link_parity_errors > 0).tolist()
        ],
    }


@dataclass
class FileResult:
    """What reading one whole file gave: its evaluation (snapshot and checks), counts, read errors."""

    path: str
    geometry: Geometry | None
    evaluation: Evaluation
    health: Health
    errors: list[str] = field(default_factory=list)
    mode_setting: str = "auto"  # the run mode as configured; 'auto' is detected from the file's trigger types

    @property
    def snapshot(self) -> Snapshot:
        return self.evaluation.snapshot

    def summary(self, every_list: bool = False) -> tuple[dict, str]:
        """The JSON summary (with the file and its read errors; every status's channel list with ``every_list``)
        and the metrics text, the families a scrape of ``serve`` would show for the same data (check statuses
        included)."""
        summary = snapshot_summary(self.snapshot, self.health, every_list)
        summary["file"] = _utf8(self.path)
        summary["run_mode"] = self.evaluation.run_mode
        summary["read_errors"] = [_utf8(error) for error in self.errors]  # they name the file
        families = FamilyBuilder(self.mode_setting, self.geometry).families(
            self.snapshot, self.health, evaluation=self.evaluation
        )
        return summary, render(families)


def summary_json(summary: dict) -> bytes:
    """summary.json's bytes: one line per entry of the top level and of the sections under it (a chip, a
    status's channel list), so it reads and diffs by line; each line by orjson, which writes a channel list
    from its array without a Python object per value (``json``'s ``indent`` would take seconds for an ND-LAr
    module, its compact form 0.5 s of lists)."""
    sections = []
    for key, value in summary.items():
        if not isinstance(value, (dict, list)) or not len(value):
            sections.append(_json(str(key)) + b": " + _json(value))
            continue
        if isinstance(value, list):
            lines = [_json(v) for v in value]
        else:
            lines = [_json(str(k)) + b": " + _json(v) for k, v in value.items()]
        opening, closing = (b"[", b"]") if isinstance(value, list) else (b"{", b"}")
        sections.append(_json(str(key)) + b": " + opening + b"\n  " + b",\n  ".join(lines) + b"\n " + closing)
    return b"{\n " + b",\n ".join(sections) + b"\n}\n"


def _utf8(text: str) -> str:
    """``text`` with the bytes of a file name that are not UTF-8 (which Python keeps as lone surrogates, and
    JSON cannot carry) written as ``\\xNN``."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _json(value: object) -> bytes:
    """One value as compact JSON, as ``json`` would write it but for spaces: numpy arrays as nested lists, keys that
    are not strings as strings; NaN as null (valid JSON, unlike ``json``'s NaN)."""
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)


def file_rows(path: str) -> int:
    """Rows of the file's main dataset (messages of a raw file, packets of a packet file), 0 if unreadable."""
    try:
        with open_for_reading(path) as opened:
            fh = OpenFile(opened)
            return detect(fh, path).length(fh)
    except (OSError, SourceError, KeyError, ValueError, RuntimeError):
        return 0


def process_file(
    path: str,
    geometry: Geometry | None,
    window: float = 60.0,
    on_chunk: Callable[[Chunk], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
    run_config: RunConfig | None = None,
    ingest_engine: str = COMPILED,
    on_evaluation: Callable[[Evaluation], None] | None = None,
    reader: FileReader | None = None,
) -> FileResult:
    """Ingest a whole file through a ``Monitor``, as serve does; ``on_chunk`` sees each chunk, ``on_progress``
    the rows done so far, ``on_evaluation`` the state every ``EVALUATE_EVERY_SECONDS`` of data time read (the run
    registry credits each stretch to the statuses of its time); ``reader`` sets the chunks' size. The
    configuration the file stores (a packet file's ``configs``) adds to ``run_config``."""
    errors: list[str] = []
    run_config = run_config or RunConfig()
    monitor = Monitor(geometry, window=window, ingest_engine=ingest_engine)
    monitor.accumulator.set_run_config(run_config)
    health = Health()
    evaluated = [np.nan]  # the data time of the last evaluation handed out

    def consume(chunk: Chunk) -> None:
        now = time.time()
        try:
            monitor.apply_file_configuration(chunk)
        except RunConfigError as err:
            errors.append(f"configs: {err}")
        monitor.feed_chunk(chunk, now)
        count_chunk(health, chunk, now)
        if on_chunk is not None:
            on_chunk(chunk)
        if on_progress is not None:
            on_progress(chunk.rows_end)
        clock = chunk.cursor.clock.last
        if on_evaluation is not None and not np.isnan(clock).all():
            t = float(np.nanmax(clock))
            if np.isnan(evaluated[0]):
                evaluated[0] = t
            elif t - evaluated[0] >= EVALUATE_EVERY_SECONDS:
                evaluated[0] = t
                on_evaluation(monitor.update())

    tail = DirectoryTail(
        [InputSpec(path)], reader, on_error=lambda cursor, reason, message: errors.append(f"{reason}: {message}")
    )
    tail.pump(consume, expect=monitor.accumulator.expect)
    monitor.accumulator.finish()
    note_reading(health, monitor.accumulator, tail)
    return FileResult(path, geometry, monitor.update(), health, errors, run_config.run_mode)
