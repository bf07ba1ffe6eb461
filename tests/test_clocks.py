"""Clean packets only, and a clock per io_group: corrupted packets, wrong PACMAN times, skewed and
stepping clocks, old files read late; each against the same run without the fault."""

from __future__ import annotations

import numpy as np
import pytest

from larpix_dqm.exporter.quality.accumulator import Accumulator, QualityConfig
from larpix_dqm.exporter.quality.checks import DEFAULT_CHECKS, evaluate
from larpix_dqm.exporter.quality.clock import DataClock, DetectorClock
from larpix_dqm.exporter.quality.snapshot import Snapshot
from larpix_dqm.exporter.quality.status import ChannelStatus
from larpix_dqm.exporter.reading.decode import decode_messages
from larpix_dqm.exporter.reading.packets import DATA, PACKET_DTYPE, TIMESTAMP
from larpix_dqm.exporter.simulate import SimulationConfig, Simulator

START = 1_700_000_000
NOW = START + 10_000
RATE_HZ = 0.05  # per channel: ~2,000 hits per io_group and second on a module, enough and fast


@pytest.fixture(scope="module")
def run(module_geometry) -> list[np.ndarray]:
    """80 seconds of a healthy module (2 io_groups), one decoded chunk per second."""
    sim = Simulator(module_geometry, SimulationConfig(hit_rate_hz=RATE_HZ, seed=5))
    return [decode_messages(*sim.second(START + t)).packets for t in range(80)]


def feed(geometry, chunks, acc: Accumulator | None = None, clock: DataClock | None = None) -> Accumulator:
    acc = acc if acc is not None else Accumulator(QualityConfig(60, 12), geometry)
    clock = clock if clock is not None else DataClock()
    for chunk in chunks:
        acc.add(chunk, clock, NOW)
    return acc


def shifted(chunk: np.ndarray, io_group: int, seconds: int) -> np.ndarray:
    """The chunk with the PACMAN times of one io_group moved by ``seconds``."""
    out = chunk.copy()
    ts = (out["packet_type"] == TIMESTAMP) & (out["io_group"] == io_group)
    out["timestamp"][ts] = out["timestamp"][ts].astype(np.int64) + seconds
    return out


def one_bad_header(chunk: np.ndarray, offset: int, io_group: int = 1) -> np.ndarray:
    """The chunk with the PACMAN time of one timestamp packet (mid-chunk, of ``io_group``) moved by ``offset``."""
    out = chunk.copy()
    rows = np.flatnonzero((out["packet_type"] == TIMESTAMP) & (out["io_group"] == io_group))
    row = rows[len(rows) // 2]
    out["timestamp"][row] = int(out["timestamp"][row]) + offset
    return out


def assert_same_rates(a: Snapshot, b: Snapshot, rtol: float = 0.0) -> None:
    np.testing.assert_allclose(a.chip_rate_hz, b.chip_rate_hz, rtol=rtol)
    np.testing.assert_allclose(a.io_group_rate_hz, b.io_group_rate_hz, rtol=rtol)


def silent_channels(snap: Snapshot) -> int:
    return int((snap.channel_status == ChannelStatus.SILENT).sum())


@pytest.fixture(scope="module")
def clean(module_geometry, run) -> Snapshot:
    return feed(module_geometry, run).snapshot()


# -- clean packets only ------------------------------------------------------------------


def corrupted(chunk: np.ndarray, chip_id: int, n: int = 1) -> np.ndarray:
    """The chunk with ``n`` extra data packets with a parity error, claiming chip ``chip_id``."""
    bad = np.zeros(n, PACKET_DTYPE)
    bad["io_group"], bad["io_channel"], bad["chip_id"] = 1, 3, chip_id
    bad["packet_type"], bad["valid_parity"], bad["dataword"] = DATA, 0, 255
    return np.concatenate([chunk, bad])


@pytest.mark.slow
def test_parity_error_with_a_chip_id_outside_the_geometry_creates_no_chip(module_geometry, run, clean):
    chunks = list(run)
    chunks[40] = corrupted(chunks[40], chip_id=250, n=3)
    snap = feed(module_geometry, chunks).snapshot()
    assert len(snap.chip_keys) == 1600 and snap.chip_in_geometry.all()
    assert snap.link_parity_errors[1, 3] == 3 and snap.link_parity_errors.sum() == 3
    assert snap.chip_parity_errors.sum() == 0
    assert snap.packet_type_counts[1, DATA] == clean.packet_type_counts[1, DATA] + 3  # still counted exactly
    assert_same_rates(snap, clean)
    np.testing.assert_array_equal(snap.channel_hits_total, clean.channel_hits_total)
    assert evaluate(snap, DEFAULT_CHECKS).detector_status == evaluate(clean, DEFAULT_CHECKS).detector_status


@pytest.mark.slow
def test_parity_error_on_a_known_chip_is_counted_there_and_feeds_nothing(module_geometry, run, clean):
    chunks = list(run)
    chunks[70] = corrupted(chunks[70], chip_id=61, n=2)  # chip 1-3-61 is in the geometry
    acc = feed(module_geometry, chunks)
    snap = acc.snapshot()
    row = int(acc.chips.lookup(np.array([1], np.uint8), np.array([3], np.uint8), np.array([61], np.uint8))[0])
    assert snap.chip_parity_errors[row] == 2 and snap.chip_parity_errors.sum() == 2
    assert snap.chip_packets[row] == clean.chip_packets[row] + 2  # data packets of the chip, parity errors included
    assert snap.chip_window_parity_errors[row] == 2
    assert snap.chip_window_packets[row] == clean.chip_window_packets[row]  # the window holds valid packets only
    assert snap.link_parity_errors.sum() == 0
    assert_same_rates(snap, clean)
    np.testing.assert_array_equal(snap.adc_bucket_counts, clean.adc_bucket_counts)  # the ADC 255s are not counted


def test_without_a_geometry_parity_errors_of_unseen_chips_count_per_link():
    acc = Accumulator()
    clock = DataClock()
    stamp = np.zeros(1, PACKET_DTYPE)
    stamp["packet_type"], stamp["io_group"], stamp["timestamp"] = TIMESTAMP, 1, START
    acc.add(corrupted(stamp, chip_id=40, n=4), clock, NOW)  # chip 40 never seen valid: no chip
    snap = acc.snapshot()
    assert len(snap.chip_keys) == 0 and snap.link_parity_errors[1, 3] == 4
    assert snap.packet_type_counts[1, DATA] == 4
    valid = corrupted(stamp, chip_id=40, n=5)
    valid["valid_parity"][1:] = 1  # now chip 40 speaks with valid packets, then one more parity error
    acc.add(corrupted(valid, chip_id=40), clock, NOW)
    snap = acc.snapshot()
    assert snap.chip_keys.tolist() == [[1, 3, 40]]
    assert snap.chip_parity_errors.tolist() == [1] and snap.chip_packets.tolist() == [6]
    assert snap.channel_hits_total.sum() == 5 and snap.link_parity_errors[1, 3] == 4


@pytest.mark.slow
def test_a_chip_outside_the_geometry_with_valid_data_is_unexpected_not_an_error(module_geometry, run, clean):
    chunks = list(run)
    stray = corrupted(np.zeros(0, PACKET_DTYPE), chip_id=250, n=50)
    stray["valid_parity"] = 1
    stray["dataword"] = 3  # a pedestal far off the checks' range
    chunks[75] = np.concatenate([chunks[75], stray])
    snap = feed(module_geometry, chunks).snapshot()
    assert len(snap.chip_keys) == 1601
    row = 1600
    assert snap.chip_keys[row].tolist() == [1, 3, 250] and not snap.chip_in_geometry[row]
    assert snap.chip_packets[row] == 50
    results = evaluate(snap, DEFAULT_CHECKS)
    assert results.chip_worst[row] == 0
    assert results.detector_status == evaluate(clean, DEFAULT_CHECKS).detector_status


# -- one wrong PACMAN time ---------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("offset", [3600, 86_400, -3600, -86_400 // 2])
def test_one_wrong_header_does_not_blind_the_detector(module_geometry, run, clean, offset):
    chunks = list(run)
    chunks[50] = one_bad_header(chunks[50], offset)
    acc = feed(module_geometry, chunks)
    snap = acc.snapshot()
    assert acc.clock.rejected == 1
    assert snap.data_time == clean.data_time
    assert_same_rates(snap, clean, rtol=1e-3)  # the few packets after the bad header keep the last good time
    assert silent_channels(snap) == silent_channels(clean) == 0
    np.testing.assert_array_equal(snap.chip_packets, clean.chip_packets)


@pytest.mark.slow
def test_a_wrong_header_never_reaches_the_checkpoint_and_restore_continues(module_geometry, run, clean):
    chunks = list(run)
    chunks[60] = one_bad_header(chunks[60], 3600)
    clock = DataClock()
    acc = feed(module_geometry, chunks[:61], clock=clock)
    state = acc.export_state()
    newest = START + 60
    assert np.nanmax(state["clock_head"]) == newest
    assert max(clock.last_times().values()) == newest
    restored = Accumulator(QualityConfig(60, 12), module_geometry)
    assert restored.import_state(state)
    feed(module_geometry, chunks[61:], restored, DataClock(clock.last_times()))
    snap = restored.snapshot()
    assert snap.data_time == clean.data_time
    assert_same_rates(snap, clean, rtol=1e-3)


@pytest.mark.slow
def test_a_wrong_first_header_recovers_without_a_restart(module_geometry, run, clean):
    chunks = list(run)
    chunks[0] = chunks[0].copy()
    first = np.flatnonzero(chunks[0]["packet_type"] == TIMESTAMP)[0]
    chunks[0]["timestamp"][first] += 3600  # the very first time seen is wrong: nothing to judge it against
    acc = feed(module_geometry, chunks)
    snap = acc.snapshot()
    assert snap.data_time == clean.data_time
    assert_same_rates(snap, clean)


# -- skewed io_group clocks --------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("skew", [-30, -120, 120])
def test_a_skewed_io_group_keeps_its_rates(module_geometry, run, clean, skew):
    acc = feed(module_geometry, [shifted(c, 2, skew) for c in run])
    snap = acc.snapshot()
    assert_same_rates(snap, clean)
    assert silent_channels(snap) == 0
    assert snap.io_group_clock_offset[2] == skew and snap.io_group_clock_offset[1] == -skew
    assert (acc.clock.rejected > 0) == (skew > 0)  # ahead of the others at the start: accepted once it persists


@pytest.mark.slow
def test_an_io_group_clock_stepping_back_mid_run_neither_freezes_nor_doubles(module_geometry, run, clean):
    chunks = run[:40] + [shifted(c, 2, -120) for c in run[40:]]
    acc = Accumulator(QualityConfig(60, 12), module_geometry)
    clock = DataClock()
    truth = clean.io_group_rate_hz[2]
    for i, chunk in enumerate(chunks):
        acc.add(chunk, clock, NOW)
        snap = acc.snapshot()
        if i >= 5:
            assert 0.8 * truth < snap.io_group_rate_hz[2] < 1.2 * truth, i
            assert silent_channels(snap) == 0, i
    assert snap.io_group_last_time[2] == START + 79 - 120
    assert snap.io_group_clock_offset[2] == -120
    assert snap.io_group_rate_hz[1] == clean.io_group_rate_hz[1]
    assert acc.clock.rejected > 0


@pytest.mark.slow
def test_the_whole_detector_stepping_back_recovers(module_geometry, run):
    chunks = run[:40] + [shifted(shifted(c, 1, -120), 2, -120) for c in run[40:]]
    acc = Accumulator(QualityConfig(60, 12), module_geometry)
    clock = DataClock()
    truth = None
    for i, chunk in enumerate(chunks):
        acc.add(chunk, clock, NOW)
        snap = acc.snapshot()
        if i == 39:
            truth = snap.io_group_rate_hz[[1, 2]]
        if i >= 40:
            np.testing.assert_array_less(0.8 * truth, snap.io_group_rate_hz[[1, 2]])
            np.testing.assert_array_less(snap.io_group_rate_hz[[1, 2]], 1.2 * truth)
    assert snap.data_time == START + 79 - 120


# -- old files read late -----------------------------------------------------------------


@pytest.mark.slow
def test_yesterdays_file_dropped_into_a_live_run_does_not_dilute_it(module_geometry, run, clean):
    yesterday = [shifted(shifted(c, 1, -86_400), 2, -86_400) for c in run[:30]]
    acc = Accumulator(QualityConfig(60, 12), module_geometry)
    live, old = DataClock(), DataClock()
    for i, chunk in enumerate(run):
        acc.add(chunk, live, NOW)
        if 40 <= i < 70:
            acc.add(yesterday[i - 40], old, NOW)  # read in turn with the live file
    snap = acc.snapshot()
    assert_same_rates(snap, clean)
    assert snap.data_time == clean.data_time and acc.clock.rejected == 0
    expected = clean.chip_packets + feed(module_geometry, yesterday).snapshot().chip_packets
    np.testing.assert_array_equal(snap.chip_packets, expected)  # its counters count exactly


@pytest.mark.slow
def test_yesterdays_file_read_first_then_the_live_run(module_geometry, run, clean):
    yesterday = [shifted(shifted(c, 1, -86_400), 2, -86_400) for c in run[:30]]
    acc = feed(module_geometry, yesterday)
    feed(module_geometry, run, acc)
    snap = acc.snapshot()
    assert snap.data_time == clean.data_time
    assert_same_rates(snap, clean)


# -- pairing in time across sync resets (trigger plots) -----------------------------------


def timing_stream(header_offset: int = 0) -> np.ndarray:
    """A trigger just before an 'S' sync and three data packets around it, then three more syncs."""
    rows = [
        # packet_type, trigger_type, timestamp, receipt
        (TIMESTAMP, 0, START, 0),
        (7, 2, 9_999_950, 0),  # external trigger, PACMAN ticks
        (DATA, 0, 9_999_990, 9_999_995),  # same period: +40 ticks
        (6, ord("S"), 9_999_999, 0),  # 'S' sync: the tick counters restart
        (TIMESTAMP, 0, START + 1 + header_offset, 0),
        (DATA, 0, 9_999_999, 30),  # stamped before the sync, received after: +49 ticks
        (DATA, 0, 20, 25),  # after the sync: 1e7 + 20 - 9,999,950 = +70 ticks
        (6, ord("S"), 10_000_001, 0),
        (6, ord("S"), 9_999_998, 0),
        (6, ord("S"), 10_000_000, 0),
    ]
    packets = np.zeros(len(rows), PACKET_DTYPE)
    packets["io_group"], packets["io_channel"], packets["chip_id"], packets["valid_parity"] = 1, 1, 11, 1
    for i, (ptype, trigger_type, stamp, receipt) in enumerate(rows):
        packets[i]["packet_type"], packets[i]["trigger_type"] = ptype, trigger_type
        packets[i]["timestamp"], packets[i]["receipt_timestamp"] = stamp, receipt
    return packets


@pytest.mark.parametrize("header_offset", [0, 3600])
@pytest.mark.parametrize("split", [None, 4, 6])
def test_data_pair_with_triggers_across_sync_resets(header_offset, split):
    from larpix_dqm.plots.base import PlotContext
    from larpix_dqm.plots.builtin.timing import TRIGGER_EDGES, TriggerHistograms

    plot = TriggerHistograms()
    stream = timing_stream(header_offset)
    acc = Accumulator()
    ctx = PlotContext(None, acc.snapshot(), None)
    for part in np.split(stream, [split]) if split else [stream]:
        plot.update(part, ctx)
    assert plot.closed_triggers == 1 and len(plot.open_triggers) == 0
    dt = np.repeat((TRIGGER_EDGES[:-1] + TRIGGER_EDGES[1:]) / 2, plot.closed_dt[1])
    np.testing.assert_array_equal(np.abs(dt - [40, 49, 70]) <= 10, True)


@pytest.mark.slow
def test_an_io_group_that_stops_sending_falls_to_zero(module_geometry, run, clean):
    """Windows are per io_group, yet a stopped io_group's window follows the others: no frozen rates."""
    chunks = run[:10] + [c[c["io_group"] != 2] for c in run[10:]]
    snap = feed(module_geometry, chunks).snapshot()
    assert snap.io_group_rate_hz[2] == 0 and snap.sync_rate_hz[2] == 0
    assert snap.io_group_rate_hz[1] == clean.io_group_rate_hz[1]
    assert (snap.chip_rate_hz[snap.chip_keys[:, 0] == 2] == 0).all()


def test_metrics_show_link_parity_errors_unexpected_chips_offsets_and_time_jumps(module_geometry, run):
    from larpix_dqm.exporter.metrics.exposition import render
    from larpix_dqm.exporter.metrics.families import FamilyBuilder
    from larpix_dqm.exporter.metrics.health import Health

    chunks = [shifted(c, 2, -30) for c in run[:20]]
    chunks[5] = corrupted(one_bad_header(chunks[5], 3600), chip_id=250, n=2)
    stray = corrupted(np.zeros(0, PACKET_DTYPE), chip_id=251, n=4)
    stray["valid_parity"] = 1
    chunks[6] = np.concatenate([chunks[6], stray])
    acc = feed(module_geometry, chunks)
    health = Health()
    health.decode_errors["time_jump"] = acc.clock.rejected
    text = render(FamilyBuilder().families(acc.snapshot(), health))
    assert 'larpix_link_parity_errors_total{io_group="1",io_channel="3"} 2' in text
    assert 'larpix_link_parity_errors_total{io_group="2",io_channel="1"} 0' in text  # every link of the geometry
    assert 'larpix_unexpected_chip_packets_total{io_group="1",io_channel="3",chip_id="251"} 4' in text
    assert text.count("larpix_unexpected_chip_packets_total{") == 1
    assert 'larpix_io_group_clock_offset_seconds{io_group="1"} 30' in text
    assert 'larpix_io_group_clock_offset_seconds{io_group="2"} -30' in text
    assert 'larpix_exporter_decode_errors_total{kind="time_jump"} 1' in text


def test_clock_events_are_logged_once_per_event_not_per_packet(module_geometry, run, caplog):
    chunks = list(run[:20])
    chunks[5] = one_bad_header(chunks[5], 3600)  # one event
    chunks[12:] = [shifted(c, 2, -120) for c in chunks[12:]]  # a jump, then a step once it persisted
    with caplog.at_level("WARNING", logger="larpix_dqm.exporter.quality.clock"):
        acc = feed(module_geometry, chunks)
    messages = [r.getMessage() for r in caplog.records]
    assert acc.clock.rejected > 10  # every header of io_group 2 until the step was proven
    assert sum("io_group 1: timestamp" in m and "+3600 s" in m for m in messages) == 1
    assert sum("io_group 2: timestamp" in m and "jumps -11" in m for m in messages) == 1
    assert sum("io_group 2: data clock steps -1" in m for m in messages) == 1
    assert len(messages) == 3


@pytest.mark.slow
@pytest.mark.parametrize("pause", [8, 40])
def test_a_run_resumed_live_after_a_pause_is_accepted_at_once(module_geometry, run, pause):
    """A DAQ that pauses and writes live again: the jump lands on the wall clock, so it is the present,
    not a wrong header; nothing is rejected and the window slides over the gap instead of restarting."""
    sim = Simulator(module_geometry, SimulationConfig(hit_rate_hz=RATE_HZ, seed=6))
    resumed_at = START + 80 + pause
    after = [decode_messages(*sim.second(resumed_at + t)).packets for t in range(70)]
    acc = Accumulator(QualityConfig(60, 12), module_geometry)
    clock = DataClock()
    for chunk in run:
        acc.add(chunk, clock, resumed_at)  # live: the wall clock follows the data
    for t, chunk in enumerate(after):
        acc.add(chunk, clock, resumed_at + t + 1)
    assert acc.clock.rejected == 0
    resumed = Accumulator(QualityConfig(60, 12), module_geometry)
    for t, chunk in enumerate(after):
        resumed.add(chunk, DataClock(), resumed_at + t + 1)
    assert_same_rates(acc.snapshot(), resumed.snapshot())  # one window after the resume: only its data
    assert silent_channels(acc.snapshot()) == 0
    # a header as far ahead of the live data as the pause, but away from the wall clock, is still rejected
    late = Accumulator(QualityConfig(60, 12), module_geometry)
    feed(module_geometry, run[:40], late)
    late.add(one_bad_header(run[40], 3600), DataClock(), START + 41)
    assert late.clock.rejected >= 1


def test_the_others_median_is_numpys_median_of_the_other_clocks_bit_for_bit():
    """Each io_group's reference clock, computed from one sort, equals np.median of the others' clocks (ties,
    even and odd counts, one io_group alone, none)."""
    rng = np.random.default_rng(0)
    clock = DetectorClock()
    for trial in range(2000):
        clock.head[:] = np.nan
        groups = rng.choice(256, rng.integers(0, 12), replace=False)
        choices = [1.0, 1.5, 2.0, 7.25, 1e9 + 0.1, 1e9 + 0.3]
        clock.head[groups] = rng.choice(choices, len(groups)) if trial % 2 else rng.normal(1.7e9, 5, len(groups))
        known = np.flatnonzero(~np.isnan(clock.head))
        expected = np.full(256, np.nan)
        if len(known) > 1:
            for i, g in enumerate(known):
                expected[g] = float(np.median(np.delete(clock.head[known], i)))
        assert np.array_equal(clock.others_median(), expected, equal_nan=True), trial
