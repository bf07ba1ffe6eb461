"""False verdicts per evaluation of a healthy module, and the data time until dead chips and channels are flagged.

A 16-tile module (78,400 channels, 1,600 chips), every channel with its own constant rate (the
occupancy times a log-normal spread, sigma 0.3). Fast path: the verdict engine is driven with
exactly sampled Poisson counts (hits in the run, in the window, time since the last hit) at
evaluations spread over a run of up to two hours; the end-to-end path runs the simulator, the
decoder and the accumulator for a few minutes and counts the false verdicts of every update.

Scenario mode (``--scenarios``): each named scenario of exporter/simulation/scenarios.py (tracks,
beam, pauses, runs, faults) is written second by second to raw files by the simulator's writer
and read back as ``serve`` reads them (DirectoryTail, Monitor.feed_chunk with the data time as the
wall clock, Monitor.update every ``--every`` s of data time). Printed per scenario: false verdicts
per 8-hour shift of data time (channel verdicts, dead chips, check warnings and errors entered on
healthy parts), false pages (every critical alert of alerts/larpix.rules.yml whose condition held
for its ``for:``, its expression read from the evaluation: ``PAGE_CONDITIONS``), and for a fault
the data time until it is flagged and paged, and the alert that paged first.

Prints figures only (no assertions). Usage: python bench/verdicts.py [--evaluations 300] [--alpha 0.01]
[--occupancies 0.01 0.05 0.2 0.5 2] [--seconds 600]; python bench/verdicts.py --scenarios all
[--scenario-seconds 3600] [--every 10] [--tiles 16]
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
sys.path.insert(0, os.path.dirname(_HERE))

import numpy as np  # noqa: E402
import yaml  # noqa: E402

from larpix_dqm.exporter.detector.geometry import Geometry, load_geometry, packaged_layout  # noqa: E402
from larpix_dqm.exporter.monitor import Evaluation, Monitor  # noqa: E402
from larpix_dqm.exporter.quality.checks import DEFAULT_CHECKS, counting_status  # noqa: E402
from larpix_dqm.exporter.quality.status import ChannelStatus  # noqa: E402
from larpix_dqm.exporter.quality.verdicts import VerdictInputs, judge  # noqa: E402
from larpix_dqm.exporter.reading.decode import decode_messages  # noqa: E402
from larpix_dqm.exporter.reading.files import FileReader  # noqa: E402
from larpix_dqm.exporter.reading.tail import DirectoryTail, InputSpec  # noqa: E402
from larpix_dqm.exporter.simulate import SimulationConfig, Simulator, write_run  # noqa: E402
from larpix_dqm.exporter.simulation.scenarios import DESCRIPTIONS, Scenario, scenario  # noqa: E402

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
        false_list, unknown = [], []
        for run_s in runs:
            v = evaluate(geometry, rates, run_s, rng, alpha)
            false_list.append(false_verdicts(v, alpha))
            unknown.append(np.mean(v.channel_status[geometry.connected] == ChannelStatus.UNKNOWN))
        false = np.array(false_list)
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


SHIFT_S = 8 * 3600.0
WEEK_S = 7 * 24 * 3600.0


def poisson_upper(k: int, confidence: float = 0.95) -> float:
    """The upper limit on a Poisson mean after observing ``k`` events (3.0 for none at 95 %)."""
    low, high = 0.0, 10.0 + 10.0 * k
    for _ in range(100):  # bisect P(X <= k; mu) = 1 - confidence
        mu = (low + high) / 2
        cdf = math.exp(-mu) * sum(mu**i / math.factorial(i) for i in range(k + 1))
        low, high = (mu, high) if cdf > 1 - confidence else (low, mu)
    return (low + high) / 2


RULES = Path(_HERE).parent / "alerts" / "larpix.rules.yml"
#: Data older than this silences the critical alerts (their ``unless ... > 300`` clause).
STALE_S = 300.0


def alert_rules() -> list[dict]:
    """The alerting rules of alerts/larpix.rules.yml."""
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"] if "alert" in r]


def alert_for_seconds(name: str) -> float:
    """The ``for:`` of alert ``name`` in alerts/larpix.rules.yml, in seconds."""
    spec = next(r for r in alert_rules() if r["alert"] == name).get("for", "0s")
    return sum(float(n) * {"s": 1, "m": 60, "h": 3600}[u] for n, u in re.findall(r"(\d+)([smh])", spec))


#: Critical alerts about the exporter itself, not the detector's data: the bench's exporter is always up,
#: and its staleness is the ``live`` clause every page below shares (a pause's LarpixDataStale is true).
EXPORTER_PAGES = ("LarpixExporterDown", "LarpixDataStale")


def critical_alerts() -> list[str]:
    """The names of the ``severity: critical`` alerts of alerts/larpix.rules.yml, the bench's pages."""
    return [r["alert"] for r in alert_rules() if r.get("labels", {}).get("severity") == "critical"]


def sub_geometry(geometry: Geometry, tiles: int) -> Geometry:
    """The first ``tiles`` tiles of a geometry (a smaller detector for quick runs)."""
    keep = np.isin(geometry.tiles, np.unique(geometry.tiles)[:tiles])
    g = geometry
    return Geometry(g.path, g.chips[keep], g.tiles[keep], g.x[keep], g.y[keep], g.connected[keep], g.pixel_pitch, {})


@dataclass
class Episodes:
    """Targets entering a state (rising edges), counted from one evaluation to the next."""

    previous: np.ndarray | None = None
    count: int = 0

    def add(self, now: np.ndarray) -> np.ndarray:
        """Count and return the targets that entered the state since the last call."""
        rising = now & ~self.previous if self.previous is not None else now.copy()
        self.previous = now
        self.count += int(rising.sum())
        return rising


@dataclass
class Page:
    """A critical alert: its condition must hold for ``for_s`` of (wall = data) time, while data is not stale."""

    name: str
    for_s: float
    since: np.ndarray | None = None
    firing: Episodes = field(default_factory=Episodes)

    def add(self, now: float, condition: np.ndarray) -> np.ndarray:
        """The targets whose alert starts firing at ``now``."""
        since = np.full(condition.shape, np.nan) if self.since is None else self.since
        self.since = np.where(condition, np.where(np.isnan(since), now, since), np.nan)
        return self.firing.add(condition & (now - self.since >= self.for_s))


def check_status(results, name: str, n: int) -> np.ndarray:
    """The statuses of chip check ``name`` of the first ``n`` chips (0 where the run mode disables it)."""
    names = [c.name for c in results.chip_checks]
    return results.chip_status[names.index(name), :n] if name in names else np.zeros(n, np.int8)


def any_in(values: np.ndarray, inverse: np.ndarray, size: int) -> np.ndarray:
    """Per region (``inverse``: each chip's region index), whether any of its chips' ``values`` holds."""
    return np.bincount(inverse, values.astype(float), size) > 0


#: Each critical alert's expression, read from one evaluation (``run``: the ScenarioRun, for its regions):
#: per target of the alert (chip, tile, io_channel, io_group), whether its condition holds.
PAGE_CONDITIONS = {
    # larpix_chip_dead == 1
    "LarpixChipSilent": lambda run, snap, results: snap.chip_dead[: run.n_chips],
    # max by (tile) (larpix_check_status{check="tile_rate"}) >= 2
    "LarpixTileRateError": lambda run, snap, results: any_in(
        check_status(results, "tile_rate", run.n_chips) >= 2, run.tile_index, run.n_tiles
    ),
    # max by (io_group, io_channel) (larpix_check_status{check="io_channel_never_seen"}) >= 2
    "LarpixIoChannelNeverSeen": lambda run, snap, results: any_in(
        check_status(results, "io_channel_never_seen", run.n_chips) >= 2, run.link_index, run.n_links
    ),
    # larpix_io_group_sync_rate_hertz < 0.5
    "LarpixSyncMissing": lambda run, snap, results: snap.sync_rate_hz[run.groups] < 0.5,
    # max by (io_group) (larpix_io_group_status) >= 2
    "LarpixDetectorStatusError": lambda run, snap, results: results.io_group_status[run.groups] >= 2,
}


class ScenarioRun:
    """One scenario end to end: simulator -> raw files -> the reading and monitor of ``serve``; false verdicts and delays."""

    def __init__(self, geometry: Geometry, sc: Scenario, every: int, workdir: Path) -> None:
        self.sc, self.every, self.workdir = sc, every, workdir
        self.sim = Simulator(geometry, sc.config, sc.faults, sc.activity)
        self.monitor = Monitor(geometry)  # serve's defaults: window 60 s, alpha 0.01, noisy cut 10 Hz
        self.tail = DirectoryTail([InputSpec(str(workdir))], FileReader())
        rows, channels = np.nonzero(geometry.connected)
        faulty = self.sim.bad_parity | self.sim.silent
        for mask in self.sim.change_masks:
            faulty = faulty | mask
        self.affected = np.zeros(geometry.connected.shape, bool)
        self.affected[rows[faulty], channels[faulty]] = True
        self.chip_affected = np.asarray(self.affected.any(axis=1))
        self.groups = np.unique(geometry.chips[:, 0])
        self.group_affected = np.isin(self.groups, geometry.chips[self.chip_affected, 0])
        self.n_chips = len(geometry.chips)
        tiles, self.tile_index = np.unique(geometry.tiles, return_inverse=True)
        links, self.link_index = np.unique(geometry.chips[:, :2], axis=0, return_inverse=True)
        self.tile_index, self.link_index = self.tile_index.reshape(-1), self.link_index.reshape(-1)
        self.n_tiles, self.n_links = len(tiles), len(links)
        #: per page, which of its targets (chips, tiles, io_channels, io_groups) hold the fault
        self.affected_targets = {
            "LarpixChipSilent": self.chip_affected,
            "LarpixTileRateError": any_in(self.chip_affected, self.tile_index, self.n_tiles),
            "LarpixIoChannelNeverSeen": any_in(self.chip_affected, self.link_index, self.n_links),
            "LarpixSyncMissing": self.group_affected,
            "LarpixDetectorStatusError": self.group_affected,
        }
        self.channel = Episodes()
        self.chip = Episodes()
        self.warnings = Episodes()
        self.errors = Episodes()
        unknown = set(critical_alerts()) - set(PAGE_CONDITIONS) - set(EXPORTER_PAGES)
        if unknown:
            raise SystemExit(f"bench/verdicts.py: no page condition for the critical alerts {sorted(unknown)}")
        self.pages = [Page(name, alert_for_seconds(name)) for name in critical_alerts() if name in PAGE_CONDITIONS]
        self.false_pages = 0
        self.evaluations = self.evaluations_false = 0
        self.by_status: dict[str, int] = {}
        self.by_check: dict[str, int] = {}
        self.by_page: dict[str, int] = {}
        self.flagged_at = self.paged_at = float("nan")
        self.paged_by = ""
        self.last_data = self.start = START

    def on_second(self, now: int) -> None:
        """Called after every simulated second: every ``every`` s, read what is new and evaluate, as serve polls."""
        if (now - self.start) % self.every:
            return
        if self.tail.pump(lambda chunk: self.monitor.feed_chunk(chunk, now)):
            self.last_data = now
        self.judge(now, self.monitor.update())

    def judge(self, now: int, state: Evaluation) -> None:
        """Count the false verdicts, warnings and pages entered at this evaluation; note when the fault is found."""
        snap, results = state.snapshot, state.results
        n = self.n_chips
        status = snap.channel_status[:n]
        false_channels = np.isin(status, FALSE_CHANNEL) & ~self.affected
        entered = status[self.channel.add(false_channels)]
        for code, count in zip(*np.unique(entered, return_counts=True)):
            name = ChannelStatus(code).name.lower()
            self.by_status[name] = self.by_status.get(name, 0) + int(count)
        self.chip.add(snap.chip_dead[:n] & ~self.chip_affected)
        chip_status = results.chip_status[:, :n]
        group_status = results.group_status[:, self.groups]
        healthy_chip, healthy_group = ~self.chip_affected[None, :], ~self.group_affected[None, :]
        warned = np.concatenate(
            [((chip_status >= 1) & healthy_chip).ravel(), ((group_status >= 1) & healthy_group).ravel()]
        )
        rising = self.warnings.add(warned)
        names = [c.name for c in results.chip_checks for _ in range(n)] + [
            c.name for c in results.group_checks for _ in self.groups
        ]
        for i in np.flatnonzero(rising):
            self.by_check[names[i]] = self.by_check.get(names[i], 0) + 1
        self.errors.add(
            np.concatenate([((chip_status == 2) & healthy_chip).ravel(), ((group_status == 2) & healthy_group).ravel()])
        )
        live = now - self.last_data <= STALE_S
        fault_start = self.sc.fault_start
        since_fault = now - self.start - fault_start if fault_start is not None else float("nan")
        for page in self.pages:
            affected = self.affected_targets[page.name]
            fired = page.add(float(now), PAGE_CONDITIONS[page.name](self, snap, results) & live)
            wrong = int((fired & ~affected).sum())
            self.false_pages += wrong
            if wrong:
                self.by_page[page.name] = self.by_page.get(page.name, 0) + wrong
            if since_fault > 0 and (fired & affected).any() and np.isnan(self.paged_at):
                self.paged_at, self.paged_by = since_fault, page.name
        self.evaluations += 1
        self.evaluations_false += bool(
            false_channels.any() or warned.any() or (snap.chip_dead[:n] & ~self.chip_affected).any()
        )
        if since_fault > 0 and np.isnan(self.flagged_at) and self.found(state):
            self.flagged_at = since_fault

    def found(self, state: Evaluation) -> bool:
        """Whether this evaluation shows the scenario's fault the way it should be shown."""
        snap, results, n = state.snapshot, state.results, self.n_chips
        status = snap.channel_status[:n]
        if self.sc.expect == "inefficient":
            return bool(np.isin(status[self.affected], (ChannelStatus.INEFFICIENT, ChannelStatus.SILENT)).any())
        if self.sc.expect == "noisy":
            return bool((status[self.affected] == ChannelStatus.NOISY).any())
        if self.sc.expect == "parity":
            row = [c.name for c in results.chip_checks].index("parity_error_ratio")
            return bool((results.chip_status[row, :n][self.chip_affected] >= 1).any())
        channel_flags = (np.isin(status, FALSE_CHANNEL) & self.affected).any(axis=1)
        flagged = snap.chip_dead[:n] | (results.chip_worst[:n] >= 1) | channel_flags
        return bool(flagged[self.chip_affected].mean() >= 0.5)


def scenarios(
    geometry: Geometry, names: list[str], seconds: int, every: int, seed: int, occupancy: float | None = None
) -> None:
    """Run every named scenario end to end and print one table row per scenario; ``occupancy``: the noise
    hits per second of each channel instead of the scenarios' own (0.05 Hz)."""
    print(
        f"scenarios end to end: {int(geometry.connected.sum())} channels, {len(geometry.chips)} chips, "
        f"{seconds} s of data each, read and evaluated every {every} s of data time as serve does; "
        f"counts per 8-hour shift of data time" + ("" if occupancy is None else f"; noise {occupancy:g} Hz per channel")
    )
    print(
        "| scenario | false channel verdicts | false dead chips | false check warnings | false check errors "
        "| false pages per shift | false pages per week (95 % bound) | evaluations with a false verdict "
        "| fault flagged after | fault paged after | most false verdicts | wall |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    pages = warnings = 0
    for name in names:
        sc = scenario(name, geometry, seconds, seed)
        if occupancy is not None:
            sc = replace(sc, config=replace(sc.config, hit_rate_hz=occupancy))
        workdir = Path(tempfile.mkdtemp(prefix=f"larpix-verdicts-{name}-"))
        started = time.perf_counter()
        try:
            run = ScenarioRun(geometry, sc, every, workdir)
            write_run(run.sim, workdir, "raw", seconds, realtime=False, start_time=START, on_second=run.on_second)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        shift, week = SHIFT_S / seconds, WEEK_S / seconds
        pages, warnings = pages + run.false_pages, warnings + run.warnings.count
        worst = sorted({**run.by_status, **run.by_check, **run.by_page}.items(), key=lambda kv: -kv[1])[:3]
        fault = sc.fault_start is not None
        paged = f"{duration(run.paged_at)} ({run.paged_by})" if run.paged_by else duration(run.paged_at)
        print(
            f"| {name} | {run.channel.count * shift:.1f} | {run.chip.count * shift:.1f} | {run.warnings.count * shift:.1f} "
            f"| {run.errors.count * shift:.1f} | {run.false_pages * shift:.1f} "
            f"| {run.false_pages * week:.0f} ({poisson_upper(run.false_pages) * week:.0f}) "
            f"| {run.evaluations_false} of {run.evaluations} "
            f"| {duration(run.flagged_at) if fault else '-'} | {paged if fault else '-'} "
            f"| {', '.join(f'{k} {v}' for k, v in worst) or '-'} | {time.perf_counter() - started:.0f} s |",
            flush=True,
        )
    hours = seconds * len(names) / 3600
    print(
        f"in all: {hours:g} h of data, {pages} false pages ({pages * WEEK_S / 3600 / hours:.1f} per week, at most "
        f"{poisson_upper(pages) * WEEK_S / 3600 / hours:.1f} at 95 %), {warnings} false check warnings "
        f"({warnings * SHIFT_S / 3600 / hours:.1f} per shift, at most "
        f"{poisson_upper(warnings) * SHIFT_S / 3600 / hours:.1f} at 95 %)"
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
    parser.add_argument(
        "--scenarios", nargs="+", choices=["all", *DESCRIPTIONS], help="run these scenarios end to end instead"
    )
    parser.add_argument("--scenario-seconds", type=int, default=3600, help="data seconds of each scenario")
    parser.add_argument("--every", type=int, default=10, help="data seconds between two evaluations (scenarios)")
    parser.add_argument("--tiles", type=int, default=0, help="only the first N tiles of the module (0: all)")
    parser.add_argument(
        "--occupancy", type=float, help="noise hits per second per channel of the scenarios (default: theirs, 0.05)"
    )
    args = parser.parse_args()
    geometry = load_geometry(packaged_layout())
    if args.tiles:
        geometry = sub_geometry(geometry, args.tiles)
    if args.scenarios:
        names = list(DESCRIPTIONS) if "all" in args.scenarios else args.scenarios
        scenarios(geometry, names, args.scenario_seconds, args.every, args.seed, args.occupancy)
        return
    fast(geometry, args.occupancies, args.evaluations, args.alpha, args.seed)
    if args.seconds:
        end_to_end(geometry, args.seconds, 0.05, args.alpha, every=min(10, args.seconds))


if __name__ == "__main__":
    main()
