"""Cost of the plots: seconds per pixel map of a full module, per built-in plot, per update, and
what drawing does to ingest and to /metrics when it runs beside them.

Prints figures only (no assertions). Usage: python bench/drawing.py [--repeat 3] [--seconds 60] [--no-serve]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402

from exporter.detector.geometry import load_geometry, packaged_layout  # noqa: E402
from exporter.quality.accumulator import Accumulator  # noqa: E402
from exporter.quality.clock import DataClock, DetectorClock  # noqa: E402
from exporter.reading.decode import decode_messages  # noqa: E402
from exporter.runtime.service import Service  # noqa: E402
from exporter.settings import Settings  # noqa: E402
from exporter.simulate import Faults, SimulationConfig, Simulator, write_run  # noqa: E402
from plots import PlotContext  # noqa: E402
from plots.builtin.anode import AnodeOverview  # noqa: E402
from plots.builtin.fifo import FIFOFlags  # noqa: E402
from plots.builtin.hot import HotPixels  # noqa: E402
from plots.builtin.pixelmap import PixelMap  # noqa: E402
from plots.builtin.rates import PacketRate, TileRate  # noqa: E402
from plots.builtin.timing import TimestampHistograms, TriggerHistograms  # noqa: E402
from plots.engine import PlotSettings, render  # noqa: E402
from plots.legacy import packets_file  # noqa: E402

START = 1_700_000_000
FAULTS = Faults(silent_chips=[(1, 1, 11)], noisy_channels=[(2, 5, 20, 12)], fifo_full_chips=[(1, 2, 40)])


def timed(fn, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        out.append(time.perf_counter() - started)
    return out


def line(name: str, seconds: list[float], extra: str = "") -> None:
    print(f"  {name:<34} median {statistics.median(seconds):7.3f} s   min {min(seconds):7.3f} s  {extra}")


def module_run(seconds: int):
    geometry = load_geometry(packaged_layout())
    sim = Simulator(geometry, SimulationConfig(seed=3), FAULTS)
    chunks = [decode_messages(*sim.second(START + t)).packets for t in range(seconds)]
    accumulator = Accumulator(geometry=geometry)
    clock = DataClock()
    for packets in chunks:
        accumulator.add(packets, clock, START + seconds + 10)
    return geometry, chunks, accumulator.snapshot()


def bench_drawing(repeat: int, seconds: int) -> None:
    geometry, chunks, stats = module_run(seconds)
    n_packets = sum(len(c) for c in chunks)
    print(f"module: 16 tiles, 78,400 pixels; {seconds} s of simulated data, {n_packets:,} packets")
    ctx = PlotContext("/data/run.h5", stats, geometry)
    print("drawing and PNG rendering, 1280 px wide (draw + savefig):")
    pixel_map = PixelMap()
    names = pixel_map.outputs(ctx)
    figures: dict = {}

    def one_map(name: str) -> None:
        figures[name] = pixel_map.draw(name, ctx, figures.get(name))
        render(figures[name], ".png")

    per_map = {name: timed(lambda name=name: one_map(name), repeat) for name in names}
    medians = [statistics.median(v) for v in per_map.values()]
    line("PixelMap (one tile)", [m for m in medians], f"max {max(medians):.3f} s over the 16 tiles")
    print(f"  {'PixelMap, all 16 of a module':<34} {sum(medians):7.2f} s per redraw")
    for plot in (AnodeOverview(), HotPixels()):
        name = plot.plot_name()
        line(name, timed(lambda plot=plot, name=name: render(plot.draw(name, ctx, None), ".png"), repeat))
    print("per-file plots (update with every packet of the run, then draw + savefig):")
    clock, detector = DataClock(), DetectorClock()
    times = [detector.times(c, clock, START + seconds + 10) for c in chunks]
    for cls in (PacketRate, TileRate, FIFOFlags, TimestampHistograms, TriggerHistograms):
        plot = cls()
        started = time.perf_counter()
        for packets, t in zip(chunks, times):
            plot.update(packets, PlotContext(ctx.filename, stats, geometry, t))
        rate = n_packets / (time.perf_counter() - started)
        name = cls.plot_name()
        line(
            name,
            timed(lambda plot=plot, name=name: render(plot.draw(name, ctx, None), ".png"), repeat),
            f"update {rate / 1e6:6.1f} M packets/s",
        )
    whole = np.concatenate(chunks)[:1_000_000]
    line(
        "predecessor form: 1M packets -> h5py",
        timed(lambda: packets_file(whole).close(), repeat),
        "(in-memory file per call)",
    )


def bench_service(seconds: int) -> None:
    """Ingest a module backlog with plots off, then on (every plot, redrawn as often as allowed), scraping meanwhile."""
    print(f"serve on a {seconds} s module backlog (raw files), /metrics scraped every 0.25 s:")
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        sim = Simulator(load_geometry(packaged_layout()), SimulationConfig(seed=4), FAULTS)
        write_run(sim, data, "raw", seconds, realtime=False, start_time=START, file_seconds=max(seconds // 3, 1))
        for label, plots in (("plots off", None), ("plots on", PlotSettings(str(Path(tmp) / "plots"), interval=0.0))):
            settings = Settings(
                inputs=[str(data)], port=0, listen_address="127.0.0.1", interval=0.2,
                geometry=str(packaged_layout()), state_file="-",
            )  # fmt: skip
            service = Service(settings, plots)
            url = service.url
            latencies: list[tuple[float, float]] = []  # (wall time at start, seconds)
            stop = threading.Event()

            def scrape(url=url, latencies=latencies, stop=stop) -> None:
                while not stop.is_set():
                    wall, started = time.time(), time.perf_counter()
                    with urllib.request.urlopen(url, timeout=60) as resp:
                        resp.read()
                    latencies.append((wall, time.perf_counter() - started))
                    stop.wait(0.25)

            started = time.perf_counter()
            service.start()
            scraper = threading.Thread(target=scrape, daemon=True)
            scraper.start()
            while service.ingester.health.polls < 2 or service.ingester.health.poll_duration > 0.5:
                time.sleep(0.2)  # a short poll: the backlog is read
            elapsed = time.perf_counter() - started
            if plots is not None:  # go on scraping until a whole draw cycle ran beside the scrapes
                deadline = time.monotonic() + 120
                while service.plots.status()["cycles"] < 1 and time.monotonic() < deadline:
                    time.sleep(0.2)
            else:
                time.sleep(3)
            stop.set()
            scraper.join()
            ingested = sum(service.ingester.health.packets_ingested.values())
            status = service.plots.status() if service.plots else None
            service.stop()
            print(f"  {label:<10} ingest {ingested / elapsed / 1e6:5.2f} M packets/s ({elapsed:4.1f} s of backlog)")
            if status is None:
                _latencies("/metrics, no plots", [s for _, s in latencies])
                continue
            end, took = status["last_cycle_wall"], status["last_cycle_seconds"]
            during = [s for wall, s in latencies if end - took <= wall <= end]
            _latencies(f"/metrics during a {took:.1f} s draw cycle", during)


def _latencies(label: str, seconds: list[float]) -> None:
    if not seconds:
        print(f"    {label}: no scrapes")
        return
    ordered = sorted(seconds)
    p50, top = ordered[len(ordered) // 2] * 1e3, ordered[-1] * 1e3
    print(f"    {label}: p50 {p50:6.1f} ms, max {top:6.1f} ms over {len(ordered)} scrapes")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=60, help="seconds of simulated data")
    parser.add_argument("--no-serve", action="store_true", help="skip the ingest and /metrics interference run")
    args = parser.parse_args()
    bench_drawing(args.repeat, args.seconds)
    if not args.no_serve:
        bench_service(args.seconds)


if __name__ == "__main__":
    main()
