"""Reading the registry: runs as plain records, one registry or several merged (read-only), as a table,
JSON or CSV; and the shift crew's certification, the one thing written besides the exporter's writer.

A record holds everything the registry keeps of a run. Merging registries (one per exporter when
several serve a detector, each for its io_groups) joins the runs of the same name: files, packets,
io_groups, failing chips and certifications are put together, the span is the widest; the detector's
status seconds are summed over the registries (exporter-seconds, each judging its own io_groups).
"""

from __future__ import annotations

import csv
import io
import json
import sqlite3
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from larpix_dqm.exporter.quality.status import CheckStatus
from larpix_dqm.exporter.registry.schema import RegistryError, connect

FORMATS = ("table", "json", "csv")
VERDICTS = ("good", "bad")
STATUS_LABELS = tuple(s.label for s in sorted(CheckStatus, key=int))  # unknown, ok, warning, error
CSV_COLUMNS = (
    "run",
    "start_time",
    "end_time",
    "duration_s",
    "packets",
    "files",
    "mode",
    "open",
    *(f"{s}_s" for s in STATUS_LABELS),
    "certified_good",
    "certified_bad",
    "registries",
)


def _read(path: str | Path) -> list[dict[str, Any]]:
    """Every run of one registry, oldest first, as records."""
    conn = connect(path, readonly=True)
    try:
        conn.row_factory = sqlite3.Row
        runs = conn.execute("SELECT * FROM runs ORDER BY coalesce(start_time, opened_at), id").fetchall()
        by_id: dict[int, dict[str, Any]] = {}
        records = []
        for row in runs:
            record = {
                "run": row["run"],
                "source": row["source"],
                "start_time": row["start_time"],
                "end_time": row["end_time"],
                "packets": row["packets"],
                "mode": row["mode"],
                "mode_setting": row["mode_setting"],
                "open": row["closed_at"] is None,
                "opened_at": row["opened_at"],
                "updated_at": row["updated_at"],
                "closed_at": row["closed_at"],
                "files": [],
                "status_seconds": {},
                "check_failures": [],
                "bad_channels": json.loads(row["bad_channels"]),
                "configuration": json.loads(row["configuration"]),
                "reference": row["reference"],
                "certifications": [],
                "registries": [str(path)],
            }
            by_id[row["id"]] = record
            records.append(record)
        for row in conn.execute("SELECT * FROM run_files ORDER BY path"):
            by_id[row["run_id"]]["files"].append({"path": row["path"], "packets": row["packets"]})
        for row in conn.execute("SELECT * FROM status_time ORDER BY io_group"):
            scope = "detector" if row["io_group"] < 0 else str(row["io_group"])
            by_id[row["run_id"]]["status_seconds"].setdefault(scope, {})[row["status"]] = row["seconds"]
        for row in conn.execute("SELECT * FROM check_failures ORDER BY check_name, io_group, io_channel, chip_id"):
            by_id[row["run_id"]]["check_failures"].append(
                {
                    "check": row["check_name"],
                    "io_group": row["io_group"],
                    "io_channel": row["io_channel"],
                    "chip_id": row["chip_id"],
                    "worst": CheckStatus(row["worst"]).label,
                    "seconds": row["seconds"],
                    "first_time": row["first_time"],
                    "last_time": row["last_time"],
                }
            )
        for row in conn.execute("SELECT * FROM certifications ORDER BY certified_at, id"):
            by_id[row["run_id"]]["certifications"].append(
                {
                    "io_group": row["io_group"],
                    "verdict": row["verdict"],
                    "reason": row["reason"],
                    "author": row["author"],
                    "certified_at": row["certified_at"],
                }
            )
    except sqlite3.Error as err:
        raise RegistryError(f"registry {path}: {err}") from None
    finally:
        conn.close()
    return records


def _merge(into: dict[str, Any], other: dict[str, Any]) -> None:
    """Put ``other`` (the same run in another registry) into ``into``."""
    starts = [t for t in (into["start_time"], other["start_time"]) if t is not None]
    ends = [t for t in (into["end_time"], other["end_time"]) if t is not None]
    into["start_time"] = min(starts) if starts else None
    into["end_time"] = max(ends) if ends else None
    into["packets"] += other["packets"]
    into["open"] = into["open"] or other["open"]
    into["closed_at"] = None if into["open"] else max(into["closed_at"], other["closed_at"])
    into["updated_at"] = max(into["updated_at"], other["updated_at"])
    modes = {m for m in (into["mode"], other["mode"]) if m}
    into["mode"] = ",".join(sorted(modes)) or None
    files = {f["path"]: f["packets"] for f in into["files"]}
    for f in other["files"]:
        files[f["path"]] = files.get(f["path"], 0) + f["packets"]
    into["files"] = [{"path": p, "packets": n} for p, n in sorted(files.items())]
    for scope, seconds in other["status_seconds"].items():
        mine = into["status_seconds"].setdefault(scope, {})
        for status, value in seconds.items():
            mine[status] = mine.get(status, 0.0) + value
    into["check_failures"] += other["check_failures"]
    for status, channels in other["bad_channels"].items():
        into["bad_channels"][status] = sorted(into["bad_channels"].get(status, []) + channels)
    if other["configuration"] != into["configuration"]:
        into.setdefault("configurations", {into["registries"][0]: into["configuration"]})
        into["configurations"][other["registries"][0]] = other["configuration"]
    into["certifications"] = sorted(into["certifications"] + other["certifications"], key=lambda c: c["certified_at"])
    into["registries"] += other["registries"]


def read_runs(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    """The runs of one registry, or of several merged into one view (runs of the same name joined), oldest first."""
    merged: dict[str, dict[str, Any]] = {}
    for path in paths:
        for record in _read(path):
            if record["run"] in merged:
                _merge(merged[record["run"]], record)
            else:
                merged[record["run"]] = record
    records = sorted(merged.values(), key=lambda r: (r["start_time"] is None, r["start_time"] or r["opened_at"]))
    for record in records:
        _derive(record)
    return records


def _derive(record: dict[str, Any]) -> None:
    """Add the figures a reader wants at a glance: duration, and the certification in force per io_group."""
    start, end = record["start_time"], record["end_time"]
    record["duration_s"] = end - start if start is not None and end is not None else None
    current: dict[str, dict[str, Any]] = {}
    for cert in record["certifications"]:  # oldest first: the newest per io_group stands
        current[str(cert["io_group"])] = {k: v for k, v in cert.items() if k != "io_group"}
    record["certification"] = current


def find_run(records: list[dict[str, Any]], run: str) -> dict[str, Any] | None:
    """The record of ``run`` (its name), or None."""
    return next((r for r in records if r["run"] == run), None)


def certify(path: str | Path, run: str, io_groups: list[int], verdict: str, reason: str, author: str) -> list[int]:
    """Certify ``run`` good or bad on ``io_groups`` (all the run saw when empty); return the io_groups certified.

    Certifications are kept apart from the automatic verdicts, each with its reason, author and time;
    the newest per io_group stands, the older ones stay as its history.
    """
    if verdict not in VERDICTS:
        raise ValueError(f"verdict {verdict!r}: expected good or bad")
    if not reason.strip() or not author.strip():
        raise ValueError("a certification needs a reason and an author")
    conn = connect(path)
    try:
        row = conn.execute("SELECT id FROM runs WHERE run = ?", (run,)).fetchone()
        if row is None:
            raise RegistryError(f"registry {path}: no run {run!r}")
        run_id = int(row[0])
        if not io_groups:
            seen = conn.execute(
                "SELECT DISTINCT io_group FROM status_time WHERE run_id = ? AND io_group >= 0 ORDER BY io_group",
                (run_id,),
            )
            io_groups = [int(g) for (g,) in seen]
            if not io_groups:
                raise RegistryError(f"registry {path}: run {run!r} has no io_group yet: give --io-group")
        now = time.time()
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            "INSERT INTO certifications (run_id, io_group, verdict, reason, author, certified_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            [(run_id, g, verdict, reason, author, now) for g in io_groups],
        )
        conn.execute("COMMIT")
    except sqlite3.Error as err:
        raise RegistryError(f"registry {path}: {err}") from None
    finally:
        conn.close()
    return io_groups


def _utc(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t)) if t is not None else "-"


def _summary_row(record: dict[str, Any]) -> dict[str, Any]:
    """One run as the list shows it (a CSV row)."""
    detector = record["status_seconds"].get("detector", {})
    by_verdict = {v: sorted(int(g) for g, c in record["certification"].items() if c["verdict"] == v) for v in VERDICTS}
    return {
        "run": record["run"],
        "start_time": record["start_time"],
        "end_time": record["end_time"],
        "duration_s": record["duration_s"],
        "packets": record["packets"],
        "files": len(record["files"]),
        "mode": record["mode"] or "",
        "open": int(record["open"]),
        **{f"{s}_s": round(detector.get(s, 0.0), 3) for s in STATUS_LABELS},
        "certified_good": " ".join(map(str, by_verdict["good"])),
        "certified_bad": " ".join(map(str, by_verdict["bad"])),
        "registries": " ".join(record["registries"]),
    }


def format_runs(records: list[dict[str, Any]], fmt: str) -> str:
    """The list of runs: an aligned table for people, JSON (whole records) or CSV (one row a run)."""
    if fmt == "json":
        return json.dumps(records, indent=1) + "\n"
    rows = [_summary_row(r) for r in records]
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, CSV_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return out.getvalue()
    if fmt != "table":
        raise ValueError(f"format {fmt!r}: expected one of {', '.join(FORMATS)}")
    header = (
        "run",
        "start (UTC)",
        "duration",
        "packets",
        "files",
        "mode",
        "ok",
        "warning",
        "error",
        "unknown",
        "certified",
    )
    lines = [header]
    for row, record in zip(rows, records):
        total = sum(row[f"{s}_s"] for s in STATUS_LABELS) or 1.0
        certified = ", ".join(
            f"{v} {','.join(row[f'certified_{v}'].split())}" for v in VERDICTS if row[f"certified_{v}"]
        )
        lines.append(
            (
                row["run"] + (" (open)" if record["open"] else ""),
                _utc(row["start_time"]),
                f"{row['duration_s']:.0f} s" if row["duration_s"] is not None else "-",
                str(row["packets"]),
                str(row["files"]),
                row["mode"] or "-",
                *(f"{100 * row[f'{s}_s'] / total:.0f}%" for s in ("ok", "warning", "error", "unknown")),
                certified or "-",
            )
        )
    return _aligned(lines)


def format_run(record: dict[str, Any], fmt: str) -> str:
    """One run in full: JSON (its record), CSV (its failing chips, one row each) or a table for people."""
    if fmt == "json":
        return json.dumps(record, indent=1) + "\n"
    if fmt == "csv":
        out = io.StringIO()
        columns = ("check", "io_group", "io_channel", "chip_id", "worst", "seconds", "first_time", "last_time")
        writer = csv.DictWriter(out, columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(record["check_failures"])
        return out.getvalue()
    if fmt != "table":
        raise ValueError(f"format {fmt!r}: expected one of {', '.join(FORMATS)}")
    lines = [
        f"run {record['run']} (named by {record['source']}; {'open' if record['open'] else 'closed'})",
        f"data time   {_utc(record['start_time'])} to {_utc(record['end_time'])} UTC"
        + (f" ({record['duration_s']:.0f} s)" if record["duration_s"] is not None else ""),
        f"packets     {record['packets']} in {len(record['files'])} file(s)",
        f"mode        {record['mode'] or '-'} (setting: {record['mode_setting'] or '-'})",
        f"reference   {record['reference'] or 'none'}",
        f"config      {json.dumps(record.get('configurations', record['configuration']))}",
        f"registries  {', '.join(record['registries'])}",
        "",
        "files",
        *(f"  {f['path']}  {f['packets']} packets" for f in record["files"]),
        "",
    ]
    status = [("scope", *STATUS_LABELS)]
    for scope, seconds in record["status_seconds"].items():
        status.append(
            (
                scope if scope == "detector" else f"io_group {scope}",
                *(f"{seconds.get(s, 0.0):.0f} s" for s in STATUS_LABELS),
            )
        )
    lines += ["time in each status (data time)", _aligned(status, "  ").rstrip("\n"), ""]
    failures = [("check", "io_group", "io_channel", "chip_id", "worst", "seconds")]
    failures += [
        (f["check"], str(f["io_group"]), str(f["io_channel"]), str(f["chip_id"]), f["worst"], f"{f['seconds']:.0f}")
        for f in record["check_failures"]
    ]
    lines += ["failing chips and io_groups, per check", _aligned(failures, "  ").rstrip("\n"), ""]
    lines.append("bad channels at the end (io_group-io_channel-chip_id-channel_id)")
    for status_name, channels in record["bad_channels"].items():
        shown = " ".join("-".join(map(str, c)) for c in channels)
        lines.append(f"  {status_name} ({len(channels)}): {shown or '-'}")
    lines += ["", "certification (newest per io_group stands; automatic verdicts above are apart)"]
    if not record["certifications"]:
        lines.append("  none")
    for cert in record["certifications"]:
        lines.append(
            f"  io_group {cert['io_group']}: {cert['verdict']} by {cert['author']} at {_utc(cert['certified_at'])} UTC:"
            f" {cert['reason']}"
        )
    return "\n".join(lines) + "\n"


def _aligned(rows: Sequence[tuple[str, ...]], indent: str = "") -> str:
    """Rows as left-aligned columns, one line each."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "".join(indent + "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() + "\n" for row in rows)


def recent_runs(path: str | Path, limit: int = 5) -> list[str]:
    """The names of the newest runs of a registry, newest first (a cheap query, for the status page)."""
    conn = connect(path, readonly=True)
    try:
        rows = conn.execute(
            "SELECT run FROM runs ORDER BY coalesce(start_time, opened_at) DESC, id DESC LIMIT ?", (limit,)
        ).fetchall()
    except sqlite3.Error as err:
        raise RegistryError(f"registry {path}: {err}") from None
    finally:
        conn.close()
    return [str(run) for (run,) in rows]
