"""Ingest throughput and peak memory, next to plain h5py reading the same datasets.

Usage: python bench/ingest.py [--packets 5000000] [--workdir DIR] [--keep]
Each measurement runs in a fresh subprocess so its peak RSS is its own. Prints a table.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py

from exporter.detector.geometry import load_geometry, packaged_layout
from exporter.quality.accumulator import Accumulator
from exporter.reading.decode import decode_messages
from exporter.reading.tail import DirectoryTail, InputSpec
from exporter.simulate import SimulationConfig, Simulator, open_writer

START = 1_700_000_000


def make_files(workdir: Path, packets: int, words_per_message: int) -> dict[str, Path]:
    """Write a packet file and a raw file holding the same simulated run of >= ``packets`` packets."""
    sim = Simulator(load_geometry(packaged_layout()), SimulationConfig(seed=1, words_per_message=words_per_message))
    writers = {fmt: open_writer(workdir / f"{fmt}.h5", fmt) for fmt in ("packets", "raw")}
    written, t = 0, 0
    while written < packets:
        msgs, groups = sim.second(START + t)
        for writer in writers.values():
            writer.append(msgs, groups)
        written += len(decode_messages(msgs, groups).packets)
        t += 1
    for writer in writers.values():
        writer.close()
    return {fmt: workdir / f"{fmt}.h5" for fmt in writers}


def measure(kind: str, path: str) -> dict:
    """One measurement in this process: 'h5py-packets', 'h5py-raw' or 'ingest' (geometry loaded before timing)."""
    geometry = load_geometry(packaged_layout()) if kind == "ingest" else None
    started = time.perf_counter()
    if kind == "h5py-packets":
        with h5py.File(path, "r") as fh:
            n = len(fh["packets"][:])
    elif kind == "h5py-raw":
        with h5py.File(path, "r") as fh:
            msgs = fh["msgs"][:]
            fh["msg_headers"][:]
            n = len(msgs)
    else:
        acc = Accumulator(geometry=geometry)
        n = DirectoryTail([InputSpec(path)]).pump(lambda chunk: acc.add_chunk(chunk, time.time()))
        acc.snapshot()
    seconds = time.perf_counter() - started
    return {"rows": n, "seconds": seconds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run_sub(kind: str, path: Path, repeat: int) -> dict:
    """Best time and peak RSS of ``repeat`` fresh processes (the best run is the least disturbed one)."""
    runs = []
    for _ in range(repeat):
        cmd = [sys.executable, __file__, "--measure", kind, str(path)]
        runs.append(json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout))
    best = min(runs, key=lambda r: r["seconds"])
    return {**best, "peak_rss_mb": max(r["peak_rss_mb"] for r in runs)}


def larpix_parse_multiple(words_per_message: int, n_msgs: int = 3000) -> tuple[float, float]:
    """Seconds per message for larpix-control's parse and for this decoder, same messages."""
    from larpix.format import pacman_msg_format

    sim = Simulator(load_geometry(packaged_layout()), SimulationConfig(seed=2, words_per_message=words_per_message))
    msgs, groups = sim.second(START)
    msgs, groups = msgs[:n_msgs], groups[:n_msgs]
    raw = [m.tobytes() for m in msgs]
    started = time.perf_counter()
    for m, g in zip(raw, groups.tolist()):
        pacman_msg_format.parse(m, io_group=g)
    reference = (time.perf_counter() - started) / len(raw)
    started = time.perf_counter()
    for _ in range(5):
        decode_messages(msgs, groups)
    ours = (time.perf_counter() - started) / 5 / len(raw)
    return reference, ours


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--packets", type=int, default=5_000_000)
    parser.add_argument("--words-per-message", type=int, default=6)
    parser.add_argument("--repeat", type=int, default=3, help="fresh processes per measurement; the best time counts")
    parser.add_argument("--workdir")
    parser.add_argument("--measure", nargs=2, metavar=("KIND", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(*args.measure)))
        return
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="larpix-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    files = make_files(workdir, args.packets, args.words_per_message)
    print(f"generated {args.packets:,}+ packets in {time.perf_counter() - started:.0f} s into {workdir}")
    print(f"{'measurement':<28}{'rows':>12}{'seconds':>10}{'packets/s':>14}{'peak RSS MB':>13}")
    results = {}
    for label, kind, fmt in (
        ("h5py read packets", "h5py-packets", "packets"),
        ("ingest packet file", "ingest", "packets"),
        ("h5py read msgs", "h5py-raw", "raw"),
        ("ingest raw file", "ingest", "raw"),
    ):
        r = run_sub(kind, files[fmt], args.repeat)
        results[label] = r
        rate = r["rows"] / r["seconds"]
        print(f"{label:<28}{r['rows']:>12,}{r['seconds']:>10.2f}{rate:>14,.0f}{r['peak_rss_mb']:>13.0f}")
    for fmt, ref in (("packet file", "h5py read packets"), ("raw file", "h5py read msgs")):
        ratio = results[ref]["seconds"] / results[f"ingest {fmt}"]["seconds"]
        print(f"ingest {fmt}: {ratio:.0%} of plain h5py read throughput (target >= 50%)")
    for words in (1, 6, 200):
        reference, ours = larpix_parse_multiple(words)
        print(
            f"decode, {words:>3} words/message: larpix-control {reference * 1e6:8.1f} us/msg, ours {ours * 1e6:6.2f} us/msg, x{reference / ours:,.0f}"
        )


if __name__ == "__main__":
    main()
