"""Named runs of a detector: realistic activity, with or without one fault, for ``simulate --scenario`` and the bench.

Every scenario but ``poisson`` runs on a module-like activity: 0.05 Hz of noise per channel with
a ±30 % log-normal spread and edge pixels at 3x, plus 2 cosmic tracks per second (10 % steep).
Faults start at a third of the run (time to learn the rates first) unless they are there from the
start; the region each one hits is picked from the geometry, so every scenario runs on any layout.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from larpix_dqm.exporter.detector.geometry import Geometry
from larpix_dqm.exporter.simulate import Faults, SimulationConfig, channel_keys
from larpix_dqm.exporter.simulation.activity import Activity, RateChange

NOISE_HZ = 0.05
DETECTOR = Activity(rate_spread=0.3, edge_factor=3.0, cosmic_rate_hz=2.0, steep_fraction=0.1)


@dataclass
class Scenario:
    """A run to simulate and what a monitor should find in it.

    ``fault_start``: data seconds from the run's start to the fault (None: a healthy run).
    ``expect``: the verdict that finds the fault: 'region' (most of its chips flagged), 'inefficient'
    or 'noisy' (the channel's verdict), 'parity' (the chip's parity check), '' for none.
    """

    name: str
    help: str
    config: SimulationConfig
    activity: Activity
    faults: Faults = field(default_factory=Faults)
    fault_start: float | None = None
    expect: str = ""


#: Scenario names and what they simulate (the CLI's help and choices).
DESCRIPTIONS = {
    "poisson": "independent Poisson hits at 0.05 Hz per channel, the model the verdicts assume",
    "spread": "Poisson noise with a ±30 % log-normal channel spread and edge pixels at 3x, no tracks",
    "detector": "noise with a ±30 % channel spread, edge pixels at 3x, 2 cosmic tracks/s (10 % steep)",
    "beam": "detector + NuMI-like spills (20 tracks, Gaussian profile) every 1.2 s, 5 min on / 5 min off",
    "pause": "detector + a DAQ pause (no packet at all, no sync) of up to 10 min at a third of the run",
    "runs": "detector + a new run (new file) every quarter of the run after 30 s without data",
    "parity": "detector + benign parity errors on 1e-4 of the packets",
    "hv-trip": "detector; at a third of the run one tile's HV trips: its hits drop to 10 %",
    "hot-tile": "detector; at a third of the run one tile's noise rises to 5x",
    "inefficient-channel": "detector; at a third of the run one channel's efficiency drops to 30 %",
    "intermittent-noise": "detector; from a third of the run one channel bursts at 200 Hz for 5 s every 5 min",
    "dead-chip": "detector; at a third of the run one chip dies",
    "dead-io-channel": "detector; one io_channel (all its chips) dead from the start",
    "dead-tile": "detector; one tile dead from the start",
    "bad-parity-chip": "detector; every data packet of one chip fails parity (a broken link)",
}


def scenario(name: str, geometry: Geometry, seconds: float, seed: int = 0) -> Scenario:
    """The scenario ``name`` for a run of ``seconds`` data seconds on ``geometry``; KeyError if unknown."""
    help_text = DESCRIPTIONS[name]
    config = SimulationConfig(hit_rate_hz=NOISE_HZ, seed=seed)
    if name == "poisson":
        return Scenario(name, help_text, config, Activity())
    keys = channel_keys(geometry)
    tiles = np.unique(geometry.tiles)
    tile = int(tiles[min(2, len(tiles) - 1)])
    chip = tuple(int(v) for v in keys[len(keys) // 3, :3])
    channel = tuple(int(v) for v in keys[len(keys) // 2])
    io_channel = tuple(int(v) for v in keys[2 * len(keys) // 3, :2])
    later = round(seconds / 3)
    activity = replace(DETECTOR)
    faults = Faults()
    start: float | None = later
    expect = "region"
    if name == "spread":
        activity = replace(DETECTOR, cosmic_rate_hz=0.0)
    elif name == "beam":
        activity = replace(DETECTOR, beam_spill_period=1.2)
    elif name == "pause":
        activity = replace(DETECTOR, pauses=[(later, min(600.0, seconds / 3))])
    elif name == "runs":
        activity = replace(DETECTOR, run_seconds=max(60.0, seconds / 4), run_gap_seconds=30.0)
    elif name == "parity":
        faults = Faults(parity_error_fraction=1e-4)
    elif name == "hv-trip":
        faults = Faults(rate_changes=[RateChange(tiles=[tile], scale=0.1, start=later)])
    elif name == "hot-tile":
        faults = Faults(rate_changes=[RateChange(tiles=[tile], scale=5.0, start=later)])
    elif name == "inefficient-channel":
        faults = Faults(rate_changes=[RateChange(keys=[channel], scale=0.3, start=later)])
        expect = "inefficient"
    elif name == "intermittent-noise":
        burst = RateChange(keys=[channel], add_hz=200.0, start=later, period=300.0, duration=5.0)
        faults = Faults(rate_changes=[burst])
        expect = "noisy"
    elif name == "dead-chip":
        faults = Faults(rate_changes=[RateChange(keys=[chip], scale=0.0, start=later)])
    elif name == "dead-io-channel":
        faults, start = Faults(rate_changes=[RateChange(keys=[io_channel], scale=0.0)]), 0.0
    elif name == "dead-tile":
        faults, start = Faults(rate_changes=[RateChange(tiles=[tile], scale=0.0)]), 0.0
    elif name == "bad-parity-chip":
        faults, start, expect = Faults(bad_parity_chips=[chip]), 0.0, "parity"
    if not faults.rate_changes and not faults.bad_parity_chips:
        start, expect = None, ""
    return Scenario(name, help_text, config, activity, faults, start, expect)
