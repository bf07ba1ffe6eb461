"""Bad-channel lists in the forms the DAQ's channel-disable configuration reads.

``json``: ``{"<io_group>-<io_channel>-<chip_id>": [channel_id, ...], "meta": {...}}`` (larpix-control
chip keys); ``csv``: one ``io_group,io_channel,chip_id,channel_id`` row per channel; ``daq``: the 2x2
DAQ's disabled list ``{"<io_group>-<tile>-<chip_id>": [channel_id, ...], "meta": {...}}`` (tile =
(io_channel - 1) // 4 + 1), which ``--disabled-list`` reads back. Both JSON forms name their keys in
``meta.key_scheme``, so ``--disabled-list`` refuses the chip-keyed one instead of masking other chips.
"""

from __future__ import annotations

import io
import json
import math
import time

import numpy as np

from larpix_dqm.exporter import __version__
from larpix_dqm.exporter.detector.runconfig import (
    CHIP_KEY_SCHEME,
    CSV_CHANNELS_HEADER,
    DISABLED_LIST_KEY_SCHEME,
    daq_tile,
)
from larpix_dqm.exporter.quality.snapshot import Snapshot
from larpix_dqm.exporter.quality.status import ChannelStatus

CHANNEL_MEDIA_TYPES = {"json": "application/json", "csv": "text/csv; charset=utf-8", "daq": "application/json"}
#: The key scheme of each JSON form, written into its ``meta.key_scheme``.
KEY_SCHEMES = {"json": CHIP_KEY_SCHEME, "daq": DISABLED_LIST_KEY_SCHEME}
#: Statuses listed when none are asked for: the DAQ masks noisy channels, never silent ones.
DEFAULT_STATUSES = {"json": ("noisy", "silent"), "csv": ("noisy", "silent"), "daq": ("noisy",)}


def _unix_text(seconds: float) -> str | None:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds)) if math.isfinite(seconds) else None


def disabled_list_meta(snapshot: Snapshot, statuses: list[str] | tuple[str, ...], sources: list[str]) -> dict:
    """The ``meta`` block of a JSON channel list: what was judged, over which data time, with which thresholds."""
    end = snapshot.data_time + 1.0 if math.isfinite(snapshot.data_time) else math.nan  # timestamps have 1 s resolution
    start = end - snapshot.covered_seconds
    return {
        "tool": f"larpix-dqm {__version__}",
        "created": _unix_text(time.time()),
        "sources": list(sources),
        "statuses": list(statuses),
        "data_time_start": _unix_text(start),
        "data_time_end": _unix_text(end),
        "window_seconds": snapshot.covered_seconds,
        "noisy_rate_hz": snapshot.config.noisy_rate_hz,
    }


def format_channels(rows: np.ndarray, fmt: str, meta: dict | None = None) -> bytes:
    """(n, 4) rows of io_group, io_channel, chip_id, channel_id as ``json``, ``csv`` or ``daq`` bytes
    (``meta``: the JSON forms' meta block, to which their key scheme is added)."""
    if fmt in KEY_SCHEMES:
        channels: dict[str, set[int]] = {}
        for g, c, chip, channel in rows.tolist():
            channels.setdefault(f"{g}-{daq_tile(c) if fmt == 'daq' else c}-{chip}", set()).add(channel)
        doc: dict[str, object] = {key: sorted(found) for key, found in channels.items()}
        tile = {"tile": "(io_channel - 1) // 4 + 1"} if fmt == "daq" else {}
        doc["meta"] = {**(meta or {}), "key_scheme": KEY_SCHEMES[fmt], **tile}
        return (json.dumps(doc, indent=1) + "\n").encode()
    if fmt == "csv":
        out = io.StringIO()
        out.write(CSV_CHANNELS_HEADER + "\n")
        for row in rows.tolist():
            out.write(",".join(map(str, row)) + "\n")
        return out.getvalue().encode()
    raise ValueError(f"unknown format {fmt!r}: use json, csv or daq")


def channel_list(snapshot: Snapshot, statuses: tuple[str, ...] | list[str]) -> np.ndarray:
    """Channels of the given statuses as (n, 4) rows: io_group, io_channel, chip_id, channel_id. Every publication asks
    it (the registry's bad channels), so it compares plain int codes and takes flat indices: ``np.isin``, an IntEnum
    (numpy compares it in int64) and a 2-D ``np.nonzero`` each cost 5-20 ms over 50 io_groups' channels."""
    status = snapshot.channel_status
    chosen = np.zeros(status.shape, bool)
    for label in statuses:
        chosen |= status == int(ChannelStatus.from_label(label))
    flat = np.flatnonzero(chosen)
    chips, channels = flat // status.shape[1], flat % status.shape[1]
    return np.column_stack([snapshot.chip_keys[chips].astype(np.int64), channels]).reshape(-1, 4)
