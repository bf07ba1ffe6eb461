"""Soak: a DAQ starting a new file every second, served with plots on; the exporter's memory over time.

``larpix-dqm simulate --file-seconds 1`` writes live data (the packaged module layout) while
``larpix-dqm serve -o PLOTDIR`` draws three plots (``--plots``: two per file, one for the whole
detector) every ``--plot-interval`` seconds. The
exporter's resident memory (VmRSS) is printed every ``--sample`` seconds; memory must
depend on the detector and the plots, not on how many files the run had: after the first
quarter (warm-up: the first files, the first drawings) RSS stays within 10 % of its level then.
The drawing process (the server's child) is sampled beside it; ``--plots all`` draws every plot.
At the end SIGTERM is sent while plots are drawing, with hundreds of files tracked, and the
time to exit is printed (the README promises 10 s).

Usage: python bench/soak.py [--minutes 10] [--plot-interval 5] [--sample 30] [--plots PacketRate TileRate HotPixels | all]
"""

from __future__ import annotations

import argparse
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from larpix_dqm.exporter.detector.geometry import packaged_layout


def rss_mb(pid: int) -> float:
    """Resident memory of a process in MB."""
    match = re.search(r"^VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
    return int(match.group(1)) / 1024 if match else float("nan")


def children_rss_mb(pid: int) -> float:
    """Resident memory of a process's children (the drawing process, started by any of its threads) in MB."""
    pids = {child for task in Path(f"/proc/{pid}/task").glob("*") for child in (task / "children").read_text().split()}
    return sum(rss_mb(int(child)) for child in pids if Path(f"/proc/{child}/status").exists())


def metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--plot-interval", type=float, default=5.0)
    parser.add_argument("--sample", type=float, default=30.0, help="seconds between two RSS samples")
    parser.add_argument("--plots", nargs="+", default=["PacketRate", "TileRate", "HotPixels"], help="'all': every plot")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="larpix-soak-"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    python = [sys.executable, "-m", "larpix_dqm.exporter.cli"]
    writer = subprocess.Popen([*python, "simulate", str(work / "data"), "--file-seconds", "1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    serve_log = open(work / "serve.log", "w")
    server = subprocess.Popen([*python, "serve", "-i", str(work / "data"), "--port", str(port),
                               "--listen-address", "127.0.0.1", "--interval", "1", "--checkpoint", str(work / "state.npz"),
                               "--geometry", str(packaged_layout()), "-o", str(work / "plots"),
                               "--plot-interval", str(args.plot_interval), *(f"--plots={p}" for p in args.plots if p != "all")],
                              stdout=serve_log, stderr=subprocess.STDOUT)  # fmt: skip
    samples: list[tuple[float, float, float, float, float]] = []
    stop_seconds = float("nan")
    try:
        started = time.monotonic()
        end = started + args.minutes * 60
        print(f"{'minute':>7} {'RSS MB':>8} {'drawing MB':>11} {'files':>6} {'plot cycles':>12}", flush=True)
        while time.monotonic() < end:
            time.sleep(min(args.sample, max(0.0, end - time.monotonic())))
            try:
                files = metric(port, "larpix_exporter_files_tracked")
                cycles = metric(port, "larpix_exporter_plot_cycles_total")
            except OSError:
                files = cycles = float("nan")
            minute = (time.monotonic() - started) / 60
            samples.append((minute, rss_mb(server.pid), children_rss_mb(server.pid), files, cycles))
            print(
                f"{minute:>7.1f} {samples[-1][1]:>8.0f} {samples[-1][2]:>11.0f} {files:>6.0f} {cycles:>12.0f}",
                flush=True,
            )
        sent = time.monotonic()
        server.send_signal(signal.SIGTERM)
        server.wait(60)
        stop_seconds = time.monotonic() - sent
    finally:
        for proc in (writer, server):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        serve_log.close()
    for column, what in ((1, "exporter RSS"), (2, "drawing process RSS")):
        settled = [sample[column] for sample in samples if sample[0] >= args.minutes / 4]
        if settled and settled[0] > 0:
            base = settled[0]
            spread = (max(settled) - base) / base * 100
            verdict = "flat" if abs(spread) <= 10 else "GROWS"
            print(f"{what} after warm-up: {base:.0f} MB -> max {max(settled):.0f} MB, last {settled[-1]:.0f} MB "
                  f"({spread:+.1f} %: {verdict}, target within 10 %)")  # fmt: skip
    print(
        f"SIGTERM with plots drawing and {samples[-1][3]:.0f} files: exited {server.returncode} in {stop_seconds:.1f} s"
    )
    print(f"work folder (data, plots, serve.log): {work}")


if __name__ == "__main__":
    main()
