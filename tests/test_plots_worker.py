"""The drawing thread: ingest never waits for it, what it skips is counted, and stale snapshots are redrawn."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
from helpers import START, simulate_files

from exporter.quality.accumulator import Accumulator
from exporter.reading.packets import PACKET_DTYPE
from exporter.reading.tail import DirectoryTail, InputSpec
from plots import Plot
from plots.discovery import FAST, Catalog, PluginSpec
from plots.engine import PlotEngine, PlotSettings, PlotWorker


class Stuck(Plot):
    """Blocks in draw until released, and remembers what it was told."""

    drawing = threading.Event()
    release = threading.Event()
    dropped_seen: list[int] = []

    def draw(self, name, ctx, fig=None):
        Stuck.dropped_seen.append(ctx.dropped_packets)
        Stuck.drawing.set()
        Stuck.release.wait(30)
        from matplotlib.figure import Figure

        return fig or Figure(figsize=(2, 2))


def chunk(n: int):
    return SimpleNamespace(packets=np.zeros(n, PACKET_DTYPE), cursor=SimpleNamespace(path="/data/run-7.h5", inode=7))


def test_ingest_never_waits_for_a_stuck_drawing_and_skipped_packets_are_counted(tmp_path):
    catalog = Catalog({"Stuck": PluginSpec("Stuck", Stuck, FAST, "test")})
    engine = PlotEngine(PlotSettings(str(tmp_path)), None, catalog)
    stats = Accumulator().snapshot()
    worker = PlotWorker(engine, lambda: stats, interval=0.0, max_queued_packets=1_000)
    worker.start()
    try:
        worker.on_chunk(chunk(500))
        assert Stuck.drawing.wait(10)  # the drawing thread is now stuck in the plugin
        started = time.perf_counter()
        for _ in range(50):
            worker.on_chunk(chunk(500))
        assert time.perf_counter() - started < 0.5  # ingest went on
        assert worker.dropped_total == 48 * 500  # two chunks fit the 1,000-packet queue
        Stuck.release.set()
        assert worker.draw_now(timeout=30)
        assert Stuck.dropped_seen[-1] == 48 * 500  # the plot is told, titles can say so
        assert worker.status()["dropped_packets"] == 48 * 500
    finally:
        Stuck.release.set()
        worker.stop()
    assert not worker.thread.is_alive()


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
