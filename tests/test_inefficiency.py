"""Inefficiency found in bounded time (issue 20, item 5): a CUSUM per channel on its arrivals against the
rate it showed while good flags a channel at 30 % efficiency in a stated time, keeps the budget on healthy
data, starts again at a run boundary and continues from a checkpoint written before it existed."""

from __future__ import annotations

import math

import numpy as np
import pytest

from larpix_dqm.exporter.quality.accumulator import COMPILED, KERNELS, NUMPY, Accumulator, QualityConfig, load_kernels
from larpix_dqm.exporter.quality.clock import DataClock
from larpix_dqm.exporter.quality.status import ChannelStatus
from larpix_dqm.exporter.quality.verdicts import FAMILIES, INEFFICIENT_RATIO, LOW_SIGMAS, MIN_GOOD_ARRIVALS
from larpix_dqm.exporter.reading.packets import PACKET_DTYPE, TICKS_PER_SYNC, TIMESTAMP

START = 1_700_000_000
CHIPS = 16
CHANNELS = CHIPS * 64
ALPHA = 0.01
#: The channel made inefficient (chip row 5, channel 17).
FAULTY = 5 * 64 + 17
#: The CUSUM's threshold for this detector: ln(1 / the channel's half of the inefficient family's share).
THRESHOLD = math.log(2 * len(FAMILIES) * CHANNELS / ALPHA)


def second(t: int, rates: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Data second ``t``: its timestamp packet, then Poisson hits of every channel at ``rates`` in tick order."""
    channel = np.repeat(np.arange(CHANNELS), rng.poisson(rates))
    ticks = rng.integers(0, TICKS_PER_SYNC, len(channel))
    order = np.argsort(ticks)
    channel, ticks = channel[order], ticks[order]
    packets = np.zeros(1 + len(channel), PACKET_DTYPE)
    packets[0]["packet_type"], packets[0]["io_group"], packets[0]["timestamp"] = TIMESTAMP, 1, START + t
    data = packets[1:]
    data["io_group"], data["io_channel"], data["valid_parity"], data["dataword"] = 1, 1, 1, 80
    data["chip_id"], data["channel_id"], data["timestamp"] = 11 + channel // 64, channel % 64, ticks
    return packets


def run(
    acc: Accumulator, rates: np.ndarray, seconds: range, seed: int, fault_at: float = math.inf, every: int = 10
) -> list[tuple[int, np.ndarray]]:
    """Feed ``seconds`` of data (the faulty channel at INEFFICIENT_RATIO of its rate from ``fault_at``),
    evaluating every ``every`` s; each evaluation's time and CUSUM-flagged channels (status inefficient)."""
    rng = np.random.default_rng(seed)
    clock = DataClock()
    found = []
    for t in seconds:
        now = rates.copy()
        if t >= fault_at:
            now[FAULTY] *= INEFFICIENT_RATIO
        acc.add(second(t, now, rng), clock, START + t + 1.0)
        if t % every == every - 1:
            snap = acc.snapshot()
            found.append((t, np.flatnonzero(snap.channel_status.reshape(-1) == ChannelStatus.INEFFICIENT)))
    return found


def accumulator(engine: str = NUMPY) -> Accumulator:
    return Accumulator(QualityConfig(engine=engine, false_alarm_probability=ALPHA))


def expected_delay(rate: float, good_seconds: float) -> float:
    """Seconds the CUSUM takes to reach its threshold on a channel at INEFFICIENT_RATIO of ``rate``: its
    mean drift per second is rate x (rho ln rho + c (1 - rho)), c the learnt rate taken LOW_SIGMAS low."""
    learnt = rate * good_seconds
    c = 1 - LOW_SIGMAS / math.sqrt(learnt)
    rho = INEFFICIENT_RATIO
    return THRESHOLD / (rate * (rho * math.log(rho) + c * (1 - rho)))


@pytest.mark.parametrize(("rate", "fault_at"), [(0.5, 600), (0.05, 2400)])
def test_a_channel_at_30_percent_efficiency_is_flagged_in_the_stated_time(rate: float, fault_at: int) -> None:
    delay = expected_delay(rate, fault_at)
    assert delay < (120 if rate == 0.5 else 1500)  # the formula for this 16-chip detector: under 2 and 25 min
    rates = np.full(CHANNELS, rate)
    found = run(accumulator(), rates, range(fault_at + int(1.5 * delay)), seed=3, fault_at=fault_at)
    flagged = [t for t, channels in found if FAULTY in channels]
    assert flagged, f"not flagged within 1.5 x {delay:.0f} s"
    assert fault_at < flagged[0] + 1 <= fault_at + 1.5 * delay
    assert all(set(channels) <= {FAULTY} for _, channels in found), "no other channel flagged"


def test_healthy_channels_are_never_flagged_over_a_long_run() -> None:
    spread = np.random.default_rng(1).lognormal(0.0, 0.3, CHANNELS)  # rates from 0.2 to 1.2 Hz
    acc = accumulator()
    found = run(acc, 0.5 * spread, range(3600), seed=4)
    assert not any(len(channels) for _, channels in found)
    judged = acc.state.cusum_good[:CHIPS, :, 0] >= MIN_GOOD_ARRIVALS
    assert judged.all(), "every channel was judged"
    assert acc.state.cusum[:CHIPS].max() < THRESHOLD / 2


def test_the_cusum_starts_again_at_a_run_boundary() -> None:
    acc = accumulator()
    rates = np.full(CHANNELS, 0.5)
    found = run(acc, rates, range(900), seed=5, fault_at=300)
    assert FAULTY in found[-1][1]
    acc.start_run()
    assert acc.state.cusum[:CHIPS].max() == 0 and np.isnan(acc.state.cusum_time[:CHIPS]).all()
    assert (acc.state.cusum_good[:CHIPS] == 0).all()
    run(acc, rates, range(900, 960), seed=6)
    assert acc.state.cusum[:CHIPS].max() == 0, "the new run learns before it judges"
    assert acc.state.cusum_good.reshape(-1, 4)[FAULTY, 0] < 40, "its rate learnt anew"


def test_a_checkpoint_from_before_the_cusum_continues_and_starts_it_at_the_next_evaluation() -> None:
    acc = accumulator()
    rates = np.full(CHANNELS, 0.5)
    run(acc, rates, range(120), seed=7)
    saved = {k: v for k, v in acc.export_state().items() if not k.startswith("cusum")}
    restored = accumulator()
    assert restored.import_state(saved), "the window continues"
    assert np.isnan(restored.state.cusum_time[:CHIPS]).all() and (restored.state.cusum_good == 0).all()
    restored.snapshot()  # the first evaluation only marks where the test starts
    assert (restored.state.cusum_good == 0).all()
    np.testing.assert_array_equal(restored.state.cusum_seen[:CHIPS], restored.state.arrivals_total[:CHIPS])
    run(restored, rates, range(120, 240), seed=8)
    learnt = restored.state.cusum_good[:CHIPS]
    exposure = learnt[..., 1] + learnt[..., 3]  # learnt, and of the excursions not yet over
    assert exposure.min() == pytest.approx(120.0, abs=10.0)  # live seconds since the restore
    assert (learnt[..., 0] + learnt[..., 2]).sum() / exposure.sum() == pytest.approx(0.5, rel=0.05)


def test_both_engines_advance_the_cusum_alike() -> None:
    assert load_kernels(wait=300), KERNELS.error
    rates = np.full(CHANNELS, 0.5)
    accs = {e: accumulator(e) for e in (NUMPY, COMPILED)}
    for acc in accs.values():
        acc._counted = 10**9  # the compiled engine from the first packet
        run(acc, rates, range(500), seed=9, fault_at=300)
    assert accs[COMPILED].compiled
    for name in ("cusum", "cusum_seen", "cusum_good", "cusum_time"):
        np.testing.assert_array_equal(getattr(accs[COMPILED].state, name), getattr(accs[NUMPY].state, name), name)
    assert accs[NUMPY].state.cusum.reshape(-1)[FAULTY] > 0
