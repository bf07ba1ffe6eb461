"""What the trigger-correlated view costs the ingest: a beam run against the same run without triggers.

Writes two raw (SWMR) files of the 16-tile module with the simulator, one with a NuMI-like triggered beam
(a trigger word every 1.2 s, 50 hits of charge on every io_group after it) and one without any trigger
word, and ingests each whole on the compiled kernels and on the numpy reference (best of ``--repeat``,
in this process, after the kernels are loaded). Prints packets per second and the beam run's cost
against the run without triggers, with the pairing's share. Prints figures only, asserts nothing.

Usage: python bench/beam.py [--seconds 60] [--rate-hz 2.0] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from larpix_dqm.exporter.detector.geometry import load_geometry, packaged_layout
from larpix_dqm.exporter.quality import triggers
from larpix_dqm.exporter.quality.accumulator import COMPILED, NUMPY, Accumulator, QualityConfig, load_kernels
from larpix_dqm.exporter.reading.cursor import FileCursor
from larpix_dqm.exporter.reading.files import FileReader
from larpix_dqm.exporter.simulate import SimulationConfig, Simulator, write_run

START = 1_700_000_000


def ingest(path: Path, geometry: object, engine: str) -> tuple[float, int, float]:
    """Seconds to ingest the file whole, its packets, and the seconds spent pairing triggers."""
    spent = [0.0]
    add, add_messages = triggers.TriggerWindows.add, triggers.TriggerWindows.add_messages

    depth = [0]

    def timed(method):  # a wrapper that times the pairing stage (add_messages calls add: timed once)
        def run(self, *args):
            depth[0] += 1
            t = time.perf_counter()
            method(self, *args)
            depth[0] -= 1
            if not depth[0]:
                spent[0] += time.perf_counter() - t

        return run

    triggers.TriggerWindows.add, triggers.TriggerWindows.add_messages = timed(add), timed(add_messages)
    try:
        acc = Accumulator(QualityConfig(engine=engine), geometry)  # type: ignore[arg-type]
        st = os.stat(path)
        started = time.perf_counter()
        packets = 0
        for chunk in FileReader().read_new(FileCursor(str(path), st.st_dev, st.st_ino), START + 1e6):
            acc.add_chunk(chunk, START + 1e6)
            packets += chunk.size
        acc.finish()
        return time.perf_counter() - started, packets, spent[0]
    finally:
        triggers.TriggerWindows.add, triggers.TriggerWindows.add_messages = add, add_messages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--rate-hz", type=float, default=2.0, help="noise hits per second per channel")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    geometry = load_geometry(packaged_layout("multi_tile_layout-2.4.16.yaml"))
    load_kernels(wait=600)
    runs = {
        "beam": {"beam_period_s": 1.2, "beam_hits": 50.0},
        "no triggers": {"trigger_rate_hz": 0.0},
    }
    with tempfile.TemporaryDirectory() as tmp:
        files = {}
        for name, extra in runs.items():
            sim = Simulator(geometry, SimulationConfig(hit_rate_hz=args.rate_hz, seed=5, **extra))
            (files[name],) = write_run(sim, Path(tmp) / name, "raw", args.seconds, realtime=False, start_time=START)
        print(f"16-tile module, {args.seconds} s of raw data at {args.rate_hz} Hz per channel; best of {args.repeat}")
        for engine in (COMPILED, NUMPY):
            best = {}
            for name, path in files.items():
                best[name] = min((ingest(path, geometry, engine) for _ in range(args.repeat)), key=lambda r: r[0])
            for name, (seconds, packets, pairing) in best.items():
                print(
                    f"  {engine:8s} {name:12s} {packets:>11,} packets  {packets / seconds:>12,.0f} packets/s  "
                    f"pairing {pairing:.3f} s ({100 * pairing / seconds:.0f} %)"
                )
            beam, plain = best["beam"], best["no triggers"]
            ratio = (beam[1] / beam[0]) / (plain[1] / plain[0])
            print(f"  {engine:8s} beam run ingests at {100 * ratio:.0f} % of the rate of the run without triggers")


if __name__ == "__main__":
    main()
