"""The simulator's triggered beam: a trigger word per spill on one io_group, its charge on all of them after it.

Files are written by ``write_run`` (or the CLI) and read back with the exporter's own reader; every packet
is placed on one time line (its message's unix second x 10 MHz ticks) and compared with ``Simulator.spills``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from larpix_dqm.exporter.cli import app
from larpix_dqm.exporter.reading.cursor import FileCursor
from larpix_dqm.exporter.reading.files import FileReader
from larpix_dqm.exporter.reading.packets import DATA, SYNC, TICKS_PER_SYNC, TIMESTAMP, TRIGGER
from larpix_dqm.exporter.simulate import Faults, SimulationConfig, Simulator, write_run

START = 1_700_000_000
#: A trigger's drift window in ticks (200 µs).
WINDOW = 2_000


def read_run(paths: list[Path], start: int = START) -> tuple[np.ndarray, np.ndarray]:
    """Every packet of the files in order, and its time in ticks since ``start`` (message second x 10 MHz + tick)."""
    parts = []
    for path in paths:
        st = os.stat(path)
        cursor = FileCursor(str(path), st.st_dev, st.st_ino)
        parts += [chunk.packets for chunk in FileReader().read_new(cursor, time.time())]
    packets = np.concatenate(parts)
    is_stamp = packets["packet_type"] == TIMESTAMP
    header = np.maximum.accumulate(np.where(is_stamp, np.arange(len(packets)), 0))  # each word's message header
    second = packets["timestamp"][header].astype(np.int64) - start
    return packets, second * TICKS_PER_SYNC + packets["timestamp"].astype(np.int64)


def simulate(geometry, tmp_path: Path, fmt: str, seconds: int, start: int = START, faults: Faults | None = None, **kw):
    """A backlog run with a triggered beam (no noise unless asked): the simulator, its packets, their times."""
    sim = Simulator(geometry, SimulationConfig(**{"hit_rate_hz": 0.0, "seed": 7, **kw}), faults)
    paths = write_run(sim, tmp_path / fmt, fmt, seconds, realtime=False, start_time=start)
    return sim, *read_run(paths, start)


def windows(packets: np.ndarray, times: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """The trigger words' times and, per trigger, the rows of the data packets within its drift window."""
    triggers = times[packets["packet_type"] == TRIGGER]
    data = np.flatnonzero(packets["packet_type"] == DATA)
    return triggers, [data[(times[data] >= t) & (times[data] < t + WINDOW)] for t in triggers]


def tile_of(sim: Simulator, packets: np.ndarray) -> np.ndarray:
    """The geometry tile of each data packet."""
    table = {tuple(key): row for row, key in enumerate(sim.channels.tolist())}
    keys = np.stack([packets[f] for f in ("io_group", "io_channel", "chip_id", "channel_id")], 1).tolist()
    return sim.tiles[[table[tuple(key)] for key in keys]]


@pytest.mark.parametrize("fmt", ["raw", "packets"])
def test_each_spill_is_one_trigger_word_and_its_charge_on_every_io_group(module_geometry, tmp_path, fmt):
    sim, packets, times = simulate(module_geometry, tmp_path, fmt, 12, beam_period_s=0.3, beam_hits=40.0)
    truth = sim.spills(START, START + 12)
    trig = packets["packet_type"] == TRIGGER
    assert len(truth) == 40 and trig.sum() == 40  # random triggers are off with a beam
    assert (packets["io_group"][trig] == 1).all() and (packets["trigger_type"][trig] == 2).all()
    triggers, hits = windows(packets, times)
    assert triggers.tolist() == [(s.second - START) * TICKS_PER_SYNC + s.tick for s in truth]
    counts = np.array([len(rows) for rows in hits])
    assert counts.tolist() == [len(s.channels) for s in truth]  # no noise: every hit is the beam's
    assert counts.sum() == (packets["packet_type"] == DATA).sum()
    assert abs(counts.mean() - 40.0) < 4 * np.sqrt(40.0 / len(counts))
    for spill, rows in zip(truth, hits):
        assert sorted(packets["io_group"][rows].tolist()) == sorted(sim.channels[spill.channels, 0].tolist())
        delay = times[rows] - (spill.second - START) * TICKS_PER_SYNC - spill.tick
        assert delay.min() >= 100 and delay.max() < 1_900  # 10-190 µs after the trigger
    assert set(packets["io_group"][np.concatenate(hits)].tolist()) == {1, 2}
    assert (packets["trigger_type"][packets["packet_type"] == DATA] == 0).all()
    adc = packets["dataword"][packets["packet_type"] == DATA]
    assert abs(adc.mean() - 80) < 2  # pedestal-like


def test_beam_trigger_words_are_in_time_order_and_random_ones_only_when_asked(module_geometry, tmp_path):
    kw = {"hit_rate_hz": 0.05, "beam_period_s": 0.3}
    sim, packets, times = simulate(module_geometry, tmp_path, "raw", 5, trigger_rate_hz=2.0, **kw)
    spills = [(s.second - START) * TICKS_PER_SYNC + s.tick for s in sim.spills(START, START + 5)]
    trig = packets["packet_type"] == TRIGGER
    beam = trig & (packets["io_group"] == 1) & np.isin(times, spills)
    assert beam.sum() == len(spills) == 17
    assert (trig & ~beam).sum() > 10 and (packets["io_group"][trig & ~beam] == 2).any()  # random ones, asked for
    in_order = np.flatnonzero(beam | ((packets["io_group"] == 1) & (packets["packet_type"] == DATA)))
    assert (np.diff(times[in_order]) >= 0).all()
    _, packets, _ = simulate(module_geometry, tmp_path / "default", "raw", 5, **kw)
    assert (packets["packet_type"] == TRIGGER).sum() == len(spills)  # with a beam, no random trigger by default
    assert SimulationConfig().random_trigger_hz == 0.2
    assert SimulationConfig(beam_period_s=1.0).random_trigger_hz == 0.0
    assert SimulationConfig(beam_period_s=1.0, trigger_rate_hz=0.5).random_trigger_hz == 0.5


@pytest.mark.parametrize("fmt", ["raw", "packets"])
def test_late_hits_of_a_spill_at_a_seconds_end_are_written_in_the_next_second(module_geometry, tmp_path, fmt):
    period = 0.9999  # spill k = 10_000 m + 1 is at 9_999 m + 0.9999 s: 100 µs before a second's end
    start = 9_999 * 170_017 - 1
    sim, packets, times = simulate(
        module_geometry, tmp_path, fmt, 3, start=start, beam_period_s=period, beam_hits=200.0
    )
    (spill,) = [s for s in sim.spills(start, start + 3) if s.tick > TICKS_PER_SYNC - 1_900]
    assert spill.second == start + 1 and (spill.ticks >= TICKS_PER_SYNC).sum() > 50
    triggers, hits = windows(packets, times)
    (at,) = np.flatnonzero(triggers == TICKS_PER_SYNC + spill.tick)
    rows = hits[at]
    assert len(rows) == len(spill.channels)  # none dropped, none wrapped into the trigger's second
    late = rows[times[rows] >= 2 * TICKS_PER_SYNC]
    assert len(late) == (spill.ticks >= TICKS_PER_SYNC).sum()
    assert (packets["timestamp"][late] < 1_900).all()  # the next second's ticks, after the sync reset
    for group in (1, 2):
        syncs = np.flatnonzero((packets["packet_type"] == SYNC) & (packets["io_group"] == group))
        sync_of_second = syncs[1]  # the 'S' sync closing the trigger's second (the run's second second)
        mine = late[packets["io_group"][late] == group]
        assert len(mine) and (mine > sync_of_second).all() and (mine < syncs[2]).all()


def test_missed_tiles_and_silent_chips_get_no_beam_charge(module_geometry, tmp_path):
    sim0 = Simulator(module_geometry)
    on_group1 = sim0.channels[:, 0] == 1
    centre = sim0.tracks.position.mean(axis=0)
    tiles = np.unique(sim0.tiles[on_group1])
    distance = [np.hypot(*(sim0.tracks.position[on_group1 & (sim0.tiles == t)].mean(axis=0) - centre)) for t in tiles]
    missed = int(tiles[np.argmin(distance)])  # a central tile: the beam's densest part
    chip = tuple(int(v) for v in sim0.channels[(sim0.channels[:, 0] == 2)][0, :3])
    sim, packets, times = simulate(
        module_geometry,
        tmp_path,
        "raw",
        6,
        faults=Faults(silent_chips=[chip]),
        beam_period_s=0.2,
        beam_missed_tiles=[(1, missed)],
    )
    _, hits = windows(packets, times)
    rows = np.concatenate(hits)
    got = tile_of(sim, packets[rows])
    group = packets["io_group"][rows]
    assert not ((got == missed) & (group == 1)).any()
    assert set(got[group == 1].tolist()) == set(tiles.tolist()) - {missed}  # its neighbours all get charge
    silent = (packets["io_channel"][rows] == chip[1]) & (packets["chip_id"][rows] == chip[2]) & (group == 2)
    assert not silent.any()
    truth = sim.spills(START, START + 6)
    assert len(rows) == sum(len(s.channels) for s in truth)
    assert np.mean([len(s.channels) for s in truth]) < 50.0 * 0.95  # the missed tile's charge is lost


def test_about_half_the_triggers_bring_charge(module_geometry, tmp_path):
    sim, packets, times = simulate(
        module_geometry, tmp_path, "packets", 10, beam_period_s=0.05, beam_hits=20.0, beam_charge_fraction=0.5
    )
    truth = sim.spills(START, START + 10)
    triggers, hits = windows(packets, times)
    counts = np.array([len(rows) for rows in hits])
    assert len(triggers) == len(truth) == 200
    assert (counts > 0).tolist() == [len(s.channels) > 0 for s in truth] == [s.charged for s in truth]
    expected = 0.5 * (1 - np.exp(-20.0))
    assert abs((counts > 0).mean() - expected) < 4 * np.sqrt(expected * (1 - expected) / 200)
    assert abs(counts.mean() - 20.0 * 0.5) < 4 * np.sqrt((20.0 * 0.5 + 20.0**2 * 0.25) / 200)


def test_cli_beam_options(tmp_path):
    runner = CliRunner()
    out = tmp_path / "run"
    args = ["simulate", str(out), "--fast", "--seconds", "3", "--start-time", str(START), "--rate-hz", "0.01"]
    beam = ["--beam-period-s", "0.5", "--beam-hits", "30", "--beam-io-group", "2", "--beam-miss-tile", "2-9"]
    result = runner.invoke(app, [*args, *beam, "--format", "packets"])
    assert result.exit_code == 0, result.output
    packets, _ = read_run(sorted(out.glob("*.h5")))
    trig = packets["packet_type"] == TRIGGER
    assert trig.sum() == 6 and (packets["io_group"][trig] == 2).all()
    for bad, message in (("2-3", "not a tile of io_group 2"), ("2", "expected 2 numbers")):
        result = runner.invoke(app, [*args, *beam[:-1], bad])
        assert result.exit_code == 2 and message in result.output, result.output
    result = runner.invoke(app, [*args, "--beam-period-s", "1", "--beam-io-group", "3"])
    assert result.exit_code == 2 and "io_group 3 has no connected channel" in result.output
