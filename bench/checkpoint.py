"""Cost of checkpoints: what every poll writes (counters, cursors) and what the window adds.

For a module (2 io_groups, 1,600 chips), a 2x2-sized detector (8 io_groups, 6,400 chips) and
50 io_groups (40,000 chips), each with ``--files`` file cursors, prints the size and the time
of the checkpoint written after every poll that counted something (counters and cursors) and
of the window file (written at most every ``--window-checkpoint-interval`` seconds and on
shutdown), then the time to restore both.

Usage: python bench/checkpoint.py [--files 1000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from exposition import detector

from larpix_dqm.exporter.metrics.health import Health
from larpix_dqm.exporter.quality.accumulator import Accumulator
from larpix_dqm.exporter.reading.tail import DirectoryTail, FileCursor
from larpix_dqm.exporter.runtime.checkpoint import Checkpoint

CASES = (("module (1,600 chips)", 2), ("2x2 (6,400 chips)", 8), ("50 io_groups (40,000 chips)", 50))


def best_of(repeat: int, fn) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def measure(accumulator: Accumulator, tail: DirectoryTail, folder: Path, repeat: int) -> tuple[float, ...]:
    """Seconds and MB of a checkpoint without and with the window file, and seconds to restore both."""
    checkpoint = Checkpoint(folder / "state.npz")
    poll = best_of(repeat, lambda: checkpoint.save(accumulator, tail, Health(), with_window=False))
    poll_mb = checkpoint.last_bytes / 1e6
    both = best_of(repeat, lambda: checkpoint.save(accumulator, tail, Health(), with_window=True))
    window_mb = checkpoint.last_bytes / 1e6 - poll_mb
    fresh = DirectoryTail(tail.inputs)
    restore = best_of(
        repeat, lambda: Checkpoint(checkpoint.path).load(Accumulator(accumulator.config), fresh, Health())
    )
    return poll, poll_mb, both - poll, window_mb, restore


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--io-groups", type=int, nargs="*", help="only these cases (2, 8, 50)")
    args = parser.parse_args()
    tail = DirectoryTail([])
    for i in range(args.files):
        cursor = FileCursor(f"/data/run/file-{i:06d}.h5", 2049, 1_000_000 + i, 1.7e9 + i, "raw", 123_456)
        tail.cursors[cursor.path] = cursor
    print(f"{args.files} file cursors; best of {args.repeat}")
    print(f"{'detector':<30}{'every poll':>20}{'window file':>20}{'restore':>10}")
    for name, io_groups in CASES:
        if args.io_groups and io_groups not in args.io_groups:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            poll, poll_mb, window_s, window_mb, restore = measure(
                detector(io_groups, 800), tail, Path(tmp), args.repeat
            )
        print(
            f"{name:<30}{f'{poll_mb:.1f} MB {poll:.2f} s':>20}{f'{window_mb:.0f} MB {window_s:.2f} s':>20}"
            f"{f'{restore:.2f} s':>10}"
        )


if __name__ == "__main__":
    main()
