"""A capacity model, measured: one simulated module scraped by real engines for a few minutes (issue 22 item 6).

One module (default: the packaged 16-tile layout; ``--geometry`` an ND-LAr layout such as
multi_tile_layout-3.0.40.yaml) is simulated live and served by ``larpix-dqm serve``. A Prometheus
agent (``--enable-feature=agent``) scrapes it every ``--scrape-interval`` and remote-writes every
sample to (a) a central Prometheus (``--web.enable-remote-write-receiver``, the rules of
alerts/larpix.rules.yml evaluated at the scrape interval) and (b) VictoriaMetrics single-node, all on
127.0.0.1 free ports, for ``--minutes``. Every program is stopped however the run ends.

Printed: series per scrape, samples/s, the exporter's CPU and RSS, scrape duration, remote-write
bytes and the agent's CPU and RSS, each store's RSS, disk, series and bytes per series and per
sample, the rule evaluation time, the per-pixel scrape of the module (/metrics?per_pixel=1), and
an extrapolation to the 2x2 (4 modules of multi_tile_layout-2.4.16) and ND-LAr (35 modules of
multi_tile_layout-3.0.40) at 15 s scrapes. The layout not measured live is counted in-process
(its series; its exporter CPU and memory scaled by chips); ``--other-geometry`` names it.

Usage: python bench/capacity.py [--geometry multi_tile_layout-3.0.40.yaml] [--minutes 3]
[--scrape-interval 15s] [--other-geometry PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import yaml
from process_tree import tree

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
sys.path.insert(0, os.path.dirname(_HERE))

from larpix_dqm.exporter.detector.geometry import GeometrySummary, load_geometry, packaged_layout  # noqa: E402

ROOT = Path(_HERE).parent
RULES = ROOT / "alerts" / "larpix.rules.yml"
SHIPPED_SAMPLE_LIMIT = 300_000  # prometheus.yml's larpix-per-pixel job
TICK = os.sysconf("SC_CLK_TCK")
LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)", re.M)
_CLI = (
    "import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "runpy.run_module('larpix_dqm.exporter.cli', run_name='__main__', alter_sys=True)"
)
TARGETS = {"2x2": ("multi_tile_layout-2.4.16.yaml", 4), "ND-LAr": ("multi_tile_layout-3.0.40.yaml", 35)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, timeout: float = 120) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return resp.read()


def metrics(address: str) -> dict[str, float]:
    """Sum of every sample of each family name (labels summed over) of ``address``/metrics."""
    out: dict[str, float] = {}
    for name, _labels, value in LINE.findall(get(f"http://{address}/metrics").decode()):
        with contextlib.suppress(ValueError):
            out[name] = out.get(name, 0.0) + float(value)
    return out


def query(address: str, promql: str) -> float:
    """The sum of a PromQL instant query's values (nan if empty)."""
    url = f"http://{address}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    result = json.loads(get(url))["data"]["result"]
    return sum(float(r["value"][1]) for r in result) if result else float("nan")


def cpu_seconds(pid: int) -> float:
    total = 0.0
    for p in tree(pid):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / TICK
    return total


def rss_bytes(pid: int) -> int:
    total = 0
    for p in tree(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total


def disk_bytes(path: Path) -> int:
    """Allocated bytes under ``path`` (du)."""
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, f)).st_blocks * 512
    return total


@contextlib.contextmanager
def running(name: str, cmd: list[str], work: Path, ready_url: str | None, stop: int = signal.SIGTERM) -> Iterator[int]:
    """Run ``cmd`` (output in work/NAME.log) until ready_url answers; always stopped (then SIGKILL) on exit."""
    log = (work / f"{name}.log").open("wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while ready_url is not None:
            if proc.poll() is not None:
                tail = (work / f"{name}.log").read_text(errors="replace")[-2000:]
                raise SystemExit(f"{name} exited with status {proc.returncode}:\n{tail}")
            try:
                get(ready_url, timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit(f"{name} not ready after 120 s") from None
                time.sleep(0.3)
        yield proc.pid
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(stop)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        proc.wait()
        log.close()


def binary(name: str) -> str:
    path = shutil.which(name) or (f"/usr/bin/{name}" if os.path.exists(f"/usr/bin/{name}") else None)
    if path is None:
        raise SystemExit(f"{name} not found on PATH")
    return path


def seconds(text: str) -> float:
    units = {"ms": 1e-3, "s": 1, "m": 60, "h": 3600}
    match = re.fullmatch(r"([\d.]+)(ms|s|m|h)", text)
    if not match:
        raise argparse.ArgumentTypeError(f"not a duration: {text}")
    return float(match[1]) * units[match[2]]


def count_series(geometry_path: str) -> tuple[int, int]:
    """Series of a /metrics scrape of a layout's module (10 s simulated, read whole), as bench/series.py counts,
    and the larpix_channel_* series of its per-pixel scrape (what the per-pixel job keeps)."""
    from larpix_dqm.exporter.metrics.families import FamilyBuilder
    from larpix_dqm.exporter.runtime.once import process_file
    from larpix_dqm.exporter.simulate import SimulationConfig, Simulator, write_run

    geometry = load_geometry(geometry_path)
    with tempfile.TemporaryDirectory() as tmp:
        (path,) = write_run(
            Simulator(geometry, SimulationConfig()), tmp, seconds=10, realtime=False, start_time=1_700_000_000
        )
        result = process_file(str(path), geometry)
    builder = FamilyBuilder(geometry=geometry)
    fams = builder.families(result.snapshot, result.health, evaluation=result.evaluation)
    pixel = builder.families(result.snapshot, result.health, per_pixel=True, evaluation=result.evaluation)
    return (
        sum(len(s.labels) for f in fams for s in f.samples),
        sum(len(s.labels) for f in pixel if f.name.startswith("larpix_channel_") for s in f.samples),
    )


def fmt_bytes(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= size:
            return f"{n / size:,.1f} {unit}"
    return f"{n:,.0f} B"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--geometry", default=str(packaged_layout()), help="layout of the module measured live")
    parser.add_argument("--minutes", type=float, default=3.0, help="measurement window after the warm-up")
    parser.add_argument("--scrape-interval", type=seconds, default=15.0, help="agent scrape and rule interval")
    parser.add_argument(
        "--other-geometry",
        default=None,
        help="the extrapolation's other layout (default: the packaged 2.4.16 when --geometry is another layout)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory (printed)")
    args = parser.parse_args()
    interval = args.scrape_interval
    interval_text = f"{interval:g}s"

    geometry = load_geometry(args.geometry)
    summary = GeometrySummary.of(geometry)
    work = Path(tempfile.mkdtemp(prefix="larpix-capacity-"))
    data = work / "data"
    data.mkdir()
    print(f"{summary.name}: {summary.tiles} tiles, {summary.chips:,} chips, {summary.channels:,} channels")
    print(f"scrape and rule interval {interval_text}, {args.minutes:g} min measured; load average {os.getloadavg()}")
    exporter_addr, central, vm, agent = (f"127.0.0.1:{free_port()}" for _ in range(4))

    try:
        with contextlib.ExitStack() as stack:
            # The stores first: their idle RSS is the baseline the series are charged against.
            central_dir = work / "central"
            central_dir.mkdir()
            (central_dir / "prometheus.yml").write_text(
                yaml.safe_dump(
                    {
                        "global": {"evaluation_interval": interval_text, "external_labels": {"monitor": "larpix-dqm"}},
                        "rule_files": [str(RULES)],
                    }
                )
            )
            central_pid = stack.enter_context(
                running(
                    "central",
                    [
                        binary("prometheus"),
                        f"--config.file={central_dir / 'prometheus.yml'}",
                        f"--storage.tsdb.path={central_dir / 'data'}",
                        f"--web.listen-address={central}",
                        "--web.enable-remote-write-receiver",
                    ],  # fmt: skip
                    work,
                    f"http://{central}/-/ready",
                )
            )
            vm_pid = stack.enter_context(
                running(
                    "victoria-metrics",
                    [
                        binary("victoria-metrics"),
                        f"-storageDataPath={work / 'vm'}",
                        f"-httpListenAddr={vm}",
                        "-retentionPeriod=1d",
                    ],  # fmt: skip
                    work,
                    f"http://{vm}/health",
                )
            )
            stack.enter_context(
                running(
                    "simulator",
                    [sys.executable, "-c", _CLI, "simulate", str(data), "--geometry", args.geometry],
                    work,
                    None,
                    stop=signal.SIGINT,
                )
            )
            deadline = time.monotonic() + 60
            while not list(data.glob("*.h5")) and time.monotonic() < deadline:
                time.sleep(0.2)
            exporter_pid = stack.enter_context(
                running(
                    "exporter",
                    [
                        sys.executable,
                        "-c",
                        _CLI,
                        "serve",
                        "-i",
                        str(data),
                        "--geometry",
                        args.geometry,
                        "--listen-address",
                        "127.0.0.1",
                        "--port",
                        exporter_addr.rsplit(":", 1)[1],
                        "--checkpoint",
                        "-",
                        "--per-pixel",
                    ],  # fmt: skip
                    work,
                    f"http://{exporter_addr}/-/healthy",
                )
            )
            time.sleep(2)
            idle = {"central": rss_bytes(central_pid), "vm": rss_bytes(vm_pid)}

            agent_dir = work / "agent"
            agent_dir.mkdir()
            (agent_dir / "agent.yml").write_text(
                yaml.safe_dump(
                    {
                        "global": {"scrape_interval": interval_text, "external_labels": {"monitor": "larpix-dqm"}},
                        "scrape_configs": [
                            {
                                "job_name": "larpix",
                                "scrape_interval": interval_text,
                                "scrape_timeout": interval_text,
                                "static_configs": [{"targets": [exporter_addr]}],
                            }
                        ],
                        "remote_write": [
                            {"name": "central", "url": f"http://{central}/api/v1/write"},
                            {"name": "victoria-metrics", "url": f"http://{vm}/api/v1/write"},
                        ],
                    }
                )
            )
            agent_pid = stack.enter_context(
                running(
                    "agent",
                    [
                        binary("prometheus"),
                        "--enable-feature=agent",
                        f"--config.file={agent_dir / 'agent.yml'}",
                        f"--storage.agent.path={agent_dir / 'data'}",
                        f"--web.listen-address={agent}",
                    ],  # fmt: skip
                    work,
                    f"http://{agent}/-/ready",
                )
            )
            pids = {"exporter": exporter_pid, "agent": agent_pid, "central": central_pid, "vm": vm_pid}

            # Warm-up: two scrapes and their remote writes.
            time.sleep(2 * interval + 3)
            t0 = time.monotonic()
            cpu0 = {k: cpu_seconds(p) for k, p in pids.items()}
            agent0, central0, vm0 = metrics(agent), metrics(central), metrics(vm)
            disk0 = {"central": disk_bytes(central_dir / "data"), "vm": disk_bytes(work / "vm")}
            peak = dict.fromkeys(pids, 0)
            while time.monotonic() - t0 < args.minutes * 60:
                for k, p in pids.items():
                    peak[k] = max(peak[k], rss_bytes(p))
                time.sleep(min(5.0, max(0.5, args.minutes * 60 - (time.monotonic() - t0))))
            elapsed = time.monotonic() - t0
            cpu = {k: (cpu_seconds(p) - cpu0[k]) / elapsed for k, p in pids.items()}
            rss = {k: rss_bytes(p) for k, p in pids.items()}
            agent1, central1, vm1 = metrics(agent), metrics(central), metrics(vm)
            disk1 = {"central": disk_bytes(central_dir / "data"), "vm": disk_bytes(work / "vm")}
            get(f"http://{vm}/internal/force_flush")
            vm_flushed = metrics(vm)
            disk_vm_flushed = disk_bytes(work / "vm")

            scraped = query(central, 'scrape_samples_scraped{job="larpix"}')
            window = f"{max(int(elapsed), int(interval) + 1)}s"
            scrape_avg = query(central, f'avg_over_time(scrape_duration_seconds{{job="larpix"}}[{window}])')
            scrape_max = query(central, f'max_over_time(scrape_duration_seconds{{job="larpix"}}[{window}])')
            direct = get(f"http://{exporter_addr}/metrics").decode()
            direct_series = sum(1 for line in direct.splitlines() if line and not line.startswith("#"))

            started = time.perf_counter()
            pixel_text = get(f"http://{exporter_addr}/metrics?per_pixel=1", timeout=600).decode()
            pixel_seconds = time.perf_counter() - started
            pixel_lines = [line for line in pixel_text.splitlines() if line and not line.startswith("#")]
            pixel_kept = sum(1 for line in pixel_lines if line.startswith("larpix_channel_"))
            exporter_rss_after_pixel = rss_bytes(exporter_pid)
            rule_eval = central1.get("prometheus_rule_group_last_duration_seconds", float("nan"))
            rules = central1.get("prometheus_rule_group_rules", float("nan"))
            head_series = central1.get("prometheus_tsdb_head_series", float("nan"))
            load = os.getloadavg()
    finally:
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    def delta(after: dict[str, float], before: dict[str, float], name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    samples_s = delta(central1, central0, "prometheus_tsdb_head_samples_appended_total") / elapsed
    sent = delta(agent1, agent0, "prometheus_remote_storage_samples_total") / 2  # per store
    sent_bytes = delta(agent1, agent0, "prometheus_remote_storage_bytes_total") / 2
    vm_rows_s = delta(vm1, vm0, "vm_rows_inserted_total") / elapsed
    vm_rows = vm_flushed.get("vm_rows", float("nan"))
    central_mem_series = (rss["central"] - idle["central"]) / head_series
    vm_mem_series = (rss["vm"] - idle["vm"]) / head_series
    central_disk_sample = (disk1["central"] - disk0["central"]) / max(samples_s * elapsed, 1)
    vm_disk_sample = disk_vm_flushed / max(vm_rows, 1)
    per_day = 86400 / 15  # samples per series per day at 15 s

    print()
    print(f"{'measured (one module)':<58}{'value':>18}")
    rows = [
        ("series per scrape (scrape_samples_scraped)", f"{scraped:,.0f}"),
        ("series in a direct /metrics (sample lines)", f"{direct_series:,}"),
        (f"samples/s appended centrally at {interval_text}", f"{samples_s:,.1f}"),
        ("  the same at 15 s", f"{samples_s * interval / 15:,.1f}"),
        ("exporter CPU (s/s)", f"{cpu['exporter']:.3f}"),
        ("exporter RSS (peak)", f"{fmt_bytes(rss['exporter'])} ({fmt_bytes(peak['exporter'])})"),
        ("scrape duration avg / max", f"{scrape_avg * 1e3:,.0f} / {scrape_max * 1e3:,.0f} ms"),
        ("remote write: samples/s per store", f"{sent / elapsed:,.1f}"),
        (
            "remote write: bytes/s per store (bytes/sample)",
            f"{fmt_bytes(sent_bytes / elapsed)} ({sent_bytes / max(sent, 1):.2f})",
        ),
        ("agent CPU (s/s), RSS", f"{cpu['agent']:.3f}, {fmt_bytes(rss['agent'])}"),
        ("central Prometheus head series", f"{head_series:,.0f}"),
        ("central Prometheus CPU (s/s)", f"{cpu['central']:.3f}"),
        ("central Prometheus RSS (idle before)", f"{fmt_bytes(rss['central'])} ({fmt_bytes(idle['central'])})"),
        ("central Prometheus memory per series", f"{central_mem_series:,.0f} B"),
        ("central Prometheus TSDB disk (WAL, head)", fmt_bytes(disk1["central"])),
        ("central Prometheus disk per sample (WAL growth)", f"{central_disk_sample:.2f} B"),
        (f"rule evaluation, {rules:.0f} rules (sum of groups' last)", f"{rule_eval * 1e3:,.1f} ms"),
        ("VictoriaMetrics rows/s, rows stored", f"{vm_rows_s:,.1f}, {vm_rows:,.0f}"),
        ("VictoriaMetrics CPU (s/s)", f"{cpu['vm']:.3f}"),
        ("VictoriaMetrics RSS (idle before)", f"{fmt_bytes(rss['vm'])} ({fmt_bytes(idle['vm'])})"),
        ("VictoriaMetrics memory per series", f"{vm_mem_series:,.0f} B"),
        ("VictoriaMetrics disk (flushed), per row", f"{fmt_bytes(disk_vm_flushed)}, {vm_disk_sample:.2f} B"),
        ("per-pixel scrape (/metrics?per_pixel=1) series", f"{len(pixel_lines):,}"),
        ("  of them larpix_channel_* (the job keeps)", f"{pixel_kept:,}"),
        ("  rendering + transfer, size", f"{pixel_seconds:,.1f} s, {fmt_bytes(len(pixel_text.encode()))}"),
        ("  exporter RSS after it", fmt_bytes(exporter_rss_after_pixel)),
        ("load average at the end (1, 5, 15 min)", " ".join(f"{x:.2f}" for x in load)),
    ]
    for name, value in rows:
        print(f"{name:<58}{value:>18}")

    # Extrapolation: series per module of each layout; per-series costs from the run; exporter by chips.
    measured_name = Path(args.geometry).name
    other = args.other_geometry
    if other is None and measured_name != TARGETS["2x2"][0]:
        other = str(packaged_layout())
    per_module: dict[str, tuple[int, int, float, str]] = {measured_name: (int(scraped), pixel_kept, 1.0, "measured")}
    if other is not None:
        other_summary = GeometrySummary.of(load_geometry(other))
        other_series, other_pixel = count_series(other)
        per_module[Path(other).name] = (
            other_series + int(scraped) - direct_series,  # + what the scrape adds beyond the text (if anything)
            other_pixel,
            other_summary.chips / summary.chips,
            "counted in-process, exporter scaled by chips",
        )
    print()
    print(f"extrapolation at 15 s scrapes (per-series costs of this run; {measured_name} measured live)")
    print(
        "| detector | modules | series | samples/s | central Prometheus memory | Prometheus disk/day (WAL rate) "
        "| VictoriaMetrics memory | VictoriaMetrics disk/day | rule evaluation | remote write | exporter per module "
        "| per-pixel series |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for detector, (layout, modules) in TARGETS.items():
        if layout not in per_module:
            print(f"| {detector} | {modules} x {layout} | not counted: pass --other-geometry {layout} |")
            continue
        series1, pixel1, chips_ratio, how = per_module[layout]
        series = series1 * modules
        rate = series / 15
        print(
            f"| {detector} | {modules} x {layout} | {series:,} | {rate:,.0f} | "
            f"{fmt_bytes(series * central_mem_series)} + {fmt_bytes(idle['central'])} | "
            f"{fmt_bytes(series * per_day * central_disk_sample)} | "
            f"{fmt_bytes(series * vm_mem_series)} + {fmt_bytes(idle['vm'])} | "
            f"{fmt_bytes(series * per_day * vm_disk_sample)} | "
            f"{rule_eval * series / max(head_series, 1) * 1e3:,.0f} ms / 15 s | "
            f"{fmt_bytes(rate * sent_bytes / max(sent, 1))}/s | "
            f"{cpu['exporter'] * chips_ratio:.2f} CPU, "
            f"{fmt_bytes(rss['exporter'] * chips_ratio)} ({how}) | "
            f"{pixel1:,}/module, {pixel1 * modules:,} in all "
            f"({'over' if pixel1 > SHIPPED_SAMPLE_LIMIT else 'under'} sample_limit {SHIPPED_SAMPLE_LIMIT:,}) |"
        )


if __name__ == "__main__":
    main()
