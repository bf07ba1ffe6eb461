"""Bad-channel lists in the forms the DAQ's channel-disable configuration reads.

``json``: ``{"<io_group>-<io_channel>-<chip_id>": [channel_id, ...]}`` (larpix-control chip
keys); ``csv``: one ``io_group,io_channel,chip_id,channel_id`` row per channel.
"""

from __future__ import annotations

import io
import json

import numpy as np

CHANNEL_MEDIA_TYPES = {"json": "application/json", "csv": "text/csv; charset=utf-8"}


def format_channels(rows: np.ndarray, fmt: str) -> bytes:
    """(n, 4) rows of io_group, io_channel, chip_id, channel_id as ``json`` or ``csv`` bytes."""
    if fmt == "json":
        disabled: dict[str, list[int]] = {}
        for g, c, chip, channel in rows.tolist():
            disabled.setdefault(f"{g}-{c}-{chip}", []).append(channel)
        return (json.dumps(disabled, indent=1) + "\n").encode()
    if fmt == "csv":
        out = io.StringIO()
        out.write("io_group,io_channel,chip_id,channel_id\n")
        for row in rows.tolist():
            out.write(",".join(map(str, row)) + "\n")
        return out.getvalue().encode()
    raise ValueError(f"unknown format {fmt!r}: use json or csv")
