"""`serve` of a large detector, a whole process as users run it: time to ready, memory, a restart; and
the CPU each extra small file costs.

Writes ``--seconds`` of data of ``--io-groups`` io_groups x ``--chips`` chips (49 channels each,
``--rate`` hits a second per channel of ADC 70-89, in hdf5format 2.4 packet files of one second each), then
runs ``larpix-dqm serve`` on the directory with a checkpoint and prints: seconds from the
process's start to ``/-/ready`` (the first poll of the backlog done and published), its CPU
seconds, its peak and current resident memory, the size of ``/metrics``; then SIGTERM (the final
checkpoint with the window) and the same for ``--repeat`` restarts from that checkpoint with nothing
new to read, the last of them also the CPU a small new file costs it, the first and a later one (over
``--cost-seconds``, against as long idle). Then a module (2 io_groups x 800 chips) as ``--small-files`` files of
~80 packets and as the same packets in one file: the CPU to ready of each, and what each file beyond
the first costs (each file is a run: the failing checks the run registry credits each); what every poll's scan of that directory costs (each file stat'ed, none new); and what reading
and counting one of those files costs in this process on each engine (``counting_cost``). Prints figures only,
asserts nothing.

Usage: python bench/serve_large.py [--io-groups 50] [--chips 800] [--seconds 65] [--rate 0.05] [--repeat 2]
[--small-files 1000] [--cost-seconds 10]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import h5py
import numpy as np

from larpix_dqm.exporter.monitor import Monitor
from larpix_dqm.exporter.quality.accumulator import load_kernels
from larpix_dqm.exporter.quality.config import COMPILED, NUMPY
from larpix_dqm.exporter.reading.packets import DATA, PACKET_DTYPE, TIMESTAMP
from larpix_dqm.exporter.reading.tail import DirectoryTail, InputSpec

START = 1_700_000_000
CHANNELS = 49
TICK = os.sysconf("SC_CLK_TCK")
TICKS_PER_SECOND = 10_000_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def one_second(io_groups: int, chips: int, rate: float, second: int, rng: np.random.Generator) -> np.ndarray:
    """Packets of one data second: per io_group a timestamp packet, then Poisson hits on every channel."""
    keys = np.array([(g, 1 + c // 100, 11 + c % 100) for g in range(1, io_groups + 1) for c in range(chips)], np.uint8)
    hits = rng.poisson(rate, len(keys) * CHANNELS)
    channel = np.repeat(np.arange(len(keys) * CHANNELS), hits)
    body = np.zeros(len(channel), PACKET_DTYPE)
    body["packet_type"] = DATA
    body["io_group"], body["io_channel"], body["chip_id"] = keys[channel // CHANNELS].T
    body["channel_id"] = channel % CHANNELS
    body["timestamp"] = rng.integers(0, TICKS_PER_SECOND, len(channel))
    body["dataword"] = rng.integers(70, 90, len(channel))  # a pedestal's spread (5.8 ADC), inside the checks' limits
    body["valid_parity"] = 1
    order = np.argsort(body["io_group"], kind="stable")
    body = body[order]
    stamps = np.zeros(io_groups, PACKET_DTYPE)
    stamps["packet_type"], stamps["io_group"], stamps["timestamp"] = (
        TIMESTAMP,
        np.arange(1, io_groups + 1),
        START + second,
    )
    starts = np.searchsorted(body["io_group"], np.arange(1, io_groups + 1))
    return np.insert(body, starts, stamps)


def many_small(folder: Path, files: int, rng: np.random.Generator) -> int:
    """``files`` small files of a module (2 io_groups x 800 chips), one data second each at 0.001 Hz a
    channel (~80 packets), and the same packets in one file beside them; the number of packets."""
    folder.mkdir()
    seconds = [one_second(2, 800, 0.001, s, rng) for s in range(files)]
    for s, packets in enumerate(seconds):
        write_file(folder / f"small-{s:05d}.h5", packets)
    whole = folder.with_name(folder.name + "-whole")
    whole.mkdir()
    write_file(whole / "all.h5", np.concatenate(seconds))
    return sum(len(p) for p in seconds)


def write_file(path: Path, packets: np.ndarray) -> None:
    with h5py.File(path, "w") as fh:
        fh.create_group("_header").attrs["version"] = "2.4"
        fh.create_dataset("packets", data=packets)


def cpu_seconds(pid: int) -> float:
    return sum(cpu_split(pid))


def cpu_split(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of ``pid`` (the system's share is mostly page faults: on this VM they cost
    several times more in memory the host has not backed lately)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICK, int(fields[12]) / TICK


def memory_mb(pid: int) -> tuple[float, float]:
    """Peak and current resident memory (VmHWM, VmRSS) of ``pid`` in MB."""
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(status["VmHWM"].split()[0]) / 1024, int(status["VmRSS"].split()[0]) / 1024


def fetch(url: str, timeout: float = 30.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, b""
    except OSError:
        return 0, b""


def serve(data: Path, checkpoint: Path, port: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "larpix_dqm.exporter.cli", "serve", "--input", str(data)]  # no -o: no plots
    command += ["--checkpoint", str(checkpoint), "--listen-address", f"127.0.0.1:{port}", "--interval", "1"]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def until_ready(process: subprocess.Popen, port: int, deadline: float = 600.0) -> float:
    started = time.monotonic()
    while time.monotonic() - started < deadline:
        if process.poll() is not None:
            raise SystemExit(
                f"serve exited with {process.returncode}: {process.stderr.read() if process.stderr else ''}"
            )
        if fetch(f"http://127.0.0.1:{port}/-/ready", 2.0)[0] == 200:
            return time.monotonic() - started
        time.sleep(0.05)
    raise SystemExit(f"serve not ready within {deadline:.0f} s")


def run_once(data: Path, checkpoint: Path, label: str, append: Path | None = None, cost_seconds: float = 10.0) -> dict:
    """One serve process from start to ready (and, with ``append``, one more file, its CPU summed over
    ``cost_seconds``), then SIGTERM."""
    port = free_port()
    process = serve(data, checkpoint, port)
    try:
        ready = until_ready(process, port)
        user, system = cpu_split(process.pid)
        peak, rss = memory_mb(process.pid)
        size = len(fetch(f"http://127.0.0.1:{port}/metrics")[1])
        result = {
            "label": label,
            "ready": ready,
            "cpu": user + system,
            "system": system,
            "peak": peak,
            "rss": rss,
            "metrics_mb": size / 1e6,
        }
        if append is not None:
            result["per_file_cpu"] = file_cost(process, data, append, cost_seconds)
        process.send_signal(signal.SIGTERM)
        stopped = time.monotonic()
        process.wait(60)
        result["stop"] = time.monotonic() - stopped
        return result
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def file_cost(process: subprocess.Popen, data: Path, small: Path, seconds: float = 10.0) -> tuple[float, float]:
    """CPU seconds a small new file costs the running exporter, the first after the restart and a later one: its
    CPU over ``seconds`` after the file came, less its least CPU over as long idle (polls every second, no scrape
    during either). The first pays once for what a restart defers (the window file's first write, the
    evaluation's kernels)."""

    def cpu_over(new_file: bool) -> float:
        before = cpu_seconds(process.pid)
        if new_file:  # a copy, whole before it is named *.h5: a hard link would be the same file, read once
            name = f"new-{time.monotonic_ns()}"
            shutil.copyfile(small, data / f"{name}.tmp")
            os.replace(data / f"{name}.tmp", data / f"{name}.h5")
        time.sleep(seconds)
        return cpu_seconds(process.pid) - before

    idle = min(cpu_over(False) for _ in range(2))
    return cpu_over(True) - idle, cpu_over(True) - idle


def scan_seconds(folder: Path, repeat: int = 15) -> float:
    """Median seconds of one poll's scan of ``folder`` (every file stat'ed), its files read already."""
    tail = DirectoryTail([InputSpec(str(folder))])
    for cursor in tail.scan(time.time()):
        cursor.pending = False  # as if read to its end
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        tail.scan(time.time())
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def counting_cost(folder: Path, engine: str, batch: int = 100) -> tuple[float, float]:
    """CPU seconds a small file of ``folder`` costs ``Monitor.add_file`` in this process once warm (up to 50 of its
    files, half at most, read first; the compiled engine's kernels loaded before): the best and the median over
    batches of ``batch`` files (fewer when the folder has fewer). What reading and counting a file cost, without
    ``serve``'s polls, publications and run registry, and on the compiled engine without the kernels' load, which a
    backlog of small files pays once."""
    if engine == COMPILED:
        load_kernels(600)
    monitor = Monitor(ingest_engine=engine)
    files = [str(path) for path in sorted(folder.glob("*.h5"))]
    warm = min(50, len(files) // 2)
    batch = min(batch, len(files) - warm)
    for path in files[:warm]:
        monitor.add_file(path)
    batches = []
    for start in range(warm, len(files) - batch + 1, batch):
        started = time.process_time()
        for path in files[start : start + batch]:
            monitor.add_file(path)
        batches.append((time.process_time() - started) / batch)
    return min(batches), statistics.median(batches)


def show(r: dict) -> None:
    line = (
        f"{r['label']:<34} ready {r['ready']:6.2f} s  CPU {r['cpu']:6.2f} s ({r['system']:.2f} system)  peak RSS {r['peak']:7.0f} MB  "
        f"RSS {r['rss']:7.0f} MB  /metrics {r['metrics_mb']:5.1f} MB  SIGTERM {r['stop']:5.2f} s"
    )
    if "per_file_cpu" in r:
        first, later = r["per_file_cpu"]
        line += (
            f"  a small new file, CPU above idle: the first {1000 * first:.0f} ms, a later one {1000 * later:.0f} ms"
        )
    print(line, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--io-groups", type=int, default=50)
    parser.add_argument("--chips", type=int, default=800, help="chips per io_group")
    parser.add_argument("--seconds", type=int, default=65, help="of data: 65 fills the default 60 s window")
    parser.add_argument("--rate", type=float, default=0.05, help="hits a second per channel")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument(
        "--small-files", type=int, default=1000, help="files of the per-file cost's backlog (under 2: not measured)"
    )
    parser.add_argument("--workdir", type=Path)
    parser.add_argument(
        "--cost-seconds", type=float, default=10.0, help="a small new file's CPU is summed over this long, and idle's"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(tmp)
        data, state = work / "data", work / "state"
        data.mkdir()
        rng = np.random.default_rng(1)
        total = 0
        for s in range(args.seconds):
            packets = one_second(args.io_groups, args.chips, args.rate, s, rng)
            write_file(data / f"run-{s:04d}.h5", packets)
            total += len(packets)
        small = work / "small.h5"
        write_file(small, one_second(1, 8, args.rate, args.seconds, rng))
        os.sync()  # the backlog on disk before the exporter starts: its time is not the writeback of these files
        print(
            f"{args.io_groups} io_groups x {args.chips} chips x {CHANNELS} channels "
            f"({args.io_groups * args.chips * CHANNELS:,} channels), {args.seconds} s at {args.rate:g} Hz: "
            f"{total:,} packets in {args.seconds} files; load average {os.getloadavg()[0]:.1f}",
            flush=True,
        )
        show(run_once(data, state / "first.npz", "first start (the backlog)"))
        for k in range(args.repeat):  # each restart from a link to the first run's final checkpoint
            checkpoint = state / f"restart-{k}.npz"
            for suffix in (".npz", ".window.npz"):
                os.link(state / f"first{suffix}", state / f"restart-{k}{suffix}")
            last = k == args.repeat - 1
            label, append = f"restart {k + 1} (nothing new)", small if last else None
            show(run_once(data, checkpoint, label, append, args.cost_seconds))
        sizes = {p.name: p.stat().st_size / 1e6 for p in state.glob("first*.npz")}
        print("checkpoint files: " + ", ".join(f"{name} {mb:.0f} MB" for name, mb in sorted(sizes.items())))
        if args.small_files > 1:
            small_files(work, state, args.small_files, rng)
        print(f"load average after: {os.getloadavg()[0]:.1f}")


def small_files(work: Path, state: Path, files: int, rng: np.random.Generator) -> None:
    """The per-file cost: a module as ``files`` small files and as the same packets in one file, in ``serve`` and in
    this process, and what every poll's scan of those files costs."""
    packets = many_small(work / "small", files, rng)
    many = run_once(work / "small", state / "small.npz", f"module, {files} small files")
    whole = run_once(work / "small-whole", state / "whole.npz", "module, the same packets in 1 file")
    show(many)
    show(whole)
    per_file = (many["cpu"] - whole["cpu"]) / (files - 1)
    print(f"{packets:,} packets: each file beyond the first costs {1000 * per_file:.2f} ms of CPU")
    # each file is a run of its own, credited the failing checks of the publication after it
    with sqlite3.connect(state / "small.runs.sqlite") as registry:
        runs, failing = registry.execute("SELECT count(*), (SELECT count(*) FROM check_failures) FROM runs").fetchone()
    print(f"the run registry: {runs:,} runs, {failing / max(runs, 1):.1f} failing checks credited to each")
    seconds = scan_seconds(work / "small")
    print(
        f"every poll's scan of the {files} files, read already (median of 15 in this process):"
        f" {1000 * seconds:.1f} ms, {1e6 * seconds / files:.1f} us a file"
    )
    for engine in (NUMPY, COMPILED):  # numpy first: this process has not loaded numba yet
        best, median = counting_cost(work / "small", engine)
        print(
            f"reading and counting a small file in this process, {engine} engine: {1000 * best:.2f} ms"
            f" (the best batch of up to 100; median {1000 * median:.2f} ms)"
        )


if __name__ == "__main__":
    main()
