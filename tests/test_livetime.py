"""Live time (issue 20, items 3 and 7): pauses and run boundaries are dead time, neither silence nor
exposure; last-hit times are kept for every packet whatever the chunk's span; learnt rates start
again at a run boundary; a chip a new configuration disables is not expected. Both engines."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from helpers import simulate_files

from larpix_dqm.exporter.detector.geometry import load_geometry, packaged_layout
from larpix_dqm.exporter.detector.runconfig import RunConfig, daq_tile
from larpix_dqm.exporter.monitor import Monitor
from larpix_dqm.exporter.quality.accumulator import COMPILED, KERNELS, NUMPY, Accumulator, QualityConfig, load_kernels
from larpix_dqm.exporter.quality.clock import DataClock
from larpix_dqm.exporter.quality.snapshot import Snapshot
from larpix_dqm.exporter.quality.status import ChannelStatus
from larpix_dqm.exporter.quality.window import DEAD_GAP_SECONDS, chip_clock
from larpix_dqm.exporter.reading.decode import split_messages
from larpix_dqm.exporter.reading.packets import DATA
from larpix_dqm.exporter.reading.tail import InputSpec
from larpix_dqm.exporter.runtime.checkpoint import window_file
from larpix_dqm.exporter.runtime.ingest import Ingester
from larpix_dqm.exporter.simulate import SimulationConfig, Simulator

START = 1_700_000_000
RATE_HZ = 0.05
WINDOW = 60.0
LATER = START + 100_000.0

Second = tuple[list[np.ndarray], np.ndarray]  # one data second: its messages and their io_groups


@pytest.fixture(scope="module")
def simulator(module_geometry) -> Simulator:
    return Simulator(module_geometry, SimulationConfig(hit_rate_hz=RATE_HZ, seed=11))


@pytest.fixture(scope="module")
def healthy(simulator) -> list[Second]:
    """300 s of a healthy module (two io_groups) at 0.05 Hz per channel."""
    return [simulator.second(START + t) for t in range(300)]


@pytest.fixture(scope="module", params=[NUMPY, COMPILED])
def engine(request) -> str:
    if request.param == COMPILED:
        assert load_kernels(wait=300), KERNELS.error
    return request.param


def accumulator(geometry, engine: str) -> Accumulator:
    return Accumulator(QualityConfig(WINDOW, 12, engine=engine), geometry)


def feed(acc: Accumulator, clock: DataClock, seconds: list[Second], wall: float = LATER) -> None:
    """Feed seconds as one chunk at wall time ``wall`` (the data time: serve on a live run; by default
    much later: a backlog or ``once``)."""
    msgs = [m for ms, _ in seconds for m in ms]
    acc.add_messages(split_messages(msgs, np.concatenate([gs for _, gs in seconds])), clock, wall)


def silent(snap: Snapshot) -> int:
    return int((snap.channel_status == ChannelStatus.SILENT).sum())


@pytest.mark.slow
def test_a_ten_minute_pause_is_neither_silence_nor_exposure(module_geometry, simulator, healthy, engine):
    """After 600 s without any packet, data again: no channel silent, no chip dead, the window spans
    the last minute of live data (before and after the pause) and the true rates, on every evaluation."""
    acc, clock = accumulator(module_geometry, engine), DataClock()
    for t, second in enumerate(healthy):
        feed(acc, clock, [second], START + t)
    resumed = START + 300 + 600
    worst = 0
    for t in range(120):
        feed(acc, clock, [simulator.second(resumed + t)], resumed + t)
        if t % 5 == 0:
            snap = acc.snapshot()
            worst = max(worst, silent(snap), int(snap.chip_dead.sum()))
            groups = snap.io_groups[snap.io_groups > 0]
            spans = snap.io_group_span_seconds[groups]  # the window's bins, the newest one partly filled
            assert (spans > WINDOW - WINDOW / 12).all() and (spans <= WINDOW).all()
    assert worst == 0
    assert acc.state.dead_seconds[1] == acc.state.dead_seconds[2] == 600.0
    snap = acc.snapshot()
    truth = module_geometry.connected[module_geometry.chips[:, 0] == 1].sum() * RATE_HZ
    assert snap.io_group_rate_hz[1] == pytest.approx(truth, rel=0.05)


def test_a_pause_shorter_than_the_dead_gap_is_exposure(module_geometry, simulator, healthy):
    """A gap of ``DEAD_GAP_SECONDS`` or less is live time (the io_group was sending, slowly)."""
    acc, clock = accumulator(module_geometry, NUMPY), DataClock()
    feed(acc, clock, healthy[:60], START + 59)
    short = START + 59 + int(DEAD_GAP_SECONDS)
    feed(acc, clock, [simulator.second(short)], short)
    np.testing.assert_array_equal(acc.state.dead_seconds[[1, 2]], 0.0)
    feed(acc, clock, [simulator.second(short + 100)], short + 100)
    np.testing.assert_array_equal(acc.state.dead_seconds[[1, 2]], 99.0)


@pytest.mark.slow
def test_once_and_live_keep_the_same_last_hits_and_call_no_channel_silent(module_geometry, healthy, engine):
    """A healthy 300 s file read in one chunk gives the last-hit times and verdicts of reading it second by second."""
    live, whole = accumulator(module_geometry, engine), accumulator(module_geometry, engine)
    clock = DataClock()
    for second in healthy:
        feed(live, clock, [second])
    feed(whole, DataClock(), healthy)
    a, b = live.snapshot(), whole.snapshot()
    n = len(live.chips)
    assert live.chips.keys.tolist() == whole.chips.keys.tolist()
    np.testing.assert_array_equal(whole.state.last_hit_end[:n], live.state.last_hit_end[:n])
    np.testing.assert_array_equal(b.channel_status, a.channel_status)
    assert silent(a) == silent(b) == 0
    assert np.isfinite(live.state.last_hit_end[:n][live.state.hits_total[:n] > 0]).all()


@pytest.mark.slow
def test_a_backlog_in_chunks_longer_than_the_window_gives_the_live_verdicts(module_geometry, healthy, engine):
    live, backlog = accumulator(module_geometry, engine), accumulator(module_geometry, engine)
    clock, backlog_clock = DataClock(), DataClock()
    for second in healthy:
        feed(live, clock, [second])
    feed(backlog, backlog_clock, healthy[:30])  # read live, then the exporter stops...
    for first in range(30, 300, 90):  # ...and catches up in chunks of 90 s
        feed(backlog, backlog_clock, healthy[first : first + 90])
    a, b = live.snapshot(), backlog.snapshot()
    n = len(live.chips)
    np.testing.assert_array_equal(backlog.state.last_hit_end[:n], live.state.last_hit_end[:n])
    np.testing.assert_array_equal(b.channel_status, a.channel_status)
    np.testing.assert_array_equal(b.chip_rate_hz, a.chip_rate_hz)
    assert silent(b) == 0


@pytest.mark.slow
def test_learnt_rates_start_again_at_a_run_boundary(module_geometry, simulator, healthy, engine, caplog):
    """A new run after 31 s without data: the run (its learnt rates) starts again on both io_groups, the
    gap is dead time on both, and neither io_group's clock is said to step."""
    acc, clock = accumulator(module_geometry, engine), DataClock()
    for t, second in enumerate(healthy[:120]):
        feed(acc, clock, [second], START + t)
    with caplog.at_level(logging.WARNING, logger="larpix_dqm.exporter.quality.clock"):
        for t in range(30):
            feed(acc, clock, [simulator.second(START + 150 + t)], START + 150 + t)
    assert not [r for r in caplog.records if "steps" in r.getMessage()]
    np.testing.assert_array_equal(acc.state.dead_seconds[[1, 2]], [30.0, 30.0])
    assert set(chip_clock(acc.state)[1].tolist()) == {30.0}
    new_run_hits = acc.state.self_hits[: len(acc.chips)].sum()
    assert 0 < new_run_hits < 0.3 * acc.state.hits_total[: len(acc.chips)].sum()


@pytest.mark.slow
def test_a_new_configuration_starts_a_run_and_the_chips_it_disables_are_not_expected(
    module_geometry, simulator, healthy, engine
):
    acc, clock = accumulator(module_geometry, engine), DataClock()
    for t, second in enumerate(healthy[:120]):
        feed(acc, clock, [second], START + t)
    g, c, chip = (int(v) for v in acc.chips.keys[0])
    acc.set_run_config(RunConfig(masked={(g, int(daq_tile(c)), chip): np.ones(64, bool)}))
    assert acc.state.self_hits[0].sum() == 0 and acc.state.self_hits.sum() == 0
    for t in range(120, 600):  # the disabled chip sends nothing any more
        packets = split_messages(*simulator.second(START + t)).decode()
        keep = ~(
            (packets["io_group"] == g) & (packets["io_channel"] == c) & (packets["chip_id"] == chip)
            & (packets["packet_type"] == DATA)
        )  # fmt: skip
        acc.add(packets[keep], clock, START + t)
    snap = acc.snapshot()
    assert not snap.chip_dead[0]
    assert (snap.channel_status[0][snap.channel_expected[0]] == ChannelStatus.MASKED).all()
    assert chip_clock(acc.state)[1][0] == 480.0
    assert silent(snap) == 0


@pytest.mark.slow
def test_a_checkpoint_from_before_live_time_continues_on_data_time(module_geometry, healthy):
    """Without dead_seconds, live_start and run_start (an older checkpoint): no dead time so far, the
    window continues, the run and the window's span start at the clock's last step, as they did then."""
    acc, clock = accumulator(module_geometry, NUMPY), DataClock()
    for second in healthy[:90]:
        feed(acc, clock, [second])
    old = {k: v for k, v in acc.export_state().items() if k not in ("dead_seconds", "live_start", "run_start")}
    restored = accumulator(module_geometry, NUMPY)
    assert restored.import_state(old)
    np.testing.assert_array_equal(restored.state.dead_seconds, 0.0)
    for name in ("live_start", "run_start"):
        np.testing.assert_array_equal(getattr(restored.state, name), restored.clock.span_start)
    restored_clock = DataClock(clock.last_times())
    for second in healthy[90:120]:
        feed(acc, clock, [second])
        feed(restored, restored_clock, [second])
    np.testing.assert_array_equal(restored.snapshot().channel_status, acc.snapshot().channel_status)


def test_checkpoint_files_from_before_live_time_restore_the_window_whole(tmp_path, tile_geometry, caplog):
    """A checkpoint and window file written before live time (no dead_seconds, run_start, live_start) are
    restored, window included: the upgrade does not empty the window."""
    data, state = tmp_path / "data", tmp_path / "state.npz"
    simulate_files(tile_geometry, data, 20, file_seconds=5)
    geometry = load_geometry(packaged_layout("layout-2.4.0.yaml"))
    ing = Ingester([InputSpec(str(data))], Monitor(geometry), 0.1, str(state))
    ing.tail.pump(ing.ingest)
    ing.checkpoint(final=True)
    for path, names in ((state, ("dead_seconds", "run_start")), (window_file(state), ("live_start",))):
        with np.load(path) as saved:
            arrays = {name: saved[name] for name in saved.files if name not in names}
        np.savez(path, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds as the allow_pickle flag
    restored = Ingester([InputSpec(str(data))], Monitor(geometry), 0.1, str(state))
    with caplog.at_level(logging.WARNING):
        restored.restore()
    assert not [r for r in caplog.records if "window" in r.getMessage()]
    a, b = (i.monitor.update().snapshot for i in (ing, restored))
    assert b.chip_window_packets.tolist() == a.chip_window_packets.tolist() and a.chip_window_packets.sum() > 0


@pytest.mark.parametrize("pattern", [r"run_(?P<run>\d+)", None])
def test_a_new_named_run_starts_the_learnt_rates_again_without_a_gap(tmp_path, tile_geometry, pattern):
    """Two runs back to back, without a dead gap: the run pattern names them, and the second's first chunk
    starts a run (its learnt rates count its own hits only); files named by nothing but themselves are one
    file each, not a run each, and start nothing."""
    paths, _ = simulate_files(tile_geometry, tmp_path, 120, fmt="packets", file_seconds=60, hit_rate_hz=1.0)
    assert len(paths) == 2
    runs = [p.rename(p.with_name(f"run_000{i + 1}.h5")) for i, p in enumerate(paths)]
    monitor = Monitor(tile_geometry, run_pattern=pattern)
    records: list[dict] = []
    monitor.add_log_handler(records.append)
    monitor.add_file(runs[0])
    first = int(monitor.accumulator.state.self_hits.sum())
    monitor.add_file(runs[1])
    state = monitor.accumulator.state
    all_hits, run_hits = int(state.hits_total.sum()), int(state.self_hits.sum())
    started = [r["message"] for r in records if "starts after" in r["message"]]
    if pattern is None:
        assert run_hits == all_hits and not started and monitor.run is None
    else:
        assert 0 < run_hits == all_hits - first, "the second run counts its own hits only"
        assert started == ["run 0002 starts after run 0001"] and monitor.run == "0002"


def test_run_names_of_files_no_longer_tracked_are_forgotten(tmp_path, tile_geometry):
    """The run namer keeps a name per tracked file only: a week of one file a minute does not grow it."""
    paths, _ = simulate_files(tile_geometry, tmp_path, 20, fmt="packets", file_seconds=10)
    monitor = Monitor(tile_geometry, run_pattern=r"(?P<run>\d+)")
    ingester = Ingester([InputSpec(str(tmp_path))], monitor, 0.1, flush_interval=0.0)  # a gone file forgotten at once
    ingester.poll()
    assert set(ingester.monitor.runs._names) == {str(p) for p in paths}
    paths[0].unlink()
    ingester.poll()
    assert set(ingester.monitor.runs._names) == {str(paths[1])}
