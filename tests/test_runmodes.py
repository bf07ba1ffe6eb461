"""Trigger types and run modes: the statistics split by trigger type, mode detection, mode threshold sets."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from larpix.format import hdf5format, pacman_msg_format

from larpix_dqm.exporter.detector.runconfig import RunConfig
from larpix_dqm.exporter.metrics.exposition import render
from larpix_dqm.exporter.metrics.families import FamilyBuilder
from larpix_dqm.exporter.metrics.health import Health
from larpix_dqm.exporter.monitor import Evaluation, Monitor
from larpix_dqm.exporter.quality.accumulator import Accumulator, QualityConfig
from larpix_dqm.exporter.quality.checks import ChecksConfigError, detect_run_mode, evaluate, mode_checks
from larpix_dqm.exporter.quality.clock import DataClock
from larpix_dqm.exporter.quality.status import ChannelStatus, CheckStatus
from larpix_dqm.exporter.reading.decode import decode_messages
from larpix_dqm.exporter.reading.packets import DATA, PACKET_DTYPE, PERIODIC_TRIGGER
from larpix_dqm.exporter.runtime.ingest import Published
from larpix_dqm.exporter.simulate import Faults, SimulationConfig, Simulator
from larpix_dqm.exporter.web.server import MetricsApp

START = 1_700_000_000
NOW = START + 10_000
PERIODIC_HZ = 30.0
PEDESTAL_SECONDS = 16


def seconds(geometry, n: int, faults: Faults | None = None, **config) -> list[np.ndarray]:
    sim = Simulator(geometry, SimulationConfig(seed=4, **config), faults)
    return [decode_messages(*sim.second(START + t)).packets for t in range(n)]


def accumulate(geometry, chunks, window: float = 20.0, run_config: RunConfig | None = None) -> Accumulator:
    acc = Accumulator(QualityConfig(window_seconds=window, window_bins=4), geometry, run_config)
    clock = DataClock()
    for chunk in chunks:
        acc.add(chunk, clock, NOW)
    return acc


@pytest.fixture(scope="module")
def pedestal_run(tile_geometry):
    """A pedestal run: self-triggers off, periodic triggers at 30 Hz on every channel; chip 30 dead."""
    return seconds(
        tile_geometry,
        PEDESTAL_SECONDS,
        Faults(silent_chips=[(1, 1, 30)]),
        hit_rate_hz=0.0,
        periodic_trigger_hz=PERIODIC_HZ,
    )


@pytest.mark.slow
def test_simulated_periodic_triggers_are_what_larpix_control_parses(tile_geometry):
    sim = Simulator(tile_geometry, SimulationConfig(seed=1, hit_rate_hz=0.0, periodic_trigger_hz=PERIODIC_HZ))
    msgs, groups = sim.second(START)
    ours = decode_messages(msgs, groups).packets
    theirs = np.array(
        [
            hdf5format._encode_packet(p, "2.4", "packets")
            for msg, g in zip(msgs, groups)
            for p in pacman_msg_format.parse(bytes(msg), io_group=int(g))
        ],
        dtype=PACKET_DTYPE,
    )
    data = theirs[theirs["packet_type"] == DATA]
    assert np.array_equal(ours, theirs)
    assert (data["trigger_type"] == PERIODIC_TRIGGER).all() and (data["valid_parity"] == 1).all()
    assert len(data) == int(tile_geometry.connected.sum()) * PERIODIC_HZ


@pytest.mark.slow
def test_a_pedestal_run_is_judged_as_one(tile_geometry, pedestal_run):
    """Periodic packets give pedestals and the periodic rate, never noisy channels; auto finds the mode."""
    chips = Simulator(tile_geometry).channels[:, :3]
    network = RunConfig(network=frozenset(map(tuple, chips.tolist())))  # the dead chip is expected
    acc = accumulate(tile_geometry, pedestal_run, run_config=network)
    snap = acc.snapshot()
    data = np.concatenate(pedestal_run)
    data = data[data["packet_type"] == DATA]
    assert len(data) / PEDESTAL_SECONDS / tile_geometry.connected.sum() > 25  # far above the 10 Hz noisy threshold
    assert not (snap.channel_status == ChannelStatus.NOISY).any()
    assert snap.chip_rate_hz.max() == 0.0  # no self-triggers
    assert detect_run_mode(snap) == "pedestal"
    live = snap.chip_periodic_rate_hz > 0
    assert np.nanmean(snap.chip_pedestal_mean[live]) == pytest.approx(80, abs=0.5)
    assert np.nanmean(snap.chip_pedestal_std[live]) == pytest.approx(6, abs=0.5)
    chip_rates = snap.chip_periodic_rate_hz[live] / tile_geometry.connected[acc.geo_row[: len(live)][live]].sum(1)
    assert chip_rates == pytest.approx(PERIODIC_HZ, rel=0.05)
    sets = mode_checks()
    pedestal = evaluate(snap, sets["pedestal"])
    names = [c.name for c in pedestal.chip_checks]
    dead = [tuple(k) for k in snap.chip_keys.tolist()].index((1, 1, 30))
    periodic = pedestal.chip_status[names.index("periodic_rate")]
    assert periodic[dead] == CheckStatus.ERROR  # the dead chip answers no periodic trigger
    # no other chip is in warning or error (checks on self-triggered data may not decide: unknown)
    assert (np.delete(pedestal.chip_worst, dead) <= CheckStatus.OK).all()
    assert "hit_rate_ratio" not in names and "periodic_rate" not in [
        c.name for c in evaluate(snap, sets["self-trigger"]).chip_checks
    ]


@pytest.mark.slow
def test_periodic_packets_leave_the_self_trigger_statistics_unchanged(module_geometry):
    """Adding periodic copies of every packet changes no rate or status, and fills the pedestal window."""
    chunks = seconds(module_geometry, 25, Faults(noisy_channels=[(1, 2, 41, 5)], noisy_rate_hz=40.0))
    plain = accumulate(module_geometry, chunks).snapshot()
    mixed_chunks = []
    for chunk in chunks:
        periodic = chunk[chunk["packet_type"] == DATA].copy()
        periodic["trigger_type"] = PERIODIC_TRIGGER
        periodic["dataword"] = 50
        mixed_chunks.append(np.concatenate([chunk, periodic]))
    mixed = accumulate(module_geometry, mixed_chunks).snapshot()
    assert np.array_equal(mixed.channel_rate_hz, plain.channel_rate_hz)
    assert np.array_equal(mixed.channel_status, plain.channel_status)
    assert np.array_equal(mixed.chip_adc_mean, plain.chip_adc_mean, equal_nan=True)
    assert np.array_equal(mixed.chip_packets, 2 * plain.chip_packets)  # all-time counts keep every packet
    has = mixed.chip_periodic_rate_hz > 0
    assert np.array_equal(has, plain.chip_rate_hz > 0)
    assert np.array_equal(mixed.chip_periodic_rate_hz, plain.chip_rate_hz)
    assert (mixed.chip_pedestal_mean[has] == 50).all() and (mixed.chip_pedestal_std[has] == 0).all()
    assert mixed.trigger_type_counts.sum(axis=0).tolist()[::3] == [plain.chip_packets.sum()] * 2
    assert detect_run_mode(mixed) == "pedestal" and detect_run_mode(plain) == "self-trigger"


def test_externally_triggered_data_make_a_beam_run(tile_geometry):
    chunks = seconds(tile_geometry, 10)
    for chunk in chunks:
        data = np.flatnonzero(chunk["packet_type"] == DATA)
        chunk["trigger_type"][data[::5]] = 1  # a fifth of the data read out on the external trigger
    snap = accumulate(tile_geometry, chunks).snapshot()
    assert detect_run_mode(snap) == "beam"
    assert snap.trigger_type_rate_hz[1, 1] == pytest.approx(snap.trigger_type_rate_hz[1, 0] / 4, rel=0.05)


@pytest.mark.slow
def test_the_monitor_exports_and_shows_the_run_mode(tile_geometry, pedestal_run):
    monitor = Monitor(tile_geometry, window=20)
    for chunk in pedestal_run:
        monitor.feed(chunk, wall_now=NOW)
    state = monitor.update()
    assert state.run_mode == "pedestal"
    text = render(FamilyBuilder().families(state.snapshot, Health(), evaluation=state))
    assert 'larpix_run_info{mode="pedestal",mode_setting="auto"} 1' in text
    assert "larpix_chip_pedestal_adc_mean{" in text and "larpix_chip_periodic_trigger_rate_hertz{" in text
    assert 'larpix_data_packets_by_trigger_total{io_group="1",trigger_type="periodic"}' in text
    page = MetricsApp(lambda: Published(state, Health())).landing_page()
    assert "<th>run mode</th><td>pedestal (detected from the trigger types)</td>" in page
    fixed = Monitor(tile_geometry, window=20, run_mode="self-trigger")
    for chunk in pedestal_run:
        fixed.feed(chunk, wall_now=NOW)
    assert fixed.update().run_mode == "self-trigger"
    assert isinstance(state, Evaluation)


def test_mode_threshold_sets_are_overridable_in_the_checks_file(tmp_path):
    path = tmp_path / "checks.yaml"
    path.write_text(
        "checks:\n  pedestal:\n    warning: [70, 90]\n"
        "modes:\n  pedestal:\n    periodic_rate:\n      warning: [20, 40]\n  beam:\n    hit_rate_ratio:\n      enabled: false\n"
    )
    sets = {mode: {c.name: c for c in checks} for mode, checks in mode_checks(path=str(path)).items()}
    assert sets["pedestal"]["periodic_rate"].warning == (20.0, 40.0) and sets["pedestal"]["periodic_rate"].enabled
    assert not sets["pedestal"]["hit_rate_ratio"].enabled  # the built-in pedestal set still applies
    assert all(sets[m]["pedestal"].warning == (70.0, 90.0) for m in sets)  # 'checks' applies to every mode
    assert not sets["beam"]["hit_rate_ratio"].enabled and sets["self-trigger"]["hit_rate_ratio"].enabled
    path.write_text("modes:\n  cosmics:\n    hit_rate_ratio:\n      enabled: false\n")
    with pytest.raises(
        ChecksConfigError, match=r"line 2: unknown run mode 'cosmics' \(known: pedestal, self-trigger, beam\)"
    ):
        mode_checks(path=str(path))


@pytest.mark.external
def test_simulate_writes_a_pedestal_run_that_once_recognises(tmp_path, tile_geometry):
    run = subprocess.run(
        [sys.executable, "-m", "larpix_dqm.exporter.cli", "simulate", str(tmp_path / "run"), "--format", "packets", "--seconds", "5",
         "--fast", "--start-time", str(START), "--rate-hz", "0", "--periodic-trigger-hz", "20", "--geometry", tile_geometry.path],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    (path,) = (tmp_path / "run").glob("*.h5")
    once = subprocess.run(
        [sys.executable, "-m", "larpix_dqm.exporter.cli", "once", str(path), "--geometry", tile_geometry.path, "--no-plots",
         "-o", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert once.returncode == 0, once.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["run_mode"] == "pedestal" and summary["channels"]["noisy"] == []


#: Families only a scrape of serve has: its own process, the scrape, the plots it draws.
SCRAPE_ONLY_PREFIXES = ("process_", "python_", "larpix_exporter_scrape_", "larpix_exporter_plot_")
STATUS_FAMILIES = (
    "larpix_check_status",
    "larpix_check_chips",
    "larpix_tile_status",
    "larpix_io_group_status",
    "larpix_detector_status",
)


@pytest.mark.external
@pytest.mark.parametrize("fmt", ["raw", "packets"])
def test_once_writes_the_families_a_scrape_of_serve_shows(tmp_path, tile_geometry, fmt):
    """``once``'s metrics.prom has every family a scrape of ``serve`` over the same file has (check statuses and
    the counts by status and the tile, io_group and detector statuses included), with the same check-status series."""
    from prometheus_client.parser import text_string_to_metric_families

    from tests.helpers import free_port, ingested, running_exporter, scrape, simulate_files, wait_for

    (path,), _ = simulate_files(tile_geometry, tmp_path / "run", 8, fmt, Faults(noisy_channels=[(1, 1, 11, 5)]))
    once = subprocess.run(
        [sys.executable, "-m", "larpix_dqm.exporter.cli", "once", str(path), "--geometry", tile_geometry.path, "--no-plots",
         "-o", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert once.returncode == 0, once.stderr
    written = (tmp_path / "out" / "metrics.prom").read_text()
    port = free_port()

    def families(text: str) -> dict[str, dict[frozenset, float]]:
        return {
            f.name: {frozenset(s.labels.items()): s.value for s in f.samples}
            for f in text_string_to_metric_families(text)
            if not f.name.startswith(SCRAPE_ONLY_PREFIXES)
        }

    by_once = families(written)
    total = sum(by_once["larpix_exporter_packets_ingested"].values())
    with running_exporter(["-i", str(path.parent), "--geometry", tile_geometry.path, "--interval", "0.2"], port):
        wait_for(lambda: ingested(port) == total, what="the whole file ingested")
        by_scrape = families(scrape(port))
    assert sorted(by_once) == sorted(by_scrape)
    assert set(STATUS_FAMILIES) <= set(by_once)
    for name in STATUS_FAMILIES:
        assert by_once[name] == by_scrape[name], name
    assert any(v > 0 for v in by_once["larpix_check_status"].values())  # the noisy channel is judged, not only ok
