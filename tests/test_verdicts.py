"""The verdict engine: each failure class of issue 11, driven by exact Poisson counts and end to end."""

from __future__ import annotations

import dataclasses
import math
import threading

import numpy as np
import pytest
from helpers import START, parse_metrics

from larpix_dqm.exporter import Monitor
from larpix_dqm.exporter.detector.geometry import CHANNELS_PER_CHIP
from larpix_dqm.exporter.metrics.exposition import render
from larpix_dqm.exporter.metrics.families import FamilyBuilder
from larpix_dqm.exporter.metrics.health import Health
from larpix_dqm.exporter.quality import halves
from larpix_dqm.exporter.quality.accumulator import (
    EVALUATION_KERNELS,
    NUMPY,
    Accumulator,
    QualityConfig,
    load_evaluation_kernels,
)
from larpix_dqm.exporter.quality.checks import DEFAULT_CHECKS, counting_status
from larpix_dqm.exporter.quality.clock import DataClock
from larpix_dqm.exporter.quality.status import ChannelStatus, CheckStatus
from larpix_dqm.exporter.quality.summary import ChipLayout, summarize
from larpix_dqm.exporter.quality.verdicts import (
    ChannelPasses,
    Cusum,
    GroupValues,
    VerdictInputs,
    count_channels,
    group_values,
    judge,
    linear_quantile,
    log_factorial,
    log_lower_tail,
    log_upper_tail,
    tail_below,
)
from larpix_dqm.exporter.reading.decode import decode_messages
from larpix_dqm.exporter.reading.packets import PACKET_DTYPE, TIMESTAMP
from larpix_dqm.exporter.simulate import Faults, SimulationConfig, Simulator

ALPHA = 0.01
HIT_RATE_RATIO = next(c for c in DEFAULT_CHECKS if c.name == "hit_rate_ratio")


def exact_tails(n: int, mu: float) -> tuple[float, float]:
    """P(X <= n), P(X >= n) for X ~ Poisson(mu), by summing the terms."""
    pmf = [math.exp(k * math.log(mu) - mu - math.lgamma(k + 1)) for k in range(int(max(n, mu) + 40 * mu**0.5 + 400))]
    return math.fsum(pmf[: n + 1]), math.fsum(pmf[n:])


@pytest.mark.parametrize("mu", [0.5, 3.0, 17.7, 120.0, 900.0])
def test_tail_bounds_are_never_below_the_exact_tails_and_close_to_them(mu):
    for n in sorted({0, 1, 2, int(mu / 3), int(mu / 2), int(mu * 0.8), int(mu * 1.5), int(mu * 2) + 3}):
        lower, upper = exact_tails(n, mu)
        lower_bound, upper_bound = math.exp(log_lower_tail(n, mu)), math.exp(log_upper_tail(max(n, 1), mu))
        assert lower_bound >= lower * (1 - 1e-9), (n, mu)
        if n < mu:
            assert lower_bound <= lower * mu / (mu - n) * (1 + 1e-9), (n, mu)
        if n >= 1:
            assert upper_bound >= upper * (1 - 1e-9), (n, mu)
            if n + 1 > mu:
                assert upper_bound <= upper * (n + 1) / (n + 1 - mu) * (1 + 1e-9), (n, mu)
    assert math.exp(log_lower_tail(0, mu)) == pytest.approx(math.exp(-mu), rel=1e-12), "exact at zero hits"


@pytest.mark.parametrize("level", [-25.0, -20.6, -12.0, -3.0])
def test_a_tail_is_computed_only_where_it_can_be_below_its_level(level):
    """``tail_below`` is each tail's own answer, over counts below and above their expectation from 0.05 to 10^5."""
    rng = np.random.default_rng(int(-level))
    skipped = []
    for upper, tail in ((False, log_lower_tail), (True, log_upper_tail)):
        for scale in (0.0, 0.05, 1.0, 20.0, 400.0, 1e5):
            mu = rng.uniform(0.01, 2.0, 20_000) * scale
            n = np.floor(np.maximum(mu, 1.0) * rng.gamma(2.0, 0.5, len(mu)))
            np.testing.assert_array_equal(tail_below(n, mu, level, upper), tail(n, mu) < level)
    healthy_mu = np.full(10_000, 24.0)
    n = rng.poisson(healthy_mu).astype(np.float64)
    skipped = (healthy_mu - n) ** 2 / healthy_mu <= 20.6 - 0.5 * math.log(2 * math.pi * n.max()) - 1 / 12 - 2
    assert skipped.mean() > 0.99, "a healthy run's tails are skipped"


def test_log_factorial_matches_lgamma():
    n = np.array([0, 1, 5, 15, 16, 17, 100, 12345, 10**7])
    np.testing.assert_allclose(log_factorial(n), [math.lgamma(k + 1) for k in n.tolist()], rtol=1e-13, atol=3e-12)


def test_linear_quantile_is_numpys_quantile_to_the_bit():
    rng = np.random.default_rng(1)
    samples = [rng.random(n) for n in (1, 2, 3, 9, 10, 11, 12, 101, 10_240)]
    samples += [rng.poisson(0.3, 500) / 7.0, np.zeros(40), rng.lognormal(0, 3, 999)]
    for values in samples:
        for q in (0.0, 0.1, 0.5, 0.55, 0.9, 1.0):
            assert linear_quantile(values.copy(), q) == np.quantile(values, q), (len(values), q)


def order_cases(rng: np.random.Generator) -> list[np.ndarray]:
    """Segments for the order statistics: spreads, ties at every rank, extremes whose difference overflows or is
    subnormal."""
    cases = []
    for n in (1, 2, 3, 63, 64, 65, 1000, 10_240):
        mostly_zero = np.zeros(n)
        mostly_zero[: n // 50] = 1.0
        cases += [rng.random(n), rng.exponential(0.4, n), rng.lognormal(0, 30, n), np.full(n, 0.25), mostly_zero]
        cases += [np.round(rng.exponential(1, n), 1), rng.choice([-1e308, 1e308, 0.0, 5e-324], n)]
        cases += [rng.choice([0.0, 5e-324, 1e-323], n), np.sort(rng.random(n)), -rng.random(n)]
    return cases


#: The compiled passes in one piece, or in halves at once from 64 chip rows on.
SPLITS = pytest.mark.parametrize("split", [1 << 40, 64], ids=["whole", "halves"])


def split_from(monkeypatch: pytest.MonkeyPatch, rows: int) -> list[str]:
    """The compiled passes run in halves from ``rows`` chip rows on, whatever the cores; the names of the threads
    their parts ran in, as they run."""
    monkeypatch.setattr(halves, "SPLIT_FROM_ROWS", rows)
    monkeypatch.setattr(halves, "two_cores", lambda: True)
    threads: list[str] = []
    split = halves.in_halves

    def recorded(work, *args, **kwargs):
        return split(lambda part: (threads.append(threading.current_thread().name), work(part))[1], *args, **kwargs)

    monkeypatch.setattr(EVALUATION_KERNELS.kernels, "in_halves", recorded)
    return threads


def assert_split_as_asked(threads: list[str], split: int) -> None:
    """The helper thread ran parts exactly when the passes were to run in halves."""
    assert threads and any(name.startswith("evaluation") for name in threads) == (split < 1 << 40), threads


def assert_same_group_values(got: GroupValues, expected: GroupValues, message: str) -> None:
    for name in ("count", "neighbours", "mean"):
        a, b = getattr(got, name), getattr(expected, name)
        np.testing.assert_array_equal(a, b, err_msg=f"{name} of {message}")
        np.testing.assert_array_equal(np.signbit(a), np.signbit(b), err_msg=f"the signs of {name} of {message}")


@pytest.mark.slow
def test_the_compiled_group_values_are_numpys_partition_and_mean():
    """The groups' rate quantiles and means: the compiled bucket selection finds numpy's two order statistics of each
    group (empty ones too), at any quantile, whatever the values' spread, ties or range, and the compiled sum is
    numpy's pairwise sum, to the bit."""
    assert load_evaluation_kernels(wait=300), EVALUATION_KERNELS.error
    compiled = EVALUATION_KERNELS.kernels.CompiledPasses()
    cases = order_cases(np.random.default_rng(3))
    for q in (0.0, 0.1, 0.5, 0.99, 1.0):
        for at in range(0, len(cases), 3):
            segments = [*cases[at : at + 3], np.zeros(0)]
            values = np.concatenate(segments)[:, None]
            rows = np.arange(len(values))
            bounds = np.concatenate([[0], np.cumsum([len(s) for s in segments])])
            expected = group_values(values, rows, bounds, q)
            assert_same_group_values(compiled.group_values(values, rows, bounds, q), expected, f"{at} at {q}")


@pytest.mark.slow
@SPLITS
def test_the_compiled_group_values_gather_the_finite_channels_of_each_groups_rows(split, monkeypatch):
    """Channels' rates of chips in groups: each group's rows in any order, NaN channels left out, groups of every size
    (numpy's sum changes its blocks at 8 and 128 values and halves longer ones), the groups in one piece or in
    halves at once."""
    assert load_evaluation_kernels(wait=300), EVALUATION_KERNELS.error
    threads = split_from(monkeypatch, split)
    compiled = EVALUATION_KERNELS.kernels.CompiledPasses()
    rng = np.random.default_rng(4)
    rates = rng.exponential(0.3, (3_000, CHANNELS_PER_CHIP)) * 10 ** rng.uniform(-3, 3, (3_000, 1))
    rates[rng.random(rates.shape) < 0.2] = np.nan
    rates[7] = np.nan  # a chip without a judged channel
    sizes = [0, 1, 2, 3, 17, 200, 1, 2_000, 0, 770]
    rows = rng.permutation(len(rates))[: sum(sizes)]
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    rows[bounds[1]] = 7  # the group of one chip
    for q in (0.1, 0.5):
        expected = group_values(rates, rows, bounds, q)
        assert expected.count[1] == 0 and np.isnan(expected.mean[1])
        assert_same_group_values(compiled.group_values(rates, rows, bounds, q), expected, f"the channels at {q}")
    assert_split_as_asked(threads, split)
    # single values per row, every length around numpy's block edges (8, 128, their halvings) and a few longer
    lengths = np.r_[1:20, 120:140, 250:270, 1020:1030, rng.integers(1, 3_000, 10)]
    values = rng.exponential(1.0, (int(lengths.sum()), 1))
    values[:5] = -0.0  # a group of zeros of either sign: numpy's sum is +0.0
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    rows = np.arange(len(values))
    assert_same_group_values(
        compiled.group_values(values, rows, bounds, 0.1), group_values(values, rows, bounds, 0.1), "lengths"
    )


def test_count_channels_is_the_sum_of_each_row():
    rng = np.random.default_rng(2)
    for p in (0.0, 0.03, 0.5, 1.0):
        mask = rng.random((777, 64)) < p
        np.testing.assert_array_equal(count_channels(mask), mask.sum(axis=1))
    assert count_channels(np.ones((3, 64), bool)).dtype == np.int64


def healthy(rates: np.ndarray, run_s: float, rng: np.random.Generator, scale_in_window: float = 1.0, window_s=None):
    """Exact samples of a run of constant rates, the last ``window_s`` of it at ``scale_in_window`` x the rate."""
    window_s = run_s if window_s is None else window_s
    before = rng.poisson(rates * (run_s - window_s))
    in_window = rng.poisson(rates * window_s * scale_in_window)
    u = rng.random(rates.shape)
    with np.errstate(divide="ignore"):
        silence = np.where(
            in_window > 0,
            window_s * (1 - u ** (1 / np.maximum(in_window, 1))),
            np.where(before > 0, window_s + (run_s - window_s) * (1 - u ** (1 / np.maximum(before, 1))), run_s),
        )
    return before + in_window, in_window, silence


def inputs(hits_total, window_hits, silence, run_s, window_s=None, expected=None, groups=None) -> VerdictInputs:
    n = len(hits_total)
    return VerdictInputs(
        window_hits=window_hits,
        hits_total=hits_total,
        silence_seconds=silence,
        window_seconds=np.full(n, run_s if window_s is None else window_s),
        run_seconds=np.full(n, run_s),
        expected=np.ones(hits_total.shape, bool) if expected is None else expected,
        groups=np.zeros(n, np.int64) if groups is None else groups,
    )


def module_like(rate: float) -> np.ndarray:
    """1,600 chips x 49 connected channels of one rate (the rest not expected: rate 0)."""
    rates = np.zeros((1600, 64))
    rates[:, :49] = rate
    return rates


# -- a chip dead from the start of a run, at low occupancy ------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_chip_dead_from_the_start_is_flagged_when_neighbours_have_two_hits_per_channel(seed):
    rng = np.random.default_rng(seed)
    rates = module_like(2.0 / 60)  # 2 expected hits per channel in a 60 s run
    rates[7] = 0.0
    hits, window, silence = healthy(rates, 60.0, rng)
    v = judge(inputs(hits, window, silence, 60.0, expected=module_like(1.0) > 0), ALPHA, 10.0)
    assert v.chip_dead[7] and v.chip_dead.sum() == 1
    assert (v.channel_status[7, :49] == ChannelStatus.SILENT).all()
    assert (v.channel_status[:, 49:] == ChannelStatus.NONE).all()
    status = counting_status(v.chip_window_hits, v.chip_expected_hits, HIT_RATE_RATIO, ALPHA)
    assert status[7] == CheckStatus.ERROR


@pytest.mark.slow
def test_chip_dead_from_the_start_end_to_end(module_geometry):
    """Simulated module at 0.05 Hz per channel: after 40 s (2 hits per channel) the dead chip is in error."""
    dead = (1, 1, 11)
    monitor = Monitor(module_geometry)
    sim = Simulator(module_geometry, SimulationConfig(hit_rate_hz=0.05, seed=3), Faults(silent_chips=[dead]))
    for t in range(40):
        monitor.feed(decode_messages(*sim.second(START + t)).packets, wall_now=START + 100)
    state = monitor.update()
    snap, r = state.snapshot, state.results
    row = snap.chip_keys.tolist().index(list(dead))
    assert snap.chip_dead[row] and snap.chip_dead.sum() == 1
    checks = [c.name for c in r.chip_checks]
    assert r.chip_status[checks.index("silent_fraction"), row] == CheckStatus.ERROR
    assert r.chip_status[checks.index("hit_rate_ratio"), row] == CheckStatus.ERROR
    assert r.detector_status == CheckStatus.ERROR
    text = render(FamilyBuilder().families(snap, Health(), evaluation=state))
    samples = parse_metrics(text)
    labels = frozenset({"io_group": "1", "io_channel": "1", "chip_id": "11"}.items())
    assert samples[("larpix_chip_dead", labels)] == 1
    assert samples[("larpix_chip_channels", labels | {("status", "silent")})] == 49


# -- no flood just above the old threshold ---------------------------------------------


def test_no_healthy_channel_is_called_silent_at_eight_expected_hits():
    """The old rule called ~26 healthy channels of a module silent per evaluation here."""
    rates = module_like(8.0 / 60)
    silent = 0
    for seed in range(40):
        hits, window, silence = healthy(rates, 60.0, np.random.default_rng(seed))
        v = judge(inputs(hits, window, silence, 60.0, expected=rates > 0), ALPHA, 10.0)
        silent += int((v.channel_status == ChannelStatus.SILENT).sum()) + int(v.chip_dead.sum())
        assert ((v.channel_status == ChannelStatus.UNKNOWN) == ((window == 0) & (rates > 0))).all()
    assert silent == 0


@pytest.mark.slow
def test_no_flood_end_to_end(module_geometry):
    monitor = Monitor(module_geometry)
    sim = Simulator(module_geometry, SimulationConfig(hit_rate_hz=8.0 / 60, seed=4))
    for t in range(60):
        monitor.feed(decode_messages(*sim.second(START + t)).packets, wall_now=START + 100)
    monitor.update()
    assert len(monitor.channels("silent")) == 0 and len(monitor.channels("noisy", "inefficient")) == 0
    assert len(monitor.channels("unknown")) > 0, "channels without a hit yet are unknown, not silent"


# -- real low-rate data is not in warning --------------------------------------------


@pytest.mark.parametrize("rate", [0.02, 0.05])
def test_low_rate_runs_give_no_false_verdicts_over_a_run(rate):
    rng = np.random.default_rng(int(rate * 1000))
    rates = module_like(rate) * rng.lognormal(0, 0.3, (1600, 64))
    for run_s in (60.0, 300.0, 1200.0, 3600.0):
        hits, window, silence = healthy(rates, run_s, rng, window_s=60.0)
        v = judge(inputs(hits, window, silence, run_s, 60.0, expected=rates > 0), ALPHA, 10.0)
        wrong = np.isin(v.channel_status, [ChannelStatus.SILENT, ChannelStatus.INEFFICIENT, ChannelStatus.NOISY])
        assert not wrong.any() and not v.chip_dead.any(), run_s
        status = counting_status(v.chip_window_hits, v.chip_expected_hits, HIT_RATE_RATIO, ALPHA)
        assert (status <= CheckStatus.OK).all(), run_s


@pytest.mark.slow
def test_low_rate_run_end_to_end_is_not_in_warning(module_geometry):
    monitor = Monitor(module_geometry)
    sim = Simulator(module_geometry, SimulationConfig(hit_rate_hz=0.03, seed=6))
    for t in range(240):
        monitor.feed(decode_messages(*sim.second(START + t)).packets, wall_now=START + 300)
    r = monitor.update().results
    checks = [c.name for c in r.chip_checks]
    for name in ("hit_rate_ratio", "silent_fraction", "noisy_fraction", "inefficient_fraction"):
        assert (r.chip_status[checks.index(name)] <= CheckStatus.OK).all(), name
    assert r.detector_status == CheckStatus.OK


# -- unknown before enough data ------------------------------------------------------


@pytest.mark.slow
def test_unknown_until_the_data_can_decide(module_geometry):
    dead = (2, 5, 20)
    monitor = Monitor(module_geometry)
    sim = Simulator(module_geometry, SimulationConfig(hit_rate_hz=0.01, seed=8), Faults(silent_chips=[dead]))
    monitor.feed(decode_messages(*sim.second(START)).packets, wall_now=START + 10)
    state = monitor.update()
    snap, r = state.snapshot, state.results
    row = snap.chip_keys.tolist().index(list(dead))
    assert not snap.chip_dead.any() and snap.chip_unknown[row]
    assert (snap.channel_status[row][module_geometry.connected[row]] == ChannelStatus.UNKNOWN).all()
    assert (snap.channel_status == ChannelStatus.SILENT).sum() == 0
    silent_fraction = [c.name for c in r.chip_checks].index("silent_fraction")
    assert r.chip_status[silent_fraction, row] == CheckStatus.UNKNOWN
    assert r.chip_worst[row] == CheckStatus.UNKNOWN and r.detector_status == CheckStatus.UNKNOWN
    samples = parse_metrics(render(FamilyBuilder().families(snap, Health(), evaluation=state)))
    labels = frozenset({"io_group": "2", "io_channel": "5", "chip_id": "20", "status": "unknown"}.items())
    assert samples[("larpix_chip_channels", labels)] == 49
    assert samples[("larpix_detector_status", frozenset())] == -1
    for t in range(1, 120):  # more data: the dead chip is proven, the others decided
        monitor.feed(decode_messages(*sim.second(START + t)).packets, wall_now=START + 200)
    snap = monitor.update().snapshot
    assert snap.chip_dead[row] and snap.chip_dead.sum() == 1


def test_a_channel_without_enough_expected_hits_is_unknown_not_silent():
    rates = module_like(1.0 / 60)
    hits, window, silence = healthy(rates, 60.0, np.random.default_rng(1))
    v = judge(inputs(hits, window, silence, 60.0, expected=rates > 0), ALPHA, 10.0)
    assert (v.channel_status[(rates > 0) & (window == 0)] == ChannelStatus.UNKNOWN).all()
    assert v.chip_unknown.sum() == 0 and not v.chip_dead.any()


# -- a global rate change of a tile is not a per-channel fault --------------------------


@pytest.mark.parametrize("scale", [0.2, 4.0])
def test_a_tile_wide_rate_change_is_not_a_channel_or_chip_fault(scale):
    rng = np.random.default_rng(int(scale * 10))
    rates = module_like(0.5)
    groups = np.repeat(np.arange(16), 100)
    hits, window, silence = healthy(rates, 3600.0, rng, window_s=60.0)
    in_tile = groups == 3
    hits_scaled, window_scaled, silence_scaled = healthy(rates, 3600.0, rng, scale_in_window=scale, window_s=60.0)
    for a, b in ((hits, hits_scaled), (window, window_scaled), (silence, silence_scaled)):
        a[in_tile] = b[in_tile]
    v = judge(inputs(hits, window, silence, 3600.0, 60.0, expected=rates > 0, groups=groups), ALPHA, 10.0)
    wrong = np.isin(v.channel_status, [ChannelStatus.SILENT, ChannelStatus.INEFFICIENT, ChannelStatus.NOISY])
    assert not wrong.any() and not v.chip_dead.any()
    status = counting_status(v.chip_window_hits, v.chip_expected_hits, HIT_RATE_RATIO, ALPHA)
    assert (status <= CheckStatus.OK).all()
    # the same change on one chip only is a fault of that chip
    hits[0], window[0], silence[0] = hits_scaled[300], window_scaled[300], silence_scaled[300]
    v = judge(inputs(hits, window, silence, 3600.0, 60.0, expected=rates > 0, groups=groups), ALPHA, 10.0)
    status = counting_status(v.chip_window_hits, v.chip_expected_hits, HIT_RATE_RATIO, ALPHA)
    assert status[0] == CheckStatus.WARNING and (status[1:] <= CheckStatus.OK).all()


@pytest.mark.slow
def test_a_tile_wide_rate_change_end_to_end(module_geometry):
    tile_chips = [tuple(map(int, k)) for k in module_geometry.chips[module_geometry.tiles == 3]]
    monitor = Monitor(module_geometry)
    normal = Simulator(module_geometry, SimulationConfig(hit_rate_hz=0.2, seed=9))
    hotter = Simulator(module_geometry, SimulationConfig(hit_rate_hz=0.2, seed=10), Faults(rate_scale_chips=tile_chips))
    for t in range(240):
        sim = normal if t < 180 else hotter
        monitor.feed(decode_messages(*sim.second(START + t)).packets, wall_now=START + 300)
    state = monitor.update()
    r = state.results
    assert len(monitor.channels("silent", "noisy", "inefficient")) == 0
    assert (r.chip_status[[c.name for c in r.chip_checks].index("hit_rate_ratio")] <= CheckStatus.OK).all()


# -- noisy channels ----------------------------------------------------------------


def test_noisy_channel_needs_both_the_excess_and_the_absolute_cut():
    rng = np.random.default_rng(2)
    rates = module_like(0.5)
    rates[5, 3] = 50.0  # noisy
    rates[6, 4] = 8.0  # hot but under the DAQ's 10 Hz cut
    hits, window, silence = healthy(rates, 600.0, rng, window_s=60.0)
    v = judge(inputs(hits, window, silence, 600.0, 60.0, expected=rates > 0), ALPHA, 10.0)
    assert v.channel_status[5, 3] == ChannelStatus.NOISY
    assert (v.channel_status == ChannelStatus.NOISY).sum() == 1
    # a pedestal run: every channel at tens of Hz is not noisy
    rates = module_like(30.0)
    hits, window, silence = healthy(rates, 120.0, rng, window_s=60.0)
    v = judge(inputs(hits, window, silence, 120.0, 60.0, expected=rates > 0), ALPHA, 10.0)
    assert (v.channel_status == ChannelStatus.NOISY).sum() == 0


# -- silence over long spans, across a checkpoint -----------------------------------------


def second_of_packets(t: int, chips: int, silent_channel: tuple[int, int] | None) -> np.ndarray:
    """One timestamp packet and one hit on every channel of ``chips`` chips (minus ``silent_channel``)."""
    rows, channels = np.divmod(np.arange(chips * 64), 64)
    keep = np.ones(len(rows), bool)
    if silent_channel is not None:
        keep &= ~((rows == silent_channel[0]) & (channels == silent_channel[1]))
    packets = np.zeros(1 + int(keep.sum()), PACKET_DTYPE)
    packets[0]["packet_type"], packets[0]["io_group"], packets[0]["timestamp"] = TIMESTAMP, 1, START + t
    data = packets[1:]
    data["io_group"], data["io_channel"], data["valid_parity"], data["dataword"] = 1, 1, 1, 80
    data["chip_id"], data["channel_id"] = 11 + rows[keep], channels[keep]
    return packets


def test_a_channel_dying_mid_run_is_proven_silent_over_its_own_span_and_across_a_checkpoint():
    config = QualityConfig(window_seconds=10, window_bins=5)
    acc = Accumulator(config)
    clock = DataClock()
    for t in range(100):  # 1 Hz on every channel of 4 chips
        acc.add(second_of_packets(t, 4, None), clock, START + 1000)
    for t in range(100, 112):  # channel 2-9 stops
        acc.add(second_of_packets(t, 4, (2, 9)), clock, START + 1000)
    snap = acc.snapshot()
    assert snap.channel_status[2, 9] == ChannelStatus.UNKNOWN, "10 s of silence at 1 Hz: not yet proven"
    restored = Accumulator(config)
    assert restored.import_state(acc.export_state())
    clock = DataClock(clock.last_times())
    for t in range(112, 140):
        restored.add(second_of_packets(t, 4, (2, 9)), clock, START + 1000)
    snap = restored.snapshot()
    assert snap.channel_status[2, 9] == ChannelStatus.SILENT, "proven after ~25 s: longer than the window"
    assert (snap.channel_status == ChannelStatus.SILENT).sum() == 1
    assert (np.delete(snap.channel_status.ravel(), 2 * 64 + 9) == ChannelStatus.ACTIVE).all()


# -- the compiled passes: the numpy reference's verdicts, bit for bit -----------------------------


def judged_inputs(rng: np.random.Generator, reference: bool) -> VerdictInputs:
    """A run of 300 chips with every kind of channel the passes tell apart: dead, inefficient and noisy ones,
    a broken link, chips in no network, rates learnt or not, CUSUMs testing, part of a reference known."""
    chips = 300
    rates = rng.lognormal(np.log(0.4), 0.6, (chips, 64))
    rates[5], rates[9] = 0.0, rates[9] * 0.2
    rates[7, 3] = 40.0
    run_s = rng.choice([30.0, 600.0, 3600.0], chips)
    hits, window, silence = healthy(rates, 3600.0, rng, window_s=60.0)
    expected = rng.random((chips, 64)) < 0.97
    expected[11] = False
    arrivals = np.maximum(hits - rng.poisson(0.2, hits.shape), 0)
    learnt = np.stack(
        [rates * 500 * rng.random(hits.shape), np.full(hits.shape, 500.0) * (rng.random(hits.shape) < 0.8)], -1
    )
    good = np.stack(
        [
            rng.poisson(150, hits.shape),
            np.full(hits.shape, 400.0),
            rng.poisson(3, hits.shape),
            np.full(hits.shape, 5.0),
        ],
        -1,
    )
    time = np.where(rng.random(chips) < 0.1, np.nan, 3500.0)
    parity = np.zeros(chips)
    parity[13], window[13] = 3, 0  # a broken link: packets failing parity, no valid one
    rates_ref = np.where(rng.random((chips, 64)) < 0.6, rates * 1.1, np.nan) if reference else None
    if rates_ref is not None:
        rates_ref[5], rates_ref[7, 3] = np.nan, np.nan  # the dead chip and the noisy channel: against their tile
    return VerdictInputs(
        window_hits=window, hits_total=hits, silence_seconds=silence, window_seconds=np.full(chips, 60.0),
        run_seconds=run_s, expected=expected, groups=np.arange(chips) // 50, reference_rate_hz=rates_ref,
        window_parity_errors=parity, links=np.arange(chips) // 10, window_arrivals=np.minimum(window, arrivals),
        arrivals_total=arrivals, now=np.full(chips, 3600.0),
        cusum=Cusum(rng.exponential(5.0, hits.shape) * (rng.random(hits.shape) < 0.3), arrivals - rng.poisson(5, hits.shape), good.astype(np.float64), time),
        learnt=learnt,
    )  # fmt: skip


def copied(inputs: VerdictInputs) -> VerdictInputs:
    cusum = inputs.cusum
    assert cusum is not None
    return dataclasses.replace(inputs, cusum=Cusum(*(np.copy(a) for a in dataclasses.astuple(cusum))))


@pytest.mark.slow
@pytest.mark.parametrize("reference", [False, True])
@SPLITS
def test_the_compiled_passes_give_the_numpy_verdicts_bit_for_bit(reference, split, monkeypatch):
    """Statuses, expected rates, chip verdicts and the CUSUM advanced in place, over evaluations moving on, the
    passes in one piece or in halves at once."""
    assert load_evaluation_kernels(wait=300), EVALUATION_KERNELS.error
    threads = split_from(monkeypatch, split)
    compiled = EVALUATION_KERNELS.kernels.CompiledPasses()
    rng = np.random.default_rng(11)
    inputs = judged_inputs(rng, reference)
    twin = copied(inputs)
    for step in range(4):
        a = judge(inputs, ALPHA, 10.0, ChannelPasses())
        b = judge(twin, ALPHA, 10.0, compiled)
        for name, value in vars(a).items():
            if isinstance(value, np.ndarray):
                np.testing.assert_array_equal(getattr(b, name), value, err_msg=f"{name} at step {step}")
                assert getattr(b, name).dtype == value.dtype, name
        for name, value in vars(inputs.cusum).items():
            np.testing.assert_array_equal(getattr(twin.cusum, name), value, err_msg=f"cusum.{name} at step {step}")
        assert {ChannelStatus.SILENT, ChannelStatus.INEFFICIENT, ChannelStatus.NOISY} <= set(a.channel_status.ravel())
        more = rng.poisson(0.5, inputs.hits_total.shape)
        for case in (inputs, twin):  # two more seconds of data
            case.arrivals_total[...] += more
            case.now[...] += 2.0
    assert_split_as_asked(threads, split)


def masking(layout: ChipLayout) -> ChipLayout:
    """The layout with every 97th channel masked (some of them sending hits)."""
    masked = layout.masked.copy()
    masked.reshape(-1)[::97] = True
    return dataclasses.replace(layout, masked=masked)


@pytest.mark.slow
@SPLITS
def test_a_module_summarised_with_the_compiled_passes_is_the_numpy_summary(module_geometry, split, monkeypatch):
    """Every array of the snapshot and what evaluations learn, evaluation after evaluation of a module with faults,
    the passes in one piece or in halves at once."""
    assert load_evaluation_kernels(wait=300), EVALUATION_KERNELS.error
    threads = split_from(monkeypatch, split)
    sim = Simulator(
        module_geometry,
        SimulationConfig(hit_rate_hz=0.3, seed=5),
        Faults(silent_chips=[(2, 5, 20)], noisy_channels=[(1, 1, 12, 0)]),
    )
    accs = [
        Accumulator(QualityConfig(engine=NUMPY, window_seconds=10, window_bins=5), module_geometry) for _ in range(2)
    ]
    clocks = [DataClock(), DataClock()]
    learning = ("cusum", "cusum_seen", "cusum_good", "cusum_time", "learnt", "learnt_seen", "learnt_time")
    for t in range(24):
        packets = decode_messages(*sim.second(START + t)).packets
        for acc, clock in zip(accs, clocks):
            acc.add(packets, clock, START + 100)
        if t % 3:
            continue
        snaps = [
            summarize(acc.state, masking(acc.layout()), None, kernels)
            for acc, kernels in zip(accs, (None, EVALUATION_KERNELS.kernels))
        ]
        for name, value in vars(snaps[0]).items():
            if isinstance(value, np.ndarray):
                np.testing.assert_array_equal(getattr(snaps[1], name), value, err_msg=f"{name} at {t} s")
        for name in learning:
            np.testing.assert_array_equal(getattr(accs[1].state, name), getattr(accs[0].state, name), err_msg=name)
    assert snaps[0].chip_dead.sum() == 1 and (snaps[0].channel_status == ChannelStatus.NOISY).sum() == 1
    assert snaps[0].chip_masked_active.sum() > 0
    assert_split_as_asked(threads, split)
