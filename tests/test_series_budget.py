"""The series budget of a scrape (issue 22 item 1): no series for an ok check, a zero count or a live chip; the
per-check counts by status stand for the ok and unknown chips; a healthy module stays within 50,000 series per
ND-LAr module (6,400 chips)."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import START, parse_metrics

from larpix_dqm.exporter import Monitor
from larpix_dqm.exporter.metrics.exposition import render
from larpix_dqm.exporter.metrics.families import FamilyBuilder
from larpix_dqm.exporter.metrics.health import Health
from larpix_dqm.exporter.quality.evaluation import Evaluation
from larpix_dqm.exporter.quality.status import CheckStatus
from larpix_dqm.exporter.reading.decode import decode_messages
from larpix_dqm.exporter.simulate import Faults, SimulationConfig, Simulator

#: The goal of issue 22: at most 50,000 series for an ND-LAr module's 6,400 chips.
SERIES_PER_CHIP = 50_000 / 6_400
DEAD = (1, 1, 11)
NOISY = (2, 5, 20, 12)
FIFO = (1, 2, 40)
HEALTHY = {"io_group": "2", "io_channel": "8", "chip_id": "100"}


def chip(key: tuple[int, ...]) -> dict[str, str]:
    return dict(zip(("io_group", "io_channel", "chip_id"), map(str, key[:3])))


@pytest.fixture(scope="module")
def module_state(module_geometry) -> Evaluation:
    """A 16-tile module at 0.05 Hz per channel for 40 s: one chip dead from the start, one noisy channel, one chip
    flagging its FIFO full."""
    monitor = Monitor(module_geometry)
    faults = Faults(silent_chips=[DEAD], noisy_channels=[NOISY], fifo_full_chips=[FIFO])
    sim = Simulator(module_geometry, SimulationConfig(hit_rate_hz=0.05, seed=3), faults)
    for t in range(40):
        monitor.feed(decode_messages(*sim.second(START + t)).packets, wall_now=START + 100)
    return monitor.update()


@pytest.fixture(scope="module")
def samples(module_state) -> dict[tuple[str, frozenset], float]:
    return parse_metrics(render(FamilyBuilder().families(module_state.snapshot, Health(), evaluation=module_state)))


def series_of(samples: dict, name: str, **labels: str) -> dict[frozenset, float]:
    """The samples of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return {key: v for (n, key), v in samples.items() if n == name and want <= key}


def test_the_scrape_of_a_module_stays_within_the_series_budget(module_state, samples):
    chips = len(module_state.snapshot.chip_keys)
    assert chips == 1600
    assert len(samples) <= SERIES_PER_CHIP * chips, f"{len(samples)} series, {len(samples) / chips:.1f} per chip"


def test_a_healthy_chip_serves_no_check_status_and_no_zero_series(samples):
    assert samples[("larpix_chip_info", frozenset({**HEALTHY, "tile": "10"}.items()))] == 1
    assert samples[("larpix_chip_packets_total", frozenset(HEALTHY.items()))] > 0
    for name in (
        "larpix_check_status",
        "larpix_chip_dead",
        "larpix_chip_parity_errors_total",
        "larpix_chip_fifo_flags_total",
        "larpix_chip_masked_active_channels",
        "larpix_chip_expected_hit_rate_hertz",
    ):
        assert series_of(samples, name, **HEALTHY) == {}, name
    channels = series_of(samples, "larpix_chip_channels", **HEALTHY)
    assert channels and all(v > 0 for v in channels.values())
    assert sum(channels.values()) == 49
    assert all(v != 0 for (n, _), v in samples.items() if n in ("larpix_check_status", "larpix_chip_channels"))


def test_a_failing_chip_serves_its_statuses_its_death_and_its_expected_rate(samples):
    dead = chip(DEAD)
    assert samples[("larpix_chip_dead", frozenset(dead.items()))] == 1
    assert series_of(samples, "larpix_chip_dead") == {frozenset(dead.items()): 1}
    assert series_of(samples, "larpix_check_status", check="silent_fraction", **dead) != {}
    assert samples[("larpix_check_status", frozenset({**dead, "check": "hit_rate_ratio"}.items()))] == 2
    assert samples[("larpix_chip_expected_hit_rate_hertz", frozenset(dead.items()))] > 0
    assert samples[("larpix_chip_channels", frozenset({**dead, "status": "silent"}.items()))] == 49
    noisy = chip(NOISY)
    assert samples[("larpix_chip_channels", frozenset({**noisy, "status": "noisy"}.items()))] == 1
    full = series_of(samples, "larpix_chip_fifo_flags_total", level="full", **chip(FIFO))
    assert full and all(v > 0 for v in full.values())


def test_check_chips_counts_every_judged_chip_once_per_check_by_status(module_state, samples):
    snap, r = module_state.snapshot, module_state.results
    judged = snap.chip_in_geometry & snap.chip_judged
    assert judged.sum() == 1600
    for check, statuses in zip(r.chip_checks, r.chip_status):
        counts = series_of(samples, "larpix_check_chips", check=check.name)
        assert len(counts) == 4 * len(snap.io_groups), check.name  # every status of every io_group, zeros too
        assert sum(counts.values()) == judged.sum(), check.name
        for status in CheckStatus:
            by_status = sum(v for key, v in counts.items() if ("status", status.label) in key)
            assert by_status == np.sum(statuses[judged] == status), (check.name, status)
        failing = series_of(samples, "larpix_check_status", check=check.name)
        assert len(failing) == np.sum(statuses[judged] > CheckStatus.OK), check.name
    ok = series_of(samples, "larpix_check_chips", check="pedestal", status="ok")
    assert sum(ok.values()) == 1599  # all but the dead chip, whose mean ADC is unknown
