"""Cost of one /metrics rendering: per-chip series of a 2x2-sized detector, per-pixel series of
one module, and client_python's generic exposition of the same per-pixel families.

Usage: python bench/exposition.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import gzip
import resource
import time
from collections.abc import Iterable

import numpy as np

from larpix_dqm.exporter.metrics.exposition import Family, render
from larpix_dqm.exporter.metrics.families import FamilyBuilder
from larpix_dqm.exporter.metrics.health import Health
from larpix_dqm.exporter.monitor import Evaluation
from larpix_dqm.exporter.quality.accumulator import Accumulator
from larpix_dqm.exporter.quality.checks import DEFAULT_CHECKS, evaluate
from larpix_dqm.exporter.quality.clock import DataClock
from larpix_dqm.exporter.reading.packets import PACKET_DTYPE, TIMESTAMP
from larpix_dqm.exporter.web.server import GZIP_LEVEL

START = 1_700_000_000


def client_families(families: Iterable[Family]) -> list:
    """The same families as prometheus_client metric families, for its generic exposition."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

    out = []
    for fam in families:
        metric: Metric
        if fam.type == "counter":
            metric = CounterMetricFamily(fam.name, fam.help)
        elif fam.type == "gauge":
            metric = GaugeMetricFamily(fam.name, fam.help)
        else:
            metric = Metric(fam.name, fam.help, fam.type)
        for s in fam.samples:
            for row, value in zip(s.rows, s.values.tolist()):
                metric.add_sample(fam.name + s.suffix, dict(zip(s.names, map(str, row))), value)
        out.append(metric)
    return out


def detector(io_groups: int, chips_per_group: int, channels: int = 49) -> Accumulator:
    """An accumulator holding one second of hits on every channel of a synthetic detector."""
    chips = np.array(
        [(g, 1 + c // 25, 11 + c % 100) for g in range(1, io_groups + 1) for c in range(chips_per_group)], np.uint8
    )
    rows = np.repeat(np.arange(len(chips)), channels)
    packets = np.zeros(len(rows) + 1, PACKET_DTYPE)
    packets[0]["packet_type"], packets[0]["timestamp"], packets[0]["io_group"] = TIMESTAMP, START, 1
    body = packets[1:]
    body["io_group"], body["io_channel"], body["chip_id"] = chips[rows].T
    body["channel_id"] = np.tile(np.arange(channels), len(chips))
    body["dataword"] = np.random.default_rng(0).integers(60, 100, len(rows))
    body["valid_parity"] = 1
    acc = Accumulator()
    acc.add(packets, DataClock(), START + 10)
    return acc


def best_of(repeat: int, fn) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeat):
        started = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - started)
    return best, result


def series_count(text: str) -> int:
    return sum(1 for line in text.splitlines() if line and not line.startswith("#"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    from prometheus_client.exposition import generate_latest

    class Registry:
        def __init__(self, families):
            self.families = families

        def collect(self):
            return self.families

    print(f"{'case':<44}{'series':>9}{'ms/scrape':>11}{'ns/series':>11}")
    two_by_two = detector(8, 800)
    snap, health = two_by_two.snapshot(), Health()
    state = Evaluation(snap, evaluate(snap, DEFAULT_CHECKS), None, time.time())
    collector = FamilyBuilder()
    seconds, text = best_of(args.repeat, lambda: render(collector.families(snap, health, evaluation=state)))
    n = series_count(text)
    print(f"{'2x2 per-chip + checks (6,400 chips)':<44}{n:>9,}{seconds * 1e3:>11.1f}{seconds / n * 1e9:>11.0f}")
    gz, _ = best_of(args.repeat, lambda: gzip.compress(text.encode(), GZIP_LEVEL))
    print(f"{f'  + gzip level {GZIP_LEVEL}':<44}{'':>9}{gz * 1e3:>11.1f}")

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{'  peak RSS with the 2x2 state (MB)':<44}{'':>9}{rss:>11.0f}")

    module = detector(2, 800)
    snap = module.snapshot()
    families = FamilyBuilder()._pixels(snap)
    seconds, text = best_of(args.repeat, lambda: render(families))
    n = series_count(text)
    print(f"{'module per-pixel (78,400 px), this renderer':<44}{n:>9,}{seconds * 1e3:>11.1f}{seconds / n * 1e9:>11.0f}")
    generic = client_families(families)
    g_seconds, g_text = best_of(max(1, args.repeat // 2), lambda: generate_latest(Registry(generic)))
    print(f"{'module per-pixel, client_python generic':<44}{n:>9,}{g_seconds * 1e3:>11.1f}{g_seconds / n * 1e9:>11.0f}")
    print(f"per-series cost ratio generic/this: {g_seconds / seconds:.1f}x (target >= 3x)")


if __name__ == "__main__":
    main()
