"""The run registry (issue 23, items 2 and 3): runs as files or sets of files, recorded in SQLite as the
exporter reads them, crash-safe, migrated from older schemas, listed, shown, served, certified and merged."""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
import shutil
import signal
import socket
import sqlite3
import sys
import threading
import time
import urllib.error
from pathlib import Path

import h5py
import pytest
from helpers import (
    free_port,
    http_get,
    ingested,
    parse_metrics,
    running_exporter,
    scrape,
    simulate_files,
    stop_process,
    wait_for,
)

from larpix_dqm.exporter import cli
from larpix_dqm.exporter.monitor import Monitor
from larpix_dqm.exporter.reading.cursor import FileCursor
from larpix_dqm.exporter.reading.files import FileReader
from larpix_dqm.exporter.reading.tail import DirectoryTail, InputSpec
from larpix_dqm.exporter.registry import schema
from larpix_dqm.exporter.registry.reader import certify, find_run, read_runs
from larpix_dqm.exporter.registry.runs import RunName, RunNamer
from larpix_dqm.exporter.registry.schema import MIGRATIONS, VERSION, RegistryError, connect
from larpix_dqm.exporter.registry.writer import RegistryWriter, RunContext
from larpix_dqm.exporter.runtime import once as once_module
from larpix_dqm.exporter.runtime.service import ListenError, Service
from larpix_dqm.exporter.settings import Settings
from larpix_dqm.exporter.simulate import Faults, SimulationConfig, Simulator, Truth, write_run

START = 1_700_000_000


def record_files(
    geometry, registry: Path, paths: list[Path], pattern: str | None = None, write_each: bool = True
) -> None:
    """Read ``paths`` one after the other as serve does, recording each file's evaluation in ``registry`` (without
    ``write_each``, one evaluation after the last file)."""
    monitor = Monitor(geometry, window=10)
    writer = RegistryWriter(registry, RunNamer(pattern), RunContext({"geometry": geometry.path}, None, "auto"))
    try:
        for path in paths:

            def consume(chunk) -> None:
                monitor.feed_chunk(chunk, time.time())
                writer.on_chunk(chunk)

            DirectoryTail([InputSpec(str(path))]).pump(consume)
            if write_each or path == paths[-1]:
                writer.record(monitor.update())
    finally:
        writer.close()


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """The larpix-dqm entry point in this process: (exit status, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["larpix-dqm", *args])
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit) as exit_info:
        cli.run()
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


@pytest.fixture(scope="module")
def two_files(tile_geometry, tmp_path_factory) -> tuple[list[Path], int]:
    """Two files of 5 s each, one after the other, and the packets they hold."""
    paths, truth = simulate_files(tile_geometry, tmp_path_factory.mktemp("data"), 10, file_seconds=5)
    return paths, sum(truth.packet_types.values())


def test_two_files_in_a_row_are_two_runs_the_first_closed(tile_geometry, tmp_path, two_files):
    paths, total = two_files
    registry = tmp_path / "runs.sqlite"
    record_files(tile_geometry, registry, paths)
    first, second = read_runs([registry])
    assert [first["run"], second["run"]] == [p.stem for p in paths]
    assert not first["open"] and second["open"]
    assert [f["path"] for f in first["files"]] == [str(paths[0])] and first["source"] == "file"
    assert first["packets"] + second["packets"] == total
    assert first["start_time"] == START and first["end_time"] == START + 4
    assert second["start_time"] == START + 5 and second["end_time"] == START + 9
    assert first["configuration"]["geometry"] == tile_geometry.path and first["mode"] == "self-trigger"
    assert set(first["bad_channels"]) == {"noisy", "silent", "inefficient"}
    detector = second["status_seconds"]["detector"]
    assert sum(detector.values()) == pytest.approx(4.0)  # its span, credited to the statuses it was judged in
    assert set(second["status_seconds"]) == {"detector", "1"}


def test_a_run_pattern_makes_one_run_of_several_files(tile_geometry, tmp_path, two_files):
    paths, total = two_files
    registry = tmp_path / "runs.sqlite"
    record_files(tile_geometry, registry, paths, pattern=r"^(?P<run>[a-z]+)-")
    (run,) = read_runs([registry])
    assert run["run"] == "sim" and run["source"] == "pattern" and run["open"]
    assert [f["path"] for f in run["files"]] == [str(p) for p in paths]
    assert run["packets"] == total and (run["start_time"], run["end_time"]) == (START, START + 9)


def test_a_file_with_a_run_number_in_its_metadata_is_named_by_it_unless_the_pattern_matches(tmp_path, two_files):
    paths, _ = two_files
    numbered = tmp_path / "numbered.h5"
    numbered.write_bytes(paths[0].read_bytes())
    with h5py.File(numbered, "a") as fh:
        fh["meta"].attrs["run_number"] = 50017
    assert RunNamer().name(str(numbered)) == RunName("50017", "metadata")
    with h5py.File(numbered, "r") as fh:  # from the file the reader has open, as the monitor names a chunk's run
        assert RunNamer().name(str(numbered), fh) == RunName("50017", "metadata")
    assert RunNamer().name(str(numbered), fh) == RunName("50017", "metadata")  # closed since: opened again
    assert RunNamer(r"^(?P<run>num)").name(str(numbered)) == RunName("num", "pattern")
    assert RunNamer(r"^(?P<run>other)").name(str(numbered)) == RunName("50017", "metadata")
    assert RunNamer().name(str(paths[1])) == RunName(paths[1].stem, "file")


def test_a_registry_of_an_older_schema_is_migrated_and_keeps_its_runs(tile_geometry, tmp_path, two_files):
    registry = tmp_path / "old.sqlite"
    conn = sqlite3.connect(registry)
    conn.executescript(MIGRATIONS[0] + "PRAGMA user_version = 1;")
    conn.execute(
        "INSERT INTO runs (run, source, start_time, end_time, packets, opened_at, updated_at, closed_at)"
        " VALUES ('41', 'pattern', 100.0, 160.0, 1234, 1.0, 2.0, 3.0)"
    )
    conn.execute("INSERT INTO status_time VALUES (1, -1, 'ok', 60.0)")
    conn.commit()
    conn.close()
    before = registry.read_bytes()
    (old,) = read_runs([registry])  # read through a migrated copy: the file is not written
    assert registry.read_bytes() == before and not Path(f"{registry}-wal").exists()
    assert (old["run"], old["packets"], old["duration_s"], old["open"]) == ("41", 1234, 60.0, False)
    assert old["status_seconds"] == {"detector": {"ok": 60.0}} and old["configuration"] == {}
    assert certify(registry, "41", [1], "bad", "HV trip at 14:02", "shifter") == [1]  # a writer migrates it
    assert sqlite3.connect(registry).execute("PRAGMA user_version").fetchone()[0] == VERSION == 2
    record_files(tile_geometry, registry, two_files[0][:1])  # and the exporter writes on
    runs = read_runs([registry])
    assert [r["run"] for r in runs] == ["41", two_files[0][0].stem]
    assert runs[0]["certification"] == {
        "1": {k: runs[0]["certifications"][0][k] for k in ("verdict", "reason", "author", "certified_at")}
    }


def test_a_registry_of_a_newer_schema_and_a_second_writer_are_refused(tmp_path):
    newer = tmp_path / "newer.sqlite"
    sqlite3.connect(newer).execute(f"PRAGMA user_version = {VERSION + 1}").connection.close()
    with pytest.raises(RegistryError, match="newer"):
        connect(newer)
    registry = tmp_path / "runs.sqlite"
    first = RegistryWriter(registry, RunNamer(), RunContext())
    try:
        with pytest.raises(RegistryError, match="written by another larpix-dqm"):
            RegistryWriter(registry, RunNamer(), RunContext())
    finally:
        first.close()


def test_certification_is_per_io_group_the_newest_stands_and_is_kept_apart(tile_geometry, tmp_path, two_files):
    paths, _ = two_files
    registry = tmp_path / "runs.sqlite"
    record_files(tile_geometry, registry, paths[:1])
    run = paths[0].stem
    assert certify(registry, run, [], "good", "looks fine", "alice") == [1]  # every io_group the run saw
    certify(registry, run, [1], "bad", "noisy tile 3 all run", "bob")
    record = find_run(read_runs([registry]), run)
    assert record["certification"]["1"]["verdict"] == "bad" and record["certification"]["1"]["author"] == "bob"
    assert [c["author"] for c in record["certifications"]] == ["alice", "bob"]  # the history stays
    assert "warning" in record["status_seconds"]["detector"] or "ok" in record["status_seconds"]["detector"]
    with pytest.raises(ValueError, match="reason"):
        certify(registry, run, [1], "good", " ", "carol")
    with pytest.raises(RegistryError, match="no run"):
        certify(registry, "nope", [1], "good", "x", "carol")


def test_merging_two_registries_joins_the_runs_of_the_same_name(tile_geometry, tmp_path):
    """Two exporters, each with its own registry: run 7 seen by both, run 8 by the second only."""
    truths = []
    for name, start in (("run7-a", START), ("run7-b", START + 5), ("run8-b", START + 20)):
        truth = Truth()
        sim = Simulator(tile_geometry, SimulationConfig(seed=start))
        write_run(sim, tmp_path / "data", "raw", 5, realtime=False, start_time=start, truth=truth, name=name)
        truths.append(sum(truth.packet_types.values()))
    files = sorted((tmp_path / "data").glob("*.h5"))
    pattern = r"^run(?P<run>\d+)-"
    a, b = tmp_path / "a.sqlite", tmp_path / "b.sqlite"
    record_files(tile_geometry, a, [f for f in files if f.name.startswith("run7-a")], pattern)
    record_files(tile_geometry, b, [f for f in files if "-b-" in f.name], pattern)
    certify(a, "7", [1], "good", "beam on target", "alice")
    run7, run8 = read_runs([a, b])
    assert (run7["run"], run8["run"]) == ("7", "8")
    assert run7["registries"] == [str(a), str(b)] and run8["registries"] == [str(b)]
    assert run7["packets"] == truths[0] + truths[1] and run8["packets"] == truths[2]
    assert (run7["start_time"], run7["end_time"]) == (START, START + 9) and len(run7["files"]) == 2
    assert run7["certification"]["1"]["verdict"] == "good"
    one = {r["run"]: r for r in read_runs([a])}["7"]
    assert sum(run7["status_seconds"]["1"].values()) > sum(one["status_seconds"]["1"].values())
    assert read_runs([b, a])[0]["packets"] == run7["packets"]  # the order of the registries does not matter


def test_runs_lists_and_shows_runs_as_a_table_json_and_csv(monkeypatch, capsys, tile_geometry, tmp_path, two_files):
    paths, total = two_files
    registry = tmp_path / "runs.sqlite"
    record_files(tile_geometry, registry, paths)
    first, second = (p.stem for p in paths)
    code, out, err = run_cli(monkeypatch, capsys, "runs", "--registry", str(registry))
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["run", "start", "(UTC)", "duration"]
    assert lines[1].startswith(first) and lines[2].startswith(f"{second} (open)")
    code, out, _ = run_cli(monkeypatch, capsys, "runs", "--registry", str(registry), "--format", "json")
    assert code == 0 and [r["run"] for r in json.loads(out)] == [first, second]
    code, out, _ = run_cli(monkeypatch, capsys, "runs", "--registry", str(registry), "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and [r["run"] for r in rows] == [first, second]
    assert sum(int(r["packets"]) for r in rows) == total and rows[1]["open"] == "1"
    code, out, err = run_cli(
        monkeypatch, capsys, "runs", "certify", first, "bad", "--reason", "HV trip", "--author", "alice",
        "--registry", str(registry),
    )  # fmt: skip
    assert code == 0 and "bad on io_group 1" in err
    code, out, _ = run_cli(monkeypatch, capsys, "runs", "show", first, "--registry", str(registry))
    assert code == 0 and out.startswith(f"run {first} (named by file; closed)")
    assert "io_group 1: bad by alice" in out and str(paths[0]) in out and "time in each status" in out
    code, out, _ = run_cli(monkeypatch, capsys, "runs", "show", first, "--registry", str(registry), "--format", "json")
    assert code == 0 and json.loads(out)["certification"]["1"]["reason"] == "HV trip"
    code, out, _ = run_cli(monkeypatch, capsys, "runs", "show", first, "--registry", str(registry), "--format", "csv")
    assert code == 0 and out.splitlines()[0] == "check,io_group,io_channel,chip_id,worst,seconds,first_time,last_time"
    for args, names in (
        (["runs"], ["--registry"]),
        (["runs", "--registry", str(tmp_path / "none.sqlite")], ["no such file"]),
        (["runs", "show", "nope", "--registry", str(registry)], ["no run 'nope'"]),
        (
            ["runs", "certify", first, "fine", "--reason", "x", "--author", "y", "--registry", str(registry)],
            ["good or bad"],
        ),
    ):
        code, _, err = run_cli(monkeypatch, capsys, *args)
        assert code == 2 and err.count("\n") == 1 and err.startswith("larpix-dqm: "), err
        assert all(name in err for name in names), err


@pytest.mark.slow
def test_once_adds_its_run_and_closes_it(monkeypatch, capsys, tmp_path, two_files):
    paths, total = two_files
    registry = tmp_path / "runs.sqlite"
    common = [
        "--no-plots",
        "--geometry",
        "layout-2.4.0",
        "--registry",
        str(registry),
        "--run-pattern",
        "^(?P<run>sim)-",
    ]
    for path in paths:
        code, _, err = run_cli(monkeypatch, capsys, "once", str(path), *common)
        assert code == 0 and f"added {path} to run sim" in err, err
    (run,) = read_runs([registry])
    assert run["run"] == "sim" and not run["open"] and run["packets"] == total
    assert [f["path"] for f in run["files"]] == [str(p) for p in paths]
    assert (run["start_time"], run["end_time"]) == (START, START + 9)
    assert sum(run["status_seconds"]["detector"].values()) == pytest.approx(
        8.0
    )  # each file's own span, judged at its end
    code, _, err = run_cli(monkeypatch, capsys, "once", str(paths[0]), *common)
    assert code == 2 and err.count("\n") == 1 and "already in run sim" in err, err
    assert read_runs([registry])[0]["packets"] == total


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["--registry", "/proc/x/runs.sqlite"], ["--registry /proc/x/runs.sqlite"]),
        (["--registry", "{text}"], ["registry {text}", "not a database"]),
        (["--run-pattern", "run(\\d+)"], ["--run-pattern", "(?P<run>"]),
        (["--run-pattern", "run(?P<run"], ["--run-pattern", "not a regular expression"]),
        (["--registry", "{tmp}/r.sqlite", "--checkpoint", "-"], ["--registry", "needs a checkpoint"]),
    ],
)
def test_a_bad_registry_or_run_pattern_stops_start_up_with_one_line(monkeypatch, capsys, tmp_path, args, names):
    text = tmp_path / "notes.txt"
    text.write_text("not a database, just some notes that are long enough to fill a header page\n" * 20)
    started: list[str] = []
    monkeypatch.setattr("larpix_dqm.exporter.runtime.service.Service.start", lambda self: started.append("serve"))
    expanded = [a.format(text=text, tmp=tmp_path) for a in args]
    serve = ["serve", "-i", str(tmp_path), "--port", "0", "--checkpoint", str(tmp_path / "state.npz")]
    code, _, err = run_cli(monkeypatch, capsys, *serve, *expanded)
    assert code == 2 and err.count("\n") == 1 and err.startswith("larpix-dqm: "), err
    assert all(name.format(text=text) in err for name in names), err
    assert started == []


@pytest.mark.external
def test_kill_9_mid_run_keeps_the_run_up_to_the_last_interval_and_certification_survives_a_restart(
    tile_geometry, tmp_path
):
    data, registry = tmp_path / "data", tmp_path / "runs.sqlite"
    stop = threading.Event()
    sim = Simulator(tile_geometry, SimulationConfig(seed=5))
    truth = Truth()
    daq = threading.Thread(
        target=write_run,
        args=(sim, data, "raw"),
        kwargs={"realtime": True, "stop": stop, "truth": truth},
        name="daq",
        daemon=True,
    )
    args = ["-i", str(data), "--checkpoint", str(tmp_path / "state" / "s.npz"), "--registry", str(registry)]
    args += ["--interval", "0.5", "--geometry", "layout-2.4.0"]
    port = free_port()
    daq.start()
    try:
        with running_exporter(args, port) as proc:

            def judged_for(seconds: float):
                runs = read_runs([registry]) if registry.exists() else []
                return runs if runs and sum(runs[0]["status_seconds"].get("detector", {}).values()) >= seconds else None

            wait_for(lambda: judged_for(3.0), 60, "3 s of the run judged in the registry", proc.tail)
            shown = ingested(port)
            time.sleep(2.0)  # a few more publications, each written after the checkpoint that covers it
            proc.popen.send_signal(signal.SIGKILL)
            proc.popen.wait()
        conn = sqlite3.connect(registry)
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        conn.close()
        (run,) = read_runs([registry])
        assert run["open"] and len(run["files"]) == 1 and run["run"] == Path(run["files"][0]["path"]).stem
        assert run["packets"] >= shown > 0
        assert run["end_time"] - run["start_time"] >= 3.0
        killed_at = run["packets"]
        certify(registry, run["run"], [], "good", "cosmics fine", "shifter")  # by the crew, the exporter down

        with running_exporter(args, port) as proc:  # same registry: the run goes on in the same record
            wait_for(lambda: read_runs([registry])[0]["packets"] > killed_at, 60, "the run continued", proc.tail)
            (after,) = json.loads(http_get(f"http://127.0.0.1:{port}/api/runs?format=json"))
            assert after["run"] == run["run"] and after["certification"]["1"]["author"] == "shifter"
            one = json.loads(http_get(f"http://127.0.0.1:{port}/api/runs", {"run": run["run"], "format": "json"}))
            assert one["run"] == run["run"] and one["certifications"][0]["reason"] == "cosmics fine"
            listed = list(
                csv.DictReader(io.StringIO(http_get(f"http://127.0.0.1:{port}/api/runs?format=csv").decode()))
            )
            assert [r["run"] for r in listed] == [run["run"]] and listed[0]["certified_good"] == "1"
            infos = [labels for (name, labels), _ in parse_metrics(scrape(port)).items() if name == "larpix_run_info"]
            assert len(infos) == 1 and ("run", run["run"]) in infos[0]
            page = http_get(f"http://127.0.0.1:{port}/").decode()
            assert f"current run <a href='/api/runs?run={run['run']}&amp;format=json'>" in page
            stop.set()
            daq.join(10)
            written = sum(truth.packet_types.values())
            wait_for(lambda: ingested(port) == written, 30, "the last packets read", proc.tail)
            stop_process(proc.popen)
        final = read_runs([registry])[0]
        assert final["open"] and final["certification"]["1"]["verdict"] == "good"
        # nothing counted twice; at most the interval before the kill lost (a second of data, generously)
        per_second = written / (final["end_time"] - final["start_time"] + 1)
        assert written - 2 * per_second <= final["packets"] <= written
    finally:
        stop.set()
        daq.join(10)


@pytest.mark.external
def test_serve_records_two_runs_in_a_row_and_serves_them(tmp_path, two_files):
    paths, total = two_files
    registry = tmp_path / "runs.sqlite"
    data = tmp_path / "data"
    data.mkdir()
    for path in paths:
        (data / path.name).write_bytes(path.read_bytes())
    args = ["-i", str(data), "--registry", str(registry), "--interval", "0.5", "--geometry", "layout-2.4.0"]
    with running_exporter(args) as proc:
        port = int(proc.address.rsplit(":", 1)[1])
        wait_for(lambda: ingested(port) == total, 60, "the backlog read", proc.tail)
        runs = wait_for(
            lambda: (
                (r := json.loads(http_get(f"http://127.0.0.1:{port}/api/runs")))
                and sum(x["packets"] for x in r) == total
                and not r[0]["open"]  # closed at the first write that reads no more of it
                and r
            ),
            30,
            "both runs recorded, the first closed",
            proc.tail,
        )
        assert [r["run"] for r in runs] == [p.stem for p in paths]
        assert [r["open"] for r in runs] == [False, True]
        with pytest.raises(urllib.error.HTTPError) as missing:
            http_get(f"http://127.0.0.1:{port}/api/runs", {"run": "nope"})
        assert missing.value.code == 404


def registry_packets(registry: Path) -> int:
    return sum(r["packets"] for r in read_runs([registry]))


def service_over(tmp_path: Path, paths: list[Path], **settings) -> Service:
    """A service (not started) over copies of ``paths``, with a checkpoint and a registry in ``tmp_path``."""
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    for path in paths:
        shutil.copy(path, data / path.name)
    defaults = {
        "inputs": [str(data)],
        "port": 0,
        "listen_address": ["127.0.0.1"],
        "checkpoint": str(tmp_path / "state.npz"),
        "registry": str(tmp_path / "runs.sqlite"),
        "geometry": "layout-2.4.0",
    }
    return Service(Settings(**{**defaults, **settings}))


def close_service(service: Service) -> None:
    for server in service.servers:
        server.server_close()
    if service.registry is not None:
        service.registry.close()


def full_disk(*args, **kwargs) -> None:
    raise OSError(28, "No space left on device")


@pytest.mark.parametrize("failing", ["checkpoint", "poll"])
def test_the_registry_waits_for_a_checkpoint_that_holds_the_packets(monkeypatch, tmp_path, two_files, failing):
    """A checkpoint that cannot be written (after a poll, or after a poll that raised) holds the registry back: a
    restart from the older checkpoint reads those packets again, and the registry must not have them yet."""
    paths, total = two_files
    service = service_over(tmp_path, paths)
    ingester, registry = service.ingester, Path(service.registry_path)
    try:
        assert ingester.checkpoints is not None
        save = ingester.checkpoints.save
        monkeypatch.setattr(ingester.checkpoints, "save", full_disk)
        if failing == "checkpoint":
            ingester.poll()
        else:
            stop = threading.Event()
            pump = ingester.tail.pump

            def poll_cut_short(*args, **kwargs):
                try:
                    pump(*args, **kwargs)
                finally:
                    stop.set()  # whatever the pump did: ``run`` stops after this poll, never loops on
                raise RuntimeError("a poll cut short")

            monkeypatch.setattr(ingester.tail, "pump", poll_cut_short)
            ingester.run(stop)  # the failing poll, then the final checkpoint, which fails too
            monkeypatch.setattr(ingester.tail, "pump", pump)
        assert ingester.health.checkpoint_errors >= 1 and ingester.published.health.packets_ingested["raw"] == total
        assert registry_packets(registry) == 0
        monkeypatch.setattr(ingester.checkpoints, "save", save)
        ingester.poll()  # nothing new: the checkpoint of what was counted, then the registry
        assert registry_packets(registry) == total
        ingester.poll()
        assert registry_packets(registry) == total
    finally:
        close_service(service)


def test_a_write_rolled_back_loses_no_status_time(tile_geometry, tmp_path, two_files):
    """A write that fails before its COMMIT (the disk full; here a trigger) leaves the writer as it was: the next
    write credits the data time of both intervals."""
    paths, _ = two_files
    registry = tmp_path / "runs.sqlite"
    monitor = Monitor(tile_geometry, window=10)
    writer = RegistryWriter(registry, RunNamer("^(?P<run>sim)-"), RunContext())
    try:

        def consume(chunk) -> None:
            monitor.feed_chunk(chunk, time.time())
            writer.on_chunk(chunk)

        DirectoryTail([InputSpec(str(paths[0]))]).pump(consume)
        writer.record(monitor.update())
        DirectoryTail([InputSpec(str(paths[1]))]).pump(consume)
        writer.conn.execute(
            "CREATE TEMP TRIGGER full_disk BEFORE UPDATE OF mode ON runs BEGIN SELECT RAISE(ABORT, 'disk full'); END"
        )
        with pytest.raises(RegistryError, match="disk full"):
            writer.record(monitor.update())
        writer.conn.execute("DROP TRIGGER full_disk")
        writer.record(monitor.update())
    finally:
        writer.close()
    (run,) = read_runs([registry])
    assert run["packets"] == sum(registry_file["packets"] for registry_file in run["files"]) > 0
    assert sum(run["status_seconds"]["detector"].values()) == pytest.approx(9.0)  # START to START + 9, once
    assert set(run["bad_channels"]) == {"noisy", "silent", "inefficient"}


def test_once_leaves_the_run_serve_left_open_alone(monkeypatch, capsys, tile_geometry, tmp_path, two_files):
    paths, _ = two_files
    registry = tmp_path / "runs.sqlite"
    record_files(tile_geometry, registry, paths[:1])  # serve's run, open (serve stopped mid-run)
    code, _, err = run_cli(
        monkeypatch, capsys, "once", str(paths[1]), "--no-plots", "--geometry", "layout-2.4.0", "--registry",
        str(registry),
    )  # fmt: skip
    assert code == 0, err
    served, added = read_runs([registry])
    assert (served["run"], served["open"]) == (paths[0].stem, True)
    assert (added["run"], added["open"]) == (paths[1].stem, False)


def small_chunks(path: Path):
    """The chunks of a whole file, a few hundred messages each (as a big file is read)."""
    st = os.stat(path)
    cursor = FileCursor(str(path), st.st_dev, st.st_ino)
    for chunk in FileReader(raw_chunk_messages=300).read_new(cursor, time.time()):
        yield chunk
        cursor.rows_done = chunk.rows_end


def test_runs_read_in_turn_stay_open_and_each_is_credited_its_own_time(tile_geometry, tmp_path, two_files):
    """Two runs' files read alternately, a write after every pair of chunks: neither is closed and reopened, each
    run's status time is its own span; the one no longer read is closed at the next write."""
    paths, total = two_files
    registry = tmp_path / "runs.sqlite"
    monitor = Monitor(tile_geometry, window=10)
    writer = RegistryWriter(registry, RunNamer(), RunContext())
    closed: list[tuple] = []
    try:
        pairs = list(itertools.zip_longest(small_chunks(paths[0]), small_chunks(paths[1])))
        assert len(pairs) > 3
        for pair in pairs:
            for chunk in pair:
                if chunk is not None:
                    monitor.feed_chunk(chunk, time.time())
                    writer.on_chunk(chunk)
            writer.record(monitor.update())
            closed.append(tuple(r["open"] for r in read_runs([registry])))
        writer.record(monitor.update())
    finally:
        writer.close()
    first, second = read_runs([registry])
    last_of_first = max(i for i, (a, _) in enumerate(pairs) if a is not None)
    assert all(state == (True, True) for state in closed[: last_of_first + 1]), closed
    assert (first["open"], second["open"]) == (False, True) and first["packets"] + second["packets"] == total
    for run in (first, second):
        assert sum(run["status_seconds"]["detector"].values()) == pytest.approx(run["duration_s"])


def test_every_run_a_write_credits_gets_the_checks_that_failed_over_its_own_span(tile_geometry, tmp_path):
    """Two runs read before one write: each is credited the chip checks not ok in that write's evaluation, worst
    status and seconds over its own span, first and last seen at its own end."""
    faults = Faults(pedestal_shift_chips=[(1, 1, 30)])
    paths, _ = simulate_files(tile_geometry, tmp_path / "data", 10, file_seconds=5, faults=faults)
    record_files(tile_geometry, tmp_path / "runs.sqlite", paths, write_each=False)
    runs = read_runs([tmp_path / "runs.sqlite"])
    assert len(runs) == 2
    for run in runs:
        (failure,) = run["check_failures"]
        assert (failure["check"], failure["io_group"], failure["io_channel"], failure["chip_id"]) == (
            "pedestal",
            1,
            1,
            30,
        )
        assert failure["worst"] in ("warning", "error")
        assert failure["seconds"] == pytest.approx(run["duration_s"]) and failure["seconds"] > 0
        assert failure["first_time"] == failure["last_time"] == pytest.approx(run["end_time"])


def test_a_migration_runs_once_when_two_processes_open_an_older_registry(monkeypatch, tmp_path):
    """The version is read inside the write transaction: another process that migrated first leaves nothing to do."""
    registry = tmp_path / "old.sqlite"
    old = sqlite3.connect(registry)
    old.executescript(MIGRATIONS[0] + "PRAGMA user_version = 1;")
    old.close()
    real_version = schema.version
    racing: list[bool] = []

    def version_while_another_migrates(conn):
        found = real_version(conn)
        if racing:  # the other process's own look
            return found
        racing.append(True)
        other = sqlite3.connect(registry, timeout=0, isolation_level=None)
        try:
            schema.migrate(other)  # the other process, when it gets the write lock
        except sqlite3.OperationalError as err:
            assert "locked" in str(err)
        finally:
            other.close()
            racing.clear()
        return found

    monkeypatch.setattr(schema, "version", version_while_another_migrates)
    connect(registry).close()
    monkeypatch.setattr(schema, "version", real_version)
    assert schema.version(sqlite3.connect(registry)) == VERSION


def test_a_failed_migration_is_rolled_back_and_its_connection_closed(tmp_path):
    registry = tmp_path / "old.sqlite"
    old = sqlite3.connect(registry)
    old.executescript(MIGRATIONS[0] + "CREATE TABLE certifications (id INTEGER); PRAGMA user_version = 1;")
    old.close()
    with pytest.raises(RegistryError, match=f"registry {registry}: table certifications already exists"):
        connect(registry)
    other = sqlite3.connect(registry, timeout=0, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # the write lock is free
    columns = [row[1] for row in other.execute("PRAGMA table_info(runs)")]
    assert "mode_setting" not in columns and schema.version(other) == 1  # nothing of the failed step stays
    other.execute("ROLLBACK")
    other.close()


def test_reading_never_writes_and_refuses_a_database_that_is_not_a_registry(monkeypatch, capsys, tmp_path):
    other = tmp_path / "other.sqlite"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE samples (x REAL)")
    conn.commit()
    conn.close()
    before = other.read_bytes()
    with pytest.raises(RegistryError, match=f"registry {other}: not a run registry"):
        read_runs([other])
    code, _, err = run_cli(monkeypatch, capsys, "runs", "--registry", str(other))
    assert code == 2 and err.count("\n") == 1 and str(other) in err and "not a run registry" in err, err
    with pytest.raises(RegistryError, match="not a run registry"):
        connect(other)  # a writer does not add its tables to it either
    assert other.read_bytes() == before
    assert [r[0] for r in sqlite3.connect(other).execute("SELECT name FROM sqlite_master")] == ["samples"]


def test_run_info_is_the_run_of_the_publication(tmp_path, two_files):
    """The run label is captured when the state is published, not read when a scrape renders it."""
    paths, _ = two_files
    service = service_over(tmp_path, paths[:1], registry="none")
    try:
        service.ingester.poll()
        service.runs.current = paths[1].stem  # the ingest thread went on to the next run's first chunk
        text = service.app.metrics_body(False, False).decode()
        info = [line for line in text.splitlines() if line.startswith("larpix_run_info{")]
        assert len(info) == 1 and f'run="{paths[0].stem}"' in info[0], info
    finally:
        close_service(service)


@pytest.mark.slow
def test_once_records_the_run_as_it_reads_the_file(monkeypatch, capsys, tile_geometry, tmp_path):
    """Every 10 s of data time (EVALUATE_EVERY_SECONDS), not once at the end with the file's last status."""
    (path,), _ = simulate_files(tile_geometry, tmp_path / "data", 30)
    registry = tmp_path / "runs.sqlite"
    recorded: list[float] = []
    record = RegistryWriter.record

    def spy(self, evaluation, wall_now=None):
        recorded.append(evaluation.snapshot.data_time)
        record(self, evaluation, wall_now)

    monkeypatch.setattr(RegistryWriter, "record", spy)
    monkeypatch.setattr(  # read in small chunks, as a big file is
        once_module,
        "DirectoryTail",
        lambda inputs, reader, on_error: DirectoryTail(inputs, FileReader(raw_chunk_messages=300)),
    )
    code, _, err = run_cli(
        monkeypatch, capsys, "once", str(path), "--no-plots", "--geometry", "layout-2.4.0", "--registry", str(registry)
    )
    assert code == 0, err
    assert len(recorded) >= 3 and all(b - a >= 10 for a, b in zip(recorded[:-2], recorded[1:-1])), recorded
    (run,) = read_runs([registry])
    assert sum(run["status_seconds"]["detector"].values()) == pytest.approx(run["duration_s"])


def test_a_failed_start_up_or_once_releases_the_registry(monkeypatch, capsys, tmp_path, two_files):
    paths, _ = two_files
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        with pytest.raises(ListenError):
            service_over(tmp_path, paths[:1], port=taken.getsockname()[1])
    finally:
        taken.close()
    RegistryWriter(tmp_path / "runs.sqlite", RunNamer(), RunContext()).close()  # not held by the failed service
    broken = tmp_path / "broken.h5"
    broken.write_bytes(b"not HDF5 at all, " * 100)
    registry = tmp_path / "once.sqlite"
    code, _, err = run_cli(monkeypatch, capsys, "once", str(broken), "--no-plots", "--registry", str(registry))
    assert code == 2 and str(broken) in err, err
    RegistryWriter(registry, RunNamer(), RunContext()).close()
