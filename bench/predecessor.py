"""The predecessor's benchmark run, as users run this project on it: one raw file of a module, 8 plots.

Issue 21 compared this project with larpix-monitor (the predecessor) on one 1.19 M-packet raw run with
8 equivalent plots. larpix-monitor cannot be installed here (it is on no package index), so its side is
its end-to-end rate measured when this project started (13,000-18,000 packets/s on this machine,
quoted, not re-run). This script simulates a raw file of the packaged 16-tile module of about
``--packets`` packets, then times ``larpix-dqm once FILE -o OUT`` with the 8 plots
(``PLOTS``) and with ``--no-plots``, whole fresh processes, best of ``--repeat``: wall and CPU seconds,
the peak RSS of its largest process and the peak proportional memory (PSS) of the process tree (``once``
forks a drawing helper that shares its pages), and the ratio to the predecessor's time for the same packets.
The package is byte-compiled first, as ``pip install`` does (``bytecode_compile.py``).

Usage: python bench/predecessor.py [--packets 1190000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
from bytecode_compile import compile_package
from process_tree import tree

from larpix_dqm.exporter.detector.geometry import packaged_layout

#: The 8 plots: every per-file plot and the anode overview (the predecessor's rates, hot pixels, FIFO
#: flags, timestamp and trigger histograms, and its pixel map of the whole anode).
PLOTS = "PacketRate,TileRate,HotPixels,FIFOFlags,TimestampHistograms,TriggerHistograms,BeamTriggers,AnodeOverview"
#: The predecessor's end-to-end rate (packets/s), measured with plots on when this project started.
PREDECESSOR_RATE = (13_000, 18_000)
#: Packets of one simulated second of the packaged module at 1 Hz a channel (78,400 channels' hits, the
#: timestamps, syncs and random trigger words), measured.
PACKETS_PER_SECOND = 91_400


def simulate(folder: Path, packets: int) -> tuple[Path, int]:
    """A raw file of about ``packets`` packets (1 Hz a channel, 6-word messages); its path and packets."""
    seconds = max(1, round(packets / PACKETS_PER_SECOND))
    command = [sys.executable, "-m", "larpix_dqm.exporter.cli", "simulate", str(folder), "--format", "raw", "--fast"]
    command += ["--seconds", str(seconds), "--rate-hz", "1.0", "--file-seconds", "0"]
    subprocess.run(command, check=True, capture_output=True)
    path = next(folder.glob("*.h5"))
    summary = subprocess.run(
        [sys.executable, "-m", "larpix_dqm.exporter.cli", "once", str(path), "--no-plots"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return path, int(json.loads(summary)["packets"])


def tree_pss_mb(pid: int) -> float:
    """Proportional memory of a process and its children in MB: pages a forked helper shares with its
    parent copy-on-write count once, which a sum of resident sizes would count twice."""
    total = 0
    for p in tree(pid):
        with contextlib.suppress(OSError):
            match = re.search(r"^Pss:\s+(\d+) kB", Path(f"/proc/{p}/smaps_rollup").read_text(), re.M)
            total += int(match.group(1)) if match else 0
    return total / 1024


def whole_process(args: list[str], repeat: int) -> tuple[float, float, float, float]:
    """Best wall seconds of ``repeat`` fresh processes, with that run's CPU seconds (the drawing helper's
    included), peak RSS of one process (MB) and peak proportional memory of the process tree (MB, sampled
    every 20 ms)."""
    best = (float("inf"), 0.0, 0.0, 0.0)
    for _ in range(repeat):
        started = time.perf_counter()
        command = [sys.executable, "-m", "larpix_dqm.exporter.cli", *args]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        peak = 0.0
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)  # the process's and its children's usage
            if pid:
                break
            peak = max(peak, tree_pss_mb(process.pid))
            time.sleep(0.02)
        process.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - started
        if process.returncode:
            raise SystemExit(f"{' '.join(command)} exited with {process.returncode}")
        if wall < best[0]:
            best = (wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, peak)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--packets", type=int, default=1_190_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(compile_package())
    with tempfile.TemporaryDirectory() as tmp:
        path, packets = simulate(Path(tmp) / "data", args.packets)
        size = os.path.getsize(path) / 1e6
        with h5py.File(path) as fh:
            messages = len(fh["msgs"])
        print(
            f"{path.name}: {packets:,} packets in {messages:,} raw messages, {size:.0f} MB; load average "
            f"{os.getloadavg()[0]:.1f}; best of {args.repeat} fresh processes"
        )
        geometry = ["--geometry", packaged_layout()]
        runs = {
            "once -o OUT, 8 plots": ["once", str(path), "-o", str(Path(tmp) / "plots"), *geometry, "--plots", PLOTS],
            "once -o OUT --no-plots": ["once", str(path), "-o", str(Path(tmp) / "summary"), *geometry, "--no-plots"],
        }
        slow, fast = (packets / rate for rate in PREDECESSOR_RATE)
        for label, command in runs.items():
            wall, cpu, peak, tree = whole_process(command, args.repeat)
            print(
                f"  {label:<24} {wall:6.2f} s wall  {cpu:6.2f} s CPU  peak RSS {peak:5.0f} MB  PSS {tree:5.0f} MB   "
                f"the predecessor's {fast:.0f}-{slow:.0f} s: x{fast / wall:.0f}-{slow / wall:.0f} "
                "(goal x30, < 300 MiB)"
            )
        print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
