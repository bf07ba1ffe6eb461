"""Independent arrivals (issue 20, item 2): a channel's hits within 1 ms of an arrival's first hit are one
arrival, counted alike by both engines and checkpointed; the verdicts count arrivals, so a steep track
re-triggering a pixel 100 times in a millisecond is one event, not 100 independent hits."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
from helpers import dense_slots, simulate_files

from larpix_dqm.exporter.detector.geometry import load_geometry, packaged_layout
from larpix_dqm.exporter.monitor import Monitor
from larpix_dqm.exporter.quality.accumulator import COMPILED, KERNELS, NUMPY, Accumulator, QualityConfig, load_kernels
from larpix_dqm.exporter.quality.checks import DEFAULT_CHECKS, evaluate
from larpix_dqm.exporter.quality.clock import DataClock
from larpix_dqm.exporter.quality.slots import is_slot_name
from larpix_dqm.exporter.quality.snapshot import Snapshot
from larpix_dqm.exporter.quality.state import MERGE_TICKS, NO_ARRIVAL, State
from larpix_dqm.exporter.quality.status import ChannelStatus
from larpix_dqm.exporter.reading.packets import PACKET_DTYPE, TICKS_PER_SYNC, TIMESTAMP
from larpix_dqm.exporter.reading.tail import InputSpec
from larpix_dqm.exporter.runtime.checkpoint import window_file
from larpix_dqm.exporter.runtime.ingest import Ingester

START = 1_700_000_000
CHIPS = 16


def second(t: int, hits: list[tuple[int, int, int]]) -> np.ndarray:
    """One timestamp packet of data second ``t``, then self-triggered hits (chip row, channel, tick) in that order."""
    packets = np.zeros(1 + len(hits), PACKET_DTYPE)
    packets[0]["packet_type"], packets[0]["io_group"], packets[0]["timestamp"] = TIMESTAMP, 1, START + t
    data = packets[1:]
    data["io_group"], data["io_channel"], data["valid_parity"], data["dataword"] = 1, 1, 1, 80
    if hits:
        rows, channels, ticks = np.array(hits).T
        data["chip_id"], data["channel_id"], data["timestamp"] = 11 + rows, channels, ticks
    return packets


def poisson(
    t: int, rng: np.random.Generator, rate: float, bursts: list[tuple[int, int, int]] | None = None
) -> np.ndarray:
    """Second ``t`` of Poisson hits at ``rate`` on every channel of ``CHIPS`` chips, plus ``bursts`` (chip
    row, channel, hits: a steep track re-triggering the pixel that often within 1 ms), in tick order."""
    n = rng.poisson(rate, CHIPS * 64)
    channel = np.repeat(np.arange(CHIPS * 64), n)
    ticks = rng.integers(0, TICKS_PER_SYNC, len(channel))
    for row, ch, count in bursts or []:
        start = int(rng.integers(0, TICKS_PER_SYNC - MERGE_TICKS))
        channel = np.concatenate([channel, np.full(count, row * 64 + ch)])
        ticks = np.concatenate([ticks, start + np.sort(rng.integers(0, MERGE_TICKS, count))])
    order = np.argsort(ticks, kind="stable")
    return second(t, list(zip(*np.divmod(channel[order], 64), ticks[order], strict=True)))


@pytest.fixture(scope="module", params=[NUMPY, COMPILED])
def engine(request: pytest.FixtureRequest) -> str:
    if request.param == COMPILED:
        assert load_kernels(wait=300), KERNELS.error
    return request.param


def accumulator(engine: str) -> Accumulator:
    """A small window; on the compiled engine (loaded by the fixture) from the first packet."""
    return Accumulator(QualityConfig(engine=engine, window_seconds=10, window_bins=5))


def test_hits_within_a_millisecond_of_an_arrivals_first_hit_are_that_arrival(engine: str) -> None:
    acc = accumulator(engine)
    clock = DataClock()
    steep = [(0, 1, 5_000_000 + k * 99) for k in range(100)]  # 100 re-triggers within 1 ms
    across_sync = [(0, 2, TICKS_PER_SYNC - 500 + k) for k in range(5)]
    spread = [(0, 3, k * 2 * MERGE_TICKS) for k in range(3)]  # 2 ms apart: three
    # 10 kHz for 5 ms: a new arrival every MERGE_TICKS + 1000 ticks (at 0, 11000, 22000, 33000, 44000)
    ringing = [(0, 4, k * 1000) for k in range(50)]
    first = sorted(steep[:40] + across_sync + spread + ringing + [(0, 5, 1234)], key=lambda h: h[2])
    acc.add(second(0, first), clock, START + 100.0)
    # the rest of the steep track in the next chunk, and the burst across the sync's tick reset
    acc.add(second(0, steep[40:]), clock, START + 100.0)
    # 1 s later at the very tick of an arrival's first hit: another arrival
    later = [(0, 2, k * 100) for k in range(4)] + [(0, 1, 5_000_000), (0, 5, 1234)]
    acc.add(second(1, later), clock, START + 100.0)
    assert acc.compiled == (engine == COMPILED)
    arrivals, hits = acc.state.arrivals_total[0], acc.state.self_hits[0]
    assert hits[1:6].tolist() == [101, 9, 3, 50, 2]
    assert arrivals[1:6].tolist() == [2, 1, 3, 5, 2]
    assert dense_slots(acc.state, "arrivals")[:, 0].sum(axis=0)[1:6].tolist() == [2, 1, 3, 5, 2]


def test_both_engines_count_arrivals_alike_across_chunks() -> None:
    assert load_kernels(wait=300), KERNELS.error
    accs = {e: accumulator(e) for e in (NUMPY, COMPILED)}
    clocks = {e: DataClock() for e in accs}
    rng = np.random.default_rng(5)
    for t in range(30):
        packets = poisson(t, rng, 0.5, [(3, 7, 120), (3, 8, 40)] if t % 3 == 0 else [])
        ringing = second(t, [(5, 9, int(k)) for k in np.sort(rng.integers(0, 5 * MERGE_TICKS, 300))])[1:]
        for half in np.array_split(np.concatenate([packets, ringing]), 3):  # chunks that split bursts
            for e, acc in accs.items():
                acc.add(half.copy(), clocks[e], START + 100.0)
    assert accs[COMPILED].compiled
    for name in ("arrival_second", "arrival_start", "arrivals_total"):
        np.testing.assert_array_equal(getattr(accs[COMPILED].state, name), getattr(accs[NUMPY].state, name), name)
    arrivals = [dense_slots(acc.state, "arrivals") for acc in (accs[COMPILED], accs[NUMPY])]
    np.testing.assert_array_equal(*arrivals)
    assert arrivals[0].any()
    state = accs[NUMPY].state
    assert state.arrivals_total[3, 7] == 10 + state.self_hits[3, 7] - 1200  # ten bursts, one arrival each
    assert 30 * 4 <= state.arrivals_total[5, 9] <= 200  # 9,000 hits ringing: one arrival per MERGE_TICKS


def test_an_older_checkpoint_without_arrivals_restores_them_from_hits() -> None:
    acc = accumulator(NUMPY)
    clock = DataClock()
    rng = np.random.default_rng(2)
    for t in range(12):
        acc.add(poisson(t, rng, 1.0), clock, START + 100.0)
    arrays = ("arrival_second", "arrival_start", "arrivals_total")
    n = len(acc.chips)
    saved = {k: v for k, v in acc.export_state().items() if k not in arrays and not is_slot_name(k)}
    saved.update(older_window(acc.state, n))
    restored = accumulator(NUMPY)
    assert restored.import_state(saved), "the window continues"
    np.testing.assert_array_equal(restored.state.arrivals_total[:n], acc.state.self_hits[:n])
    hits = dense_slots(acc.state, "hits")[:, :n]
    assert hits.any()
    for column in ("hits", "adc", "adc_sq"):
        np.testing.assert_array_equal(dense_slots(restored.state, column)[:, :n], dense_slots(acc.state, column)[:, :n])
    np.testing.assert_array_equal(dense_slots(restored.state, "arrivals")[:, :n], hits)
    np.testing.assert_array_equal(restored.state.window_arrivals[:n], acc.state.window_hits[:n])
    assert (restored.state.arrival_start == NO_ARRIVAL).all() and (restored.state.arrival_second == -1).all()


def test_a_state_and_window_file_from_before_arrivals_continue_with_arrivals_from_hits(tmp_path) -> None:
    geometry = load_geometry(packaged_layout("layout-2.4.0.yaml"))
    simulate_files(geometry, tmp_path / "data", 20, file_seconds=5)
    state = tmp_path / "state.npz"
    ing = Ingester([InputSpec(str(tmp_path / "data"))], Monitor(geometry), 0.1, str(state))
    ing.tail.pump(ing.ingest)
    ing.checkpoint(final=True)
    arrays = ("arrival_second", "arrival_start", "arrivals_total")
    old = ing.monitor.accumulator.state
    n = len(old.chips)
    for path in (state, window_file(state)):  # as an exporter without arrivals (and with a dense window) wrote them
        with np.load(path) as saved:
            kept = {k: saved[k] for k in saved.files if k not in arrays and not is_slot_name(k)}
        if path != state:
            kept.update(older_window(old, n))
        np.savez(path, **kept)  # type: ignore[arg-type]
    restored = Ingester([InputSpec(str(tmp_path / "data"))], Monitor(geometry), 0.1, str(state))
    restored.restore()
    new = restored.monitor.accumulator.state
    hits = dense_slots(old, "hits")[:, :n]
    np.testing.assert_array_equal(dense_slots(new, "hits")[:, :n], hits)
    assert hits.sum() > 0, "the window continues"
    np.testing.assert_array_equal(dense_slots(new, "arrivals")[:, :n], hits)
    np.testing.assert_array_equal(new.arrivals_total[:n], old.self_hits[:n])


def older_window(state: State, chips: int) -> dict[str, np.ndarray]:
    """The window's slots of ``state``'s first ``chips`` chip rows as a window file from before arrivals held them:
    dense (slot, chip, channel) sums of hits, ADC and squared ADC (int32, int32, int64), without arrivals."""
    dtypes = {"hits": np.int32, "adc": np.int32, "adc_sq": np.int64}
    return {f"win_{c}": dense_slots(state, c)[:, :chips].astype(t) for c, t in dtypes.items()}


# -- the verdicts on arrivals -------------------------------------------------------------------


@contextmanager
def counting_hits(acc: Accumulator) -> Iterator[None]:
    """Judge as before arrivals: every hit an independent arrival (the counterfactual the tests compare with);
    what judging learns (the inefficiency CUSUM, the learnt rates) is left as it was."""
    state = acc.state
    saved = state.arrivals_total, state.window_arrivals
    learning = ("cusum", "cusum_seen", "cusum_good", "cusum_time", "learnt", "learnt_seen", "learnt_time")
    cusum = {name: getattr(state, name).copy() for name in learning}
    state.arrivals_total, state.window_arrivals = state.self_hits, state.window_hits
    try:
        yield
    finally:
        state.arrivals_total, state.window_arrivals = saved
        for name, value in cusum.items():
            setattr(state, name, value)


def flagged(snap: Snapshot) -> np.ndarray:
    """(chips, 64) channels with a silent, inefficient or noisy verdict."""
    bad = (ChannelStatus.SILENT, ChannelStatus.INEFFICIENT, ChannelStatus.NOISY)
    return np.isin(snap.channel_status, bad)


@pytest.mark.slow
def test_steep_tracks_put_no_verdict_on_their_pixels_or_neighbours() -> None:
    acc = Accumulator(QualityConfig(engine=NUMPY))
    clock = DataClock()
    rng = np.random.default_rng(11)
    burst_pixels: set[tuple[int, int]] = set()
    before = 0
    for t in range(1200):  # 0.05 Hz; a steep track every 5 s re-triggers 1-3 neighbouring pixels 30-150 times
        bursts = []
        if t % 5 == 0:
            row, ch = int(rng.integers(CHIPS)), int(rng.integers(62))
            bursts = [(row, ch + k, int(rng.integers(30, 151))) for k in range(int(rng.integers(1, 4)))]
            burst_pixels.update((r, c) for r, c, _ in bursts)
        acc.add(poisson(t, rng, 0.05, bursts), clock, START + 2000.0)
        if t >= 120 and t % 10 == 0:
            assert not flagged(acc.snapshot()).any(), f"a false verdict at {t} s"
            with counting_hits(acc):
                before += int(flagged(acc.snapshot()).sum())
    assert len(burst_pixels) > 300
    assert before > 50, "counting hits as independent, the bursts made false verdicts"


def hit_rate_warnings(snap: Snapshot) -> int:
    """Chips whose ``hit_rate_ratio`` is in warning or error."""
    results = evaluate(snap, DEFAULT_CHECKS)
    row = [c.name for c in results.chip_checks].index("hit_rate_ratio")
    return int((results.chip_status[row] >= 1).sum())


@pytest.mark.slow
def test_hit_rate_ratio_counts_arrivals_so_steep_tracks_put_no_chip_in_warning() -> None:
    acc = Accumulator(QualityConfig(engine=NUMPY))
    clock = DataClock()
    rng = np.random.default_rng(12)
    before = 0
    for t in range(900):  # 0.05 Hz; on chip 0, 1 s in 30, a steep track re-triggering 3 pixels 100 times
        ch = int(rng.integers(62))
        bursts = [(0, ch + k, 100) for k in range(3)] if rng.random() < 1 / 30 else []
        acc.add(poisson(t, rng, 0.05, bursts), clock, START + 2000.0)
        if t >= 120 and t % 10 == 0:
            assert hit_rate_warnings(acc.snapshot()) == 0, f"a false hit_rate_ratio warning at {t} s"
            with counting_hits(acc):
                before += hit_rate_warnings(acc.snapshot())
    assert before > 10, "judged on hits, the bursts put chips in warning"


@pytest.mark.slow
def test_on_poisson_data_arrivals_are_hits_and_the_verdicts_as_before() -> None:
    acc = Accumulator(QualityConfig(engine=NUMPY))
    clock = DataClock()
    rng = np.random.default_rng(4)
    for t in range(600):
        acc.add(poisson(t, rng, 0.5), clock, START + 2000.0)
        if t >= 60 and t % 10 == 0:
            snap = acc.snapshot()
            with counting_hits(acc):
                np.testing.assert_array_equal(snap.channel_status, acc.snapshot().channel_status)
            assert not flagged(snap).any()
    hits, arrivals = acc.state.self_hits[:CHIPS], acc.state.arrivals_total[:CHIPS]
    assert 0.995 * hits.sum() < arrivals.sum() <= hits.sum()  # a hit within 1 ms of another's phase: 1e-3
