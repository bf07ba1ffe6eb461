"""The exporter's own health figures (the larpix_exporter_* families): written by the ingest thread, copied for
each scrape; here, beside the families that render them, so that metrics need nothing of runtime."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from larpix_dqm.exporter.reading.formats import FORMATS


@dataclass
class Health:
    """Counters and gauges about the exporter itself (not the detector)."""

    up: bool = False
    polls: int = 0
    poll_duration: float = 0.0
    last_poll_wall: float = float("nan")
    last_ingest_wall: float = float("nan")
    files_tracked: int = 0
    files_in_error: dict[str, int] = field(default_factory=dict)
    read_errors: dict[str, int] = field(default_factory=dict)
    decode_errors: dict[str, int] = field(
        default_factory=lambda: {
            "bad_message": 0,
            "unknown_word": 0,
            "headerless": 0,
            "out_of_range": 0,
            "implausible_timestamp": 0,
            "time_jump": 0,
        }
    )
    packets_ingested: dict[str, int] = field(default_factory=lambda: {f.name: 0 for f in FORMATS})
    messages_ingested: int = 0
    checkpoint_errors: int = 0
    checkpoint_duration: float = 0.0
    compiled_ingest: bool = False

    def count_read_error(self, reason: str) -> None:
        self.read_errors[reason] = self.read_errors.get(reason, 0) + 1

    def copy(self) -> Health:
        return copy.deepcopy(self)
