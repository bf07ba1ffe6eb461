"""Latency from an append to /metrics, at 10x a realistic module data rate.

A writer appends one simulated second per second to a raw (SWMR) file with the hit rate
per channel raised tenfold (5 Hz instead of 0.5 Hz: ~390k packets/s for a module); after
each append it polls /metrics until the exporter's packet counter covers the append.

Usage: python bench/latency.py [--seconds 20] [--interval 1]
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from larpix_dqm.exporter.detector.geometry import load_geometry, packaged_layout
from larpix_dqm.exporter.reading.decode import decode_messages
from larpix_dqm.exporter.simulate import RawFileWriter, SimulationConfig, Simulator

COUNTER = re.compile(r'^larpix_exporter_packets_ingested_total\{format="raw"\} (\S+)$', re.M)


def ingested(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        match = COUNTER.search(resp.read().decode())
    return float(match.group(1)) if match else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--interval", type=float, default=1.0)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="larpix-latency-"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "larpix_dqm.exporter.cli", "serve", "-i", str(work), "--port", str(port),
           "--listen-address", "127.0.0.1", "--interval", str(args.interval), "--checkpoint", "-",
           "--geometry", str(packaged_layout())]  # fmt: skip
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                ingested(port)
                break
            except OSError:
                time.sleep(0.2)
        sim = Simulator(load_geometry(packaged_layout()), SimulationConfig(hit_rate_hz=5.0, seed=1))
        writer = RawFileWriter(work / "live.h5")
        total, latencies, rate = 0, [], []
        start = int(time.time())
        for t in range(args.seconds):
            msgs, groups = sim.second(start + t)
            total += len(decode_messages(msgs, groups).packets)
            rate.append(total)
            writer.append(msgs, groups)
            appended = time.monotonic()
            while ingested(port) < total:
                time.sleep(0.01)
            latencies.append(time.monotonic() - appended)
            time.sleep(max(0.0, start + t + 1 - time.time()))
        writer.close()
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(15)
    per_second = total / args.seconds
    print(f"{per_second:,.0f} packets/s appended once a second for {args.seconds} s, --interval {args.interval}")
    print(
        f"append -> /metrics latency: median {statistics.median(latencies):.2f} s, "
        f"max {max(latencies):.2f} s (target <= interval + 1 = {args.interval + 1:.1f} s)"
    )
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
