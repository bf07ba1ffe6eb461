"""/metrics latency while heavy endpoints are hammered and while plots draw.

A module run is served: a backlog (``--backlog`` seconds of data, so ``/api/history`` holds
that many seconds of per-chip entries) and a live writer. One client scrapes ``/metrics``
10 times a second for ``--seconds`` in each phase and the p50/p99/max of its latency are printed:

- quiet: nothing else;
- history: two more clients (processes of their own) fetch ``/api/history?format=json`` back to back;
- plots: the exporter draws every plot (``-o``, ``--plot-interval 0``), no other client;
- slow: a process of its own holds 500 idle connections and 70 sending a request one byte a second,
  reopening those the server closes (deadline, or room made for a newer connection).

Usage: python bench/server.py [--seconds 30] [--backlog 600]
"""

from __future__ import annotations

import argparse
import contextlib
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from larpix_dqm.exporter.detector.geometry import load_geometry, packaged_layout
from larpix_dqm.exporter.simulate import SimulationConfig, Simulator, Truth, write_run

COUNTER = re.compile(r"^larpix_exporter_packets_ingested_total\{[^}]*\} (\S+)$", re.M)


def get(port: int, path: str) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=60) as resp:
        return resp.read()


def ingested(port: int) -> float:
    return sum(float(v) for v in COUNTER.findall(get(port, "/metrics").decode()))


@contextlib.contextmanager
def serving(data: Path, work: Path, *extra: str) -> Iterator[tuple[int, subprocess.Popen]]:
    """``larpix-dqm serve`` on a free port; stopped with SIGTERM afterwards (the time it took is printed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(work / f"serve-{port}.log", "w")
    cmd = [sys.executable, "-m", "larpix_dqm.exporter.cli", "serve", "-i", str(data), "--port", str(port),
           "--listen-address", "127.0.0.1", "--interval", "1", "--checkpoint", "-",
           "--geometry", str(packaged_layout()), *extra]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                get(port, "/-/healthy")
                break
            except OSError:
                time.sleep(0.2)
        yield port, proc
    finally:
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        print(f"  SIGTERM ({' '.join(extra) or 'no plots'}): exit {proc.returncode} in {time.monotonic() - sent:.1f} s")
        log.close()


HAMMER = """
import sys, time, urllib.request
url, end = sys.argv[1], time.monotonic() + float(sys.argv[2])
fetched, size, started = 0, 0, time.perf_counter()
while time.monotonic() < end:
    with urllib.request.urlopen(url, timeout=60) as resp:
        size = len(resp.read())
    fetched += 1
print(fetched, size, (time.perf_counter() - started) / max(fetched, 1))
"""


SLOW = """
import selectors, socket, sys, time
port, end = int(sys.argv[1]), time.monotonic() + float(sys.argv[2])
request = b"GET /metrics HTTP/1.1\\r\\n" + b"X-Slow: a\\r\\n" * 1000
selector, held, closed = selectors.DefaultSelector(), {}, 0
def top_up():
    for kind, wanted in (("idle", 500), ("slow", 70)):
        for _ in range(wanted - sum(k == kind for k, _ in held.values())):
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            except OSError:
                continue
            sock.setblocking(False)
            held[sock] = (kind, 0)
            selector.register(sock, selectors.EVENT_READ)
top_up()
print("open", flush=True)
while time.monotonic() < end:
    time.sleep(1)
    for key, _ in selector.select(0):  # answered (408, 503) or closed by the server
        selector.unregister(key.fileobj)
        del held[key.fileobj]
        key.fileobj.close()
        closed += 1
    for sock, (kind, sent) in list(held.items()):
        if kind == "slow":
            try:
                sock.send(request[sent : sent + 1])
                held[sock] = (kind, sent + 1)
            except OSError:
                pass
    top_up()
print(closed)
"""


def measure_slow(port: int, seconds: float) -> str:
    """Scrape /metrics 10 times a second beside 500 idle and 70 slow connections; a table row."""
    attackers = subprocess.Popen(
        [sys.executable, "-c", SLOW, str(port), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert attackers.stdout is not None and attackers.stdout.readline() == "open\n"
    row = measure(port, seconds)
    return f"{row}   {attackers.communicate(timeout=60)[0].strip()} attacker connections closed by the server"


def measure(port: int, seconds: float, heavy: str | None = None, clients: int = 2) -> str:
    """Scrape /metrics 10 times a second while ``clients`` processes fetch ``heavy`` back to back; a table row."""
    hammers = [
        subprocess.Popen(
            [sys.executable, "-c", HAMMER, f"http://127.0.0.1:{port}{heavy}", str(seconds)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(clients if heavy else 0)
    ]
    latencies = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        started = time.perf_counter()
        get(port, "/metrics")
        latencies.append(time.perf_counter() - started)
        time.sleep(max(0.0, 0.1 - (time.perf_counter() - started)))
    fetched = []
    for proc in hammers:
        fetched.append([float(x) for x in proc.communicate(timeout=60)[0].split()])
    q = statistics.quantiles(latencies, n=100)
    row = f"{len(latencies):>8} {q[49] * 1e3:>9.0f} {q[98] * 1e3:>9.0f} {max(latencies) * 1e3:>9.0f}"
    if fetched:
        row += (
            f"   {sum(f[0] for f in fetched):.0f} history fetches by {clients} clients, {fetched[0][1] / 1e6:.1f} MB, "
            f"{statistics.mean(f[2] for f in fetched):.2f} s each"
        )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--backlog", type=int, default=600)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="larpix-server-bench-"))
    data = work / "data"
    truth = Truth()
    sim = Simulator(load_geometry(packaged_layout()), SimulationConfig(hit_rate_hz=0.05, seed=3))
    now = int(time.time())
    write_run(
        sim, data, "raw", args.backlog, realtime=False, start_time=now - args.backlog, file_seconds=60, truth=truth
    )
    backlog = sum(truth.packet_types.values())
    live = subprocess.Popen([sys.executable, "-m", "larpix_dqm.exporter.cli", "simulate", str(data), "--rate-hz", "0.05"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    header = f"{'phase':<10}{'scrapes':>8} {'p50 ms':>9} {'p99 ms':>9} {'max ms':>9}"
    try:
        print(f"module, {args.backlog} s backlog ({backlog:,} packets) + live data; /metrics 10/s for {args.seconds} s")
        rows = []
        with serving(data, work) as (port, _):
            while ingested(port) < backlog:
                time.sleep(0.5)
            rows.append(f"{'quiet':<10}{measure(port, args.seconds)}")
            rows.append(f"{'history':<10}{measure(port, args.seconds, '/api/history?format=json')}")
            rows.append(f"{'slow':<10}{measure_slow(port, args.seconds)}")
        with serving(data, work, "-o", str(work / "plots"), "--plot-interval", "0") as (port, _):
            while ingested(port) < backlog:
                time.sleep(0.5)
            rows.append(f"{'plots':<10}{measure(port, args.seconds)}")
        print(header)
        print("\n".join(rows))
    finally:
        live.send_signal(signal.SIGTERM)
        live.wait(30)


if __name__ == "__main__":
    main()
