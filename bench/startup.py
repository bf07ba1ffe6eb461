"""Start-up cost: whole fresh processes of ``larpix-dqm --help``, shell completion and ``once --no-plots`` on a
small simulated file, against their goals (issue 21 item 1), and the geometry build of each packaged layout
(and of any ``--geometry`` file, e.g. an ND-LAr module's multi_tile_layout-3.0.40.yaml) parsed and built, and
loaded from the cache. For each ``--geometry`` file also ``once --no-plots -o OUT`` on 10 s of its data at
0.2 Hz a channel (issue 21 item 3: under 2 s for an ND-LAr module), with and without ``--channels``.

Each figure is the median of ``--repeat`` fresh processes, with the machine's load average beside it (the
machine is shared: figures move with it), the package byte-compiled first as ``pip install`` does
(``bytecode_compile.py``). Prints figures only, asserts nothing.

Usage: python bench/startup.py [--repeat 7] [--geometry PATH ...] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bytecode_compile import compile_package

from larpix_dqm.exporter.detector.geometry import packaged_layouts

#: Goals of issue 21 item 1, seconds of wall time of the whole process.
HELP_GOAL, ONCE_GOAL = 0.3, 0.6
#: Goal of issue 21 item 3: ``once`` on 10 s of an ND-LAr module's data at 0.2 Hz a channel, seconds.
MODULE_ONCE_GOAL = 2.0
CLI = [sys.executable, "-m", "larpix_dqm.exporter.cli"]
#: The entry point as the installed script runs it: completion keys its variable on the program's name.
ENTRY_POINT = [
    sys.executable,
    "-c",
    "import sys; sys.argv[0] = 'larpix-dqm'; from larpix_dqm.exporter.cli import run; run()",
]
START = 1_700_000_000


def median_seconds(cmd: list[str], repeat: int, env: dict | None = None) -> float:
    """Median wall time of ``repeat`` runs of ``cmd``, each a fresh process that must exit 0."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        subprocess.run(cmd, capture_output=True, check=True, env=env)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def measure_geometry(path: str) -> None:
    """In this (fresh) process: seconds to load the geometry at ``path``, as JSON on the last line."""
    from larpix_dqm.exporter.detector.geometry import load_geometry

    started = time.perf_counter()
    geometry = load_geometry(path)
    print(json.dumps({"seconds": time.perf_counter() - started, "channels": int(geometry.connected.sum())}))


def geometry_seconds(path: str, repeat: int, cached: bool) -> tuple[float, int]:
    """Median seconds of ``load_geometry`` in fresh processes, with an empty cache or a filled one; channels."""
    runs = []
    with tempfile.TemporaryDirectory() as cache:
        for _ in range(repeat + cached):
            home = cache if cached else tempfile.mkdtemp(dir=cache)
            out = subprocess.run(
                [sys.executable, __file__, "--measure-geometry", path],
                capture_output=True,
                text=True,
                check=True,
                env={**os.environ, "XDG_CACHE_HOME": home},
            ).stdout
            runs.append(json.loads(out.strip().splitlines()[-1]))
    runs = runs[1:] if cached else runs  # the first run fills the cache
    return statistics.median(r["seconds"] for r in runs), runs[0]["channels"]


def load() -> str:
    return "load average {:.1f} {:.1f} {:.1f}".format(*os.getloadavg())


def row(label: str, seconds: float, goal: float | None = None) -> None:
    met = "" if goal is None else f"   goal < {goal} s: {'met' if seconds < goal else 'missed'}"
    print(f"  {label:<58}{seconds:7.3f} s{met}")


def module_once(geometry: str, workdir: Path, repeat: int) -> None:
    """``once --no-plots -o OUT`` on 10 s of ``geometry``'s data at 0.2 Hz a channel (a raw file), whole fresh
    processes with the geometry cached, as a run coordinator's script would call it; and the summary's size."""
    data = workdir / f"module-{Path(geometry).stem}"
    if not list(data.glob("*.h5")):
        simulate = ["simulate", str(data), "--seconds", "10", "--fast", "--start-time", str(START)]
        subprocess.run([*CLI, *simulate, "--geometry", geometry, "--rate-hz", "0.2"], capture_output=True, check=True)
    (path,) = data.glob("*.h5")
    print(f"\nonce on 10 s of {Path(geometry).name} at 0.2 Hz a channel ({path.stat().st_size / 1e6:.0f} MB raw file)")
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "XDG_CACHE_HOME": cache}
        for extra in ([], ["--channels"]):
            out = workdir / "module-out"
            once = [*CLI, "once", str(path), "--no-plots", "-o", str(out), "--geometry", geometry, *extra]
            subprocess.run(once, capture_output=True, check=True, env=env)  # fills the geometry cache
            seconds = median_seconds(once, repeat, env)
            size = (out / "summary.json").stat().st_size / 1e6
            row(f"once --no-plots -o {' '.join(extra)} (summary.json {size:.1f} MB)", seconds, MODULE_ONCE_GOAL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=7, help="fresh processes per figure; the median counts")
    parser.add_argument("--geometry", nargs="*", default=[], help="more layout files to time (e.g. 3.0.40)")
    parser.add_argument("--workdir")
    parser.add_argument("--measure-geometry", metavar="PATH", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure_geometry:
        measure_geometry(args.measure_geometry)
        return
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="larpix-bench-"))
    data = workdir / "data"
    if not list(data.glob("*.h5")):
        subprocess.run(
            [*CLI, "simulate", str(data), "--seconds", "1", "--fast", "--start-time", str(START)],
            capture_output=True,
            check=True,
        )
    (small,) = data.glob("*.h5")
    repeat = args.repeat
    print(f"median of {repeat} fresh processes; {load()} at the start")
    print(compile_package())

    print("\nwhole processes")
    row("python -c pass", median_seconds([sys.executable, "-c", "pass"], repeat))
    row("python -c 'import typer'", median_seconds([sys.executable, "-c", "import typer"], repeat))
    row("larpix-dqm --help", median_seconds([*CLI, "--help"], repeat), HELP_GOAL)
    completion = {
        **os.environ,
        "_LARPIX_DQM_COMPLETE": "complete_bash",
        "COMP_WORDS": "larpix-dqm on",
        "COMP_CWORD": "1",
    }
    row("completion (bash, larpix-dqm on<TAB>)", median_seconds(ENTRY_POINT, repeat, completion), HELP_GOAL)
    size = f"{small.stat().st_size / 1e6:.1f} MB raw file"
    once = [*CLI, "once", str(small), "--no-plots"]
    row(f"once --no-plots, {size}, no geometry", median_seconds(once, repeat), ONCE_GOAL)
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "XDG_CACHE_HOME": cache}
        once += ["--geometry", "multi_tile_layout-2.4.16"]
        subprocess.run(once, capture_output=True, check=True, env=env)  # fills the geometry cache
        row(f"once --no-plots, {size}, 16-tile module (cached)", median_seconds(once, repeat, env), ONCE_GOAL)

    print("\ngeometry: load_geometry in a fresh process (YAML parsed with the C loader and built / from the cache)")
    print(f"  {'layout':<34}{'channels':>9}{'parse+build':>13}{'cached':>9}")
    for path in [*map(str, packaged_layouts()), *args.geometry]:
        built, channels = geometry_seconds(path, repeat, cached=False)
        cached, _ = geometry_seconds(path, repeat, cached=True)
        print(f"  {Path(path).name:<34}{channels:>9,}{built:>11.3f} s{cached:>7.3f} s")
    for path in args.geometry:
        module_once(path, workdir, repeat)
    print(f"\n{load()} at the end")


if __name__ == "__main__":
    main()
