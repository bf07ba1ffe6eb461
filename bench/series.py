"""Series per metric family of one /metrics scrape of a simulated module: the series budget (issue 22).

A module (default: the packaged 16-tile layout; ``--geometry`` an ND-LAr layout such as
multi_tile_layout-3.0.40.yaml) is simulated for ``--seconds`` of data at ``--rate-hz`` per channel,
read whole as ``once`` reads it, and its families rendered as a scrape of ``serve`` shows them
(check statuses included). Printed: series and bytes per family, the total, and the per-pixel job
(/metrics?per_pixel=1: its extra series, bytes and rendering time).

Usage: python bench/series.py [--geometry multi_tile_layout-3.0.40.yaml] [--seconds 10] [--rate-hz 0.2]
[--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import Counter

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
sys.path.insert(0, os.path.dirname(_HERE))

from larpix_dqm.exporter.detector.geometry import GeometrySummary, load_geometry, packaged_layout  # noqa: E402
from larpix_dqm.exporter.metrics.exposition import Family, render  # noqa: E402
from larpix_dqm.exporter.metrics.families import FamilyBuilder  # noqa: E402
from larpix_dqm.exporter.runtime.once import process_file  # noqa: E402
from larpix_dqm.exporter.simulate import SimulationConfig, Simulator, write_run  # noqa: E402

START = 1_700_000_000


def per_family(families: list[Family]) -> tuple[Counter[str], Counter[str]]:
    """Series and rendered bytes of each family (a histogram's buckets, sum and count are its series)."""
    series: Counter[str] = Counter()
    size: Counter[str] = Counter()
    for fam in families:
        series[fam.name] += sum(len(s.labels) for s in fam.samples)
        size[fam.name] += len(render([fam]).encode())
    return series, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--geometry", default=str(packaged_layout()), help="layout file or packaged layout name")
    parser.add_argument("--seconds", type=int, default=10, help="seconds of data to simulate")
    parser.add_argument("--rate-hz", type=float, default=0.2, help="self-trigger rate per channel")
    parser.add_argument("--repeat", type=int, default=3, help="renderings of the per-pixel scrape timed (best)")
    args = parser.parse_args()

    geometry = load_geometry(args.geometry)
    summary = GeometrySummary.of(geometry)
    with tempfile.TemporaryDirectory() as tmp:
        simulator = Simulator(geometry, SimulationConfig(hit_rate_hz=args.rate_hz))
        (path,) = write_run(simulator, tmp, seconds=args.seconds, realtime=False, start_time=START)
        result = process_file(str(path), geometry)
    builder = FamilyBuilder(geometry=geometry)
    snap, health = result.snapshot, result.health
    families = builder.families(snap, health, evaluation=result.evaluation)
    series, size = per_family(families)
    total, text = sum(series.values()), render(families)

    print(
        f"{summary.name}: {summary.tiles} tiles, {summary.chips:,} chips, {summary.channels:,} channels; "
        f"{args.seconds} s at {args.rate_hz} Hz per channel"
    )
    print(f"{'family':<48}{'series':>9}{'share':>8}{'kB':>9}")
    for name, n in series.most_common():
        print(f"{name:<48}{n:>9,}{n / total:>8.1%}{size[name] / 1e3:>9.1f}")
    print(f"{'total /metrics':<48}{total:>9,}{'':>8}{len(text.encode()) / 1e3:>9.1f}")

    pixel_families = builder.families(snap, health, per_pixel=True, evaluation=result.evaluation)
    best = float("inf")
    for _ in range(args.repeat):
        started = time.perf_counter()
        pixel_text = render(builder.families(snap, health, per_pixel=True, evaluation=result.evaluation))
        best = min(best, time.perf_counter() - started)
    pixel_series = sum(per_family(pixel_families)[0].values())
    print(
        f"{'per-pixel job (/metrics?per_pixel=1)':<48}{pixel_series:>9,}{'':>8}{len(pixel_text.encode()) / 1e3:>9.1f}"
        f"  ({pixel_series - total:,} per-pixel series, {best * 1e3:,.0f} ms a scrape)"
    )


if __name__ == "__main__":
    main()
