"""A golden exposition (the node_exporter way, its ``collector/fixtures/e2e-output.txt``): the detector families
of a seeded simulated run, rendered and compared line for line with ``tests/fixtures/exposition.prom``, so that
any change to what a scrape shows (a name, a label, a value, an order) is seen in review.

After an intended change: ``LARPIX_DQM_UPDATE_GOLDEN=1 python -m pytest tests/test_golden.py`` rewrites the
fixture; the diff is then the change users see.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

import numpy as np
import pytest

from larpix_dqm.exporter.detector.geometry import Geometry
from larpix_dqm.exporter.metrics.exposition import render
from larpix_dqm.exporter.metrics.families import FamilyBuilder
from larpix_dqm.exporter.monitor import Monitor
from larpix_dqm.exporter.quality.accumulator import COMPILED, KERNELS, NUMPY, load_kernels
from larpix_dqm.exporter.reading.decode import decode_messages
from larpix_dqm.exporter.simulate import Faults, SimulationConfig, Simulator

FIXTURE = Path(__file__).parent / "fixtures" / "exposition.prom"
START = 1_700_000_000


def small_module(module_geometry: Geometry) -> Geometry:
    """Two chips of each io_group of the packaged module: both io_groups, two tiles, a small fixture."""
    keep = np.zeros(len(module_geometry.chips), bool)
    for group in (1, 2):
        keep[np.flatnonzero(module_geometry.chips[:, 0] == group)[:2]] = True
    g = module_geometry
    return Geometry(g.path, g.chips[keep], g.tiles[keep], g.x[keep], g.y[keep], g.connected[keep], g.pixel_pitch, {})


@pytest.mark.parametrize("engine", [NUMPY, COMPILED])
def test_the_exposition_of_a_seeded_run_is_the_golden_one(module_geometry, engine):
    if engine == COMPILED:
        assert load_kernels(wait=300), KERNELS.error
    geometry = small_module(module_geometry)
    dead = tuple(int(v) for v in geometry.chips[-1])
    noisy = (*(int(v) for v in geometry.chips[0]), int(np.flatnonzero(geometry.connected[0])[0]))
    sim = Simulator(
        geometry,
        SimulationConfig(hit_rate_hz=2.0, seed=3, trigger_rate_hz=1.0),
        Faults(silent_chips=[dead], noisy_channels=[noisy], parity_error_fraction=0.01),
    )
    monitor = Monitor(geometry, window=30.0, window_bins=6, ingest_engine=engine)
    for t in range(120):
        monitor.feed(decode_messages(*sim.second(START + t)).packets, wall_now=START + t)
    state = monitor.update()
    text = render(FamilyBuilder(geometry=geometry).detector_families(state.snapshot, True, evaluation=state, run="7"))
    if os.environ.get("LARPIX_DQM_UPDATE_GOLDEN"):
        FIXTURE.write_text(text)
    golden = FIXTURE.read_text()
    diff = "".join(difflib.unified_diff(golden.splitlines(True), text.splitlines(True), "golden", engine, n=1))
    assert text == golden, (
        f"the exposition changed (rewrite the fixture if intended, see the docstring):\n{diff[:4000]}"
    )
