"""The compiled kernels against the numpy reference: the same counters, packet for packet.

Each case feeds the same chunks to an accumulator on each engine and compares every array
the checkpoint holds and every field of the snapshot; cases cover raw messages and packet
records, parity errors on unknown chips, periodic and external triggers, syncs, clock jumps,
chips outside the geometry, foreign packet dtypes and chunks split anywhere. Where numba cannot
compile (``NUMBA_DISABLE_JIT``, a compiler error), the numpy engine counts, and says so.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_same_state, dense_slots, ingested, parse_metrics, running_exporter, scrape, wait_for

from larpix_dqm.exporter.detector.geometry import load_geometry, packaged_layout
from larpix_dqm.exporter.monitor import Monitor
from larpix_dqm.exporter.quality import window
from larpix_dqm.exporter.quality.accumulator import (
    COMPILE_AFTER_PACKETS,
    COMPILED,
    KERNELS,
    NUMPY,
    Accumulator,
    HitsBuffer,
    QualityConfig,
    count_compiled,
    decode_compiled,
    load_kernels,
    pair_compiled,
    place_compiled,
)
from larpix_dqm.exporter.quality.clock import DataClock
from larpix_dqm.exporter.quality.state import State
from larpix_dqm.exporter.quality.triggers import pair_hits, place_packets
from larpix_dqm.exporter.reading.decode import Messages, split_messages
from larpix_dqm.exporter.reading.packets import DATA, IO_GROUPS, PACKET_DTYPE, TIMESTAMP, TRIGGER
from larpix_dqm.exporter.simulate import Faults, SimulationConfig, Simulator, open_writer

START = 1_700_000_000
FAULTS = Faults(
    silent_chips=[(1, 1, 11)],
    noisy_channels=[(2, 5, 20, 12)],
    parity_error_fraction=0.02,
    fifo_full_chips=[(1, 2, 40)],
    fifo_flag_fraction=0.05,
)


@pytest.fixture(scope="module", autouse=True)
def kernels_loaded() -> None:
    assert load_kernels(wait=300), KERNELS.error


@pytest.fixture(scope="module")
def backlog(tmp_path_factory) -> Callable[[str], Path]:
    """A file of each format (``raw``, ``packets``) past the compile threshold, written once per module."""
    written: dict[str, Path] = {}

    def file(fmt: str) -> Path:
        if fmt not in written:
            geometry = load_geometry(packaged_layout())
            sim = Simulator(geometry, SimulationConfig(seed=10, hit_rate_hz=8.0, words_per_message=40), FAULTS)
            path = tmp_path_factory.mktemp("backlog") / f"run.{fmt}.h5"
            writer = open_writer(path, fmt)
            for t in range(7):  # 4.4 M packets: past twice the compile threshold
                writer.append(*sim.second(START + t))
            writer.close()
            written[fmt] = path
        return written[fmt]

    return file


#: What evaluations learn (the inefficiency CUSUM, the learnt rates): advanced at each evaluation, so they
#: differ between runs evaluated apart.
EVALUATED = ("cusum", "cusum_seen", "cusum_good", "cusum_time", "learnt", "learnt_seen", "learnt_time", "rates_good")


def pair(geometry=None, **config) -> tuple[Accumulator, Accumulator]:
    return tuple(Accumulator(QualityConfig(engine=e, **config), geometry) for e in (NUMPY, COMPILED))  # type: ignore[return-value]


def assert_same(reference: Accumulator, compiled: Accumulator) -> None:
    """Every checkpointed array and every snapshot field equal (NaN where NaN)."""
    assert compiled.compiled and not reference.compiled
    assert compiled.chips.keys.tolist() == reference.chips.keys.tolist()
    assert_same_state(compiled.export_state(), reference.export_state())
    ref, got = reference.snapshot(), compiled.snapshot()
    for f in dataclasses.fields(ref):
        if f.name == "config":  # the engine differs, by design
            continue
        a, b = getattr(ref, f.name), getattr(got, f.name)
        if isinstance(a, np.ndarray):
            np.testing.assert_array_equal(b, a, err_msg=f.name)
        else:
            assert b == a or (a != a and b != b), f.name


def seconds_of_messages(sim: Simulator, seconds: range) -> list[tuple[list[np.ndarray], np.ndarray]]:
    return [sim.second(START + t) for t in seconds]


def feed_both(reference: Accumulator, compiled: Accumulator, messages: Messages, clocks: list[DataClock]) -> None:
    reference.add(messages.decode(), clocks[0], START + 100.0)
    compiled.add_messages(messages, clocks[1], START + 100.0)


@pytest.mark.external
@pytest.mark.parametrize(
    "loader, load", [("KERNELS", "load_kernels"), ("EVALUATION_KERNELS", "load_evaluation_kernels")]
)
def test_loading_the_kernels_loads_every_kernel_a_chunk_runs(loader: str, load: str) -> None:
    """The kernels' warm-up runs each of them once, in a fresh process: none waits for numba's cache or compiler in
    the first chunk's time (the fold and the pairing's two steps included), nor the evaluation's kernels in the first
    large snapshot's (the groups' order statistics included). Helpers compiled into their callers start with ``_``."""
    check = (
        f"from larpix_dqm.exporter.quality.accumulator import {loader}, {load}\n"
        f"assert {load}(wait=600), {loader}.error\n"
        f"kernels = {loader}.kernels\n"
        "names = [n for n in dir(kernels) if hasattr(getattr(kernels, n), 'signatures') and not n.startswith('_')]\n"
        "print(sorted(n for n in names if not getattr(kernels, n).signatures), len(names))\n"
    )
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, check=True).stdout.split("]")
    assert out[0] == "[" and int(out[1]) >= 5, out


@pytest.mark.external
def test_an_evaluation_in_halves_runs_the_kernels_the_warm_up_loaded() -> None:
    """The evaluation's warm-up (one chip, in one piece) loads the argument types the passes get in halves as well, in
    a fresh process: a module's first evaluation in halves does not stop to compile (it did for 2.6 s when a half's
    per-chip sums were a column slice, strided, of one array)."""
    check = (
        "import numpy as np\n"
        "from larpix_dqm.exporter.quality import halves\n"
        "from larpix_dqm.exporter.quality.accumulator import COMPILED, EVALUATION_KERNELS, load_evaluation_kernels\n"
        "from larpix_dqm.exporter.quality.config import QualityConfig\n"
        "from larpix_dqm.exporter.quality.state import State\n"
        "from larpix_dqm.exporter.quality.summary import ChipLayout, summarize\n"
        "assert load_evaluation_kernels(wait=600), EVALUATION_KERNELS.error\n"
        "kernels = EVALUATION_KERNELS.kernels\n"
        "names = [n for n in dir(kernels) if hasattr(getattr(kernels, n), 'signatures')]\n"
        "def loaded(): return {n: len(getattr(kernels, n).signatures) for n in names}\n"
        "before = loaded()\n"
        "halves.SPLIT_FROM_ROWS, halves.two_cores = 2, lambda: True\n"
        "split = halves.in_halves\n"
        "parts = []\n"
        "def counted(*args, **kwargs):\n"
        "    results = split(*args, **kwargs)\n"
        "    parts.append(len(results))\n"
        "    return results\n"
        "kernels.in_halves = counted\n"
        "state = State(QualityConfig(engine=COMPILED))\n"
        "state.register(np.array([[1, 1, 11], [1, 1, 12], [1, 2, 11], [1, 2, 12]], np.uint8))\n"
        "every = np.ones((4, 64), bool)\n"
        "layout = ChipLayout(np.array([0, 0, 1, 1]), np.ones(4, bool), every, np.ones(4, bool), ~every)\n"
        "for rates in (None, np.ones((4, 64))):\n"
        "    summarize(state, layout, rates, kernels)\n"
        "print(max(parts), {n: (before[n], c) for n, c in loaded().items() if c != before[n]})\n"
    )
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["2", "{}"], out


def test_loading_the_kernels_does_not_import_scipys_blas_and_leaves_it_importable() -> None:
    """numba probes for scipy's BLAS (for ``np.dot``, which no kernel calls) when it first loads its numpy functions:
    0.2-0.3 s of CPU that the load skips; once loaded, scipy.linalg imports as before, in a fresh process, and in one
    forked while the kernels load."""
    check = (
        "import sys\n"
        "from larpix_dqm.exporter.quality.accumulator import load_evaluation_kernels, load_kernels\n"
        "assert load_kernels(wait=600) and load_evaluation_kernels(wait=600)\n"
        "print(sorted(m for m in sys.modules if m.startswith('scipy.linalg')))\n"
        "import scipy.linalg.cython_blas\n"
        "print(scipy.linalg.cython_blas.__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, check=True).stdout.splitlines()
    assert out == ["[]", "scipy.linalg.cython_blas"]
    forked = (  # a process forked while numba loads (once's drawing helper) can import it too
        "import os\n"
        "from larpix_dqm.exporter.quality.loader import _no_blas_probe\n"
        "with _no_blas_probe():\n"
        "    pid = os.fork()\n"
        "    if pid == 0:\n"
        "        import scipy.linalg.cython_blas\n"
        "        os._exit(0)\n"
        "    print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))\n"
    )
    assert subprocess.run([sys.executable, "-c", forked], capture_output=True, text=True).stdout == "0\n"


def test_the_compiled_decoder_gives_the_numpy_decoders_records_field_for_field() -> None:
    """Data, trigger and sync words, words of unknown type, and trigger and sync words whose LArPix half is not
    empty (decoded as numpy decodes it): the same records, bytes for bytes, and the same unknown words."""
    assert load_kernels(wait=600)
    sim = Simulator(load_geometry(packaged_layout()), SimulationConfig(seed=3, trigger_rate_hz=5.0), FAULTS)
    msgs, groups = sim.second(START)
    rng = np.random.default_rng(0)
    odd = []
    for kind in (b"T", b"S", b"X", b"D"):  # a message of each kind of word: random bytes after the kind, then all ones
        header = np.frombuffer(b"D" + (START + 1).to_bytes(4, "little") + bytes(3), np.uint8)
        noise = np.frombuffer(kind + rng.integers(0, 256, 15, dtype=np.uint8).tobytes(), np.uint8)
        ones = np.frombuffer(kind + b"\xff" * 15, np.uint8)
        odd.append(np.concatenate([header, noise, ones]))
    messages = split_messages([*msgs, *odd], np.r_[groups, np.full(len(odd), 2, np.uint8)])
    twin = Messages(messages.buffer, messages.starts, messages.words, messages.io_groups, messages.bad_messages)
    expected, got = messages.decode(), decode_compiled(twin)
    assert got.dtype == expected.dtype and len(got) == len(expected) > 10_000
    assert got.tobytes() == expected.tobytes()
    assert twin.unknown_words == messages.unknown_words == 2  # the 'X' words


def test_the_compiled_placing_gives_numpy_placings_trigger_words_seconds_hits_and_triggers() -> None:
    """What the trigger pairing reads of a chunk: every trigger word's bits, each io_group's data second moved at the
    accepted timestamps only, placed self-triggered hits on registered chips (the receipt rule applied) and placed
    external triggers; on packets of every trigger type, unknown chips, io_groups with no second yet, and a packet
    dtype of 4-byte timestamps without receipts."""
    sim = Simulator(load_geometry(packaged_layout()), SimulationConfig(seed=3, trigger_rate_hz=200.0), FAULTS)
    msgs, groups = sim.second(START)
    packets = split_messages(msgs, groups).decode()
    rng = np.random.default_rng(1)
    trigger = packets["packet_type"] == TRIGGER
    packets["trigger_type"][trigger] = rng.integers(0, 256, int(trigger.sum()))  # every bit, external or not
    data = np.flatnonzero(packets["packet_type"] == DATA)
    packets["trigger_type"][data] = rng.choice(4, len(data), p=[0.7, 0.1, 0.1, 0.1])
    late = data[rng.random(len(data)) < 0.2]  # chip clocks ahead of the PACMAN's receipt: the sync period before
    packets["receipt_timestamp"][late] = packets["timestamp"][late] - rng.integers(0, 1000, len(late))
    stamps = np.flatnonzero(packets["packet_type"] == TIMESTAMP)
    stamp = np.zeros(len(packets), bool)
    stamp[stamps[rng.random(len(stamps)) < 0.6]] = True  # the clock accepts some of them
    stamp[: len(stamp) // 2] &= packets["io_group"][: len(stamp) // 2] != 1  # and none of io_group 1's first half
    narrow = np.dtype([(n, "u4" if n == "timestamp" else "u1") for n in PACKET_DTYPE.names if n != "receipt_timestamp"])
    foreign = np.zeros(len(packets), narrow)
    for name in narrow.names:
        foreign[name] = packets[name]
    keys = np.unique(np.stack([packets["io_group"], packets["io_channel"], packets["chip_id"]], axis=1)[data], axis=0)
    known = keys[rng.permutation(len(keys))[: len(keys) // 2]]  # half the chips are not registered
    for records in (packets, foreign):
        results = []
        for place in (place_packets, place_compiled):
            state = State(QualityConfig())
            state.register(known)
            second = np.full(IO_GROUPS, -1, np.int64)
            second[2] = START - 1  # io_group 2 carries a second from an earlier chunk; io_group 1 has none yet
            found = place(state, records, stamp, second)
            results.append((found, state.trigger_words.copy(), second, state.chips.keys.copy()))
        (expected, words, seconds, chips), (got, got_words, got_seconds, got_chips) = results
        np.testing.assert_array_equal(words, got_words)
        np.testing.assert_array_equal(seconds, got_seconds)
        assert 10 < len(expected.trigger_times) < words[:, 1].sum() - 10  # external (bit 1): some not placed
        assert 1_000 < len(expected.hit_times) < len(data) // 2
        for name, a, b in zip(expected._fields, expected, got):
            if name == "hit_rows":  # rows are registration order: compare the chips
                a, b = chips[a], got_chips[b]
            np.testing.assert_array_equal(a, b, err_msg=name)


def test_the_counting_kernel_places_a_chunk_for_the_pairing_as_the_placing_does() -> None:
    """While the pairing is active the counting pass places the chunk too: the trigger words, each io_group's data
    second and the placed hits and triggers that numpy's placing of the decoded records gives; raw messages (with
    receipts behind the chip clock in their words' headers) and packet records (with receipts, and of 4-byte
    timestamps without them), 60 % of the accepted timestamps kept and none of io_group 1's first half; placed in the
    arrays one buffer keeps from chunk to chunk, as the accumulator's does."""
    sim = Simulator(load_geometry(packaged_layout()), SimulationConfig(seed=3, trigger_rate_hz=200.0), FAULTS)
    messages = split_messages(*sim.second(START))
    rng = np.random.default_rng(2)
    words = np.concatenate([s + 8 + 16 * np.arange(n) for s, n in zip(messages.starts, messages.words)])
    data = words[messages.buffer[words] == ord("D")]
    late = data[rng.random(len(data)) < 0.2]  # receipts (header bytes 2-5) behind the chip's timestamp
    ticks = (messages.buffer[late[:, None] + 8 + np.arange(8)].copy().view("<u8").ravel() >> 16) & 0x7FFFFFFF
    receipts = np.maximum(ticks.astype(np.int64) - rng.integers(0, 1000, len(late)), 1).astype("<u4")
    messages.buffer[late[:, None] + 2 + np.arange(4)] = receipts.view(np.uint8).reshape(-1, 4)
    packets = messages.decode()
    assert (packets["receipt_timestamp"] > 0).sum() > 1_000
    narrow = np.dtype([(n, "u4" if n == "timestamp" else "u1") for n in PACKET_DTYPE.names if n != "receipt_timestamp"])
    foreign = np.zeros(len(packets), narrow)
    for name in narrow.names:
        foreign[name] = packets[name]
    buffer = HitsBuffer()
    for source in (messages, packets, foreign):
        records = source.decode() if isinstance(source, Messages) else source
        state = State(QualityConfig(engine=COMPILED))
        state.triggers.second[2] = START - 1  # a second from an earlier chunk
        stamps = source.timestamp_packets() if isinstance(source, Messages) else source
        placed = window.move(state, stamps, DataClock(), START + 100.0)
        accepted = placed.accepted
        keep = (rng.random(len(accepted.rows)) < 0.6) & ~((accepted.groups == 1) & (accepted.rows < len(stamps) // 2))
        accepted = dataclasses.replace(
            accepted, rows=accepted.rows[keep], times=accepted.times[keep], groups=accepted.groups[keep]
        )
        placed = dataclasses.replace(placed, accepted=accepted, slots=placed.slots[keep], ends=placed.ends[keep])
        got = count_compiled(state, source, placed, buffer, pairing=True)
        reference = State(QualityConfig())
        reference.register(state.chips.keys)
        second = np.full(IO_GROUPS, -1, np.int64)
        second[2] = START - 1
        stamp = np.zeros(len(records), bool)
        at = (
            np.flatnonzero(records["packet_type"] == TIMESTAMP)
            if isinstance(source, Messages)
            else np.arange(len(records))
        )
        stamp[at[accepted.rows]] = True
        expected = place_packets(reference, records, stamp, second)
        np.testing.assert_array_equal(state.trigger_words, reference.trigger_words)
        np.testing.assert_array_equal(state.triggers.second, second)
        assert 10 < len(expected.trigger_times) and 1_000 < len(expected.hit_times) < int(
            (records["packet_type"] == DATA).sum()
        )
        for name, a, b in zip(expected._fields, expected, got):
            np.testing.assert_array_equal(a, b, err_msg=name)


def test_the_compiled_pairing_counts_held_hits_as_numpy_does() -> None:
    """Held hits in no order against triggers: the final ones classified inside or outside the known triggers'
    windows, and each closing trigger's hits, delays and their sums, where windows overlap (a hit in two), at the
    edges (a hit at a trigger, at its window's end, at the final range's ends), and with no trigger known."""
    rng = np.random.default_rng(5)
    window, start, end = 2_000, 100_000, 900_000
    known = np.sort(rng.choice(np.arange(0, 1_000_000, 50), 300, replace=False))
    known[:5] = [200_000, 200_500, 201_000, 201_900, 203_000]  # windows that overlap
    known = np.sort(known)
    closing = known[(known > 150_000) & (known < 800_000)]
    edges = np.r_[closing[:20], closing[:20] + window, closing[:20] + window - 1, start, start - 1, end, end - 1]
    times = rng.permutation(np.r_[rng.integers(0, 1_000_000, 50_000), edges])
    rows, groups = rng.integers(0, 40, len(times)), rng.integers(0, IO_GROUPS, len(times))
    keys = np.stack([np.ones(40, np.int64), np.arange(40) // 10 + 11, np.arange(40) % 10 + 11], axis=1)
    for triggers, closed in ((known, closing), (known[:0], closing[:0]), (known, closing[:0])):
        results = []
        for pair in (pair_hits, pair_compiled):
            state = State(QualityConfig())
            state.register(keys)
            counts = pair(state, times, rows, groups, start, end, triggers, closed, window)
            results.append((counts, state.beam_chip_hits, state.beam_delays, state.beam_delay_sum))
        for expected, got in zip(*results):
            np.testing.assert_array_equal(expected, got)
        counts, chip_hits, delays, delay_sum = results[0]
        final = int(((times >= start) & (times < end)).sum())
        assert chip_hits.sum() == final and (chip_hits[:, 0].sum() > 1_000) == bool(len(triggers))
        assert counts.sum() == delays.sum() and (delays.sum() > len(closed)) == bool(len(closed))


@pytest.mark.slow
def test_raw_messages_match_the_numpy_path_packet_for_packet() -> None:
    geometry = load_geometry(packaged_layout())
    sim = Simulator(geometry, SimulationConfig(seed=4, trigger_rate_hz=2.0), FAULTS)
    reference, compiled = pair(geometry, window_seconds=10.0, window_bins=5)
    clocks = [DataClock(), DataClock()]
    for msgs, groups in seconds_of_messages(sim, range(14)):
        feed_both(reference, compiled, split_messages(msgs, groups), clocks)
    assert reference.chip_parity.sum() > 0 and reference.sync_counts.sum() > 0
    assert_same(reference, compiled)


def test_chunks_touching_most_of_fewer_chips_than_the_capacity_match(tile_geometry) -> None:
    """100 chips in buffers of 101 rows: a chunk touching most chips is counted over all of them at once by the
    numpy engine (the slice of registered rows, not the buffers' capacity), a small one over those it touches."""
    reference, compiled = pair(tile_geometry, window_seconds=10.0, window_bins=5)
    sim = Simulator(tile_geometry, SimulationConfig(seed=4, hit_rate_hz=5.0))
    clocks = [DataClock(), DataClock()]
    seconds = seconds_of_messages(sim, range(12))
    packets = split_messages(*seconds[0]).decode()
    packets = packets[packets["packet_type"] == 0]  # data packets: their chips
    keys = np.unique(np.stack([packets[k] for k in ("io_group", "io_channel", "chip_id")], 1), axis=0)
    for accumulator in (reference, compiled):  # 81 chips, then 19 more: the buffers grow by a quarter, to 101
        accumulator.state.register(keys[:81])
    for t, (msgs, groups) in enumerate(seconds):
        cut = slice(None) if t % 2 else slice(0, 1)  # a whole second, then a single message
        feed_both(reference, compiled, split_messages(msgs[cut], groups[cut]), clocks)
    assert reference.hits_total.sum() > 0 and reference.state.capacity > len(reference.chips)
    assert_same(reference, compiled)


def test_chunks_touching_more_chips_than_the_hits_buffer_has_places_are_folded_as_they_fill_it() -> None:
    """A buffer of 7 places (a chip row each) for chunks touching hundreds of chips: the kernel returns for a fold each
    time its places are all given, and goes on where it stopped; every count as on numpy, raw messages and packets."""
    geometry = load_geometry(packaged_layout())
    sim = Simulator(geometry, SimulationConfig(seed=6, trigger_rate_hz=2.0), FAULTS)
    for raw in (True, False):
        reference, compiled = pair(geometry, window_seconds=6.0, window_bins=3)
        compiled._hits = HitsBuffer(places=7)
        clocks = [DataClock(), DataClock()]
        for msgs, groups in seconds_of_messages(sim, range(4)):
            messages = split_messages(msgs, groups)
            if raw:
                feed_both(reference, compiled, messages, clocks)
            else:
                packets = messages.decode()
                reference.add(packets, clocks[0], START + 100.0)
                compiled.add(packets, clocks[1], START + 100.0)
        assert len(compiled.chips) > 10 * 7 and compiled._hits.hits.shape[1] == 7
        assert reference.window_hits.sum() > 10_000
        assert_same(reference, compiled)


@pytest.mark.slow
def test_packet_records_match_including_chunks_split_anywhere_and_periodic_triggers() -> None:
    geometry = load_geometry(packaged_layout())
    sim = Simulator(geometry, SimulationConfig(seed=5, periodic_trigger_hz=2.0), FAULTS)
    reference, compiled = pair(geometry)
    clocks = [DataClock(), DataClock()]
    rng = np.random.default_rng(0)
    for msgs, groups in seconds_of_messages(sim, range(5)):
        packets = split_messages(msgs, groups).decode()
        # small chunks (fewer packets than the kernel's hits buffer has pages: it is mapped, not cleared) and large
        cuts = np.sort(np.r_[50, 300, 2_000, rng.integers(2_000, len(packets), 3)])
        for part in np.split(packets, cuts):
            reference.add(part, clocks[0], START + 100.0)
            compiled.add(part, clocks[1], START + 100.0)
    assert reference.win_pedestal is not None and reference.win_pedestal.sum() > 0
    assert_same(reference, compiled)


def test_no_geometry_chips_appear_as_they_come_and_parity_errors_before_their_chip_count_on_it() -> None:
    sim = Simulator(load_geometry(packaged_layout()), SimulationConfig(seed=6), FAULTS)
    reference, compiled = pair()
    clocks = [DataClock(), DataClock()]
    msgs, groups = sim.second(START)
    packets = split_messages(msgs, groups).decode()[1:]  # data before the first timestamp: no data time
    data = np.flatnonzero(packets["packet_type"] == DATA)
    # a parity error on a chip seen only later in the chunk, and one on a chip never seen
    early, late = data[1], data[-1]
    packets["valid_parity"][late] = 1
    for name, value in (("io_channel", 9), ("chip_id", 200), ("io_group", packets["io_group"][late])):
        packets[name][[early, late]] = value
    packets["valid_parity"][early] = 0
    packets["valid_parity"][data[2]] = 0
    packets["io_channel"][data[2]] = 77
    for part in (packets, split_messages(*sim.second(START + 1)).decode()):
        reference.add(part, clocks[0], START + 100.0)
        compiled.add(part, clocks[1], START + 100.0)
    assert reference.link_parity.sum() >= 1
    row = reference.chips.lookup(*(np.array([v], np.uint8) for v in (packets["io_group"][late], 9, 200)))[0]
    assert row >= 0 and reference.chip_parity[row] == 1
    assert_same(reference, compiled)


@pytest.mark.slow
def test_clock_jumps_and_steps_and_two_io_groups_skewed_match() -> None:
    geometry = load_geometry(packaged_layout())
    sim = Simulator(geometry, SimulationConfig(seed=7), FAULTS)
    reference, compiled = pair(geometry, window_seconds=8.0, window_bins=4)
    clocks = [DataClock(), DataClock()]
    for t in list(range(6)) + [3_000 + t for t in range(8)]:  # a step forward that persists
        msgs, groups = sim.second(START + t)
        messages = split_messages(msgs, groups)
        if t == 2:  # one corrupt timestamp: rejected and counted, its packets keep the last time
            messages.buffer[messages.starts[0] + 1 : messages.starts[0] + 5] = np.frombuffer(
                (START + 900).to_bytes(4, "little"), np.uint8
            )
        feed_both(reference, compiled, messages, clocks)
    # an old file read late: its packets fall outside the window (slot -1), counted all the same
    for t in range(3):
        feed_both(reference, compiled, split_messages(*sim.second(START + t)), [DataClock(), DataClock()])
    assert reference.clock.rejected > 0
    assert (reference.hits_total.sum() - dense_slots(reference.state, "hits").sum()) > 1000
    assert_same(reference, compiled)


def test_foreign_packet_dtype_and_unknown_words_and_bad_messages() -> None:
    geometry = load_geometry(packaged_layout())
    sim = Simulator(geometry, SimulationConfig(seed=8), FAULTS)
    msgs, groups = sim.second(START)
    msgs = list(msgs)
    msgs[3] = msgs[3][:-5]  # malformed length
    msgs[4] = msgs[4].copy()
    msgs[4][8] = ord("X")  # a word of unknown type
    messages = split_messages(msgs, groups)
    assert messages.bad_messages == 1 and messages.unknown_words == 1
    reference, compiled = pair(geometry)
    feed_both(reference, compiled, messages, [DataClock(), DataClock()])
    assert_same(reference, compiled)
    assert int(compiled.packet_type_counts[:, TIMESTAMP].sum()) == len(messages.starts)
    narrow = np.dtype([(n, "u4" if n == "timestamp" else "u1") for n in PACKET_DTYPE.names if n != "receipt_timestamp"])
    packets = messages.decode()
    foreign = np.zeros(len(packets), narrow)
    for name in narrow.names:
        foreign[name] = packets[name]
    reference, compiled = pair(geometry)
    reference.add(foreign, DataClock(), START + 100.0)
    compiled.add(foreign, DataClock(), START + 100.0)
    assert_same(reference, compiled)


def test_a_channel_hit_more_often_than_an_int32_sum_of_squares_holds_is_exact() -> None:
    geometry = load_geometry(packaged_layout())
    sim = Simulator(geometry, SimulationConfig(seed=9), FAULTS)
    packets = split_messages(*sim.second(START)).decode()
    data = np.flatnonzero((packets["packet_type"] == DATA) & (packets["valid_parity"] == 1))
    hot = np.resize(data, 80_000)
    burst = packets[np.sort(np.concatenate([np.flatnonzero(packets["packet_type"] != DATA), hot]))]
    hot_rows = burst["packet_type"] == DATA
    for name in ("io_group", "io_channel", "chip_id", "channel_id"):
        burst[name][hot_rows] = packets[name][data[0]]
    burst["dataword"][hot_rows], burst["trigger_type"][hot_rows] = 255, 0
    burst["valid_parity"][hot_rows] = 1
    reference, compiled = pair(geometry)
    reference.add(burst, DataClock(), START + 100.0)
    compiled.add(burst, DataClock(), START + 100.0)
    assert dense_slots(reference.state, "adc_sq").max() > 2**31
    assert_same(reference, compiled)


#: Run in a fresh process (no kernels loaded yet): ingest a file, save the state, say when the kernels came.
FRESH_RUN = """
import sys, numpy as np
from larpix_dqm.exporter.detector.geometry import load_geometry, packaged_layout
from larpix_dqm.exporter.monitor import Monitor
from larpix_dqm.exporter.quality.accumulator import KERNELS
monitor = Monitor(load_geometry(packaged_layout()))
before = KERNELS.ready()
monitor.add_file(sys.argv[1])
np.savez(sys.argv[2], **monitor.accumulator.export_state())
print(before, monitor.accumulator.compiled)
"""


@pytest.mark.external
@pytest.mark.parametrize("fmt", ["raw", "packets"])
def test_files_past_the_compile_threshold_count_the_same_on_both_engines(tmp_path, backlog, fmt) -> None:
    """Whole files through the read loop (chunks, read-ahead, held rows) in a fresh process: it starts on
    numpy, switches to the kernels once it has COMPILE_AFTER_PACKETS, and ends with the numpy run's counters."""
    path = backlog(fmt)
    reference = Monitor(load_geometry(packaged_layout()), ingest_engine=NUMPY)
    assert reference.add_file(path) > 2 * COMPILE_AFTER_PACKETS
    out = subprocess.run(
        [sys.executable, "-c", FRESH_RUN, str(path), str(tmp_path / "state.npz")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert out == ["False", "True"]
    with np.load(tmp_path / "state.npz") as saved:
        assert_same_state(dict(saved), reference.accumulator.export_state())


#: Run in a fresh process: pump each input (argv) until its first chunk, as ``serve``'s poll does; print what the
#: pump told of the new files' bytes and whether the kernels were loading at the first chunk.
FIRST_CHUNK = """
import sys
from larpix_dqm.exporter.quality.accumulator import KERNELS, Accumulator, QualityConfig
from larpix_dqm.exporter.reading.tail import DirectoryTail, InputSpec
accumulator = Accumulator(QualityConfig())
for path in sys.argv[1:]:
    told, loading = [], []
    def expect(size):
        told.append(size)
        accumulator.expect(size)
    def consume(chunk):
        loading.append(KERNELS.ready(wait=600))  # False at once when they were not started
    DirectoryTail([InputSpec(path)]).pump(consume, stop=lambda: True, expect=expect)
    print(told[0], loading[0])
"""


@pytest.mark.external
def test_a_large_backlog_starts_loading_the_kernels_before_its_first_chunk(tmp_path, backlog) -> None:
    """The pump tells the bytes of the files with no row read yet; a backlog of COMPILE_AFTER_PACKETS packets or more at 36
    bytes a packet has the kernels loading from its first chunk (not after 2 M packets on numpy); a small file
    does not (it would not win the load back)."""
    large = backlog("packets")
    small = tmp_path / "small.h5"
    writer = open_writer(small, "packets")
    writer.append(*Simulator(load_geometry(packaged_layout()), SimulationConfig(seed=1)).second(START))
    writer.close()
    out = subprocess.run(
        [sys.executable, "-c", FIRST_CHUNK, str(small), str(large)], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == [str(small.stat().st_size), "False", str(large.stat().st_size), "True"], out
    assert large.stat().st_size >= COMPILE_AFTER_PACKETS * PACKET_DTYPE.itemsize > small.stat().st_size


#: Run in a fresh process where numba cannot compile: poll a file as ``serve`` does, save the state, print the
#: exporter's metrics. Placeholder ``{prelude}``: what takes the compiler away (nothing: NUMBA_DISABLE_JIT).
NO_COMPILER_RUN = """
import sys, numpy as np
{prelude}
from larpix_dqm.exporter.detector.geometry import load_geometry, packaged_layout
from larpix_dqm.exporter.metrics.exposition import render
from larpix_dqm.exporter.metrics.families import FamilyBuilder
from larpix_dqm.exporter.monitor import Monitor
from larpix_dqm.exporter.reading.tail import InputSpec
from larpix_dqm.exporter.runtime.ingest import Ingester
from larpix_dqm.exporter.runtime.logs import setup_logging
setup_logging("info", "logfmt")
ingester = Ingester([InputSpec(sys.argv[1])], Monitor(load_geometry(packaged_layout())))
ingester.poll()
np.savez(sys.argv[2], **ingester.accumulator.export_state())
print(render(FamilyBuilder().families(ingester.published.snapshot, ingester.published.health)))
"""
#: numba whose code generation fails on every kernel, as on a machine LLVM cannot target.
COMPILER_ERROR = """
from numba.core.dispatcher import Dispatcher
def cannot_compile(self, sig):
    raise RuntimeError("no code generation for this CPU")
Dispatcher.compile = cannot_compile
"""


@pytest.mark.external
@pytest.mark.parametrize(
    "env, prelude, reason",
    [
        ({"NUMBA_DISABLE_JIT": "1"}, "", "NUMBA_DISABLE_JIT is set, so numba would run the kernels as Python"),
        ({}, COMPILER_ERROR, "RuntimeError: no code generation for this CPU"),
    ],
    ids=["NUMBA_DISABLE_JIT", "compiler-error"],
)
def test_where_numba_cannot_compile_the_numpy_engine_counts_and_says_so_in_the_metric_and_one_log_line(
    tmp_path, backlog, env, prelude, reason
) -> None:
    """Interpreted by numba, the kernels would take minutes where numpy takes seconds: the numpy engine counts
    the whole file past the compile threshold, ``compiled_ingest`` says 0, and one log line says why."""
    path = backlog("raw")
    reference = Monitor(load_geometry(packaged_layout()), ingest_engine=NUMPY)
    packets = reference.add_file(path)
    assert packets > 2 * COMPILE_AFTER_PACKETS
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", NO_COMPILER_RUN.format(prelude=prelude), str(path), str(tmp_path / "state.npz")],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    seconds = time.monotonic() - started
    samples = parse_metrics(done.stdout)
    assert samples[("larpix_exporter_compiled_ingest", frozenset())] == 0
    warnings = [line for line in done.stderr.splitlines() if "compiled ingest unavailable" in line]
    assert len(warnings) == 1 and "level=warn" in warnings[0], done.stderr
    assert f"using the numpy engine: {reason}" in warnings[0]
    with np.load(tmp_path / "state.npz") as saved:
        # the ingester evaluates as it polls, the reference once: their CUSUMs advanced apart
        assert_same_state(dict(saved), reference.accumulator.export_state(), skip=EVALUATED)
    print(f"{env or 'compiler error'}: {packets:,} packets in {seconds:.1f} s (the process's whole run)")


@pytest.mark.external
def test_sigterm_during_a_large_backlog_under_numba_disable_jit_exits_within_10_s(tmp_path, backlog) -> None:
    """``serve`` with NUMBA_DISABLE_JIT=1, stopped mid-backlog once the kernels were refused: the numpy engine
    looks at the stop flag between chunks, so it writes its checkpoint and exits 0 within the promised 10 s."""
    data = tmp_path / "data"
    data.mkdir()
    for copy in range(4):  # four files of the same run: a backlog of ~10 M packets, about 5 s of numpy's time
        shutil.copyfile(backlog("raw"), data / f"run-{copy}.h5")
    total = 4 * Monitor(load_geometry(packaged_layout()), ingest_engine=NUMPY).add_file(backlog("raw"))
    args = ["-i", str(data), "--interval", "0.2", "--geometry", str(packaged_layout())]
    with running_exporter(args, env={"NUMBA_DISABLE_JIT": "1"}) as proc:
        port = int(proc.address.rsplit(":", 1)[1])
        wait_for(lambda: "compiled ingest unavailable" in proc.log.read_text(), 60, "kernels refused", proc.tail)
        samples = parse_metrics(scrape(port))
        assert samples[("larpix_exporter_compiled_ingest", frozenset())] == 0
        wait_for(lambda: ingested(port) > 0, 30, "a publication inside the backlog's poll", proc.tail)
        before = ingested(port)
        assert before < total, "the backlog is still being read"
        started = time.monotonic()
        proc.popen.send_signal(signal.SIGTERM)
        assert proc.popen.wait(15) == 0
        seconds = time.monotonic() - started
    log = proc.log.read_text()
    assert seconds < 10 and "stopped in" in log and "did not stop" not in log, log
    print(f"SIGTERM at {before:,} of {total:,} packets: exit 0 in {seconds:.2f} s")
