"""The simulator's detector-like activity and faults: tracks, beam spills, pauses, runs, regional faults, scenarios."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from larpix_dqm.exporter.cli import app
from larpix_dqm.exporter.reading.decode import decode_messages
from larpix_dqm.exporter.simulate import Faults, SimulationConfig, Simulator, channel_keys, write_run
from larpix_dqm.exporter.simulation.activity import Activity, RateChange
from larpix_dqm.exporter.simulation.scenarios import DESCRIPTIONS, scenario

START = 1_700_000_000


def hits(sim: Simulator, second: int) -> np.ndarray:
    """The data packets of one simulated second."""
    packets = decode_messages(*sim.second(START + second)).packets
    return packets[packets["packet_type"] == 0]


def per_channel(sim: Simulator, packets: np.ndarray) -> np.ndarray:
    """Hits per row of ``sim.channels``."""
    keys = np.stack([packets["io_group"], packets["io_channel"], packets["chip_id"], packets["channel_id"]], 1)
    table = {tuple(k): i for i, k in enumerate(sim.channels.tolist())}
    counts = np.zeros(len(sim.channels), int)
    for key in keys.tolist():
        counts[table[tuple(key)]] += 1
    return counts


def test_steep_tracks_retrigger_few_pixels_within_a_millisecond(module_geometry):
    sim = Simulator(
        module_geometry, SimulationConfig(hit_rate_hz=0.0), activity=Activity(cosmic_rate_hz=3.0, steep_fraction=1.0)
    )
    packets = np.concatenate([hits(sim, t) for t in range(5)])
    counts = per_channel(sim, packets)
    fired = counts[counts > 0]
    assert fired.min() >= 30 and fired.max() <= 150  # each pixel of a steep track re-triggers 30-150 times
    assert len(fired) <= 3 * 5 * 10  # 1-3 pixels a track
    for key in sim.channels[counts > 0][:5]:
        mine = packets[(packets["chip_id"] == key[2]) & (packets["channel_id"] == key[3])]
        assert np.ptp(mine["timestamp"].astype(np.int64)) <= 10_000  # within 1 ms of 100 ns ticks


def test_flat_tracks_fire_a_line_of_pixels_once_within_a_drift_time(module_geometry):
    sim = Simulator(module_geometry)
    rng = np.random.default_rng(1)
    start = np.array([-200.0, 500.0])
    ids, ticks = sim.tracks.flat(rng, 1000, start, 0.3, 600.0)
    assert len(ids) == len(set(ids.tolist())) > 100  # ~600 mm / 4.4 mm pitch, each pixel once
    assert 1000 <= ticks.min() and ticks.max() <= 1000 + 1900 + 20  # within one drift time (190 µs)
    xy = sim.tracks.position[ids] - start
    across = xy @ np.array([np.cos(0.3), np.sin(0.3)])  # distance from the line (direction sin, -cos)
    assert np.abs(across).max() <= module_geometry.pixel_pitch


def test_beam_spills_follow_their_period_on_and_off(module_geometry):
    activity = Activity(beam_spill_period=1.2, beam_tracks_per_spill=30, beam_on_seconds=6, beam_off_seconds=6)
    sim = Simulator(module_geometry, SimulationConfig(hit_rate_hz=0.0), activity=activity)
    per_second = [len(hits(sim, t)) for t in range(12)]
    assert all(per_second[:5]) and not any(per_second[5:12])  # spills at 0, 1.2, ... 4.8 s; 6.0 s is off
    sim = Simulator(module_geometry, SimulationConfig(hit_rate_hz=0.0), activity=activity)
    hits(sim, 0)  # the run starts
    packets = hits(sim, 1)  # 1.2 s: one spill, its hits within 10 µs + a drift time
    assert np.ptp(packets["timestamp"].astype(np.int64)) <= 100 + 2000 + 20
    assert abs(int(packets["timestamp"].min()) - 2_000_000) <= 100


@pytest.mark.slow
def test_beam_profile_is_densest_at_the_centre(module_geometry):
    activity = Activity(beam_spill_period=0.25, beam_tracks_per_spill=40, beam_sigma_mm=150)
    sim = Simulator(module_geometry, SimulationConfig(hit_rate_hz=0.0), activity=activity)
    counts = sum(per_channel(sim, hits(sim, t)) for t in range(5))
    rows, channels = np.nonzero(module_geometry.connected)
    y = module_geometry.y[rows, channels]
    centre = np.abs(y - y.mean()) < 150
    assert counts[centre].mean() > 2 * counts[~centre].mean()


def test_pauses_and_runs_write_nothing_and_start_new_files(module_geometry, tmp_path):
    activity = Activity(pauses=[(5, 4)], run_seconds=10, run_gap_seconds=3)
    sim = Simulator(module_geometry, SimulationConfig(hit_rate_hz=0.01), activity=activity)
    seen: list[int] = []
    paths = write_run(sim, tmp_path, "raw", 20, realtime=False, start_time=START, on_second=seen.append)
    assert seen == list(range(START + 1, START + 21))  # called after every second, written or not
    assert [p.name.split("-")[1] for p in paths] == [str(START), str(START + 13)]  # a new run, a new file
    assert [sim.live(START + t) for t in range(20)] == [t < 5 or 9 <= t < 10 or t >= 13 for t in range(20)]


@pytest.mark.slow
def test_rate_changes_and_bad_parity_chips(module_geometry):
    tile = int(np.unique(module_geometry.tiles)[1])
    keys = channel_keys(module_geometry)
    chip = tuple(int(v) for v in keys[0, :3])
    faults = Faults(
        rate_changes=[
            RateChange(tiles=[tile], scale=0.1, start=3),
            RateChange(keys=[tuple(int(v) for v in keys[-1, :2])], scale=0.0),
            RateChange(keys=[tuple(int(v) for v in keys[100])], add_hz=500.0, start=2, period=4, duration=1),
        ],
        bad_parity_chips=[chip],
    )
    sim = Simulator(module_geometry, SimulationConfig(hit_rate_hz=1.0), faults)
    counts = np.array([per_channel(sim, hits(sim, t)) for t in range(8)])  # (seconds, channels)
    on_tile = sim.tiles == tile
    before, after = counts[:3, on_tile].sum() / 3, counts[3:, on_tile].sum() / 5
    assert 0.05 < after / before < 0.15  # HV trip: 10 %
    assert counts[:, sim.change_masks[1]].sum() == 0  # dead io_channel from the start
    assert [int(c) > 100 for c in counts[:, 100]] == [False, False, True, False, False, False, True, False]
    packets = hits(sim, 9)
    bad = packets["chip_id"] == chip[2]
    bad &= (packets["io_group"] == chip[0]) & (packets["io_channel"] == chip[1])
    assert bad.any() and (packets["valid_parity"][bad] == 0).all() and (packets["valid_parity"][~bad] == 1).all()


def test_rate_spread_and_edge_pixels(module_geometry):
    sim = Simulator(
        module_geometry, SimulationConfig(hit_rate_hz=1.0), activity=Activity(rate_spread=0.3, edge_factor=3.0)
    )
    edges = (
        Simulator(module_geometry, SimulationConfig(hit_rate_hz=1.0), activity=Activity(edge_factor=3.0)).rate == 3.0
    )
    assert 0.04 < edges.mean() < 0.07  # the border of a 70 x 70 pixel tile: 276 of 4,900
    spread = np.log(sim.rate / np.where(edges, 3.0, 1.0))
    assert abs(spread.std() - 0.3) < 0.02 and abs(np.exp(spread).mean() - 1) < 0.02
    assert (Simulator(module_geometry, SimulationConfig(hit_rate_hz=1.0)).rate == 1.0).all()


def test_every_scenario_builds_and_runs(module_geometry):
    for name in DESCRIPTIONS:
        sc = scenario(name, module_geometry, 60)
        sim = Simulator(module_geometry, sc.config, sc.faults, sc.activity)
        assert len(hits(sim, 0)) > 1000, name
        assert (sc.fault_start is None) == (sc.expect == ""), name


def test_unknown_regions_are_refused(module_geometry):
    with pytest.raises(ValueError, match="not tiles of the geometry"):
        Simulator(module_geometry, faults=Faults(rate_changes=[RateChange(tiles=[99])]))
    with pytest.raises(ValueError, match="rate-change region 9-9"):
        Simulator(module_geometry, faults=Faults(rate_changes=[RateChange(keys=[(9, 9)])]))


@pytest.mark.slow
def test_cli_scenarios(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["simulate", "--help"], env={"COLUMNS": "300"}, terminal_width=300)
    for name in DESCRIPTIONS:
        assert name in result.output
    out = tmp_path / "run"
    result = runner.invoke(app, ["simulate", str(out), "--scenario", "runs", "--seconds", "130", "--fast"])
    assert result.exit_code == 0, result.output
    assert len(list(out.glob("*.h5"))) == 2  # runs of 60 s with 30 s gaps
    result = runner.invoke(app, ["simulate", str(out), "--scenario", "nope", "--seconds", "3", "--fast"])
    assert result.exit_code == 2 and "unknown; one of poisson" in result.output
