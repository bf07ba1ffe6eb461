"""Channel and chip verdicts from counting statistics, with a stated false-alarm budget.

The statistics count a channel's independent *arrivals*, not its hits: hits within 1 ms of an
arrival's first hit are that arrival (``state.MERGE_TICKS``; a steep track re-triggers a pixel ~100
times in a millisecond, which is one event, not 100). Arrivals of a healthy channel over a span of
data time are Poisson with mean mu = expected arrival rate x span. Every evaluation judges every
expected channel and chip at once; the probability that at least one verdict of the detector is
false is at most ``alpha`` (``false_alarm_probability``): ``alpha`` is split equally over the
verdict families of ``FAMILIES`` and, within a family, over the items it judges (Bonferroni). A
verdict is given only when the data prove it at that level; until then a channel without hits, or a
chip, is *unknown*, never ok and never silent.

Expected rate of a channel: the reference run's rate when a reference knows the channel, else the
channel's own rate learnt on this run from data judged good (arrivals / live time of the spans in
which its chip's rate checks were ok and it was not flagged: a tile after an HV trip is judged
against the rate it had, not one that follows the trip down), else,
for a channel without a hit yet, a slow channel's rate of its tile (``SLOW_QUANTILE`` of the
learnt rates: a channel slower than most is not called dead for want of hits). The learnt rates
of an io_channel that never spoke are no sample of a healthy channel and are left out of that
quantile; a tile none of whose io_channels spoke takes the module's (a region dead from the start
is expected at the module's rate, not at zero). The expectation is scaled by the occupancy of the
tile, its arrivals in the window over what the same expectation predicts, pooled over its chips but
those far from the median chip's ratio (and channels over the noisy cut) left out, so a change
of beam or threshold that moves a whole tile is not a per-channel fault and one loud channel is
not blamed on its neighbours; the tile-wide change itself is judged by the region checks
(``checks.py``). A tile with no hit at all
in the window keeps its unscaled expectation, so a dead tile is judged dead.

Silence is judged over as long a span as it takes, from each channel's last hit. With H arrivals
of its own in a run of length T, a healthy channel's arrival times are uniform over the run, so
P(no hit in the last S) = (1 - S/T)^H exactly, whatever its rate: no rate estimate is needed. A
channel (chip) without a hit yet, or one the reference knows, is judged at its expected rate:
P = exp(-mu). A channel (chip) is silent (dead) when P < the family's share of alpha / N, which
for exp(-mu) is mu >= ln(N / share). A chip without any hit yet is expected at the SLOW_QUANTILE
of its tile's chip rates; a silence is never judged at more than the learnt occupancy (the
tile's scale capped at 1), so a rising beam does not hurry a verdict. A chip with no valid packet
but packets failing parity in the window is sending: its link is at fault (the parity check), so it
is neither dead nor are its channels silent.

Budget split (Bonferroni): ``alpha`` / len(FAMILIES) per family, 11 families: the six channel and
chip verdicts, the parity and FIFO-full ratios (binomial tests per chip), the tile and io_channel
rates (one test per region) and the never-seen io_channels (one test per io_channel).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from larpix_dqm.exporter.detector.geometry import CHANNELS_PER_CHIP
from larpix_dqm.exporter.quality.status import ChannelStatus

#: The verdict families the budget is split over (equal shares).
FAMILIES = (
    "dead chip",
    "silent channel",
    "inefficient channel",
    "noisy channel",
    "chip hit rate",
    "chip reference rate",
    "chip parity error ratio",
    "chip FIFO-full ratio",
    "tile rate",
    "io_channel rate",
    "io_channel never seen",
)

#: Rate ratio the sequential inefficiency test (CUSUM) is tuned to: a channel at 30 % of its good rate.
INEFFICIENT_RATIO = 0.3
#: Arrivals learnt while good before the CUSUM judges a channel (its rate then known to 10 %).
MIN_GOOD_ARRIVALS = 100
#: A channel's learnt good rate is taken this many standard deviations (the root of its arrivals) low:
#: a rate learnt high would drift a good channel's CUSUM upwards (simulated at 0.05 and 0.5 Hz, P(S >= h)
#: stays under e^-h from the 50th arrival on; bench/verdicts.py's 2-tile Poisson hour at 0.05 Hz still
#: had 2 channels flagged from the 50th, none from the 100th).
LOW_SIGMAS = 1.5
#: The CUSUM is held at most this many thresholds: a recovered channel clears in a bounded time.
CUSUM_CAP = 2.0

#: Quantile of a tile's learnt channel rates a channel without any hit is expected to reach.
SLOW_QUANTILE = 0.1
#: Expected hits in the window a chip needs for its own ratio to enter the median of the occupancy;
#: below it (Poisson noise of a few hits) the pooled ratio of the group is used.
MIN_RATIO_HITS = 10.0
#: A member further than this factor from the median ratio of its group is left out of its occupancy.
OUTLIER_FACTOR = 3.0

_HALF_LOG_TWO_PI = 0.5 * math.log(2 * math.pi)
_SMALL_LOG_FACTORIALS = np.array([math.lgamma(k + 1) for k in range(16)])


def log_factorial(n: np.ndarray) -> np.ndarray:
    """ln(n!) of non-negative integer counts: a table below 16, Stirling's series (error < 3e-12) above."""
    n = np.asarray(n, np.float64)
    big = np.maximum(n, 16.0)
    stirling = (
        big * np.log(big)
        - big
        + 0.5 * np.log(big)
        + _HALF_LOG_TWO_PI
        + 1 / (12 * big)
        - 1 / (360 * big**3)
        + 1 / (1260 * big**5)
    )
    small = _SMALL_LOG_FACTORIALS[np.clip(n, 0, 15).astype(np.int64)]
    return np.where(n < 16, small, stirling)


def _log_pmf(n: np.ndarray, mu: np.ndarray) -> np.ndarray:
    """ln P(X = n) for X ~ Poisson(mu), mu > 0."""
    return n * np.log(mu) - mu - log_factorial(n)


def log_lower_tail(n: np.ndarray, mu: np.ndarray) -> np.ndarray:
    """An upper bound of ln P(X <= n), X ~ Poisson(mu), exact at n = 0.

    P(X <= n) = pmf(n) (1 + n/mu + n(n-1)/mu^2 + ...) <= pmf(n) mu / (mu - n) for n < mu: never
    smaller than the exact tail (a verdict never comes too early) and within that factor of it.
    """
    n, mu = np.broadcast_arrays(np.asarray(n, np.float64), np.asarray(mu, np.float64))
    below = n < mu  # mu > 0 there
    safe_mu = np.where(below, mu, 1.0)
    safe_n = np.where(below, n, 0.0)
    bound = _log_pmf(safe_n, safe_mu) + np.log(safe_mu / (safe_mu - safe_n))
    return np.where(below, np.minimum(bound, 0.0), 0.0)


def tail_below(n: np.ndarray, mu: np.ndarray, level: float, upper: bool = False) -> np.ndarray:
    """``log_upper_tail(n, mu) < level`` (``upper``), else ``log_lower_tail(n, mu) < level``, for counts ``n``
    (1-D) and ``level`` < 0, the tail computed only where it can be below: on its side of the expectation
    (elsewhere the bound is 0), and not near it: either bound is at least ln P(X = n) >= -(mu - n)^2 / mu -
    ln(2 pi n) / 2 - 1/12 (ln(mu/n) >= 1 - n/mu and Robbins' bound of n!; -mu at n = 0), here with
    ln(2 pi max(n, mu)) / 2 and two nats spared for the roundings of both sides. Most counts are near their
    expectation: a few operations each instead of the ~30 of a tail."""
    below = np.zeros(len(n), bool)
    if not len(n):
        return below
    spread = max(0.5 * math.log(2 * math.pi * max(float(n.max()), float(mu.max()))), 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        near = ~((mu - n) ** 2 / mu <= -level - spread - 1 / 12 - 2)
    near &= ((n + 1 > mu) & (n >= 1)) if upper else (n < mu)
    at = np.flatnonzero(near)
    below[at] = (log_upper_tail if upper else log_lower_tail)(n[at], mu[at]) < level
    return below


def log_upper_tail(n: np.ndarray, mu: np.ndarray) -> np.ndarray:
    """An upper bound of ln P(X >= n), X ~ Poisson(mu), for n >= 1.

    P(X >= n) = pmf(n) (1 + mu/(n+1) + ...) <= pmf(n) (n+1) / (n+1-mu) for n + 1 > mu; -inf where mu
    is 0 (no hit expected, any hit is impossible under the expectation).
    """
    n, mu = np.broadcast_arrays(np.asarray(n, np.float64), np.asarray(mu, np.float64))
    above = (n + 1 > mu) & (n >= 1)
    safe_mu = np.where(above & (mu > 0), mu, 1.0)
    safe_n = np.where(above, n, 1.0)
    bound = _log_pmf(safe_n, safe_mu) + np.log((safe_n + 1) / (safe_n + 1 - safe_mu))
    bound = np.where(mu > 0, np.minimum(bound, 0.0), -np.inf)
    return np.where(above, bound, 0.0)


def per_test_probability(alpha: float, items: int) -> float:
    """Probability allowed to one test of a family judging ``items`` things."""
    return alpha / len(FAMILIES) / max(items, 1)


@dataclass(frozen=True)
class Cusum:
    """The sequential inefficiency test's state (``state.FIELDS``: ``cusum``, ``cusum_seen``, ``cusum_good``,
    ``cusum_time``), views of the state's arrays that ``advance_cusum`` moves in place."""

    statistic: np.ndarray  # (chips, 64) the CUSUM S (log-likelihood ratio, 0 or more)
    seen: np.ndarray  # (chips, 64) arrivals_total at the last evaluation
    # (chips, 64, 4) arrivals and occupancy-weighted live seconds learnt while good, and those of the
    # current excursion of S (learnt once S is back at 0)
    good: np.ndarray
    time: np.ndarray  # (chips,) live time of the last evaluation (NaN: none yet this run)


def advance_cusum(
    cusum: Cusum, arrivals_total: np.ndarray, now: np.ndarray, scale: np.ndarray, judged: np.ndarray, threshold: float
) -> None:
    """Advance the CUSUM in place over the arrivals and live time since the last evaluation.

    For n arrivals where a good channel expects m = lambda0 x occupancy x live seconds, the log-likelihood
    ratio of rate INEFFICIENT_RATIO x lambda0 against lambda0 is n ln(rho) - m (rho - 1); S = max(0, S + LLR).
    Under a good channel exp(-S) reversed in time is a martingale, so P(S >= h) <= e^-h at any evaluation
    (Ville): h = ln(1 / the channel's share) keeps the budget. lambda0 is learnt from the data of each
    excursion of S once S is back at 0 (data that turned out good: a channel turning inefficient does not
    teach its new rate), and taken LOW_SIGMAS standard deviations low (n - 1.5 sqrt(n)) / t, so that an
    estimate that came out high does not drift a good channel's S upwards. In place, one pass per quantity:
    the state's (chips, 64, 4) array is read and written once per evaluation, never copied.
    """
    first = np.isnan(cusum.time) | np.isnan(now)
    dt = np.where(first, 0.0, np.maximum(now - cusum.time, 0.0))[:, None]
    exposure = scale * dt
    dn = np.subtract(arrivals_total, cusum.seen, dtype=np.float64)  # counts: exact as floats
    np.maximum(dn, 0.0, out=dn)
    dn[first] = 0.0
    good_n, good_t, pending_n, pending_t = np.moveaxis(cusum.good, -1, 0)
    testing = judged & (good_n >= MIN_GOOD_ARRIVALS)
    statistic = cusum.statistic
    if testing.any():
        with np.errstate(invalid="ignore", divide="ignore"):
            rate = np.sqrt(good_n)
            rate *= LOW_SIGMAS
            np.subtract(good_n, rate, out=rate)
            rate /= good_t
            rate *= exposure
            rate *= INEFFICIENT_RATIO - 1
            step = dn * math.log(INEFFICIENT_RATIO)
            step -= rate
            step += statistic
            np.clip(step, 0.0, CUSUM_CAP * threshold, out=step)
        np.putmask(step, ~testing, 0.0)
        statistic[...] = step
    else:
        statistic[...] = 0.0
    # the data of an excursion of S is learnt once S is back at 0 (the excursion was no inefficiency)
    np.add(pending_n, dn, out=pending_n, where=judged)
    np.add(pending_t, exposure, out=pending_t, where=judged)
    back = statistic == 0
    np.add(good_n, pending_n, out=good_n, where=back)
    np.add(good_t, pending_t, out=good_t, where=back)
    np.copyto(pending_n, 0.0, where=back)
    np.copyto(pending_t, 0.0, where=back)
    live = ~np.isnan(now)
    cusum.time[live] = now[live]
    np.copyto(cusum.seen, arrivals_total, where=live[:, None])


@dataclass(frozen=True)
class VerdictInputs:
    """What the verdicts are made of, one row per chip (the accumulator's rows)."""

    window_hits: np.ndarray  # (chips, 64) hits in the window
    hits_total: np.ndarray  # (chips, 64) self-triggered hits since the run started
    silence_seconds: np.ndarray  # (chips, 64) data time since the channel's last hit (since the run started if none)
    window_seconds: np.ndarray  # (chips,) data time the window spans
    run_seconds: np.ndarray  # (chips,) data time since the run started
    expected: np.ndarray  # (chips, 64) bool: channels that should send hits
    groups: np.ndarray  # (chips,) occupancy group of each chip (its tile)
    reference_rate_hz: np.ndarray | None = None  # (chips, 64); NaN where the reference does not know the channel
    window_parity_errors: np.ndarray | None = None  # (chips,) data packets failing parity in the window
    links: np.ndarray | None = None  # (chips,) io_channel of each chip (io_group * 256 + io_channel)
    # independent arrivals (a channel's hits merged within 1 ms, ``state.MERGE_TICKS``); hits where None
    window_arrivals: np.ndarray | None = None  # (chips, 64) arrivals in the window
    arrivals_total: np.ndarray | None = None  # (chips, 64) self-triggered arrivals since the run started
    # the sequential inefficiency test: its state at the last evaluation, and each chip's live time now
    cusum: Cusum | None = None
    now: np.ndarray | None = None  # (chips,)
    # (chips, 64, 2) arrivals and live seconds learnt from data judged good (``summary.learn``); where a
    # channel has less than a window's span of them, or without them, its rate is learnt from every
    # arrival since the run started (a few seconds' estimate, then not learnt while flagged, could stick)
    learnt: np.ndarray | None = None


@dataclass(frozen=True)
class Verdicts:
    """Channel statuses and chip verdicts of one evaluation."""

    channel_status: np.ndarray  # (chips, 64) ChannelStatus codes
    channel_expected_hz: np.ndarray  # (chips, 64) expected rate now (0 for channels not expected)
    chip_window_hits: np.ndarray  # (chips,) hits of the expected channels in the window
    chip_expected_hits: np.ndarray  # (chips,) what the expectation predicts for them in the window
    chip_window_arrivals: np.ndarray  # (chips,) arrivals of the expected channels in the window
    chip_expected_arrivals: np.ndarray  # (chips,) what the expectation predicts of them in the window
    chip_base_hz: np.ndarray  # (chips,) expected rate before the tile's occupancy scale, channels under the noisy cut
    chip_quiet_window_hits: np.ndarray  # (chips,) hits in the window of the expected channels under the noisy cut
    chip_dead: np.ndarray  # (chips,) proven dead: no hit for long enough
    chip_unknown: np.ndarray  # (chips,) expected channels, no hit in the window, not proven dead
    silent_channel_hits: float  # expected hits a channel must miss to be silent: ln(N_channels x families / alpha)
    dead_chip_hits: float  # expected hits a chip must miss to be dead: ln(N_chips x families / alpha)
    cusum: Cusum | None = None  # the sequential inefficiency test, advanced to now in place (None without one)


def _counted(counts: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """Non-negative ``counts`` of the expected channels as floats, 0 elsewhere, in one pass."""
    return np.multiply(counts, expected, dtype=np.float64)


def _set(status: np.ndarray, where: np.ndarray, code: ChannelStatus) -> None:
    """``status[where] = code`` as int8 arithmetic (a bool mask's item assignment costs several times more)."""
    status += (np.int8(code) - status) * where


def count_channels(mask: np.ndarray) -> np.ndarray:
    """(chips,) int64: the True channels of each chip of a (chips, 64) bool array, several times faster than
    ``mask.sum(axis=1)``: eight channels a uint64 word (bytes of 0 or 1), a chip's eight words added (no byte
    exceeds 8), then the bytes of that sum added by one multiplication (the top byte of x * 0x0101...01)."""
    words = np.ascontiguousarray(mask).view(np.uint64)
    total = words[:, 0].copy()
    for k in range(1, words.shape[1]):
        total += words[:, k]
    return ((total * np.uint64(0x0101010101010101)) >> np.uint64(56)).astype(np.int64)


def order_neighbours(values: np.ndarray, bounds: np.ndarray, q: float) -> np.ndarray:
    """(segments, 2): of each segment ``values[bounds[s]:bounds[s + 1]]`` (finite), its order statistics at
    ``floor(q (n - 1))`` and the next (the largest twice at the last; NaN for an empty one), between which
    np.quantile's linear method interpolates: one partition where np.quantile makes four."""
    out = np.full((len(bounds) - 1, 2), np.nan)
    for s in np.flatnonzero(np.diff(bounds)).tolist():
        segment = values[bounds[s] : bounds[s + 1]]
        last = len(segment) - 1
        low = math.floor(last * q)
        if low >= last:
            out[s] = segment.max()
        else:
            ordered = np.partition(segment, low)
            out[s] = ordered[low], ordered[low + 1 :].min()
    return out


def interpolated(neighbours: np.ndarray, counts: np.ndarray, q: float) -> np.ndarray:
    """np.quantile's linear method from ``order_neighbours`` of segments of ``counts`` values, the same floats."""
    virtual = (counts - 1) * q
    gamma = virtual - np.floor(virtual)
    a, b = neighbours[:, 0], neighbours[:, 1]
    return np.where(gamma >= 0.5, b - (b - a) * (1 - gamma), a + (b - a) * gamma)


def linear_quantile(values: np.ndarray, q: float) -> float:
    """``np.quantile(values, q)`` (its default, linear method) of 1-D finite ``values``, the same float."""
    counts = np.array([len(values)])
    return float(interpolated(order_neighbours(values, np.concatenate([[0], counts]), q), counts, q)[0])


@dataclass(frozen=True)
class Groups:
    """Chip rows by group, sorted once: a group's rows are a slice of ``rows`` (ascending, as a mask over every
    row would give them), so the groups' values are gathered in one pass, group after group."""

    inverse: np.ndarray  # (chips,) each row's group, 0 .. count - 1
    rows: np.ndarray  # the rows, stably sorted by group
    bounds: np.ndarray  # (count + 1,): group g's rows are rows[bounds[g]:bounds[g + 1]]

    @classmethod
    def of(cls, inverse: np.ndarray, count: int) -> Groups:
        rows = np.argsort(inverse, kind="stable")
        return cls(inverse, rows, np.searchsorted(inverse[rows], np.arange(count + 1)))

    @property
    def count(self) -> int:
        return len(self.bounds) - 1


@dataclass(frozen=True)
class GroupValues:
    """Of each group, its finite values: their count, the two order statistics between which ``interpolated`` finds a
    quantile (``order_neighbours``) and their mean (NaN without any)."""

    count: np.ndarray  # (groups,) int64
    neighbours: np.ndarray  # (groups, 2)
    mean: np.ndarray  # (groups,)


def group_values(values: np.ndarray, rows: np.ndarray, bounds: np.ndarray, q: float) -> GroupValues:
    """``GroupValues`` at quantile ``q`` of groups of (chips, k) ``values``, group g's values those of its chips
    ``rows[bounds[g]:bounds[g + 1]]``, row after row (the order a mask over every row would give them)."""
    gathered = values[rows]
    finite = np.isfinite(gathered)
    chosen = gathered[finite]
    per_row = count_channels(finite) if finite.shape[1] == CHANNELS_PER_CHIP else finite.sum(axis=1)
    ends = np.concatenate([[0], np.cumsum(per_row)])[bounds]  # each group's values: chosen[ends[g]:ends[g + 1]]
    mean = np.full(len(bounds) - 1, np.nan)
    for g in np.flatnonzero(np.diff(ends)).tolist():
        mean[g] = chosen[ends[g] : ends[g + 1]].mean()
    return GroupValues(np.diff(ends), order_neighbours(chosen, ends, q), mean)


def _group_rates(values: np.ndarray, groups: Groups, pool: np.ndarray, passes: Passes) -> np.ndarray:
    """(chips, 2): the SLOW_QUANTILE of finite ``values`` of the ``pool`` chips of each chip's group, and
    their mean (a typical rate: a median is 0 while most channels of a slow run have no hit yet); a
    group without any pool chip takes the whole pool's (NaN if the pool is empty).

    ``values`` is per chip or (chips, 64); channels not judged are NaN. ``passes`` gathers the groups' values and
    finds their order statistics and means (``group_values``).
    """
    rows = groups.rows[pool[groups.rows]]  # the pool's rows, by group
    bounds = np.searchsorted(groups.inverse[rows], np.arange(groups.count + 1))
    found = passes.group_values(values[:, None] if values.ndim == 1 else values, rows, bounds, SLOW_QUANTILE)
    out = np.stack([interpolated(found.neighbours, found.count, SLOW_QUANTILE), found.mean], axis=1)
    empty = np.diff(bounds) == 0
    if empty.any():
        everything = values[pool]
        everything = everything[np.isfinite(everything)]
        out[empty] = [linear_quantile(everything, SLOW_QUANTILE), everything.mean()] if len(everything) else np.nan
    return out[groups.inverse]


def robust_ratio(observed: np.ndarray, predicted: np.ndarray, inverse: np.ndarray, count: int) -> np.ndarray:
    """(count,): per group, the pooled observed / predicted ratio of its members, leaving out those
    (predicted at least ``MIN_RATIO_HITS``) more than ``OUTLIER_FACTOR`` from the median of their
    ratios, so a few loud or dead members do not move it while bursty ones still count (a median
    alone reads low when hits come in bursts); plainly pooled where fewer than half of the members
    predicted qualify; 1 where the group has no hit at all."""
    members = np.flatnonzero((predicted > 0) & (inverse < count))
    members = members[np.argsort(inverse[members], kind="stable")]  # by group, ascending rows within one
    group, obs, pred = inverse[members], observed[members], predicted[members]
    ratio = obs / pred
    enough = pred >= MIN_RATIO_HITS
    bounds = np.searchsorted(group, np.arange(count + 1))
    n_enough = np.bincount(group[enough], minlength=count)
    # the median of each group's ratios of members with enough (np.median's: the middle one, or the two's mean),
    # from one sort of a row a group (padded with inf)
    table = np.full((count, int(n_enough.max(initial=0)) + 1), np.inf)
    rank = np.arange(int(n_enough.sum())) - (np.cumsum(n_enough) - n_enough)[group[enough]]
    table[group[enough], rank] = ratio[enough]
    table.sort(axis=1)
    rows = np.arange(count)
    center = (table[rows, np.maximum(n_enough - 1, 0) // 2] + table[rows, n_enough // 2]) / 2
    # plainly pooled (no member an outlier) where fewer than half of the members qualify
    center = np.where(2 * n_enough >= np.diff(bounds), center, np.nan)[group]
    outlier = enough & ((ratio < center / OUTLIER_FACTOR) | (ratio > center * OUTLIER_FACTOR))
    out = np.ones(count)
    for g in np.flatnonzero(np.diff(bounds)).tolist():
        part = slice(bounds[g], bounds[g + 1])
        if obs[part].sum() == 0:
            continue
        keep = ~outlier[part]
        out[g] = obs[part][keep].sum() / pred[part][keep].sum()
    return out


def log_silence_probability(
    hits: np.ndarray, silence: np.ndarray, run: np.ndarray, prior_rate: np.ndarray, use_prior: np.ndarray
) -> np.ndarray:
    """ln P(no hit in the last ``silence`` seconds) for a healthy channel or chip.

    With ``hits`` in the ``run`` and no rate known beforehand, its hit times are uniform over the
    run: (1 - silence/run)^hits, exact whatever the rate. Where ``use_prior``: Poisson at
    ``prior_rate``, exp(-prior_rate x silence).
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        own = hits * np.log1p(-np.clip(silence / run, 0.0, 1.0))
    return np.where(use_prior, -prior_rate * silence, np.where(hits > 0, own, 0.0))


@dataclass(frozen=True)
class ReferenceRates:
    """The reference run's rates aligned to the chips: which expected channels it knows, and their rates."""

    known: np.ndarray  # (chips, 64) bool
    rate_hz: np.ndarray  # (chips, 64), 0 where unknown

    @classmethod
    def of(cls, inputs: VerdictInputs) -> ReferenceRates | None:
        rates = inputs.reference_rate_hz
        return None if rates is None else cls(np.isfinite(rates) & inputs.expected, np.nan_to_num(rates))

    def where_known(self, values: np.ndarray, at: np.ndarray | None = None) -> np.ndarray:
        """Its rate where it knows the channel, else ``values`` (of the flat channel indices ``at`` when given)."""
        if at is None:
            return np.where(self.known, self.rate_hz, values)
        return np.where(self.known.reshape(-1)[at], self.rate_hz.reshape(-1)[at], values)


def referenced(reference: ReferenceRates | None, values: np.ndarray, at: np.ndarray | None = None) -> np.ndarray:
    """The reference's rate where it knows the channel, else ``values`` (of the flat channel indices ``at``)."""
    return values if reference is None else reference.where_known(values, at)


@dataclass(frozen=True)
class ChannelSums:
    """The first pass over the channels: per chip, the sums over its channels the per-group statistics start
    from; per channel, the learnt rates of the expected channels, for their groups' quantiles."""

    rates: np.ndarray  # (chips, 64) learnt arrival rate of each expected channel, NaN for the others
    expected: np.ndarray  # (chips,) int64: expected channels
    hits: np.ndarray  # (chips,) their self-triggered hits since the run started
    arrivals: np.ndarray  # (chips,) their arrivals since the run started
    window_hits: np.ndarray  # (chips,) their hits in the window
    window_arrivals: np.ndarray  # (chips,) their arrivals in the window
    observed: np.ndarray  # (chips,) arrivals in the window of the channels under the noisy cut
    predicted: np.ndarray  # (chips,) what those channels' learnt (or reference) rates predict of them
    quiet_window_hits: np.ndarray  # (chips,) hits in the window of those channels
    silence: np.ndarray  # (chips,) the shortest silence of an expected channel (inf without one)


@dataclass(frozen=True)
class ChipJudgement:
    """What the per-group statistics say of each chip, for the second pass over its channels."""

    scale: np.ndarray  # (chips,) occupancy of its group: observed over predicted arrivals
    prior: np.ndarray  # (chips,) expected rate of a channel without history of its own (its group's slow one)
    typical: np.ndarray  # (chips,) a typical channel's rate in its group
    dead: np.ndarray  # (chips,) bool: proven dead
    link_broken: np.ndarray  # (chips,) bool: packets failing parity and no valid one
    channel_level: float  # ln of a channel verdict's share of the false-alarm budget
    inefficient_level: float  # the same of each of the two inefficiency tests


@dataclass(frozen=True)
class ChannelVerdicts:
    """The second pass over the channels: statuses but the tails' verdicts, expected rates, and the channels
    whose tail probability can flag them (flat indices row x 64 + channel)."""

    status: np.ndarray  # (chips, 64) int8: none, unknown, active; silent on dead chips; inefficient by the CUSUM
    expected_hz: np.ndarray  # (chips, 64) expected hit rate now
    base: np.ndarray  # (chips,) expected arrival rate of the expected channels, before the occupancy scale
    quiet_base: np.ndarray  # (chips,) the same of those under the noisy cut
    silences: np.ndarray  # no hit in the window (not on a broken link): judged by their silence
    shortfalls: np.ndarray  # hits, but fewer arrivals than expected in the window: the lower tail
    shortfall_mu: np.ndarray  # their expected arrivals in the window
    excesses: np.ndarray  # over the noisy cut: the upper tail


class Passes(Protocol):
    """The two passes over the channels of ``judge`` and the groups' values (``group_values``): ``ChannelPasses``
    (numpy), or its compiled twin."""

    def first(self, inputs: VerdictInputs, reference: ReferenceRates | None, noisy_rate_hz: float) -> ChannelSums: ...

    def second(
        self, inputs: VerdictInputs, reference: ReferenceRates | None, chips: ChipJudgement, noisy_rate_hz: float
    ) -> ChannelVerdicts: ...

    def group_values(self, values: np.ndarray, rows: np.ndarray, bounds: np.ndarray, q: float) -> GroupValues: ...


class ChannelPasses:
    """The two passes over the (chips, 64) arrays of ``judge``, in numpy (the reference implementation): each
    step one pass, in place where it can be. The first keeps what the second needs."""

    def group_values(self, values: np.ndarray, rows: np.ndarray, bounds: np.ndarray, q: float) -> GroupValues:
        return group_values(values, rows, bounds, q)

    def first(self, inputs: VerdictInputs, reference: ReferenceRates | None, noisy_rate_hz: float) -> ChannelSums:
        expected = inputs.expected
        self.n_window = n_window = _counted(inputs.window_hits, expected)
        self.hits = hits = _counted(inputs.hits_total, expected)
        # the statistics count independent arrivals: a steep track's ~100 re-triggers in 1 ms are one
        self.arrivals = arrivals = hits if inputs.arrivals_total is None else _counted(inputs.arrivals_total, expected)
        n_arrivals = n_window if inputs.window_arrivals is None else _counted(inputs.window_arrivals, expected)
        self.n_arrivals = n_arrivals
        window = inputs.window_seconds[:, None]
        run = np.maximum(inputs.run_seconds, 1.0)[:, None]
        learnt_n, learnt_t = arrivals, np.broadcast_to(run, arrivals.shape)
        if inputs.learnt is not None:
            good = inputs.learnt[..., 1] >= window
            learnt_n, learnt_t = (
                np.where(good, inputs.learnt[..., 0], learnt_n),
                np.where(good, inputs.learnt[..., 1], learnt_t),
            )
        learnt_span = np.maximum(learnt_t, 1.0)
        self.learnt = learnt = learnt_n / learnt_span
        # the window's inefficiency tail takes a channel's own rate only once learnt over a window's span at
        # least, and LOW_SIGMAS low, as the CUSUM does: a rate learnt from a few arrivals (a new run's first
        # seconds) can come out several times high and call a good channel inefficient
        self.learnt_low = learnt_low = np.sqrt(learnt_n)
        learnt_low *= LOW_SIGMAS
        np.subtract(learnt_n, learnt_low, out=learnt_low)
        np.maximum(learnt_low, 0.0, out=learnt_low)
        learnt_low /= learnt_span
        self.short = learnt_t < window
        self.quiet = quiet = n_window <= noisy_rate_hz * window
        predicted = referenced(reference, learnt) * window
        np.copyto(predicted, 0.0, where=~quiet)
        return ChannelSums(
            rates=np.where(expected, learnt, np.nan),
            expected=count_channels(expected),
            hits=hits.sum(axis=1),
            arrivals=arrivals.sum(axis=1),
            window_hits=n_window.sum(axis=1),
            window_arrivals=n_arrivals.sum(axis=1),
            observed=np.where(quiet, n_arrivals, 0.0).sum(axis=1),
            predicted=predicted.sum(axis=1),
            quiet_window_hits=np.where(quiet, n_window, 0.0).sum(axis=1),
            silence=np.minimum.reduce(inputs.silence_seconds, axis=1, where=expected, initial=np.inf),
        )

    def second(
        self, inputs: VerdictInputs, reference: ReferenceRates | None, chips: ChipJudgement, noisy_rate_hz: float
    ) -> ChannelVerdicts:
        expected, n_window, n_arrivals = inputs.expected, self.n_window, self.n_arrivals
        scale, window = chips.scale[:, None], inputs.window_seconds[:, None]
        prior = referenced(reference, chips.prior[:, None])  # for channels without history of their own
        use_prior = self.arrivals == 0 if reference is None else reference.known | (self.arrivals == 0)
        base = np.where(use_prior, prior, self.learnt)
        np.copyto(base, 0.0, where=~expected)
        rate_now = base * scale
        has_hits = n_window > 0  # expected channels only
        mu_window = self.learnt_low
        np.copyto(mu_window, prior, where=use_prior | self.short)
        mu_window *= scale
        mu_window *= window
        shortfalls = np.flatnonzero(has_hits & (n_arrivals < mu_window))
        excesses = n_window / window > noisy_rate_hz
        excesses &= has_hits
        status = np.multiply(expected, np.int8(ChannelStatus.UNKNOWN), dtype=np.int8)
        _set(status, has_hits, ChannelStatus.ACTIVE)
        dead = expected & chips.dead[:, None]
        _set(status, dead, ChannelStatus.SILENT)
        cusum = inputs.cusum
        if cusum is not None and inputs.now is not None and inputs.arrivals_total is not None:
            advance_cusum(
                cusum, inputs.arrivals_total, inputs.now, chips.scale[:, None], expected, -chips.inefficient_level
            )
            _set(status, (cusum.statistic >= -chips.inefficient_level) & ~dead, ChannelStatus.INEFFICIENT)
        # what users see are hits: expected arrivals times the hits per arrival learnt (1 without any)
        with np.errstate(invalid="ignore", divide="ignore"):
            per_arrival = self.hits / self.arrivals
        np.copyto(per_arrival, 1.0, where=self.arrivals == 0)
        per_arrival *= rate_now
        base_sum = base.sum(axis=1)
        np.copyto(base, 0.0, where=~self.quiet)
        return ChannelVerdicts(
            status=status,
            expected_hz=per_arrival,
            base=base_sum,
            quiet_base=base.sum(axis=1),
            silences=np.flatnonzero(expected & (n_window == 0) & ~chips.link_broken[:, None]),
            shortfalls=shortfalls,
            shortfall_mu=mu_window.reshape(-1)[shortfalls],
            excesses=np.flatnonzero(excesses),
        )


def judge(inputs: VerdictInputs, alpha: float, noisy_rate_hz: float, passes: Passes | None = None) -> Verdicts:
    """Channel statuses and chip verdicts at detector-wide false-alarm probability ``alpha``.

    Two passes over the channels (``passes``: numpy's ``ChannelPasses``, or the compiled kernels' twin) around
    the per-group statistics; the tail probabilities only for the channels they can flag (no hit in the
    window, fewer than expected, over the noisy cut), not for every channel.
    """
    passes = passes or ChannelPasses()
    reference = ReferenceRates.of(inputs)
    sums = passes.first(inputs, reference, noisy_rate_hz)
    chips_judged = sums.expected > 0
    window = inputs.window_seconds
    run = np.maximum(inputs.run_seconds, 1.0)
    inverse = np.unique(inputs.groups, return_inverse=True)[1].reshape(-1)
    groups = Groups.of(inverse, int(inverse.max()) + 1 if len(inverse) else 0)
    # the learnt rates of an io_channel that never spoke are no sample of a healthy channel's rate
    if inputs.links is None:
        pool = chips_judged
    else:
        links = np.unique(inputs.links, return_inverse=True)[1].reshape(-1)
        heard = (sums.hits > 0).astype(np.float64)
        pool = chips_judged & (np.bincount(links, heard, int(links.max()) + 1 if len(links) else 0) > 0)[links]
    slow, typical = np.moveaxis(_group_rates(sums.rates, groups, pool, passes), 1, 0)
    # occupancy of each tile: its arrivals in the window over what its learnt (or reference) rates predict,
    # pooled over its chips but outliers from the median chip's ratio and channels over the noisy cut
    scale = robust_ratio(sums.observed, sums.predicted, inverse, groups.count)[inverse]
    prior = np.nan_to_num(slow)
    silence_scale = np.minimum(scale, 1.0)  # never judge a silence at a higher occupancy than learnt
    n_channels = int(sums.expected.sum())
    channel_level = math.log(per_test_probability(alpha, n_channels))
    # the inefficient family's share is split equally over its two tests: the window's tail and the CUSUM
    inefficient_level = math.log(per_test_probability(alpha, 2 * n_channels))
    chip_level = math.log(per_test_probability(alpha, int(chips_judged.sum())))

    chip_hits = sums.window_hits
    chip_silence = np.where(np.isfinite(sums.silence), sums.silence, 0.0) * silence_scale
    with np.errstate(invalid="ignore", divide="ignore"):
        per_channel = np.where(chips_judged, sums.arrivals / run / sums.expected, np.nan)
    chip_slow = np.nan_to_num(_group_rates(per_channel, groups, pool, passes)[:, 0]) * sums.expected
    chip_known = np.zeros(len(chips_judged), bool) if reference is None else reference.known.any(axis=1)
    chip_prior = (
        chip_slow
        if reference is None
        else np.where(chip_known, reference.where_known(prior[:, None]).sum(axis=1), chip_slow)
    )
    chip_uses_prior = chip_known | (sums.arrivals == 0)
    chip_log_p = log_silence_probability(sums.arrivals, chip_silence, run, chip_prior, chip_uses_prior)
    # packets failing parity and no valid one: the chip sends, its link corrupts them (the parity check)
    parity_errors = np.zeros(len(chip_hits)) if inputs.window_parity_errors is None else inputs.window_parity_errors
    link_broken = (chip_hits == 0) & (parity_errors > 0)
    chip_dead = chips_judged & (chip_hits == 0) & (chip_log_p < chip_level) & ~link_broken
    chips = ChipJudgement(
        scale, prior, np.nan_to_num(typical), chip_dead, link_broken, channel_level, inefficient_level
    )
    channels = passes.second(inputs, reference, chips, noisy_rate_hz)
    status = channels.status.reshape(-1)
    # the tails, of the channels they can flag: a silence, fewer arrivals than expected, more than a typical channel
    at = channels.silences
    rows = at // CHANNELS_PER_CHIP
    arrivals = (inputs.hits_total if inputs.arrivals_total is None else inputs.arrivals_total).reshape(-1)[at]
    arrivals = arrivals.astype(np.float64)
    use_prior = arrivals == 0 if reference is None else reference.known.reshape(-1)[at] | (arrivals == 0)
    silence = inputs.silence_seconds.reshape(-1)[at] * silence_scale[rows]
    log_p = log_silence_probability(arrivals, silence, run[rows], referenced(reference, prior[rows], at), use_prior)
    status[at[log_p < channel_level]] = ChannelStatus.SILENT
    n_arrivals = (inputs.window_hits if inputs.window_arrivals is None else inputs.window_arrivals).reshape(-1)
    at = channels.shortfalls
    short = tail_below(n_arrivals[at].astype(np.float64), channels.shortfall_mu, inefficient_level)
    status[at[short]] = ChannelStatus.INEFFICIENT
    at = channels.excesses
    rows = at // CHANNELS_PER_CHIP
    typical_now = referenced(reference, chips.typical[rows], at) * scale[rows] * window[rows]
    status[at[log_upper_tail(n_arrivals[at].astype(np.float64), typical_now) < channel_level]] = ChannelStatus.NOISY
    with np.errstate(invalid="ignore", divide="ignore"):
        chip_per_arrival = np.where(sums.arrivals > 0, sums.hits / sums.arrivals, 1.0)
    by_prior = chip_uses_prior & ~chip_known
    chip_base_arrivals = np.where(by_prior, chip_slow, channels.base)
    # the region checks leave out the channels over the noisy cut, as the occupancy does
    quiet_base = np.where(by_prior, chip_slow, channels.quiet_base) * chip_per_arrival
    return Verdicts(
        channel_status=channels.status,
        channel_expected_hz=channels.expected_hz,
        chip_window_hits=chip_hits,
        chip_expected_hits=chip_base_arrivals * chip_per_arrival * window * scale,
        chip_window_arrivals=sums.window_arrivals,
        chip_expected_arrivals=chip_base_arrivals * window * scale,
        chip_base_hz=quiet_base,
        chip_quiet_window_hits=sums.quiet_window_hits,
        chip_dead=chip_dead,
        chip_unknown=chips_judged & (chip_hits == 0) & ~chip_dead,
        silent_channel_hits=-channel_level,
        dead_chip_hits=-chip_level,
        cusum=inputs.cusum if inputs.now is not None and inputs.arrivals_total is not None else None,
    )
