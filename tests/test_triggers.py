"""The trigger-correlated view (exporter/quality/triggers.py): each external trigger paired with the
self-triggered hits on every io_group within its drift window, checked against the simulator's truth
(``Simulator.spills``) end to end through files, on both engines and formats, whatever the chunking,
across a restart, and on hand-made packets for the clock's edges (the 'S' sync reset, the receipt rule)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from larpix_dqm.exporter.quality.accumulator import KERNELS, Accumulator, QualityConfig, load_kernels
from larpix_dqm.exporter.quality.triggers import HITS_EDGES, SETTLE_TICKS
from larpix_dqm.exporter.reading.cursor import DataClock, FileCursor
from larpix_dqm.exporter.reading.files import FileReader
from larpix_dqm.exporter.reading.packets import DATA, PACKET_DTYPE, TIMESTAMP, TRIGGER
from larpix_dqm.exporter.simulate import SimulationConfig, Simulator, write_run

START = 1_700_000_000
SECONDS = 20
WINDOW_TICKS = 2_000


@pytest.fixture(scope="module", autouse=True)
def kernels_loaded() -> None:
    assert load_kernels(wait=300), KERNELS.error


def beam_run(geometry, tmp_path: Path, fmt: str, **kw) -> tuple[Simulator, list[Path]]:
    """A backlog with a triggered beam every 0.7 s (charge on every io_group) over a little noise."""
    config = {"hit_rate_hz": 0.02, "seed": 3, "beam_period_s": 0.7, "beam_hits": 30.0, **kw}
    sim = Simulator(geometry, SimulationConfig(**config))
    return sim, write_run(sim, tmp_path / fmt, fmt, SECONDS, realtime=False, start_time=START)


def ingest(geometry, paths: list[Path], engine: str, chunk_rows: int = 1_000_000, raw_messages: int = 100_000):
    """An accumulator that read the files whole, in chunks of the given sizes, and finished them."""
    acc = Accumulator(QualityConfig(engine=engine), geometry)
    reader = FileReader(chunk_rows, raw_messages)
    now = START + SECONDS + 5.0
    for path in paths:
        st = os.stat(path)
        for chunk in reader.read_new(FileCursor(str(path), st.st_dev, st.st_ino), now):
            acc.add_chunk(chunk, now)
    acc.finish()
    return acc


def beam_counts(acc: Accumulator) -> dict[str, np.ndarray]:
    state = acc.state
    n = len(acc.chips)
    return {
        "words": state.trigger_words.copy(),
        "hits": state.beam_trigger_hits.copy(),
        "sum": state.beam_trigger_hit_sum.copy(),
        "delays": state.beam_delays.copy(),
        "delay_sum": state.beam_delay_sum.copy(),
        "window": state.beam_window_ticks.copy(),
        "live": state.beam_live_seconds.copy(),
        "chips": {tuple(k): tuple(v) for k, v in zip(acc.chips.keys[:n].tolist(), state.beam_chip_hits[:n].tolist())},
    }


def assert_same(a: dict, b: dict, background: int = 0) -> None:
    """The same counts; ``background``: how many more out-of-window hits and live seconds one may have (they
    count from the chunk that brings the first external trigger, which the chunking moves)."""
    for key in a:
        if key == "chips":
            inside = [{k: v[0] for k, v in counts[key].items() if v[0]} for counts in (a, b)]
            assert inside[0] == inside[1], key
            outside = [sum(v[1] for v in counts[key].values()) for counts in (a, b)]
            assert abs(outside[0] - outside[1]) <= background, outside
        elif key == "live":
            assert np.abs(a[key] - b[key]).max() <= (1 if background else 0), (a[key][:3], b[key][:3])
        else:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.mark.parametrize("fmt", ["raw", "packets"])
def test_hits_per_trigger_match_the_simulated_spills_on_both_engines(module_geometry, tmp_path, fmt):
    sim, paths = beam_run(module_geometry, tmp_path, fmt)
    truth = sim.spills(START, START + SECONDS)
    spilled = np.array([len(s.channels) for s in truth])
    results = {engine: ingest(module_geometry, paths, engine) for engine in ("numpy", "compiled")}
    assert_same(beam_counts(results["numpy"]), beam_counts(results["compiled"]))
    state = results["numpy"].state
    # every spill is one external trigger on io_group 1, every one closed
    assert state.trigger_words[1, 1] == len(truth) > 20 and state.trigger_words[2].sum() == 0
    assert state.beam_trigger_hits[1].sum() == len(truth)
    # hits per trigger: the spill's own, plus the noise hits that fall in a window (0.02 Hz x 200 µs per channel)
    paired = int(state.beam_trigger_hit_sum[1])
    noise = paired - int(spilled.sum())
    expected_noise = len(sim.channels) * 0.02 * 200e-6 * len(truth)
    assert 0 <= noise <= expected_noise + 5 * np.sqrt(expected_noise) + 1, (paired, spilled.sum(), expected_noise)
    expected = np.bincount(np.searchsorted(np.asarray(HITS_EDGES), spilled), minlength=len(HITS_EDGES) + 1)
    assert np.abs(state.beam_trigger_hits[1] - expected).sum() <= 2 * noise
    # the charge of every io_group, 10-190 µs after the trigger (delay bins of 10 µs: bins 1..18)
    delays = state.beam_delays
    assert delays[1].sum() > 0 and delays[2].sum() > 0
    assert delays[:, 1:19].sum() >= delays.sum() - noise
    # exposure: 200 µs per trigger inside a window, the run's seconds with data
    assert state.beam_window_ticks[1] == state.beam_window_ticks[2] == len(truth) * WINDOW_TICKS
    assert state.beam_live_seconds[1] == state.beam_live_seconds[2] == SECONDS
    in_window, outside = state.beam_chip_hits[: len(results["numpy"].chips)].sum(axis=0)
    assert in_window == paired and outside > 0  # no hit is in two windows: spills are 0.7 s apart


def test_a_tile_the_beam_misses_has_no_signal_over_its_background(module_geometry, tmp_path):
    sim, paths = beam_run(module_geometry, tmp_path, "raw", beam_missed_tiles=[(1, 3)], beam_hits=60.0)
    acc = ingest(module_geometry, paths, "numpy")
    snap = acc.snapshot()
    per_tile: dict[tuple[int, int], np.ndarray] = {}
    for key, tile, hits in zip(snap.chip_keys.tolist(), snap.chip_tiles.tolist(), snap.chip_beam_hits):
        per_tile[(key[0], tile)] = per_tile.get((key[0], tile), 0) + hits
    seconds = snap.beam_seconds
    ratios = {}
    for (g, t), (inside, outside) in per_tile.items():
        ratios[(g, t)] = (inside / seconds[g, 0]) / (outside / (seconds[g, 1] - seconds[g, 0]))
    # the missed tile's rate inside the windows is its noise (ratio ~1), the others' the beam's (~80 here)
    assert ratios[(1, 3)] < 10, ratios
    reached = [key for key, ratio in ratios.items() if ratio > 20]
    assert len(reached) >= 8 and (1, 3) not in reached, ratios


def test_every_chunking_and_a_restart_give_the_same_counts(module_geometry, tmp_path):
    sim, paths = beam_run(module_geometry, tmp_path, "packets")
    whole = beam_counts(ingest(module_geometry, paths, "numpy"))
    for rows in (997, 5_003):
        assert_same(whole, beam_counts(ingest(module_geometry, paths, "numpy", chunk_rows=rows)))
    # raw messages a few at a time: the first chunks hold io_group 1 alone, and its triggers wait for io_group 2
    sim, raw = beam_run(module_geometry, tmp_path, "raw")
    whole_raw = beam_counts(ingest(module_geometry, raw, "compiled"))
    # the first trigger comes 0.3 s into the run: at most a second of background moves with the chunking
    first_second = int(len(sim.channels) * 0.02 * 3)
    for messages in (3, 50):
        chunked = beam_counts(ingest(module_geometry, raw, "compiled", raw_messages=messages))
        assert_same(whole_raw, chunked, background=first_second)
    # a restart in the middle: the state exported after each chunk and read back by a fresh accumulator
    reader = FileReader(2_000)
    now = START + SECONDS + 5.0
    acc = Accumulator(QualityConfig(engine="numpy"), module_geometry)
    for path in paths:
        st = os.stat(path)
        for chunk in reader.read_new(FileCursor(str(path), st.st_dev, st.st_ino), now):
            acc.add_chunk(chunk, now)
            restarted = Accumulator(QualityConfig(engine="numpy"), module_geometry)
            restarted.import_state(acc.export_state())
            acc = restarted
    acc.finish()
    assert_same(whole, beam_counts(acc))


def packets(*rows: tuple) -> np.ndarray:
    """Packet records from (packet_type, io_group, timestamp, chip_id, receipt) rows."""
    out = np.zeros(len(rows), PACKET_DTYPE)
    for i, (ptype, group, stamp, chip, receipt) in enumerate(rows):
        out[i]["packet_type"], out[i]["io_group"], out[i]["timestamp"] = ptype, group, stamp
        out[i]["io_channel"], out[i]["chip_id"], out[i]["receipt_timestamp"] = 1, chip, receipt
        out[i]["valid_parity"] = 1
        out[i]["trigger_type"] = 2 if ptype == TRIGGER else 0
    return out


def test_a_trigger_pairs_charge_of_other_io_groups_across_the_sync_reset():
    """A trigger 50 µs before io_group 1's 'S' sync: io_group 2's hits after the reset (ticks from 0, next
    second) are in its window; a hit whose chip tick is ahead of its receipt time belongs to the second before."""
    second = START + 1
    rows = []
    for s in range(4):
        rows += [(TIMESTAMP, g, START + s, 0, 0) for g in (1, 2)]
        if s == 1:
            rows.append((TRIGGER, 1, 9_999_500, 0, 0))  # 50 µs before the reset
            rows.append((DATA, 1, 9_999_700, 10, 9_999_700))  # 20 µs after the trigger
        if s == 2:
            rows.append((DATA, 2, 500, 20, 500))  # 100 µs after: in
            rows.append((DATA, 2, 1_500, 20, 1_500))  # 200 µs after: the window's end, out
            rows.append((DATA, 2, 9_999_800, 21, 300))  # ahead of its receipt: second 1, 30 µs after: in
            rows.append((DATA, 1, 5_000_000, 10, 5_000_000))  # half a second later: out
    acc = Accumulator(QualityConfig(engine="numpy"))
    acc.add(packets(*rows), DataClock(), second + 10.0)
    acc.finish()
    state = acc.state
    assert state.beam_trigger_hits[1].sum() == 1 and state.beam_trigger_hit_sum[1] == 3
    assert state.beam_delays[1, 2] == 1  # 20 µs
    assert state.beam_delays[2, 3] == 1 and state.beam_delays[2, 10] == 1  # 30 and 100 µs
    assert state.beam_delay_sum[1] + state.beam_delay_sum[2] == 200 + 300 + 1_000
    rows_of = {int(k[2]): r for r, k in enumerate(acc.chips.keys.tolist())}
    assert state.beam_chip_hits[rows_of[10]].tolist() == [1, 1]
    assert state.beam_chip_hits[rows_of[20]].tolist() == [1, 1]
    assert state.beam_chip_hits[rows_of[21]].tolist() == [1, 0]


def test_one_trigger_at_two_pacmans_is_one_and_a_stopped_io_group_does_not_hold_it_open():
    rows = []
    for s in range(30):
        rows.append((TIMESTAMP, 1, START + s, 0, 0))
        if s < 2:
            rows.append((TIMESTAMP, 2, START + s, 0, 0))  # io_group 2 stops after 2 s
        if s == 1:
            rows += [(TRIGGER, 1, 4_000_000, 0, 0), (TRIGGER, 2, 4_000_020, 0, 0)]  # 2 µs apart: one trigger
            rows.append((DATA, 1, 4_000_100, 10, 4_000_100))
    acc = Accumulator(QualityConfig(engine="numpy"))
    acc.add(packets(*rows), DataClock(), START + 40.0)
    state = acc.state
    assert state.trigger_words[1, 1] == state.trigger_words[2, 1] == 1
    assert state.beam_trigger_hits.sum() == 1 and state.beam_trigger_hit_sum.sum() == 1
    # closed without acc.finish(): io_group 2 is more than 10 s behind, so the others do not wait for it
    assert state.triggers.settled > (START + 1) * 10_000_000 + 4_000_000 + WINDOW_TICKS + SETTLE_TICKS


def test_a_run_without_external_triggers_holds_nothing(module_geometry, tmp_path):
    sim = Simulator(module_geometry, SimulationConfig(hit_rate_hz=0.5, seed=1, trigger_rate_hz=0.0))
    paths = write_run(sim, tmp_path / "raw", "raw", 5, realtime=False, start_time=START)
    acc = ingest(module_geometry, paths, "compiled")
    assert not acc.state.triggers.active and len(acc.state.triggers.hit_times) == 0
    assert acc.state.beam_chip_hits.sum() == 0 and acc.state.beam_live_seconds.sum() == 0
    assert acc.state.triggers.frontier[1] == (START + 4) * 10_000_000  # followed, for the first trigger
    assert acc.state.trigger_words.sum() == 0


def test_a_corrupt_timestamp_the_clock_rejects_moves_nothing():
    """A timestamp packet an hour ahead (a bit flip) in the middle of a beam: the data clock rejects it, and
    the pairing, which places packets by the accepted timestamps only, counts as without it."""

    def run(corrupt: bool) -> dict:
        rows = []
        for s in range(12):
            rows += [(TIMESTAMP, g, START + s, 0, 0) for g in (1, 2)]
            if corrupt and s == 5:
                rows.append((TIMESTAMP, 2, START + s + 3_600, 0, 0))
            rows.append((TRIGGER, 1, 2_000_000, 0, 0))
            rows += [(DATA, 2, 2_000_500, 20, 2_000_500), (DATA, 1, 7_000_000, 10, 7_000_000)]
        acc = Accumulator(QualityConfig(engine="numpy"))
        acc.add(packets(*rows), DataClock(), START + 20.0)
        acc.finish()
        assert acc.state.clock.rejected == (1 if corrupt else 0)
        return beam_counts(acc)

    clean = run(False)
    assert clean["hits"][1].sum() == 12 and clean["sum"][1] == 12
    assert_same(clean, run(True))
