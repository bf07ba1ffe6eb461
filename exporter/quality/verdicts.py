"""Channel and chip verdicts from counting statistics, with a stated false-alarm budget.

Hits of a healthy channel over a span of data time are Poisson with mean mu = expected rate x
span. Every evaluation judges every expected channel and chip at once; the probability that at
least one verdict of the detector is false is at most ``alpha`` (``false_alarm_probability``):
``alpha`` is split equally over the verdict families of ``FAMILIES`` and, within a family, over
the items it judges (Bonferroni). A verdict is given only when the data prove it at that level;
until then a channel without hits, or a chip, is *unknown*, never ok and never silent.

Expected rate of a channel: the reference run's rate when a reference knows the channel, else the
channel's own rate learnt on this run (hits since the run started / data time since then), else,
for a channel without a hit yet, the median learnt rate of its tile's channels. It is scaled by
the occupancy of the tile (the tile's hits in the window over what the same expectation predicts)
so a change of beam or threshold that moves a whole tile is not a per-channel fault. A tile with
no hit at all in the window keeps its unscaled expectation, so a dead tile is judged dead.

Why the learnt rate is safe for silence: given H hits in a run of length T, a healthy channel's hit
times are uniform, so P(no hit in the last S) = (1 - S/T)^H <= exp(-H S / T) = exp(-mu): the
test "mu >= ln(N / alpha)" keeps its level whatever H is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from exporter.quality.status import ChannelStatus

#: The verdict families the budget is split over (equal shares).
FAMILIES = (
    "dead chip",
    "silent channel",
    "inefficient channel",
    "noisy channel",
    "chip hit rate",
    "chip reference rate",
)

_HALF_LOG_TWO_PI = 0.5 * math.log(2 * math.pi)
_SMALL_LOG_FACTORIALS = np.array([math.lgamma(k + 1) for k in range(16)])


def log_factorial(n: np.ndarray) -> np.ndarray:
    """ln(n!) of non-negative integer counts: a table below 16, Stirling's series (error < 1e-12) above."""
    n = np.asarray(n, np.float64)
    big = np.maximum(n, 16.0)
    stirling = big * np.log(big) - big + 0.5 * np.log(big) + _HALF_LOG_TWO_PI + 1 / (12 * big) - 1 / (360 * big**3)
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
class VerdictInputs:
    """What the verdicts are made of, one row per chip (the accumulator's rows)."""

    window_hits: np.ndarray  # (chips, 64) hits in the window
    hits_total: np.ndarray  # (chips, 64) hits since the run started
    silence_seconds: np.ndarray  # (chips, 64) data time since the channel's last hit (since the run started if none)
    window_seconds: np.ndarray  # (chips,) data time the window spans
    run_seconds: np.ndarray  # (chips,) data time since the run started
    expected: np.ndarray  # (chips, 64) bool: channels that should send hits
    groups: np.ndarray  # (chips,) occupancy group of each chip (its tile)
    reference_rate_hz: np.ndarray | None = None  # (chips, 64); NaN where the reference does not know the channel


@dataclass(frozen=True)
class Verdicts:
    """Channel statuses and chip verdicts of one evaluation."""

    channel_status: np.ndarray  # (chips, 64) ChannelStatus codes
    channel_expected_hz: np.ndarray  # (chips, 64) expected rate now (0 for channels not expected)
    chip_window_hits: np.ndarray  # (chips,) hits of the expected channels in the window
    chip_expected_hits: np.ndarray  # (chips,) what the expectation predicts for them in the window
    chip_dead: np.ndarray  # (chips,) proven dead: no hit for long enough
    chip_unknown: np.ndarray  # (chips,) expected channels, no hit in the window, not proven dead
    silent_channel_hits: float  # expected hits a channel must miss to be silent: ln(N_channels x families / alpha)
    dead_chip_hits: float  # expected hits a chip must miss to be dead: ln(N_chips x families / alpha)


def _group_median(values: np.ndarray, mask: np.ndarray, inverse: np.ndarray, count: int) -> np.ndarray:
    """Median of ``values[mask]`` per group of chips (NaN for a group with nothing masked)."""
    out = np.full(count, np.nan)
    for g in range(count):
        chosen = values[inverse == g][mask[inverse == g]]
        if len(chosen):
            out[g] = np.median(chosen)
    return out


def judge(inputs: VerdictInputs, alpha: float, noisy_rate_hz: float) -> Verdicts:
    """Channel statuses and chip verdicts at detector-wide false-alarm probability ``alpha``."""
    expected = inputs.expected
    n_window = np.where(expected, inputs.window_hits, 0).astype(np.float64)
    window = inputs.window_seconds[:, None]
    inverse = np.unique(inputs.groups, return_inverse=True)[1].reshape(-1)
    count = int(inverse.max()) + 1 if len(inverse) else 0
    learnt = inputs.hits_total / np.maximum(inputs.run_seconds, 1.0)[:, None]
    with_history = expected & (inputs.hits_total > 0)
    typical = _group_median(learnt, with_history, inverse, count)[inverse][:, None]
    base = np.where(inputs.hits_total > 0, learnt, typical)
    if inputs.reference_rate_hz is not None:
        reference = inputs.reference_rate_hz
        base = np.where(np.isfinite(reference), reference, base)
        typical = np.where(np.isfinite(reference), reference, typical)
    base = np.where(expected, np.nan_to_num(base), 0.0)
    # occupancy of each tile: its hits in the window over what the expectation predicts
    group_hits = np.bincount(inverse, n_window.sum(axis=1), count)
    group_predicted = np.bincount(inverse, (base * window).sum(axis=1), count)
    with np.errstate(invalid="ignore", divide="ignore"):
        scale = np.where((group_hits > 0) & (group_predicted > 0), group_hits / group_predicted, 1.0)[inverse][:, None]
    rate_now = base * scale
    silence_rate = base * np.minimum(scale, 1.0)  # never judge a silence at a higher occupancy than learnt
    judged_channels = int(expected.sum())
    judged_chips = int(expected.any(axis=1).sum())
    channel_level = per_test_probability(alpha, judged_channels)
    chip_level = per_test_probability(alpha, judged_chips)

    chip_hits = n_window.sum(axis=1)
    chip_silence = np.where(expected, inputs.silence_seconds, np.inf).min(axis=1)
    chip_silence = np.where(np.isfinite(chip_silence), chip_silence, 0.0)
    chip_mu = silence_rate.sum(axis=1) * chip_silence
    chip_dead = (chip_hits == 0) & (chip_mu >= -math.log(chip_level)) & expected.any(axis=1)
    silent = expected & (n_window == 0) & (silence_rate * inputs.silence_seconds >= -math.log(channel_level))
    silent |= expected & chip_dead[:, None]
    mu_window = rate_now * window
    has_hits = n_window > 0
    inefficient = has_hits & (log_lower_tail(n_window, mu_window) < math.log(channel_level))
    typical_now = np.where(expected, np.nan_to_num(typical), 0.0) * scale * window
    noisy = (
        has_hits
        & (n_window / window > noisy_rate_hz)
        & (log_upper_tail(n_window, typical_now) < math.log(channel_level))
    )
    status = np.full(expected.shape, ChannelStatus.NONE, np.int8)
    status[expected] = ChannelStatus.UNKNOWN
    status[has_hits] = ChannelStatus.ACTIVE
    status[silent] = ChannelStatus.SILENT
    status[inefficient] = ChannelStatus.INEFFICIENT
    status[noisy] = ChannelStatus.NOISY
    return Verdicts(
        channel_status=status,
        channel_expected_hz=rate_now,
        chip_window_hits=chip_hits,
        chip_expected_hits=mu_window.sum(axis=1),
        chip_dead=chip_dead,
        chip_unknown=expected.any(axis=1) & (chip_hits == 0) & ~chip_dead,
        silent_channel_hits=-math.log(channel_level),
        dead_chip_hits=-math.log(chip_level),
    )
