"""The drawing process: ingest never waits for it, what it skips is counted, it stops with the
service and survives its plugins, and stale snapshots are redrawn."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from helpers import START, free_port, parse_metrics, sample, scrape, simulate_files, wait_for

from exporter.detector.geometry import packaged_layout
from exporter.quality.accumulator import Accumulator
from exporter.reading.files import PACKETS, Chunk
from exporter.reading.packets import PACKET_DTYPE
from exporter.reading.tail import DirectoryTail, InputSpec
from exporter.runtime.service import Service
from exporter.settings import Settings
from plots import Plot
from plots.discovery import FAST, Catalog, PluginSpec
from plots.engine import PlotEngine, PlotSettings
from plots.worker import PlotWorker

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
    """Takes the whole drawing process down the first time it draws (a segfault in a C extension, say)."""

    def draw(self, name, ctx, fig=None):
        from matplotlib.figure import Figure

        marker = Path(os.environ[SIGNALS]) / "crashed"
        if not marker.exists():
            marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
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


def test_a_crashed_drawing_process_is_restarted_counted_and_reported(tmp_path, monkeypatch):
    worker = worker_with(Crash, tmp_path, monkeypatch)
    worker.start()
    try:
        worker.on_chunk(chunk(10))
        assert worker.draw_now(timeout=60)  # answered by the restarted process
        status = worker.status()
        assert status["restarts"] == 1 and "exited with code -9" in status["last_exit"]
        assert status["pid"] != int((tmp_path / "crashed").read_text())
        worker.on_chunk(chunk(10))  # ingest's side goes on as before, and the new process draws
        assert worker.draw_now(timeout=30)
        assert worker.status()["plugins"]["Crash"]["renders"] == 1
    finally:
        worker.stop()
    assert not worker.process.is_alive()


PARENT = """
import sys, time
from exporter.detector.geometry import packaged_layout
from exporter.quality.accumulator import Accumulator
from plots.engine import PlotEngine, PlotSettings
from plots.worker import PlotWorker

stats = Accumulator().snapshot()
worker = PlotWorker(PlotEngine(PlotSettings(sys.argv[1], plots=("HotPixels",)), None), lambda: stats, interval=0.0)
worker.start()
assert worker.draw_now(timeout=60)
print(worker.status()["pid"], flush=True)
time.sleep(120)
"""


def test_the_drawing_process_exits_when_its_parent_is_killed(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(tmp_path)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        child = int(parent.stdout.readline())
        os.kill(child, 0)  # running
        parent.kill()  # no clean-up code runs in the parent
        parent.wait(10)
        wait_for(lambda: not _running(child), timeout=10, what="the orphaned drawing process to exit")
    finally:
        parent.kill()
        parent.wait()


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as fh:  # an exited child not yet reaped by init counts as gone
        return fh.read().split(") ")[1][0] != "Z"


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


@pytest.mark.e2e
def test_per_file_plot_state_stays_bounded_over_many_rotated_files(tmp_path, tile_geometry):
    from plots.engine import MAX_FILE_STATES

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
from plots import Plot

MARKER = Path({marker!r})


class Killer(Plot):
    per_file = False

    def draw(self, name, ctx, fig=None):
        if not MARKER.exists():  # the first drawing process dies; the restarted one lives on
            MARKER.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.e2e
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
        state_file="-",
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
    wait_for(lambda: not _running(pid), timeout=10)
