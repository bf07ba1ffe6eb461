"""False verdicts per evaluation of a healthy module, and the data time until dead chips and channels are flagged.

A 16-tile module (78,400 channels, 1,600 chips), every channel with its own constant rate (the
occupancy times a log-normal spread, sigma 0.3). Fast path: the verdict engine is driven with
exactly sampled Poisson counts (hits in the run, in the window, time since the last hit) at
evaluations spread over a run of up to two hours; the end-to-end path runs the simulator, the
decoder and the accumulator for a few minutes and counts the false verdicts of every update.

Prints figures only (no assertions). Usage: python bench/verdicts.py [--evaluations 300] [--alpha 0.01]
[--occupancies 0.01 0.05 0.2 0.5 2] [--seconds 600]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
sys.path.insert(0, os.path.dirname(_HERE))

import numpy as np  # noqa: E402

from exporter.detector.geometry import load_geometry, packaged_layout  # noqa: E402
from exporter.monitor import Monitor  # noqa: E402
from exporter.quality.checks import DEFAULT_CHECKS, counting_status  # noqa: E402
from exporter.quality.status import ChannelStatus  # noqa: E402
from exporter.quality.verdicts import VerdictInputs, judge  # noqa: E402
from exporter.reading.decode import decode_messages  # noqa: E402
from exporter.simulate import SimulationConfig, Simulator  # noqa: E402

OCCUPANCIES_HZ = (0.01, 0.05, 0.2, 0.5, 2.0)
WINDOW_S = 60.0
LONGEST_RUN_S = 7200.0
SPREAD_SIGMA = 0.3
NOISY_RATE_HZ = 10.0
START = 1_700_000_000
FALSE_CHANNEL = (ChannelStatus.SILENT, ChannelStatus.NOISY, ChannelStatus.INEFFICIENT)
HIT_RATE_RATIO = next(c for c in DEFAULT_CHECKS if c.name == "hit_rate_ratio")


def channel_rates(geometry, occupancy: float, rng: np.random.Generator) -> np.ndarray:
    """(chips, 64) constant rate of every connected channel: occupancy x log-normal spread."""
    spread = rng.lognormal(-0.5 * SPREAD_SIGMA**2, SPREAD_SIGMA, geometry.connected.shape)
    return np.where(geometry.connected, occupancy * spread, 0.0)


def sample(rates: np.ndarray, run_s: float, rng: np.random.Generator, dead_since: np.ndarray) -> dict:
    """Exact Poisson samples of one evaluation: hits in the run and window, data time since the last hit.

    ``dead_since`` (chips, 64): data time from the run start at which a channel stopped (inf: never).
    """
    window = min(WINDOW_S, run_s)
    alive = np.minimum(dead_since, run_s)  # span the channel sent hits
    hits = rng.poisson(rates * alive)
    live_window = np.clip(alive - (run_s - window), 0.0, window)
    with np.errstate(invalid="ignore", divide="ignore"):
        in_window = rng.binomial(hits, np.where(alive > 0, live_window / alive, 0.0))
    u = rng.random(rates.shape)
    with np.errstate(divide="ignore", invalid="ignore"):
        # newest of k uniform hit times in a span L lies L * U**(1/k) into it
        last_in_window = (run_s - window) + live_window * u ** (1.0 / np.maximum(in_window, 1))
        earlier = hits - in_window
        last_before = (alive - live_window) * u ** (1.0 / np.maximum(earlier, 1))
    last = np.where(in_window > 0, last_in_window, np.where(hits > 0, last_before, np.nan))
    silence = np.where(np.isnan(last), run_s, run_s - last)
    return {"hits_total": hits, "window_hits": in_window, "silence_seconds": silence, "window": window}


def evaluate(geometry, rates, run_s, rng, alpha, dead_since=None):
    """Verdicts of one sampled evaluation."""
    dead_since = np.full(rates.shape, np.inf) if dead_since is None else dead_since
    s = sample(rates, run_s, rng, dead_since)
    n = len(rates)
    inputs = VerdictInputs(
        window_hits=s["window_hits"],
        hits_total=s["hits_total"],
        silence_seconds=s["silence_seconds"],
        window_seconds=np.full(n, s["window"]),
        run_seconds=np.full(n, run_s),
        expected=geometry.connected | (s["hits_total"] > 0),
        groups=geometry.tiles,
    )
    return judge(inputs, alpha, NOISY_RATE_HZ)


def false_verdicts(verdicts, alpha: float) -> int:
    """Verdicts that are wrong for a healthy module: channel faults, dead chips, chip hit-rate warnings."""
    channels = int(np.isin(verdicts.channel_status, FALSE_CHANNEL).sum())
    chips = int(verdicts.chip_dead.sum())
    rate = counting_status(verdicts.chip_window_hits, verdicts.chip_expected_hits, HIT_RATE_RATIO, alpha)
    return channels + chips + int((rate > 0).sum())


def first_flagged(geometry, rates, rng, alpha, died: float, dead_since, flagged) -> float:
    """Data time from the death at ``died`` until ``flagged(verdicts)`` holds (bisection to 1 %)."""
    low, high = 1.0, 4 * 86400.0
    if not flagged(evaluate(geometry, rates, died + high, rng, alpha, dead_since)):
        return float("inf")
    while high / low > 1.01:
        mid = (low * high) ** 0.5
        if flagged(evaluate(geometry, rates, died + mid, rng, alpha, dead_since)):
            high = mid
        else:
            low = mid
    return high


def fast(geometry, occupancies: list[float], evaluations: int, alpha: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    chip = int(np.flatnonzero(geometry.connected.any(axis=1))[123])
    channel_chip, channel = 456, int(np.flatnonzero(geometry.connected[456])[7])
    print(
        f"fast path: {int(geometry.connected.sum())} channels, {int(geometry.connected.any(axis=1).sum())} chips, "
        f"{evaluations} evaluations per occupancy at run lengths 60 s .. {LONGEST_RUN_S:.0f} s, alpha {alpha:g}"
    )
    header = (
        f"{'Hz/channel':>10} {'false/eval':>10} {'evals with any':>14} {'unknown ch.':>11} "
        f"{'dead chip (start)':>17} {'dead channel (start)':>20} {'chip dies at 30 min':>19} "
        f"{'channel dies at 30 min':>22}"
    )
    print(header)
    for occupancy in occupancies:
        rates = channel_rates(geometry, occupancy, rng)
        runs = np.exp(rng.uniform(np.log(WINDOW_S), np.log(LONGEST_RUN_S), evaluations))
        false, unknown = [], []
        for run_s in runs:
            v = evaluate(geometry, rates, run_s, rng, alpha)
            false.append(false_verdicts(v, alpha))
            unknown.append(np.mean(v.channel_status[geometry.connected] == ChannelStatus.UNKNOWN))
        false = np.array(false)
        times = []
        for start in (0.0, 1800.0):
            dead = np.full(rates.shape, np.inf)
            dead[chip] = start
            times.append(first_flagged(geometry, rates, rng, alpha, start, dead, lambda v: v.chip_dead[chip]))
            dead = np.full(rates.shape, np.inf)
            dead[channel_chip, channel] = start
            times.append(
                first_flagged(
                    geometry,
                    rates,
                    rng,
                    alpha,
                    start,
                    dead,
                    lambda v: v.channel_status[channel_chip, channel] == ChannelStatus.SILENT,
                )
            )
        chip_start, channel_start, chip_mid, channel_mid = times
        print(
            f"{occupancy:>10g} {false.mean():>10.4f} {np.mean(false > 0):>14.4f} {np.mean(unknown):>11.1%} "
            f"{duration(chip_start):>17} {duration(channel_start):>20} {duration(chip_mid):>19} {duration(channel_mid):>22}"
        )


def duration(seconds: float) -> str:
    if not np.isfinite(seconds):
        return "never"
    return f"{seconds:.0f} s" if seconds < 600 else f"{seconds / 60:.1f} min"


def end_to_end(geometry, seconds: int, occupancy: float, alpha: float, every: int) -> None:
    """Simulator -> decoder -> accumulator -> verdicts and checks, a healthy module, every ``every`` s."""
    monitor = Monitor(geometry, false_alarm_probability=alpha)
    sim = Simulator(geometry, SimulationConfig(hit_rate_hz=occupancy, seed=5))
    false, evaluations, started = 0, 0, time.perf_counter()
    for t in range(seconds):
        monitor.feed(decode_messages(*sim.second(START + t)).packets, wall_now=START + seconds)
        if t % every == every - 1:
            state = monitor.update()
            snap = state.snapshot
            false += int(np.isin(snap.channel_status, FALSE_CHANNEL).sum()) + int(snap.chip_dead.sum())
            false += int((state.results.chip_status > 0).sum())
            evaluations += 1
    print(
        f"end to end: {occupancy:g} Hz/channel, {seconds} s of data, {evaluations} evaluations: "
        f"{false} false verdicts or check warnings ({false / max(evaluations, 1):.4f} per evaluation; "
        f"{time.perf_counter() - started:.0f} s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--evaluations", type=int, default=300, help="evaluations per occupancy (fast path)")
    parser.add_argument("--alpha", type=float, default=0.01, help="false-alarm probability per evaluation")
    parser.add_argument("--seconds", type=int, default=600, help="data seconds of the end-to-end run (0: skip)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--occupancies", type=float, nargs="+", default=list(OCCUPANCIES_HZ), help="hit rates per channel (Hz)"
    )
    args = parser.parse_args()
    geometry = load_geometry(packaged_layout())
    fast(geometry, args.occupancies, args.evaluations, args.alpha, args.seed)
    if args.seconds:
        end_to_end(geometry, args.seconds, 0.05, args.alpha, every=min(10, args.seconds))


if __name__ == "__main__":
    main()
