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

import numpy as np

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
    ``cusum_time``), before or after an evaluation."""

    statistic: np.ndarray  # (chips, 64) the CUSUM S (log-likelihood ratio, 0 or more)
    seen: np.ndarray  # (chips, 64) arrivals_total at the last evaluation
    # (chips, 64, 4) arrivals and occupancy-weighted live seconds learnt while good, and those of the
    # current excursion of S (learnt once S is back at 0)
    good: np.ndarray
    time: np.ndarray  # (chips,) live time of the last evaluation (NaN: none yet this run)


def advance_cusum(
    cusum: Cusum, arrivals_total: np.ndarray, now: np.ndarray, scale: np.ndarray, judged: np.ndarray, threshold: float
) -> Cusum:
    """The CUSUM advanced over the arrivals and live time since the last evaluation.

    For n arrivals where a good channel expects m = lambda0 x occupancy x live seconds, the log-likelihood
    ratio of rate INEFFICIENT_RATIO x lambda0 against lambda0 is n ln(rho) - m (rho - 1); S = max(0, S + LLR).
    Under a good channel exp(-S) reversed in time is a martingale, so P(S >= h) <= e^-h at any evaluation
    (Ville): h = ln(1 / the channel's share) keeps the budget. lambda0 is learnt from the data of each
    excursion of S once S is back at 0 (data that turned out good: a channel turning inefficient does not
    teach its new rate), and taken LOW_SIGMAS standard deviations low (n - 1.5 sqrt(n)) / t, so that an
    estimate that came out high does not drift a good channel's S upwards.
    """
    first = np.isnan(cusum.time) | np.isnan(now)
    dt = np.where(first, 0.0, np.maximum(now - cusum.time, 0.0))[:, None]
    dn = np.where(first[:, None], 0.0, np.maximum(arrivals_total - cusum.seen, 0)).astype(np.float64)
    good_n, good_t = cusum.good[..., 0], cusum.good[..., 1]
    testing = judged & (good_n >= MIN_GOOD_ARRIVALS)
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = np.where(testing, (good_n - LOW_SIGMAS * np.sqrt(good_n)) / good_t, 0.0)
    exposure = scale * dt
    llr = dn * math.log(INEFFICIENT_RATIO) - rate * exposure * (INEFFICIENT_RATIO - 1)
    statistic = np.where(testing, np.clip(cusum.statistic + llr, 0.0, CUSUM_CAP * threshold), 0.0)
    # the data of an excursion of S is learnt once S is back at 0 (the excursion was no inefficiency)
    pending = cusum.good[..., 2:] + np.where(judged, 1.0, 0.0)[..., None] * np.stack(
        [dn, np.broadcast_to(exposure, dn.shape)], -1
    )
    back = (statistic == 0)[..., None]
    good = np.concatenate([cusum.good[..., :2] + np.where(back, pending, 0.0), np.where(back, 0.0, pending)], -1)
    time = np.where(np.isnan(now), cusum.time, now)
    return Cusum(statistic, np.where(np.isnan(now)[:, None], cusum.seen, arrivals_total), good, time)


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
    chip_dead: np.ndarray  # (chips,) proven dead: no hit for long enough
    chip_unknown: np.ndarray  # (chips,) expected channels, no hit in the window, not proven dead
    silent_channel_hits: float  # expected hits a channel must miss to be silent: ln(N_channels x families / alpha)
    dead_chip_hits: float  # expected hits a chip must miss to be dead: ln(N_chips x families / alpha)
    cusum: Cusum | None = None  # the sequential inefficiency test advanced to now (None without one)


def _group_rates(values: np.ndarray, inverse: np.ndarray, count: int, pool: np.ndarray) -> np.ndarray:
    """(chips, 2): the SLOW_QUANTILE of finite ``values`` of the ``pool`` chips of each chip's group, and
    their mean (a typical rate: a median is 0 while most channels of a slow run have no hit yet); a
    group without any takes the whole pool's (NaN if the pool is empty).

    ``values`` is per chip or (chips, 64); channels not judged are NaN.
    """

    def rates(chosen: np.ndarray) -> list[float]:
        chosen = chosen[np.isfinite(chosen)]
        return [np.quantile(chosen, SLOW_QUANTILE), chosen.mean()] if len(chosen) else [np.nan, np.nan]

    out = np.full((count, 2), rates(values[pool]))
    for g in range(count):
        members = (inverse == g) & pool
        if members.any():
            out[g] = rates(values[members])
    return out[inverse]


def robust_ratio(observed: np.ndarray, predicted: np.ndarray, inverse: np.ndarray, count: int) -> np.ndarray:
    """(count,): per group, the pooled observed / predicted ratio of its members, leaving out those
    (predicted at least ``MIN_RATIO_HITS``) more than ``OUTLIER_FACTOR`` from the median of their
    ratios, so a few loud or dead members do not move it while bursty ones still count (a median
    alone reads low when hits come in bursts); plainly pooled where fewer than half of the members
    predicted qualify; 1 where the group has no hit at all."""
    out = np.ones(count)
    for g in range(count):
        members = (inverse == g) & (predicted > 0)
        obs, pred = observed[members], predicted[members]
        if not len(obs) or obs.sum() == 0:
            continue
        enough = pred >= MIN_RATIO_HITS
        keep = np.ones(len(obs), bool)
        if 2 * enough.sum() >= len(pred):
            ratio = obs / pred
            center = np.median(ratio[enough])
            keep = ~enough | ((ratio >= center / OUTLIER_FACTOR) & (ratio <= center * OUTLIER_FACTOR))
        out[g] = obs[keep].sum() / pred[keep].sum()
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


def judge(inputs: VerdictInputs, alpha: float, noisy_rate_hz: float) -> Verdicts:
    """Channel statuses and chip verdicts at detector-wide false-alarm probability ``alpha``."""
    expected = inputs.expected
    chips_judged = expected.any(axis=1)
    n_window = np.where(expected, inputs.window_hits, 0).astype(np.float64)
    hits = np.where(expected, inputs.hits_total, 0).astype(np.float64)
    # the statistics count independent arrivals: a steep track's ~100 re-triggers in 1 ms are one
    arrivals = hits if inputs.arrivals_total is None else np.where(expected, inputs.arrivals_total, 0.0)
    n_arrivals = n_window if inputs.window_arrivals is None else np.where(expected, inputs.window_arrivals, 0.0)
    window = inputs.window_seconds[:, None]
    run = np.maximum(inputs.run_seconds, 1.0)[:, None]
    inverse = np.unique(inputs.groups, return_inverse=True)[1].reshape(-1)
    count = int(inverse.max()) + 1 if len(inverse) else 0
    learnt_n, learnt_t = arrivals, np.broadcast_to(run, arrivals.shape)
    if inputs.learnt is not None:
        good = inputs.learnt[..., 1] >= window
        learnt_n, learnt_t = (
            np.where(good, inputs.learnt[..., 0], learnt_n),
            np.where(good, inputs.learnt[..., 1], learnt_t),
        )
    learnt = learnt_n / np.maximum(learnt_t, 1.0)
    # the window's inefficiency tail takes a channel's own rate only once learnt over a window's span at least,
    # and LOW_SIGMAS low, as the CUSUM does: a rate learnt from a few arrivals (a new run's first seconds) can
    # come out several times high and call a good channel inefficient
    learnt_low = np.maximum(learnt_n - LOW_SIGMAS * np.sqrt(learnt_n), 0.0) / np.maximum(learnt_t, 1.0)
    short = learnt_t < window
    # the learnt rates of an io_channel that never spoke are no sample of a healthy channel's rate
    heard = hits.sum(axis=1) > 0
    if inputs.links is None:
        pool = np.asarray(chips_judged)
    else:
        links = np.unique(inputs.links, return_inverse=True)[1].reshape(-1)
        pool = (
            chips_judged
            & (np.bincount(links, heard.astype(np.float64), int(links.max()) + 1 if len(links) else 0) > 0)[links]
        )
    rates = _group_rates(np.where(expected, learnt, np.nan), inverse, count, pool)
    slow, typical = np.moveaxis(rates, 1, 0)[:, :, None]
    if inputs.reference_rate_hz is None:
        known = np.zeros(expected.shape, bool)
        reference = np.zeros(expected.shape)
    else:
        known = np.isfinite(inputs.reference_rate_hz) & expected
        reference = np.nan_to_num(inputs.reference_rate_hz)
    # occupancy of each tile: its arrivals in the window over what its learnt (or reference) rates predict,
    # pooled over its chips but outliers from the median chip's ratio and channels over the noisy cut
    unbiased = np.where(known, reference, learnt)
    quiet = n_window <= noisy_rate_hz * window
    chip_observed = np.where(quiet, n_arrivals, 0.0).sum(axis=1)
    chip_predicted = np.where(quiet, unbiased * window, 0.0).sum(axis=1)
    scale = robust_ratio(chip_observed, chip_predicted, inverse, count)[inverse][:, None]
    prior = np.where(known, reference, np.nan_to_num(slow))  # for channels without history of their own
    use_prior = known | (arrivals == 0)
    base = np.where(expected, np.where(use_prior, prior, learnt), 0.0)
    rate_now = base * scale
    silence_scale = np.minimum(scale, 1.0)  # never judge a silence at a higher occupancy than learnt
    channel_level = math.log(per_test_probability(alpha, int(expected.sum())))
    # the inefficient family's share is split equally over its two tests: the window's tail and the CUSUM
    inefficient_level = math.log(per_test_probability(alpha, 2 * int(expected.sum())))
    chip_level = math.log(per_test_probability(alpha, int(chips_judged.sum())))

    chip_hits = n_window.sum(axis=1)
    chip_silence = np.where(expected, inputs.silence_seconds, np.inf).min(axis=1)
    chip_silence = np.where(np.isfinite(chip_silence), chip_silence, 0.0) * silence_scale[:, 0]
    n_expected = expected.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_channel = np.where(chips_judged, arrivals.sum(axis=1) / run[:, 0] / n_expected, np.nan)
    chip_slow = np.nan_to_num(_group_rates(per_channel, inverse, count, pool)[:, 0]) * n_expected
    chip_known = known.any(axis=1)
    chip_prior = np.where(chip_known, np.where(known, reference, prior).sum(axis=1), chip_slow)
    chip_arrivals = arrivals.sum(axis=1)
    chip_uses_prior = chip_known | (chip_arrivals == 0)
    chip_log_p = log_silence_probability(chip_arrivals, chip_silence, run[:, 0], chip_prior, chip_uses_prior)
    # packets failing parity and no valid one: the chip sends, its link corrupts them (the parity check)
    parity_errors = np.zeros(len(chip_hits)) if inputs.window_parity_errors is None else inputs.window_parity_errors
    link_broken = (chip_hits == 0) & (parity_errors > 0)
    chip_dead = chips_judged & (chip_hits == 0) & (chip_log_p < chip_level) & ~link_broken
    channel_log_p = log_silence_probability(arrivals, inputs.silence_seconds * silence_scale, run, prior, use_prior)
    silent = expected & (n_window == 0) & (channel_log_p < channel_level) & ~link_broken[:, None]
    silent |= expected & chip_dead[:, None]
    mu_window = np.where(expected, np.where(use_prior | short, prior, learnt_low), 0.0) * scale * window
    has_hits = n_window > 0
    # the tails only where they can be small: fewer hits than expected, or above the noisy cut
    inefficient = has_hits & (n_arrivals < mu_window)
    inefficient[inefficient] = log_lower_tail(n_arrivals[inefficient], mu_window[inefficient]) < inefficient_level
    cusum = None
    if inputs.cusum is not None and inputs.now is not None and inputs.arrivals_total is not None:
        cusum = advance_cusum(inputs.cusum, inputs.arrivals_total, inputs.now, scale, expected, -inefficient_level)
        inefficient |= (cusum.statistic >= -inefficient_level) & ~silent
    typical_now = np.where(known, reference, np.nan_to_num(typical)) * scale * window
    noisy = has_hits & (n_window / window > noisy_rate_hz)
    noisy[noisy] = log_upper_tail(n_arrivals[noisy], typical_now[noisy]) < channel_level
    status = np.full(expected.shape, ChannelStatus.NONE, np.int8)
    status[expected] = ChannelStatus.UNKNOWN
    status[has_hits] = ChannelStatus.ACTIVE
    status[silent] = ChannelStatus.SILENT
    status[inefficient] = ChannelStatus.INEFFICIENT
    status[noisy] = ChannelStatus.NOISY
    # what users see are hits: expected arrivals times the hits per arrival learnt (1 without any)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_arrival = np.where(arrivals > 0, hits / arrivals, 1.0)
        chip_per_arrival = np.where(chip_arrivals > 0, hits.sum(axis=1) / chip_arrivals, 1.0)
    by_prior = chip_uses_prior & ~chip_known
    chip_base_arrivals = np.where(by_prior, chip_slow, base.sum(axis=1))
    # the region checks leave out the channels over the noisy cut, as the occupancy does
    quiet_base = np.where(by_prior, chip_slow, np.where(quiet, base, 0.0).sum(axis=1)) * chip_per_arrival
    return Verdicts(
        channel_status=status,
        channel_expected_hz=rate_now * per_arrival,
        chip_window_hits=chip_hits,
        chip_expected_hits=chip_base_arrivals * chip_per_arrival * window[:, 0] * scale[:, 0],
        chip_window_arrivals=n_arrivals.sum(axis=1),
        chip_expected_arrivals=chip_base_arrivals * window[:, 0] * scale[:, 0],
        chip_base_hz=quiet_base,
        chip_dead=chip_dead,
        chip_unknown=chips_judged & (chip_hits == 0) & ~chip_dead,
        silent_channel_hits=-channel_level,
        dead_chip_hits=-chip_level,
        cusum=cusum,
    )
