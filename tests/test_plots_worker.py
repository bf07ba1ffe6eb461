"""The drawing process: ingest never waits for it, what it skips is counted, it stops with the
service and survives its plugins, and stale snapshots are redrawn."""

from __future__ import annotations

import errno
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from helpers import START, free_port, parse_metrics, running, sample, scrape, simulate_files, wait_for

from larpix_dqm.exporter.detector.geometry import packaged_layout
from larpix_dqm.exporter.metrics.exposition import render
from larpix_dqm.exporter.quality.accumulator import Accumulator
from larpix_dqm.exporter.reading.files import Chunk
from larpix_dqm.exporter.reading.formats.packet_file import PacketFileFormat
from larpix_dqm.exporter.reading.packets import PACKET_DTYPE
from larpix_dqm.exporter.reading.tail import DirectoryTail, InputSpec
from larpix_dqm.exporter.runtime.service import Service
from larpix_dqm.exporter.settings import Settings
from larpix_dqm.exporter.web import pages
from larpix_dqm.plots import Plot
from larpix_dqm.plots.discovery import FAST, Catalog, PluginSpec
from larpix_dqm.plots.engine import PlotEngine, PlotSettings
from larpix_dqm.plots.store import temporary
from larpix_dqm.plots.worker import PlotWorker

PACKETS = PacketFileFormat.name  # a chunk's kind: the packet files' format
#: Folder through which the Stuck plugin, in the drawing process, talks with the test.
SIGNALS = "LARPIX_DQM_TEST_SIGNALS"


class Stuck(Plot):
    """Blocks in draw until the test writes ``release``; writes ``drawing`` and the dropped count it was told."""

    def draw(self, name, ctx, fig=None):
        from matplotlib.figure import Figure

        folder = Path(os.environ[SIGNALS])
        (folder / "dropped").write_text(str(ctx.dropped_packets))
        (folder / "drawing").write_text(str(os.getpid()))
        deadline = time.monotonic() + 30
        while not (folder / "release").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        return fig or Figure(figsize=(2, 2))


class Crash(Plot):
    """Takes the whole drawing process down the first time it draws (a segfault in a C extension, say), with an
    image half written."""

    def draw(self, name, ctx, fig=None):
        from matplotlib.figure import Figure

        folder = Path(os.environ[SIGNALS])
        marker = folder / "crashed"
        if not marker.exists():
            marker.write_text(str(os.getpid()))
            half = temporary(folder / "out" / "latest" / "Crash.png")  # as if killed while writing it
            half.parent.mkdir(parents=True, exist_ok=True)
            half.write_bytes(b"half an image")
            (folder / "half").write_text(str(half))
            os.kill(os.getpid(), signal.SIGKILL)
        return fig or Figure(figsize=(2, 2))


#: Seconds each image of ``Slow`` takes to draw.
SLOW_DRAW_SECONDS = 0.2


class Slow(Plot):
    """A plot whose every image takes SLOW_DRAW_SECONDS to draw."""

    def draw(self, name, ctx, fig=None):
        from matplotlib.figure import Figure

        time.sleep(SLOW_DRAW_SECONDS)  # the plot's cost, not a wait of the test
        return fig or Figure(figsize=(2, 2))


def chunk(n: int) -> Chunk:
    return Chunk(SimpleNamespace(path="/data/run-7.h5", inode=7), n, PACKETS, records=np.zeros(n, PACKET_DTYPE))  # type: ignore[arg-type]


def worker_with(plot: type[Plot], tmp_path, monkeypatch, **kwargs) -> PlotWorker:
    monkeypatch.setenv(SIGNALS, str(tmp_path))  # the drawing process is spawned with this environment
    catalog = Catalog({plot.__name__: PluginSpec(plot.__name__, plot, FAST, "test")})
    engine = PlotEngine(PlotSettings(str(tmp_path / "out")), None, catalog)
    stats = Accumulator().snapshot()
    return PlotWorker(engine, lambda: stats, interval=0.0, **kwargs)


def test_ingest_never_waits_for_a_stuck_drawing_and_skipped_packets_are_counted(tmp_path, monkeypatch):
    worker = worker_with(Stuck, tmp_path, monkeypatch, max_queued_packets=1_000)
    worker.start()
    try:
        worker.on_chunk(chunk(500))
        wait_for(lambda: (tmp_path / "drawing").exists(), timeout=60)  # the drawing process is now stuck in the plugin
        wait_for(lambda: worker.status()["queued_packets"] == 0, timeout=10)  # it took the first chunk
        assert int((tmp_path / "drawing").read_text()) == worker.status()["pid"] != os.getpid()
        started = time.perf_counter()
        for _ in range(50):
            worker.on_chunk(chunk(500))
        assert time.perf_counter() - started < 0.5  # ingest went on
        assert worker.dropped_total == 48 * 500  # two chunks fit the 1,000-packet queue
        (tmp_path / "release").write_text("")
        assert worker.draw_now(timeout=30)
        assert int((tmp_path / "dropped").read_text()) == 48 * 500  # the plot is told, titles can say so
        assert worker.status()["dropped_packets"] == 48 * 500
    finally:
        (tmp_path / "release").write_text("")
        worker.stop()
    assert worker.process is not None and not worker.process.is_alive()


@pytest.mark.slow
def test_the_drawing_process_draws_at_most_half_the_time_at_the_exporters_priority(tmp_path, monkeypatch):
    """The drawing process's share is its duty cycle (a cycle of d seconds, then at least d idle), not a lower
    priority that starves it on a busy machine: fed new packets all the time, it completes cycles, no more
    than half the time's worth."""
    worker = worker_with(Slow, tmp_path, monkeypatch)
    worker.start()
    try:
        pid = wait_for(lambda: worker.status()["pid"], timeout=60, what="the drawing process ready")
        assert os.getpriority(os.PRIO_PROCESS, pid) == os.getpriority(os.PRIO_PROCESS, 0)
        started = time.monotonic()
        while time.monotonic() - started < 4.0:  # new packets for 4 s: a cycle is always due
            worker.on_chunk(chunk(10))
            time.sleep(0.05)
        elapsed, cycles = time.monotonic() - started, worker.status()["cycles"]
    finally:
        worker.stop()
    assert 2 <= cycles <= elapsed / (2 * SLOW_DRAW_SECONDS) + 2  # drawing all the time would be 20 cycles


@pytest.mark.slow
def test_a_crashed_drawing_process_is_restarted_counted_and_reported(tmp_path, monkeypatch):
    worker = worker_with(Crash, tmp_path, monkeypatch)
    worker.start()
    try:
        worker.on_chunk(chunk(10))
        assert worker.draw_now(timeout=60)  # answered by the restarted process
        status = worker.status()
        assert status["restarts"] == 1 and "exited with code -9" in status["last_exit"]
        assert status["pid"] != int((tmp_path / "crashed").read_text())
        assert not Path((tmp_path / "half").read_text()).exists()  # the dead process's temporary file is removed
        worker.on_chunk(chunk(10))  # ingest's side goes on as before, and the new process draws
        assert worker.draw_now(timeout=30)
        assert worker.status()["plugins"]["Crash"]["renders"] == 1
    finally:
        worker.stop()
    assert not worker.process.is_alive()


PARENT = """
import sys, time
from larpix_dqm.exporter.detector.geometry import packaged_layout
from larpix_dqm.exporter.quality.accumulator import Accumulator
from larpix_dqm.plots.engine import PlotEngine, PlotSettings
from larpix_dqm.plots.worker import PlotWorker

stats = Accumulator().snapshot()
worker = PlotWorker(PlotEngine(PlotSettings(sys.argv[1], plots=("HotPixels",)), None), lambda: stats, interval=0.0)
worker.start()
assert worker.draw_now(timeout=60)
print(worker.status()["pid"], flush=True)
time.sleep(120)
"""


@pytest.mark.slow
def test_the_drawing_process_exits_when_its_parent_is_killed(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(tmp_path)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        child = int(parent.stdout.readline())
        os.kill(child, 0)  # running
        parent.kill()  # no clean-up code runs in the parent
        parent.wait(10)
        wait_for(lambda: not running(child), timeout=10, what="the orphaned drawing process to exit")
    finally:
        parent.kill()
        parent.wait()


def test_whole_detector_plots_are_redrawn_once_the_snapshot_counts_the_packets(tmp_path, tile_geometry):
    paths, _ = simulate_files(tile_geometry, tmp_path / "data", 3, "packets")
    engine = PlotEngine(PlotSettings(str(tmp_path / "out"), plots=("HotPixels",)), tile_geometry)
    accumulator = Accumulator(geometry=tile_geometry)
    before = accumulator.snapshot()  # what was published when the packets reached the plots
    tail = DirectoryTail([InputSpec(str(paths[0]))])

    def consume(chunk) -> None:
        engine.update((chunk.cursor.path, chunk.cursor.inode), chunk.packets, before)
        accumulator.add(chunk.packets, chunk.cursor.clock, START + 100)

    tail.pump(consume)
    after = accumulator.snapshot()
    assert engine.has_work(before) and engine.draw(before) == 1
    assert not engine.has_work(before) and engine.draw(before) == 0
    assert engine.has_work(after) and engine.draw(after) == 1  # now with the packets counted
    assert engine.draw(after) == 0 and engine.draw(accumulator.snapshot()) == 0  # settled
    assert (tmp_path / "out" / f"{paths[0].stem}_dqm" / f"{paths[0].stem}_HotPixels.png").exists()


@pytest.mark.slow
def test_per_file_plot_state_stays_bounded_over_many_rotated_files(tmp_path, tile_geometry):
    from larpix_dqm.plots.engine import MAX_FILE_STATES

    paths, _ = simulate_files(tile_geometry, tmp_path / "data", 3 * MAX_FILE_STATES, "packets", file_seconds=1)
    engine = PlotEngine(PlotSettings(str(tmp_path / "out"), plots=("HotPixels",)), tile_geometry)
    accumulator = Accumulator(geometry=tile_geometry)
    sizes = []

    def consume(chunk) -> None:
        accumulator.add(chunk.packets, chunk.cursor.clock, START + 100)
        engine.update((chunk.cursor.path, chunk.cursor.inode), chunk.packets, accumulator.snapshot())
        sizes.append(len(engine.files))

    for path in paths[: MAX_FILE_STATES + 2]:  # a plot cycle after every file: each drawn, then dropped in turn
        DirectoryTail([InputSpec(str(path))]).pump(consume)
        engine.draw(accumulator.snapshot())
        assert (tmp_path / "out" / f"{path.stem}_dqm" / f"{path.stem}_HotPixels.png").exists(), path
    assert engine.undrawn_files == 0 and max(sizes) == MAX_FILE_STATES
    for path in paths[MAX_FILE_STATES + 2 :]:  # more files than states within one cycle: the oldest are dropped
        DirectoryTail([InputSpec(str(path))]).pump(consume)
    engine.draw(accumulator.snapshot())
    assert len(engine.files) == MAX_FILE_STATES and engine.undrawn_files == len(paths) - 2 * MAX_FILE_STATES - 2
    assert engine.status()["undrawn_files"] == engine.undrawn_files
    import matplotlib.pyplot as plt

    assert len(plt.get_fignums()) <= MAX_FILE_STATES + 1, "dropped figures are closed"


#: A plugin that kills the drawing process whenever it draws.
KILLER = """
import os
import signal
from pathlib import Path
from larpix_dqm.plots import Plot

MARKER = Path({marker!r})


class Killer(Plot):
    per_file = False

    def draw(self, name, ctx, fig=None):
        if not MARKER.exists():  # the first drawing process dies; the restarted one lives on
            MARKER.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.slow
def test_service_draws_in_a_child_that_stops_with_it_and_a_crashing_plugin_never_stops_ingest(tmp_path, tile_geometry):
    _, truth = simulate_files(tile_geometry, tmp_path / "data", 4, "packets")
    total = sum(truth.packet_types.values())
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "killer.py").write_text(KILLER.format(marker=str(tmp_path / "killed")))
    settings = Settings(
        inputs=[str(tmp_path / "data")],
        port=free_port(),
        listen_address="127.0.0.1",
        interval=0.2,
        geometry=str(packaged_layout("layout-2.4.0.yaml")),
        checkpoint="-",
    )
    plots = PlotSettings(str(tmp_path / "plots"), plots=("Killer",), interval=0.0, plugin_dirs=(str(plugins),))
    service = Service(settings, plots)
    service.start()
    try:
        assert service.plots is not None
        wait_for(lambda: service.plots.status()["restarts"] >= 1, timeout=60, what="the drawing process to crash")
        pid = wait_for(lambda: service.plots.status()["pid"], timeout=30, what="the new drawing process to report")
        assert pid not in (os.getpid(), int((tmp_path / "killed").read_text()))
        wait_for(lambda: sum(service.ingester.published.health.packets_ingested.values()) == total, timeout=60)
        samples = parse_metrics(scrape(settings.port))
        assert sample(samples, "larpix_exporter_plot_process_restarts_total") >= 1
        assert "restarted" in scrape(settings.port, "/")  # the status page says so
        child = service.plots.process
        assert child is not None
    finally:
        service.stop()
    assert not child.is_alive() and child.pid == pid
    wait_for(lambda: not running(pid), timeout=10)


#: Plugins for the start-up and write-failure tests. In the drawing process only (the parent imports them too):
#: ``slow.py`` says it is importing and waits for ``go``; ``full.py`` makes ``os.replace`` fail with the errno in
#: ``fail`` while that file exists (a full or read-only disk).
SLOW_START = """
import multiprocessing
import os
import time
from pathlib import Path

FOLDER = Path({folder!r})
if multiprocessing.current_process().name == "plots":
    (FOLDER / f"importing-{{os.getpid()}}").write_text("")
    deadline = time.monotonic() + 60
    while not (FOLDER / "go").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
"""
FULL_DISK = """
import multiprocessing
import os
from pathlib import Path

FOLDER = Path({folder!r})
_replace = os.replace


def replace(src, dst):
    fail = FOLDER / "fail"
    if fail.exists():
        code = int(fail.read_text())
        raise OSError(code, os.strerror(code), str(dst))
    return _replace(src, dst)


if multiprocessing.current_process().name == "plots":
    os.replace = replace
"""
SMALL = """
from matplotlib.figure import Figure
from larpix_dqm.plots import Plot


class Small(Plot):
    per_file = False

    def draw(self, name, ctx, fig=None):
        return fig or Figure(figsize=(2, 2))
"""


def plugin_worker(tmp_path, geometry, plugins: dict[str, str]) -> PlotWorker:
    """A worker drawing the ``Small`` plot, with ``plugins`` (file: source, ``{folder}`` = tmp_path) in its folder."""
    folder = tmp_path / "plugins"
    folder.mkdir()
    for name, source in {"small.py": SMALL, **plugins}.items():
        (folder / name).write_text(source.format(folder=str(tmp_path)))
    settings = PlotSettings(str(tmp_path / "out"), plots=("Small",), interval=0.0, plugin_dirs=(str(folder),))
    stats = Accumulator(geometry=geometry).snapshot()
    return PlotWorker(PlotEngine(settings, geometry), lambda: stats, interval=0.0)


class CounterWatch:
    """Reads the worker's counters every few milliseconds in a thread and records any that went back."""

    def __init__(self, worker: PlotWorker) -> None:
        self.worker, self.backwards, self.reads = worker, [], 0
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def counters(self) -> dict[str, int]:
        status = self.worker.status()
        out = {"cycles": status["cycles"], "restarts": status["restarts"]}
        for name, plugin in status["plugins"].items():
            out[f"{name} renders"], out[f"{name} draw"] = plugin["renders"], plugin["failures"]
            out.update({f"{name} {reason}": n for reason, n in plugin["write_errors"].items()})
        return out

    def run(self) -> None:
        last = self.counters()
        while not self.stopped.wait(0.005):
            now = self.counters()
            self.reads += 1
            self.backwards += [(key, last[key], now.get(key)) for key in last if now.get(key, 0) < last[key]]
            last = now

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(10)


def _new_pid(worker: PlotWorker, old: set[int]) -> int | None:
    proc = worker.process
    return proc.pid if proc is not None and proc.pid not in old else None


@pytest.mark.external
def test_a_drawing_process_killed_at_any_moment_of_its_start_is_restarted_and_counters_never_go_back(
    tmp_path, tile_geometry
):
    # The tile geometry pickles to more than a pipe's buffer: sent as spawn arguments, a child killed before
    # reading them blocked its parent for good.
    worker = plugin_worker(tmp_path, tile_geometry, {"slow.py": SLOW_START})
    worker.start()
    watch = CounterWatch(worker)
    killed: set[int] = set()
    try:
        # 1. right after the spawn (the interpreter is starting)
        pid = wait_for(lambda: _new_pid(worker, killed), timeout=30, interval=0.001, what="a drawing process")
        os.kill(pid, signal.SIGKILL)
        killed.add(pid)
        # 2. during its set-up (importing the plugins)
        pid = wait_for(lambda: _new_pid(worker, killed), timeout=30, what="a second drawing process")
        wait_for(lambda: (tmp_path / f"importing-{pid}").exists(), timeout=60, what="its plugin import")
        os.kill(pid, signal.SIGKILL)
        killed.add(pid)
        (tmp_path / "go").write_text("")
        # 3. once it said it is ready, then again after it drew
        for what in ("ready", "drawn"):
            pid = wait_for(lambda: _new_pid(worker, killed), timeout=30, what="another drawing process")
            wait_for(lambda pid=pid: worker.status()["pid"] == pid, timeout=60, what=f"process {pid} ready")
            if what == "drawn":
                worker.on_chunk(chunk(10))
                assert worker.draw_now(timeout=60)
                drawn = worker.status()
                assert drawn["cycles"] >= 1 and drawn["plugins"]["Small"]["renders"] >= 1
            os.kill(pid, signal.SIGKILL)
            killed.add(pid)
        wait_for(lambda: worker.status()["restarts"] == 4, timeout=30, what="4 restarts counted")
        carried = worker.status()
        assert [worker.status()["plugins"]["Small"]["renders"] for _ in range(100)] == [
            drawn["plugins"]["Small"]["renders"]
        ] * 100  # after a restart the counts stay as they were, however often they are read
        # 4. plotting resumes in a fifth process
        pid = wait_for(lambda: _new_pid(worker, killed), timeout=30, what="a fifth drawing process")
        worker.on_chunk(chunk(10))
        assert worker.draw_now(timeout=60)
        status = worker.status()
        assert status["pid"] == pid and status["restarts"] == 4
        assert (
            status["cycles"] > carried["cycles"]
            and status["plugins"]["Small"]["renders"] > carried["plugins"]["Small"]["renders"]
        )
        assert "exited with code -9" in status["last_exit"]
    finally:
        (tmp_path / "go").write_text("")
        watch.stop()
        worker.stop()
    assert watch.reads > 100 and watch.backwards == []
    assert not any(running(pid) for pid in killed)  # every killed process was reaped, none left a zombie


@pytest.mark.slow
def fail_writes(folder, code: int) -> None:
    """Make the drawing process's writes fail with ``code`` from now on: written whole at once, so the child
    never reads the file half written (an empty code, which is no OSError)."""
    (folder / "fail.new").write_text(str(code))
    os.replace(folder / "fail.new", folder / "fail")


def test_write_failures_are_counted_by_reason_logged_once_and_retried(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    worker = plugin_worker(tmp_path, None, {"full.py": FULL_DISK})
    fail_writes(tmp_path, errno.ENOSPC)
    worker.start()
    watch = CounterWatch(worker)

    def errors(reason: str) -> int:
        return worker.status()["plugins"]["Small"]["write_errors"][reason]

    try:
        worker.on_chunk(chunk(10))
        wait_for(lambda: errors("write_nospace") >= 3, timeout=60, what="3 failed writes")  # tried every cycle
        status = worker.status()
        assert status["cycles"] == 0 and status["plugins"]["Small"]["renders"] == 0  # no cycle completed
        assert "No space left on device" in status["write_error"]
        assert "No space left on device" in pages.gallery_html(worker)
        metrics = render(pages.plot_families(worker))
        assert 'larpix_exporter_plot_errors_total{plot="Small",reason="write_nospace"}' in metrics
        fail_writes(tmp_path, errno.EACCES)  # now a read-only folder
        wait_for(lambda: errors("write_permission") >= 3, timeout=60, what="failed writes, permission")
        (tmp_path / "fail").unlink()
        wait_for(lambda: worker.status()["cycles"] >= 1, timeout=60, what="a cycle that wrote its images")
        status = worker.status()
        assert status["plugins"]["Small"]["renders"] >= 1 and status["write_error"] is None
        assert status["plugins"]["Small"]["failures"] == 0  # a full disk is not the plugin's fault
        assert (tmp_path / "out" / "latest" / "Small.png").exists()
    finally:
        watch.stop()
        worker.stop()
    problems = [r for r in caplog.records if "cannot write images" in r.getMessage()]
    assert [r.levelno for r in problems] == [logging.ERROR] * 2, problems  # once per reason, not per cycle
    assert not any(r.exc_text or r.exc_info for r in problems)
    assert "No space left" in problems[0].getMessage() and "Permission denied" in problems[1].getMessage()
    assert sum("images are written again" in r.getMessage() for r in caplog.records) == 1
    assert watch.backwards == []
