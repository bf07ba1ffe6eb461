"""Evaluation: one judged state (the snapshot, its check results, the reference comparison), the unit
the Python API returns, the ingest thread publishes and the scrapes, the status page and the plots read."""

from __future__ import annotations

from dataclasses import dataclass

from larpix_dqm.exporter.quality.checks import CheckResults
from larpix_dqm.exporter.quality.reference import Comparison
from larpix_dqm.exporter.quality.snapshot import Snapshot


@dataclass(frozen=True)
class Evaluation:
    """One consistent view: the snapshot, its check results and the reference comparison."""

    snapshot: Snapshot
    results: CheckResults
    comparison: Comparison | None
    wall_time: float
    #: The run mode whose check set judged the snapshot (given, or detected from the trigger types).
    run_mode: str = "self-trigger"
