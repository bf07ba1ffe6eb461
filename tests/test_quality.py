"""Accumulation: exact counters, data-time windows, channel status, clock trouble."""

from __future__ import annotations

import numpy as np
import pytest

from larpix_dqm.exporter.quality.accumulator import (
    Accumulator,
    QualityConfig,
)
from larpix_dqm.exporter.quality.clock import DataClock
from larpix_dqm.exporter.quality.status import ChannelStatus
from larpix_dqm.exporter.reading.decode import decode_messages
from larpix_dqm.exporter.reading.packets import PACKET_DTYPE, TIMESTAMP
from larpix_dqm.exporter.simulate import Faults, SimulationConfig, Simulator

START = 1_700_000_000
NOW = START + 10_000


def seconds_of_data(geometry, n: int, faults: Faults | None = None, start: int = START) -> list[np.ndarray]:
    sim = Simulator(geometry, SimulationConfig(seed=11), faults)
    return [decode_messages(*sim.second(start + t)).packets for t in range(n)]


def chip_row(acc: Accumulator, key: tuple[int, int, int]) -> int:
    return int(acc.chips.lookup(*(np.array([v], np.uint8) for v in key))[0])


@pytest.fixture(scope="module")
def faulty_run(module_geometry):
    faults = Faults(silent_chips=[(1, 1, 11)], noisy_channels=[(2, 5, 20, 12)], noisy_rate_hz=50)
    return seconds_of_data(module_geometry, 70, faults)


def test_expected_chips_exported_before_any_data(module_geometry):
    snap = Accumulator(geometry=module_geometry).snapshot()
    assert len(snap.chip_keys) == 1600
    assert snap.chip_packets.sum() == 0
    assert (snap.chip_tiles >= 1).all()


@pytest.mark.slow
def test_status_and_rates(module_geometry, faulty_run):
    acc = Accumulator(QualityConfig(window_seconds=60, window_bins=12), module_geometry)
    carry = DataClock()
    for chunk in faulty_run:
        acc.add(chunk, carry, NOW)
    snap = acc.snapshot()
    silent = chip_row(acc, (1, 1, 11))
    noisy = chip_row(acc, (2, 5, 20))
    assert snap.chip_packets[silent] == 0
    assert snap.chip_status_counts[silent].tolist() == [
        0,
        49,
        0,
        0,
        0,
        0,
    ]  # active, silent, noisy, unknown, inefficient, masked
    assert snap.channel_status[noisy, 12] == ChannelStatus.NOISY
    assert snap.chip_status_counts[noisy][2] == 1
    assert (snap.channel_status[silent][module_geometry.connected[silent]] == ChannelStatus.SILENT).all()
    # rate = hits in the window / seconds the window covers, exactly
    data = np.concatenate(faulty_run)
    data = data[data["packet_type"] == 0]
    times = np.repeat(np.arange(len(faulty_run)) + START, [int((c["packet_type"] == 0).sum()) for c in faulty_run])
    bin_s = 5
    newest_bin = (START + len(faulty_run) - 1) // bin_s
    in_window = times // bin_s > newest_bin - 12
    covered = START + len(faulty_run) - (newest_bin - 11) * bin_s
    assert snap.covered_seconds == covered
    chip = (data["io_group"] == 2) & (data["io_channel"] == 5) & (data["chip_id"] == 20)
    assert snap.chip_rate_hz[noisy] == pytest.approx((chip & in_window).sum() / covered)
    assert 40 < snap.channel_rate_hz[noisy, 12] < 60
    adc = data["dataword"][chip & in_window].astype(float)
    assert snap.chip_adc_mean[noisy] == pytest.approx(adc.mean())
    assert snap.chip_adc_std[noisy] == pytest.approx(adc.std())
    ordinary = snap.channel_status[module_geometry.connected & (snap.channel_hits_total > 0)]
    assert (ordinary != ChannelStatus.SILENT).all()
    assert (snap.channel_status == ChannelStatus.ACTIVE).sum() > 70_000


@pytest.mark.slow
def test_backlog_gives_the_same_rates_as_live(module_geometry, faulty_run):
    live = Accumulator(geometry=module_geometry)
    carry = DataClock()
    for chunk in faulty_run:
        live.add(chunk, carry, NOW)
    backlog = Accumulator(geometry=module_geometry)
    backlog.add(np.concatenate(faulty_run), DataClock(), NOW)
    a, b = live.snapshot(), backlog.snapshot()
    np.testing.assert_array_equal(a.chip_rate_hz, b.chip_rate_hz)
    np.testing.assert_array_equal(a.channel_status, b.channel_status)
    np.testing.assert_array_equal(a.chip_packets, b.chip_packets)


@pytest.mark.slow  # 80 s of a whole module's data: seconds
def test_window_forgets_old_data(module_geometry):
    run = seconds_of_data(module_geometry, 10) + seconds_of_data(
        module_geometry, 70, Faults(silent_chips=[(1, 2, 40)]), START + 10
    )
    acc = Accumulator(geometry=module_geometry)
    carry = DataClock()
    for chunk in run:
        acc.add(chunk, carry, NOW)
    snap = acc.snapshot()
    row = chip_row(acc, (1, 2, 40))
    assert snap.chip_packets[row] > 0, "counted while it was alive"
    assert snap.chip_rate_hz[row] == 0.0
    assert snap.chip_status_counts[row][1] == 49


def stamp(times, io_group=1) -> np.ndarray:
    packets = np.zeros(len(times), PACKET_DTYPE)
    packets["packet_type"] = TIMESTAMP
    packets["io_group"] = io_group
    packets["timestamp"] = times
    return packets


def data_packets(n, chip=11) -> np.ndarray:
    packets = np.zeros(n, PACKET_DTYPE)
    packets["io_group"], packets["io_channel"], packets["chip_id"] = 1, 1, chip
    packets["valid_parity"] = 1
    packets["dataword"] = 80
    return packets


@pytest.mark.parametrize("bad_time", [0, 5, 2**40, NOW + 10 * 86_400])
def test_impossible_timestamps_do_not_move_the_clock(bad_time):
    acc = Accumulator()
    carry = DataClock()
    acc.add(np.concatenate([stamp([START]), data_packets(10)]), carry, NOW)
    acc.add(np.concatenate([stamp([bad_time]), data_packets(10)]), carry, NOW)
    snap = acc.snapshot()
    assert acc.clock.implausible == 1
    assert snap.data_time == START
    assert snap.chip_packets.sum() == 20
    assert np.isfinite(snap.chip_rate_hz).all() and (snap.chip_rate_hz >= 0).all()
    assert snap.chip_rate_hz[0] == 20.0  # 20 hits in the one second seen


def test_single_clock_jumps_are_rejected_and_counts_stay_exact():
    acc = Accumulator(QualityConfig(window_seconds=60, window_bins=12))
    carry = DataClock()
    acc.add(np.concatenate([stamp([START + 100]), data_packets(30)]), carry, NOW)
    acc.add(np.concatenate([stamp([START]), data_packets(40)]), carry, NOW)  # one header backwards
    acc.add(np.concatenate([stamp([START + 5000]), data_packets(50)]), carry, NOW)  # one header forwards
    snap = acc.snapshot()
    assert snap.chip_packets.sum() == 120
    assert acc.clock.rejected == 2
    assert snap.data_time == START + 100  # both jumps rejected: the packets keep the last good time
    assert snap.chip_rate_hz[0] == pytest.approx(120 / snap.covered_seconds)
    assert snap.covered_seconds == 1


def test_packets_before_any_timestamp_are_counted_not_windowed():
    acc = Accumulator()
    acc.add(data_packets(7), DataClock(), NOW)
    snap = acc.snapshot()
    assert snap.chip_packets.tolist() == [7]
    assert snap.chip_rate_hz.tolist() == [0.0]


def test_window_lengths_that_do_not_divide_evenly_keep_every_packet():
    """10 s / 12 bins is not exact in binary: the window edge and the packets must agree on bins."""
    acc = Accumulator(QualityConfig(window_seconds=10, window_bins=12))
    carry = DataClock()
    for t in range(30):
        acc.add(np.concatenate([stamp([START + t]), data_packets(100)]), carry, NOW)
    snap = acc.snapshot()
    assert snap.chip_rate_hz[0] == pytest.approx(100.0)


def test_chips_unknown_to_the_geometry_are_counted_not_mapped(module_geometry):
    acc = Accumulator(geometry=module_geometry)
    stray = data_packets(5, chip=250)
    stray["io_channel"] = 200
    acc.add(np.concatenate([stamp([START]), stray]), DataClock(), NOW)
    snap = acc.snapshot()
    row = chip_row(acc, (1, 200, 250))
    assert len(snap.chip_keys) == 1601 and snap.chip_packets[row] == 5
    assert snap.chip_tiles[row] == -1
    assert snap.channel_status[row, 0] != 0 and snap.channel_expected[row].sum() == 1
