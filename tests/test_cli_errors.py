"""Every error path of every command is one line naming the option or file, exit 2, before any work."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest
import typer

from larpix_dqm.exporter import cli
from larpix_dqm.exporter.detector.geometry import (
    GeometryError,
    find_geometry,
    load_geometry,
    packaged_layout,
    packaged_layouts,
    unseen_chips_warning,
)
from larpix_dqm.exporter.metrics.families import FamilyBuilder
from larpix_dqm.exporter.metrics.health import Health
from larpix_dqm.exporter.settings import Settings
from larpix_dqm.exporter.web.problems import geometry_notice_html

BINARY = bytes(range(256)) * 8  # not UTF-8, not YAML, not JSON, not a zip


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """Run the larpix-dqm entry point in this process; return (exit status, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["larpix-dqm", *args])
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit) as exit_info:
        cli.run()
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


@pytest.fixture
def work(monkeypatch) -> list[str]:
    """Records the work the commands would start: serving, reading a data file, simulating."""
    done: list[str] = []
    monkeypatch.setattr("larpix_dqm.exporter.runtime.service.Service.start", lambda self: done.append("serve"))
    monkeypatch.setattr("larpix_dqm.exporter.monitor.Monitor.add_file", lambda self, path: done.append(f"read {path}"))
    monkeypatch.setattr("larpix_dqm.exporter.runtime.once.process_file", lambda *a, **k: done.append("once"))
    monkeypatch.setattr("larpix_dqm.exporter.simulate.write_run", lambda *a, **k: done.append("simulate") or [])
    return done


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    """A binary file, an empty file, a (non-HDF5) data file, a file where a folder is expected."""
    made = {"binary": tmp_path / "binary.dat", "empty": tmp_path / "empty.dat", "data": tmp_path / "run.h5"}
    made["binary"].write_bytes(BINARY)
    made["empty"].write_bytes(b"")
    made["data"].write_bytes(b"not HDF5")
    return made


def assert_one_line_exit_2(code: int, err: str, *names: str) -> None:
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("larpix-dqm: "), err
    for name in names:
        assert name in err, (name, err)


SERVE = ["serve", "--checkpoint", "-", "--port", "0"]
FILE_OPTIONS = [  # (command line before the option, the option): every file option of every command
    *((SERVE, option) for option in ("--geometry", "--checks", "--web.config.file", "--reference")),
    *((SERVE, option) for option in ("--network", "--disabled-list", "--config")),
    (["healthcheck"], "--web.config.file"),
    (["healthcheck"], "--config"),
    (["once", "{data}"], "--geometry"),
    (["once", "{data}"], "--network"),
    (["once", "{data}"], "--disabled-list"),
    (["baseline", "{data}", "-o", "{tmp}/r.npz"], "--geometry"),
    (["channels", "{data}"], "--geometry"),
    (["channels", "{data}"], "--network"),
    (["channels", "{data}"], "--disabled-list"),
    (["simulate", "{tmp}/sim"], "--geometry"),
]


def expand(args: list[str], files: dict[str, Path], tmp_path: Path) -> list[str]:
    out = [a.format(data=files["data"], tmp=tmp_path) for a in args]
    return [*out, "-i", str(tmp_path)] if out[0] == "serve" else out


@pytest.mark.parametrize(("command", "option"), FILE_OPTIONS, ids=lambda v: v if isinstance(v, str) else v[0])
def test_a_binary_file_for_any_file_option_is_one_line_and_exit_2(
    monkeypatch, capsys, tmp_path, files, work, command, option
):
    args = expand(command, files, tmp_path)
    code, _, err = run_cli(monkeypatch, capsys, *args, option, str(files["binary"]))
    assert_one_line_exit_2(code, err, str(files["binary"]))
    assert "binary" in err or "not an .npz" in err
    assert work == []


@pytest.mark.parametrize(
    ("command", "option"),
    [(c, o) for c, o in FILE_OPTIONS if o in ("--geometry", "--reference", "--network", "--disabled-list")],
    ids=lambda v: v if isinstance(v, str) else v[0],
)
def test_an_empty_file_is_one_line_and_exit_2(monkeypatch, capsys, tmp_path, files, work, command, option):
    args = expand(command, files, tmp_path)
    code, _, err = run_cli(monkeypatch, capsys, *args, option, str(files["empty"]))
    assert_one_line_exit_2(code, err, str(files["empty"]))
    assert work == []


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["baseline", "{data}", "-o", "/nonexistent/r.npz"], ["-o /nonexistent/r.npz"]),
        (["baseline", "{data}", "-o", "{tmp}"], ["is a directory"]),
        (["channels", "{data}", "-o", "/nonexistent/c.json"], ["-o /nonexistent/c.json"]),
        (["once", "{data}", "-o", "/proc/x"], ["-o /proc/x"]),
        (["simulate", "/proc/x", "--seconds", "1"], ["OUTDIR /proc/x"]),
        (["simulate", "{tmp}/sim", "--truth", "/nonexistent/t.json"], ["--truth /nonexistent/t.json"]),
        (["mixin", "-o", "/proc/x"], ["-o /proc/x"]),
        ([*SERVE, "-i", "{tmp}", "-o", "/proc/x"], ["-o /proc/x"]),
        (["serve", "--port", "0", "-i", "{tmp}", "--checkpoint", "/proc/x/state.npz"], ["--checkpoint /proc/x"]),
        ([*SERVE, "-i", "{tmp}", "-o", "{tmp}/plots", "--plugin-dir", "{data}"], ["--plugin-dir", "not a directory"]),
        (["once", "{data}", "-o", "{tmp}/out", "--plugin-dir", "{tmp}/none"], ["--plugin-dir", "no such directory"]),
        (["channels", "{data}", "--status", "noisy,bogus"], ["--status noisy,bogus", "'bogus'"]),
        ([*SERVE, "-i", "{tmp}", "--runbook-url", "ftp://runbook"], ["--runbook-url 'ftp://runbook'"]),
        ([*SERVE, "-i", "{tmp}", "--log.level", "loud"], ["--log.level", "'loud'"]),
    ],
)
def test_unwritable_outputs_and_bad_choices_stop_before_any_work(
    monkeypatch, capsys, tmp_path, files, work, args, names
):
    expanded = [a.format(data=files["data"], tmp=tmp_path) for a in args]
    code, _, err = run_cli(monkeypatch, capsys, *expanded)
    assert_one_line_exit_2(code, err, *names)
    assert work == []


@pytest.mark.parametrize(("given", "level"), [("warn", "warn"), ("warning", "warn"), ("debug", "debug")])
def test_log_levels_take_the_prometheus_names(monkeypatch, capsys, tmp_path, work, given, level):
    assert Settings(log_level=given).log_level == level
    code, _, err = run_cli(monkeypatch, capsys, *SERVE, "-i", str(tmp_path), "--log.level", given, "--geometry", "/n")
    assert_one_line_exit_2(code, err, "geometry file /n")  # the level was taken: the next problem is reported
    assert logging.getLogger().level == logging.getLevelName(level.upper())
    monkeypatch.setenv("LARPIX_DQM_LOG_LEVEL", given)
    code, _, err = run_cli(monkeypatch, capsys, *SERVE, "-i", str(tmp_path), "--geometry", "/n")
    assert_one_line_exit_2(code, err, "geometry file /n")


def test_packaged_layouts_are_found_by_name_from_any_directory(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    for layout in packaged_layouts():
        assert find_geometry(layout.name) == find_geometry(layout.stem) == str(layout)
    assert load_geometry("layout-2.4.0").path == str(packaged_layout("layout-2.4.0.yaml"))
    (tmp_path / "layout-2.4.0.yaml").write_text("chips: [[11, [1]]]\npixels: [[1, 0.0, 0.0]]\n")
    assert load_geometry("layout-2.4.0.yaml").path == "layout-2.4.0.yaml"  # a file of that name wins
    with pytest.raises(GeometryError, match="no such file, nor a packaged layout .*multi_tile_layout-2.4.16"):
        load_geometry("multi_tile_layout-9")


@pytest.mark.slow
def test_geometries_lists_the_packaged_layouts(monkeypatch, capsys):
    code, out, _ = run_cli(monkeypatch, capsys, "geometries")
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["name", "tiles", "chips", "channels"]
    assert "multi_tile_layout-2.4.16.yaml 16 1600 78400" in [" ".join(line.split()) for line in lines]
    assert len(lines) == 1 + len(packaged_layouts())


def test_simulate_takes_a_geometry_by_name(monkeypatch, capsys, tmp_path, work):
    monkeypatch.setattr("signal.signal", lambda *args: None)  # keep pytest's own handlers
    code, _, err = run_cli(
        monkeypatch, capsys, "simulate", str(tmp_path), "--geometry", "layout-2.4.0", "--seconds", "1"
    )
    assert code == 0 and work == ["simulate"], err


def test_without_a_geometry_the_log_the_metric_and_the_status_page_say_silent_chips_cannot_be_seen(
    monkeypatch, capsys, tmp_path, module_geometry, tile_geometry
):
    def start(service) -> None:  # stop right after start-up: the log line is written before
        for server in service.servers:
            server.server_close()
        raise typer.Exit(0)

    monkeypatch.setattr("larpix_dqm.exporter.runtime.service.Service.start", start)
    monkeypatch.delenv("PIXEL_GEOMETRY_PATH", raising=False)
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(monkeypatch, capsys, *SERVE, "-i", str(tmp_path))
    assert code == 0 and "level=warn" in err and "a chip that never sends any cannot be seen" in err, err
    code, _, err = run_cli(monkeypatch, capsys, *SERVE, "-i", str(tmp_path), "--geometry", "multi_tile_layout-2.4.16")
    assert code == 0 and "cannot be seen" not in err, err

    assert unseen_chips_warning(module_geometry) is None and geometry_notice_html(module_geometry) == ""
    assert "maps no io_group/io_channel" in (unseen_chips_warning(tile_geometry) or "")
    assert "a chip that never sends any cannot be seen." in geometry_notice_html(None)

    assert 'geometry="none",chips="0"' in _rendered(None)
    assert 'geometry="multi_tile_layout-2.4.16.yaml",chips="1600"' in _rendered(module_geometry)


def _empty_snapshot():
    from larpix_dqm.exporter.quality.accumulator import Accumulator

    return Accumulator().snapshot()


def _rendered(geometry) -> str:
    from larpix_dqm.exporter.metrics.exposition import render

    families = FamilyBuilder(geometry=geometry).exporter_families(_empty_snapshot(), Health(), now=0.0)
    return render([f for f in families if f.name == "larpix_exporter_geometry_info"])


def test_the_status_page_links_the_runbook_url_it_is_given(tile_geometry):
    from larpix_dqm.exporter import Monitor
    from larpix_dqm.exporter.reading.decode import decode_messages
    from larpix_dqm.exporter.simulate import Faults, SimulationConfig, Simulator
    from larpix_dqm.exporter.web.problems import problems_html

    monitor = Monitor(tile_geometry)
    sim = Simulator(tile_geometry, SimulationConfig(seed=1), Faults(parity_error_fraction=0.5))
    for second in range(3):
        monitor.feed(decode_messages(*sim.second(1_700_000_000 + second)).packets)
    page = problems_html(monitor.update(), "https://wiki.example.org/larpix/RUNBOOK.md", plots=False)
    assert "href='https://wiki.example.org/larpix/RUNBOOK.md#" in page and "github.com" not in page
    assert Settings(runbook_url="https://wiki.example.org/larpix/RUNBOOK.md").runbook_url.startswith("https://wiki")
