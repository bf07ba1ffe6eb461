"""One evaluation of a module: the median time of ``Monitor.update()`` (snapshot and verdicts, checks, history) and
of its parts, against the goal of issue 21 (under 20 ms for an ND-LAr module: 6,400 chips, 409,600 channels).

The module's data is simulated into a temporary directory as the DAQ writes it (raw files), at ``--rate-hz`` a
channel; two states are timed:

* learning: ``--seconds`` of data, one evaluation: rates not learnt yet, no channel's CUSUM testing;
* steady (``--steady-seconds`` > 0, e.g. 300): that much data at ``--steady-rate-hz`` with a dead chip and a noisy
  channel, in files of 20 s with an evaluation after each (as a live exporter evaluates as data comes): rates
  learnt, most CUSUMs testing (100 arrivals each).

Each figure is the median of ``--repeat`` updates, with the machine's load average beside it (the machine is
shared: figures move with it). The compiled kernels are loaded first (numba's cache); the numpy
reference's snapshot is timed too. Prints figures only, asserts nothing.

Usage: python bench/evaluation.py [--geometry PATH_OR_LAYOUT] [--seconds 10] [--rate-hz 0.2]
       [--steady-seconds 0] [--steady-rate-hz 0.4] [--repeat 21] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from larpix_dqm.exporter.detector.geometry import CHANNELS_PER_CHIP, Geometry, load_geometry
from larpix_dqm.exporter.monitor import Monitor
from larpix_dqm.exporter.quality import accumulator, summary
from larpix_dqm.exporter.quality.checks import evaluate
from larpix_dqm.exporter.quality.summary import summarize

#: Goal of issue 21: one ``Monitor.update()`` of an ND-LAr module, seconds.
UPDATE_GOAL = 0.020
#: The ND-LAr module's layout beside the repository (../shared/geometry), the default geometry.
NDLAR = Path(__file__).resolve().parents[2] / "shared" / "geometry" / "multi_tile_layout-3.0.40.yaml"
CLI = [sys.executable, "-m", "larpix_dqm.exporter.cli"]
START = 1_700_000_000
FILE_SECONDS = 20


def load() -> str:
    return "load average {:.1f} {:.1f} {:.1f}".format(*os.getloadavg())


def simulate(outdir: Path, geometry: str, seconds: int, rate_hz: float, faults: list[str]) -> list[Path]:
    """Raw files of ``seconds`` of data at ``rate_hz`` a channel, in files of ``FILE_SECONDS``, made once."""
    if not list(outdir.glob("*.h5")):
        args = ["simulate", str(outdir), "--seconds", str(seconds), "--fast", "--start-time", str(START)]
        args += ["--geometry", geometry, "--rate-hz", str(rate_hz), "--file-seconds", str(FILE_SECONDS), *faults]
        subprocess.run([*CLI, *args], capture_output=True, check=True)
    return sorted(outdir.glob("*.h5"))


def faults(geometry: Geometry) -> list[str]:
    """A dead chip and a noisy channel of the geometry, as ``simulate`` options."""
    chips = geometry.chips.tolist()
    dead, noisy = chips[len(chips) // 3], chips[2 * len(chips) // 3]
    channel = int(geometry.connected[2 * len(chips) // 3].argmax())
    return ["--silent-chip", "-".join(map(str, dead)), "--noisy-channel", "-".join(map(str, [*noisy, channel]))]


def median_ms(action: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e3


def timed_judge(spent: list[float]) -> None:
    """Time each ``verdicts.judge`` the summary makes, into ``spent``."""
    judge = summary.judge

    def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return judge(*args, **kwargs)
        finally:
            spent.append(time.perf_counter() - started)

    summary.judge = timed  # type: ignore[assignment]


def row(label: str, ms: float, goal: float | None = None) -> None:
    met = "" if goal is None else f"   ND-LAr goal < {goal * 1e3:.0f} ms: {'met' if ms < goal * 1e3 else 'missed'}"
    print(f"  {label:<50}{ms:8.1f} ms{met}")


def time_state(name: str, monitor: Monitor, repeat: int, judged: list[float]) -> None:
    """The median update of ``monitor`` and of its parts, with its load average."""
    acc = monitor.accumulator
    large = len(acc.chips) * CHANNELS_PER_CHIP >= accumulator.COMPILE_EVALUATION_AFTER_CHANNELS
    engine = "compiled kernels" if large and accumulator.EVALUATION_KERNELS.ready() else "numpy"
    statuses = monitor.update().snapshot.channel_status
    print(f"\n{name}: {len(acc.chips):,} chips, {int((statuses > 0).sum()):,} channels judged, evaluated by {engine}")
    print(f"  ({load()})")
    row("Monitor.update()", median_ms(monitor.update, repeat), UPDATE_GOAL)
    judged.clear()
    row("  snapshot (summary and verdicts)", median_ms(lambda: acc.snapshot(monitor.reference), repeat))
    row("    of which judge", statistics.median(judged) * 1e3)
    snapshot = acc.snapshot(monitor.reference)
    checks = monitor.mode_checks["self-trigger" if monitor.run_mode == "auto" else monitor.run_mode]
    row("  checks (evaluate)", median_ms(lambda: evaluate(snapshot, checks, monitor.reference), repeat))
    layout = acc.layout()
    row("  snapshot on the numpy reference", median_ms(lambda: summarize(acc.state, layout), max(repeat // 3, 1)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--geometry", default=str(NDLAR), help="a layout file or a packaged layout's name")
    parser.add_argument("--seconds", type=int, default=10, help="data of the learning state")
    parser.add_argument("--steady-seconds", type=int, default=0, help="data of the steady state (0: not timed)")
    parser.add_argument("--rate-hz", type=float, default=0.2, help="self-trigger rate a channel, learning state")
    parser.add_argument(
        "--steady-rate-hz", type=float, default=0.4, help="the same, steady state (100 arrivals to test)"
    )
    parser.add_argument("--repeat", type=int, default=21, help="updates per figure; the median counts")
    parser.add_argument("--workdir")
    args = parser.parse_args()
    geometry = load_geometry(args.geometry)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="larpix-bench-"))
    print(f"{Path(args.geometry).name}: {len(geometry.chips):,} chips, {int(geometry.connected.sum()):,} channels")
    print(f"median of {args.repeat} updates; {load()} at the start")
    started = time.perf_counter()
    loaded = accumulator.load_evaluation_kernels(wait=600)
    state = f"loaded in {time.perf_counter() - started:.1f} s" if loaded else accumulator.EVALUATION_KERNELS.error
    print(f"the evaluation's compiled kernels: {state}")
    # the counting's kernels too: loading in the background while updates are timed, they would take the second
    # core the evaluation's passes split their chips over
    if not accumulator.load_kernels(wait=600):
        print(f"the counting's compiled kernels: {accumulator.KERNELS.error}")
    judged: list[float] = []
    timed_judge(judged)
    states = [("learning", args.seconds, args.rate_hz, [])]
    if args.steady_seconds:
        states.append(("steady", args.steady_seconds, args.steady_rate_hz, faults(geometry)))
    for name, seconds, rate_hz, injected in states:
        files = simulate(workdir / f"{name}-{seconds}s-{rate_hz}hz", args.geometry, seconds, rate_hz, injected)
        monitor = Monitor(geometry)
        for path in files:
            monitor.add_file(path)
            monitor.update()
        described = f"{name} ({seconds} s of data at {rate_hz} Hz a channel, {len(files)} files)"
        time_state(described, monitor, args.repeat, judged)
    print(f"\n{load()} at the end")


if __name__ == "__main__":
    main()
