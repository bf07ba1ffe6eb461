"""The run's own configuration: hydra networks, disabled lists, a packet file's configs, run modes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import larpix
import numpy as np
import pytest
from larpix import Chip, Controller, Key
from larpix.format import hdf5format

from larpix_dqm.exporter.detector.runconfig import (
    RunConfig,
    RunConfigError,
    daq_tile,
    load_network,
    read_file_configuration,
)
from larpix_dqm.exporter.monitor import Monitor
from larpix_dqm.exporter.quality.accumulator import Accumulator, QualityConfig
from larpix_dqm.exporter.quality.channels import KEY_SCHEMES, format_channels
from larpix_dqm.exporter.quality.checks import DEFAULT_CHECKS, evaluate
from larpix_dqm.exporter.quality.clock import DataClock
from larpix_dqm.exporter.quality.status import ChannelStatus
from larpix_dqm.exporter.reading.decode import decode_messages
from larpix_dqm.exporter.simulate import SimulationConfig, Simulator, write_run

START = 1_700_000_000
NOW = START + 10_000


def write_network(path: Path, io_group: int, chains: dict[int, list[int]]) -> Path:
    """A hydra network file in larpix-control's controller format: one daisy chain per io_channel."""
    channels = {}
    for io_channel, chips in chains.items():
        nodes = [{"chip_id": "ext", "miso_us": [None, None, None, chips[0]], "root": True}]
        for i, chip in enumerate(chips):
            nxt = chips[i + 1] if i + 1 < len(chips) else None
            nodes.append({"chip_id": chip, "miso_us": [None, None, None, nxt]})
        channels[str(io_channel)] = {"nodes": nodes}
    doc = {
        "_config_type": "controller",
        "name": path.stem,
        "asic_version": 2,
        "layout": "2.4.0",
        "network": {
            str(io_group): channels,
            "miso_uart_map": [3, 0, 1, 2],
            "mosi_uart_map": [0, 1, 2, 3],
            "usds_link_map": [2, 3, 0, 1],
        },
    }
    path.write_text(json.dumps(doc, indent=4))
    return path


def module_chains(geometry, io_group: int, io_channels: range, drop: set[tuple[int, int, int]]) -> dict:
    chains: dict[int, list[int]] = {}
    for g, c, chip in geometry.chips.tolist():
        if g == io_group and c in io_channels and (g, c, chip) not in drop:
            chains.setdefault(c, []).append(chip)
    return chains


def test_network_files_load_as_larpix_control_loads_them(tmp_path, module_geometry):
    """Our reading of a network file names the same chips as larpix-control's Controller.load_network."""
    path = write_network(tmp_path / "iog-1-pacman-tile-1-hydra-network.json", 1, {1: [11, 12, 13], 2: [41, 42]})
    controller = Controller()
    controller.load_network(str(path))
    theirs = sorted((k.io_group, k.io_channel, k.chip_id) for k in map(Key, controller.chips))
    assert sorted(load_network(str(path))) == theirs == [(1, 1, 11), (1, 1, 12), (1, 1, 13), (1, 2, 41), (1, 2, 42)]
    shipped = Path(larpix.__file__).parent / "configs" / "controller"
    assert load_network(str(shipped / "network-3x3-tile-channel0.json"))  # larpix-control's own example


def test_a_directory_loads_every_controller_file_in_it(tmp_path):
    write_network(tmp_path / "iog-1-pacman-tile-1-hydra-network.json", 1, {1: [11]})
    write_network(tmp_path / "iog-2-pacman-tile-1-hydra-network.json", 2, {1: [11, 12]})
    (tmp_path / "disabled.json").write_text(json.dumps({"1-1-11": [3]}))  # not a controller file: skipped
    config = RunConfig.load([str(tmp_path)])
    assert config.network == {(1, 1, 11), (2, 1, 11), (2, 1, 12)}
    assert len(config.sources) == 2


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"_config_type": "chip"}), "not a larpix-control controller network"),
        (json.dumps({"_config_type": "controller", "network": {"x": {"1": {"nodes": []}}}}), "expected a number"),
        (json.dumps({"_config_type": "controller", "network": {"1": {"1": {"nodes": [{"a": 1}]}}}}), "node without"),
    ],
)
def test_bad_network_files_fail_naming_the_file(tmp_path, content, problem):
    path = tmp_path / "net.json"
    path.write_text(content)
    with pytest.raises(RunConfigError, match=problem) as err:
        RunConfig.load([str(path)])
    assert str(path) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("doc", "problem"),
    [({"1-1": [3]}, "expected '<io_group>-<tile>-<chip_id>'"), ({"1-1-11": [64]}, "channel ids 0-63"), ([1], "object")],
)
def test_bad_disabled_lists_fail_naming_the_file(tmp_path, doc, problem):
    path = tmp_path / "disabled.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(RunConfigError, match=problem) as err:
        RunConfig.load(disabled_lists=[str(path)])
    assert str(path) in str(err.value)


@pytest.mark.external
def test_serve_exits_2_on_a_bad_network_file(tmp_path):
    bad = tmp_path / "net.json"
    bad.write_text("{}")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "larpix_dqm.exporter.cli",
            "serve",
            "-i",
            str(tmp_path),
            "--network",
            str(bad),
            "--port",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert f"network file {bad}: not a larpix-control controller network" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_disabled_list_keys_use_the_daq_tile():
    assert [daq_tile(c) for c in (1, 4, 5, 8, 29, 32)] == [1, 1, 2, 2, 8, 8]
    config = RunConfig(masked={(2, 2, 30): np.eye(64, dtype=bool)[7]})
    keys = np.array([[2, 5, 30], [2, 8, 30], [2, 4, 30], [1, 5, 30]], np.uint8)
    masked = config.masked_channels(keys)
    assert masked[:2, 7].all() and not masked[2:].any() and masked.sum() == 2


@pytest.mark.parametrize("fmt", ["json", "csv", "daq"])
def test_every_channel_list_form_round_trips_into_disabled_list_exactly_or_is_refused(tmp_path, fmt):
    """2-5-20 is on DAQ tile 2: read with the wrong keys, channel 12 would mask chip 2-2-20 instead."""
    listed = np.array([[2, 5, 20, 12], [2, 5, 20, 13], [1, 14, 40, 30]], np.int64)
    path = tmp_path / f"channels.{fmt}"
    path.write_bytes(format_channels(listed, fmt, {"tool": "test"}))
    if fmt != "csv":
        assert json.loads(path.read_text())["meta"]["key_scheme"] == KEY_SCHEMES[fmt]
    keys = np.array([[2, 5, 20], [2, 2, 20], [2, 17, 20], [1, 14, 40], [1, 13, 40]], np.uint8)
    if fmt != "daq":
        with pytest.raises(RunConfigError) as err:
            RunConfig.load(disabled_lists=[str(path)])
        message = str(err.value)
        assert message.startswith(f"disabled list {path}: ") and "keyed io_group-io_channel-chip_id" in message
        assert "\n" not in message and "--format daq" in message
        return
    masked = RunConfig.load(disabled_lists=[str(path)]).masked_channels(keys)
    chips, channels = np.nonzero(masked)
    # io_channels 13-16 share DAQ tile 4 with 14: the DAQ's list cannot tell them apart, and masks them alike
    assert sorted(zip(chips.tolist(), channels.tolist())) == [(0, 12), (0, 13), (3, 30), (4, 30)]


def test_disabled_lists_without_a_key_scheme_are_the_daqs_and_a_bad_meta_is_refused(tmp_path):
    path = tmp_path / "disabled.json"
    path.write_text(json.dumps({"2-2-20": [12], "meta": {"note": "written by the DAQ"}}))
    assert RunConfig.load(disabled_lists=[str(path)]).masked[(2, 2, 20)][12]
    path.write_text(json.dumps({"2-2-20": [12], "meta": ["x"]}))
    with pytest.raises(RunConfigError, match="'meta': expected a JSON object"):
        RunConfig.load(disabled_lists=[str(path)])


def write_configs_file(path: Path, chips: list[Chip]) -> Path:
    hdf5format.to_file(str(path), packet_list=[], chip_list=chips, version="2.4")
    return path


def configured_chip(key: tuple[int, int, int], masked: list[int], periodic: bool = False) -> Chip:
    chip = Chip(Key(*key), version=2)
    chip.config.channel_mask = [1 if ch in masked else 0 for ch in range(64)]
    chip.config.enable_periodic_trigger = int(periodic)
    chip.config.periodic_trigger_mask = [0] * 64 if periodic else [1] * 64
    return chip


def test_a_packet_files_configs_are_read_as_larpix_control_wrote_them(tmp_path):
    chips = [configured_chip((1, 1, 11), [3, 63]), configured_chip((1, 5, 20), [], periodic=True)]
    path = write_configs_file(tmp_path / "run.h5", chips)
    found = read_file_configuration(str(path))
    assert found is not None
    by_key = {tuple(k): i for i, k in enumerate(found.chips.tolist())}
    for chip in chips:
        row = by_key[(chip.io_group, chip.io_channel, chip.chip_id)]
        assert found.channel_mask[row].astype(int).tolist() == list(chip.config.channel_mask)
        periodic = [bool(chip.config.enable_periodic_trigger) and not m for m in chip.config.periodic_trigger_mask]
        assert found.periodic_trigger[row].tolist() == periodic
    # a later row for a chip replaces the earlier one
    hdf5format.to_file(str(path), chip_list=[configured_chip((1, 1, 11), [5])], version="2.4")
    again = read_file_configuration(str(path))
    row = [tuple(k) for k in again.chips.tolist()].index((1, 1, 11))
    assert np.flatnonzero(again.channel_mask[row]).tolist() == [5]
    with h5py.File(path, "r") as fh:  # from the file the reader has open: the same, and it stays open
        opened = read_file_configuration(str(path), fh)
        assert bool(fh) and np.array_equal(opened.channel_mask, again.channel_mask)
        assert np.array_equal(opened.chips, again.chips)


def run_packets(geometry, seconds: int, **config) -> list[np.ndarray]:
    sim = Simulator(geometry, SimulationConfig(seed=5, **config))
    return [decode_messages(*sim.second(START + t)).packets for t in range(seconds)]


@pytest.fixture(scope="module")
def module_run(module_geometry):
    return run_packets(module_geometry, 40, hit_rate_hz=1.0)


def judge(geometry, chunks, run_config: RunConfig | None = None):
    acc = Accumulator(QualityConfig(window_seconds=30, window_bins=6), geometry, run_config)
    clock = DataClock()
    for chunk in chunks:
        acc.add(chunk, clock, NOW)
    snap = acc.snapshot()
    return acc, snap, evaluate(snap, DEFAULT_CHECKS)


@pytest.mark.slow
def test_a_bypassed_chip_and_a_masked_channel_get_no_verdict_the_rest_unchanged(tmp_path, module_geometry, module_run):
    """Chip 1-1-12 is bypassed in the hydra network (it sends nothing); a channel of chip 1-2-41 is masked."""
    bypassed, masked_chip = (1, 1, 12), (1, 2, 41)
    drop_rows = (module_geometry.chips == np.array(bypassed, np.uint8)).all(axis=1)
    masked_row = (module_geometry.chips == np.array(masked_chip, np.uint8)).all(axis=1)
    masked_channel = int(np.flatnonzero(module_geometry.connected[masked_row][0])[0])
    chunks = [c[~((c["packet_type"] == 0) & (c["io_channel"] == 1) & (c["chip_id"] == 12))] for c in module_run]
    io1 = write_network(tmp_path / "iog-1.json", 1, module_chains(module_geometry, 1, range(1, 33), {bypassed}))
    io2 = write_network(tmp_path / "iog-2.json", 2, module_chains(module_geometry, 2, range(1, 33), set()))
    disabled = tmp_path / "disabled.json"
    disabled.write_text(json.dumps({f"1-{daq_tile(2)}-41": [masked_channel], "meta": {"by": "test"}}))

    plain_acc, plain, plain_checks = judge(module_geometry, chunks)
    acc, snap, checks = judge(module_geometry, chunks, RunConfig.load([str(io1), str(io2)], [str(disabled)]))
    row = {tuple(k): i for i, k in enumerate(snap.chip_keys.tolist())}
    b, m = row[bypassed], row[masked_chip]
    # without the configuration: the bypassed chip is all silent and in error
    assert plain.channel_status[b][module_geometry.connected[drop_rows][0]].tolist() == [ChannelStatus.SILENT] * 49
    assert plain_checks.chip_worst[b] == 2
    # with it: no verdict for the bypassed chip, the masked channel masked and out of the expected count
    assert (snap.channel_status[b] == ChannelStatus.NONE).all() and not snap.channel_expected[b].any()
    assert not snap.chip_judged[b] and checks.chip_worst[b] == 0
    assert np.isnan(checks.chip_values[:, b]).all()
    assert snap.channel_status[m, masked_channel] == ChannelStatus.MASKED
    labels = [s.label for s in ChannelStatus.judged()]
    assert snap.chip_status_counts[m, labels.index("masked")] == 1
    assert snap.chip_masked_active[m] == 1  # the masked channel still sent data: reported
    # everything else unchanged
    others = np.ones(len(snap.chip_keys), bool)
    others[[b, m]] = False
    assert np.array_equal(snap.channel_status[others], plain.channel_status[others])
    assert np.array_equal(checks.chip_status[:, others], plain_checks.chip_status[:, others])
    # values move only through the tile occupancy the expectations are scaled by (fewer channels judged),
    # and the region rates, whose tile and io_channel hold the bypassed chip without the configuration
    chip_checks = [i for i, c in enumerate(checks.chip_checks) if not c.region]
    assert np.allclose(
        checks.chip_values[chip_checks][:, others],
        plain_checks.chip_values[chip_checks][:, others],
        rtol=1e-4,
        equal_nan=True,
    )


@pytest.mark.external
def test_once_reads_the_files_own_configuration(tmp_path, tile_geometry):
    """A packet file with larpix-control's configs: its masked channels are masked without any option."""
    paths = write_run(
        Simulator(tile_geometry, SimulationConfig(seed=2, hit_rate_hz=2.0)),
        tmp_path / "run",
        "packets",
        20,
        realtime=False,
        start_time=START,
    )
    write_configs_file(paths[0], [configured_chip((1, 1, 11), [0, 1])])
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "larpix_dqm.exporter.cli",
            "once",
            str(paths[0]),
            "--no-plots",
            "-o",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PIXEL_GEOMETRY_PATH": tile_geometry.path},
    )
    assert out.returncode == 0, out.stderr
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert sorted(summary["channels"]["masked"]) == [[1, 1, 11, 0], [1, 1, 11, 1]]
    chip = next(c for c in summary["chips"] if (c["io_group"], c["io_channel"], c["chip_id"]) == (1, 1, 11))
    assert chip["channels"]["masked"] == 2 and chip["masked_active_channels"] == 2


def test_monitor_takes_networks_and_disabled_lists(tmp_path, tile_geometry):
    disabled = tmp_path / "d.json"
    disabled.write_text(json.dumps({"1-1-11": [0]}))
    net = write_network(tmp_path / "n.json", 1, {1: [11, 12]})
    monitor = Monitor(tile_geometry, networks=[net], disabled_lists=[disabled])
    keys = monitor.update().snapshot.chip_keys.tolist()
    assert [1, 1, 11] in keys and [1, 1, 12] in keys
    with pytest.raises(RunConfigError, match="run mode 'cosmics'"):
        Monitor(tile_geometry, run_mode="cosmics")


def cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "larpix_dqm.exporter.cli", *args], capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def noisy_run(tmp_path_factory, module_geometry):
    """A 40 s module run with three noisy channels on two io_groups and tiles."""
    from larpix_dqm.exporter.simulate import Faults

    noisy = [(1, 2, 41, 5), (1, 14, 40, 30), (2, 30, 38, 12)]
    faults = Faults(noisy_channels=noisy, noisy_rate_hz=60.0)
    paths = write_run(
        Simulator(module_geometry, SimulationConfig(seed=9), faults),
        tmp_path_factory.mktemp("noisy"),
        "packets",
        40,
        realtime=False,
        start_time=START,
    )
    return paths, noisy


@pytest.mark.external
def test_the_daq_disabled_list_round_trips(tmp_path, module_geometry, noisy_run):
    """channels --format daq lists the noisy channels keyed io_group-tile-chip_id; --disabled-list masks exactly them."""
    paths, noisy = noisy_run
    layout = module_geometry.path
    out = tmp_path / "disabled.json"
    made = cli("channels", *map(str, paths), "--format", "daq", "--geometry", layout, "-o", str(out))
    assert made.returncode == 0, made.stderr
    doc = json.loads(out.read_text())
    meta = doc.pop("meta")
    assert doc == {f"{g}-{daq_tile(c)}-{chip}": [ch] for g, c, chip, ch in noisy}
    assert meta["sources"] == [str(p) for p in paths] and meta["statuses"] == ["noisy"]
    assert meta["tool"].startswith("larpix-dqm ") and meta["noisy_rate_hz"] == 10.0
    assert meta["data_time_end"] == "2023-11-14T22:14:00Z" and meta["window_seconds"] == 40.0
    assert meta["key_scheme"] == "io_group-tile-chip_id"
    # read back: exactly those channels masked, nothing noisy left
    monitor = Monitor(module_geometry, disabled_lists=[out])
    for path in paths:
        monitor.add_file(path)
    snap = monitor.update().snapshot
    assert sorted(map(tuple, monitor.channels("masked").tolist())) == sorted(noisy)
    assert len(monitor.channels("noisy")) == 0
    assert int(snap.chip_masked_active.sum()) == 3
    # the chip-keyed JSON form names its key scheme, and --disabled-list refuses it and the CSV form
    for fmt, scheme in (("json", "io_group-io_channel-chip_id"), ("csv", "io_group-io_channel-chip_id")):
        listed = tmp_path / f"channels.{fmt}"
        made = cli("channels", *map(str, paths), "--format", fmt, "--geometry", layout, "-o", str(listed))
        assert made.returncode == 0, made.stderr
        if fmt == "json":
            doc = json.loads(listed.read_text())
            assert doc.pop("meta")["key_scheme"] == scheme
            assert doc == {f"{g}-{c}-{chip}": [ch] for g, c, chip, ch in noisy}
        refused = cli(
            "channels", str(paths[0]), "--geometry", "multi_tile_layout-2.4.16", "--disabled-list", str(listed)
        )
        assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
        assert str(listed) in refused.stderr and f"keyed {scheme}" in refused.stderr
    bad = cli("channels", str(paths[0]), "--format", "xml")
    assert bad.returncode == 2 and "'xml' is not one of 'json', 'csv', 'daq'" in bad.stderr


@pytest.mark.external
def test_serve_offers_the_daq_disabled_list(tmp_path, module_geometry, noisy_run):
    from tests.helpers import free_port, running_exporter, scrape, wait_for

    paths, noisy = noisy_run
    port = free_port()
    args = ["-i", str(paths[0].parent), "--geometry", module_geometry.path, "--interval", "0.2"]
    with running_exporter(args, port):
        wait_for(lambda: json.loads(scrape(port, "/api/channels?format=daq")).get("2-8-38"))
        doc = json.loads(scrape(port, "/api/channels?format=daq"))
        by_cli = cli("channels", "--url", f"http://127.0.0.1:{port}", "--format", "daq")
    meta = doc.pop("meta")
    assert doc == {f"{g}-{daq_tile(c)}-{chip}": [ch] for g, c, chip, ch in noisy}
    assert meta["sources"] == [str(paths[0].parent)]
    assert by_cli.returncode == 0 and {k: v for k, v in json.loads(by_cli.stdout).items() if k != "meta"} == doc


@pytest.mark.external
def test_serve_applies_the_channel_masks_of_the_packet_files_it_reads(tmp_path, tile_geometry):
    from tests.helpers import free_port, running_exporter, scrape, wait_for

    (path,) = write_run(
        Simulator(tile_geometry, SimulationConfig(seed=3, hit_rate_hz=2.0)),
        tmp_path / "live",
        "packets",
        10,
        realtime=False,
        start_time=START,
    )
    write_configs_file(path, [configured_chip((1, 1, 11), [0, 1, 2])])
    port = free_port()
    chip = 'io_group="1",io_channel="1",chip_id="11"'
    with running_exporter(["-i", str(path.parent), "--geometry", tile_geometry.path, "--interval", "0.2"], port):
        masked = wait_for(lambda: f'larpix_chip_channels{{{chip},status="masked"}} 3' in scrape(port))
        text = scrape(port)
    assert masked and f"larpix_chip_masked_active_channels{{{chip}}} 3" in text


def test_the_config_file_takes_the_run_configuration(tmp_path):
    from larpix_dqm.exporter.settings import build_settings

    config = tmp_path / "serve.yaml"
    config.write_text("networks: hydra/\ndisabled_lists: [a.json, b.json]\nrun_mode: pedestal\n")
    settings = build_settings(str(config), {})
    assert (settings.networks, settings.disabled_lists, settings.run_mode) == (
        ["hydra/"],
        ["a.json", "b.json"],
        "pedestal",
    )
    bad = cli("serve", "-i", str(tmp_path), "--run-mode", "cosmics", "--port", "0")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    assert (
        "'--run-mode'" in bad.stderr
        and "'cosmics' is not one of 'auto', 'pedestal', 'self-trigger', 'beam'" in bad.stderr
    )


def test_a_file_replaced_at_the_same_path_has_its_own_configuration_applied(tmp_path, tile_geometry):
    """The stored configuration is read once per file (device, inode), not per path: a new file under the old
    name (the tail reads it from the start) masks its own channels; a file the tail forgot is forgotten too."""
    from larpix_dqm.exporter.quality.channels import channel_list
    from larpix_dqm.exporter.reading.tail import InputSpec
    from larpix_dqm.exporter.runtime.ingest import Ingester

    def packet_file(folder: str, masked: list[int]) -> Path:
        sim = Simulator(tile_geometry, SimulationConfig(seed=4, hit_rate_hz=2.0))
        (path,) = write_run(sim, tmp_path / folder, "packets", 5, realtime=False, start_time=START, name="run")
        return write_configs_file(path, [configured_chip((1, 1, 11), masked)])

    live = packet_file("live", [0])
    ingester = Ingester([InputSpec(str(live.parent))], Monitor(tile_geometry, window=10))

    def masked() -> list[list[int]]:
        return channel_list(ingester.published.snapshot, ("masked",)).tolist()

    ingester.poll()
    assert masked() == [[1, 1, 11, 0]]
    os.replace(packet_file("next", [5]), live)  # another file (inode) at the same path
    ingester.poll()
    assert [1, 1, 11, 5] in masked()
    live.unlink()
    ingester.tail.flush_interval = 0.0  # gone and idle at once: the tail forgets its cursor
    ingester.poll()
    assert ingester.tail.cursors == {} and ingester.monitor._configured == set()
