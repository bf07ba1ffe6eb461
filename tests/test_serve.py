"""End to end: ``larpix-dqm serve`` on simulated files with faults, checked over real HTTP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error

import pytest
from helpers import (
    START,
    check_counters,
    chip_labels,
    free_port,
    ingested,
    parse_metrics,
    running_exporter,
    sample,
    scrape,
    simulate_files,
    wait_for,
)

from larpix_dqm.exporter.detector.geometry import packaged_layout
from larpix_dqm.exporter.reading.decode import decode_messages
from larpix_dqm.exporter.simulate import Faults, PacketFileWriter, SimulationConfig, Simulator, Truth

pytestmark = pytest.mark.external

FAULTS = Faults(
    silent_chips=[(1, 1, 11)],
    noisy_channels=[(2, 5, 20, 12)],
    noisy_rate_hz=50,
    parity_error_fraction=0.002,
    fifo_full_chips=[(1, 2, 40)],
    fifo_flag_fraction=0.2,
)


@pytest.mark.parametrize("fmt", ["raw", "packets"])
def test_serve_counts_exactly_and_flags_faults(tmp_path, module_geometry, fmt):
    _, truth = simulate_files(module_geometry, tmp_path, 65, fmt, FAULTS)
    port = free_port()
    args = ["-i", str(tmp_path), "--interval", "0.2", "--geometry", str(packaged_layout())]
    with running_exporter(args, port):
        total = sum(truth.packet_types.values())
        wait_for(lambda: ingested(port) == total, timeout=60)
        text = scrape(port)
        samples = parse_metrics(text)
        check_counters(samples, [truth])
        silent = chip_labels("1-1-11")
        assert sample(samples, "larpix_chip_packets_total", **silent) == 0
        assert sample(samples, "larpix_chip_channels", **silent, status="silent") == 49
        assert sample(samples, "larpix_chip_hit_rate_hertz", **silent) == 0
        assert sample(samples, "larpix_chip_dead", **silent) == 1
        noisy = chip_labels("2-5-20")
        assert sample(samples, "larpix_chip_channels", **noisy, status="noisy") == 1
        assert sample(samples, "larpix_chip_channels", **noisy, status="active") == 48
        assert 40 < sample(samples, "larpix_chip_hit_rate_hertz", **noisy) - 48 * 0.5 < 60
        assert sample(samples, "larpix_chip_fifo_flags_total", **chip_labels("1-2-40"), fifo="shared", level="full") > 0
        healthy = chip_labels("2-8-100")
        assert 15 < sample(samples, "larpix_chip_hit_rate_hertz", **healthy) < 35
        assert 75 < sample(samples, "larpix_chip_adc_mean", **healthy) < 85
        assert 4 < sample(samples, "larpix_chip_adc_stddev", **healthy) < 8
        assert sample(samples, "larpix_chip_info", **healthy, tile=10) == 1
        # a healthy chip serves no series for what is not wrong (issue 22's budget)
        assert ("larpix_chip_dead", frozenset(healthy.items())) not in samples
        assert not [labels for name, labels in samples if name == "larpix_check_status" and healthy.items() <= labels]
        assert sample(samples, "larpix_false_alarm_probability") == 0.01
        assert sample(samples, "larpix_io_group_sync_rate_hertz", io_group=1) == pytest.approx(1.0)
        assert sample(samples, "larpix_syncs_total", io_group=2, kind="sync") == 65
        assert sample(samples, "larpix_sync_offset_seconds_count", io_group=1) == 65
        assert sample(samples, "larpix_exporter_last_data_timestamp_seconds") == START + 64
        assert sample(samples, "larpix_exporter_files_tracked") == 1
        assert sample(samples, "larpix_exporter_up") == 1
        check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
        assert check.returncode == 0 and check.stdout + check.stderr == "", check.stdout + check.stderr


def test_serve_follows_live_appends_and_survives_bad_files(tmp_path, module_geometry):
    sim = Simulator(module_geometry, SimulationConfig(seed=2), FAULTS)
    writer = PacketFileWriter(tmp_path / "live.h5")
    truth = Truth()
    port = free_port()
    (tmp_path / "junk.h5").write_bytes(b"not hdf5 at all" * 100)
    with running_exporter(["-i", str(tmp_path), "--interval", "0.2"], port):
        for t in range(5):
            msgs, groups = sim.second(START + t)
            writer.append(msgs, groups)
            truth.add(decode_messages(msgs, groups).packets)
            total = sum(truth.packet_types.values())
            wait_for(lambda total=total: ingested(port) == total, timeout=30)
        samples = parse_metrics(scrape(port))
        check_counters(samples, [truth])
        assert sample(samples, "larpix_exporter_files_in_error", reason="not_hdf5") == 1
        assert sample(samples, "larpix_exporter_read_errors_total", reason="not_hdf5") >= 1
        assert sample(samples, "larpix_exporter_files_tracked") == 2


def test_per_pixel_series_only_when_enabled(tmp_path, tile_geometry):
    simulate_files(tile_geometry, tmp_path, 3, "raw")
    port = free_port()
    with running_exporter(["-i", str(tmp_path), "--interval", "0.2"], port):
        wait_for(lambda: ingested(port) > 0)
        with pytest.raises(urllib.error.HTTPError) as refused:
            scrape(port, "/metrics?per_pixel=1")
        assert refused.value.code == 404 and b"--per-pixel" in refused.value.read()
        status = scrape(port, "/")
        assert "cannot be seen" in status, "without a geometry the status page says what cannot be seen"
        assert (
            parse_metrics(scrape(port))[
                ("larpix_exporter_geometry_info", frozenset({("geometry", "none"), ("chips", "0")}))
            ]
            == 1
        )
    port = free_port()
    tile_layout = str(packaged_layout("layout-2.4.0.yaml"))
    with running_exporter(["-i", str(tmp_path), "--interval", "0.2", "--per-pixel", "--geometry", tile_layout], port):
        wait_for(lambda: ingested(port) > 0)
        assert "larpix_channel_hit_rate_hertz" not in scrape(port)
        info = [lab for (name, lab) in parse_metrics(scrape(port)) if name == "larpix_exporter_geometry_info"]
        assert info == [frozenset({("geometry", "layout-2.4.0.yaml"), ("chips", "100")})], info
        text = scrape(port, "/metrics?per_pixel=1")
        samples = parse_metrics(text)
        rates = [v for (name, _), v in samples.items() if name == "larpix_channel_hit_rate_hertz"]
        assert len(rates) == 4900
        check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "250"}  # rich wraps help at the terminal width
    return subprocess.run(
        [sys.executable, "-m", "larpix_dqm.exporter.cli", *args], capture_output=True, text=True, timeout=60, env=env
    )


def test_bad_geometry_and_config_stop_startup_with_one_line(tmp_path):
    bad_geo = tmp_path / "geo.yaml"
    bad_geo.write_text("just: [a, list]\n")
    result = run_cli("serve", "-i", str(tmp_path), "--geometry", str(bad_geo), "--port", str(free_port()))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and str(bad_geo) in result.stderr
    missing = run_cli("serve", "-i", str(tmp_path), "--geometry", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and "no such file" in missing.stderr
    config = tmp_path / "dqm.yaml"
    config.write_text("interval: 1\nwindow: sixty\n")
    result = run_cli("serve", "--config", str(config))
    assert result.returncode == 2
    assert f"config file {config} line 2: key 'window'" in result.stderr
    config.write_text("inputs: [/data]\nintervall: 1\n")
    result = run_cli("serve", "--config", str(config))
    assert result.returncode == 2 and "line 2: unknown key 'intervall'" in result.stderr
    result = run_cli("serve", "-i", str(tmp_path), "--false-alarm-probability", "2")
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0
    assert result.stderr == "larpix-dqm: --false-alarm-probability 2: must be less than 1\n"


def test_config_file_values_are_used_and_cli_wins(tmp_path, tile_geometry):
    simulate_files(tile_geometry, tmp_path / "data", 2, "raw")
    config = tmp_path / "dqm.yaml"
    port = free_port()
    plots = tmp_path / "plots"
    config.write_text(
        f"inputs: [{tmp_path / 'data'}]\nwindow: 30\nport: {port + 1}\n"
        f"output: {plots}\nplots: [PacketRate]\nplot_interval: 0.5\n"
    )
    with running_exporter(["--config", str(config), "--interval", "0.2"], port):
        samples = parse_metrics(scrape(port))
        assert sample(samples, "larpix_window_seconds") == 30
        wait_for(lambda: (plots / "latest" / "PacketRate.png").exists())
        assert [p.name for p in (plots / "latest").iterdir()] == ["PacketRate.png"], "plot options from the file"


@pytest.mark.parametrize("command", ["serve", "once", "simulate", "demo"])
def test_every_command_documents_its_options(command):
    result = run_cli(command, "--help")
    assert result.returncode == 0
    assert "--help" in result.stdout
    if command == "serve":
        for option in (
            "--input",
            "--port",
            "--listen-address",
            "--interval",
            "--flush-interval",
            "--geometry",
            "--config",
            "--per-pixel",
        ):
            assert option in result.stdout
        assert "default: 9767" in result.stdout


def test_once_writes_summary(tmp_path, module_geometry):
    paths, truth = simulate_files(module_geometry, tmp_path, 15, "packets", FAULTS)  # 15 s prove the chip dead
    result = run_cli("once", str(paths[0]), "-o", str(tmp_path / "out"), "--geometry", str(packaged_layout()))
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["totals"]["data_packets"] == sum(c.get("packets", 0) for c in truth.chips.values())
    assert json.loads(result.stdout) == summary["totals"]
    plain = run_cli("once", str(paths[0]), "--geometry", str(packaged_layout()))  # no -o: the totals, nothing written
    assert plain.returncode == 0 and json.loads(plain.stdout) == summary["totals"], plain.stderr
    assert [1, 1, 11, 0] in summary["channels"]["silent"]
    dead = next(c for c in summary["chips"] if [c["io_group"], c["io_channel"], c["chip_id"]] == [1, 1, 11])
    assert dead["packets"] == 0 and dead["adc_mean"] is None and dead["adc_std"] is None  # no ADC: null, not NaN
    assert dead["channels"]["silent"] == len([c for c in summary["channels"]["silent"] if c[:3] == [1, 1, 11]]) > 0
    assert [2, 5, 20, 12] in summary["channels"]["noisy"]
    counts = summary["totals"]["channels"]
    assert sorted(summary["channels"]) == ["inefficient", "masked", "noisy", "silent"]  # active, unknown: counts
    assert counts["active"] > 20_000 and sum(counts.values()) == sum(
        sum(c["channels"].values()) for c in summary["chips"]
    )
    text = (tmp_path / "out" / "summary.json").read_text()
    lines = text.splitlines()  # a line per chip and per status list: read and diffed by line, written fast
    assert len([line for line in lines if line.startswith('  {"io_group":')]) == len(summary["chips"])
    assert len([line for line in lines if line.startswith(('  "silent": [', '  "noisy": [', '  "masked": ['))]) == 3
    result = run_cli(
        "once",
        str(paths[0]),
        "-o",
        str(tmp_path / "all"),
        "--no-plots",
        "--channels",
        "--geometry",
        str(packaged_layout()),
    )
    every = json.loads((tmp_path / "all" / "summary.json").read_text())
    assert {status: len(listed) for status, listed in every["channels"].items()} == counts
    assert every["channels"]["noisy"] == summary["channels"]["noisy"]
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"x" * 100)
    result = run_cli("once", str(bad))
    assert result.returncode == 2 and "not_hdf5" in result.stderr and str(bad) in result.stderr


def test_once_summary_names_a_file_whose_name_is_not_utf8(tmp_path, tile_geometry):
    """A file name of bytes that are not UTF-8 (Python keeps them as lone surrogates, which JSON cannot carry)
    is written escaped, and the summary is written."""
    (path,), _ = simulate_files(tile_geometry, tmp_path / "data", 2, seed=3)
    odd = os.fsdecode(os.fsencode(tmp_path) + b"/run_\xe9.h5")
    os.link(path, odd)
    result = run_cli("once", odd, "-o", str(tmp_path / "out"), "--no-plots")
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_bytes())
    assert summary["file"].endswith("/run_\\xe9.h5") and summary["totals"] == json.loads(result.stdout)


@pytest.mark.external
def test_demo_stops_on_sigterm_at_once_and_removes_its_directory(tmp_path):
    """``demo --seconds N`` stopped early (SIGTERM, as a terminal's close or docker stop) exits 0 within
    seconds, not when its N seconds are up, and leaves no directory behind."""
    port = free_port()
    demo = subprocess.Popen(
        [sys.executable, "-m", "larpix_dqm.exporter.cli", "demo", "--port", str(port), "--seconds", "600"],
        env={**os.environ, "TMPDIR": str(tmp_path)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: "larpix_exporter_up 1" in scrape(port), timeout=60, what="the demo serving")
        demo.send_signal(signal.SIGTERM)
        assert demo.wait(timeout=20) == 0, demo.stderr.read() if demo.stderr else ""
    finally:
        demo.kill()
        demo.wait()
    assert list(tmp_path.iterdir()) == []
