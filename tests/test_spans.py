"""Spans, rates and sync rates of every io_group of clean multi-io_group runs, whatever the reading:
the run read whole, in small chunks or live second by second, and in ``once``, on both engines,
with io_groups interleaved message by message or written in turns of several seconds each."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from larpix_dqm.exporter.quality.accumulator import COMPILED, KERNELS, NUMPY, Accumulator, QualityConfig, load_kernels
from larpix_dqm.exporter.quality.clock import DataClock
from larpix_dqm.exporter.quality.snapshot import Snapshot
from larpix_dqm.exporter.reading.decode import split_messages
from larpix_dqm.exporter.runtime.once import process_file
from larpix_dqm.exporter.simulate import SimulationConfig, Simulator, open_writer

START = 1_700_000_000
NOW = START + 10_000
RATE_HZ = 0.05
SECONDS = 100
WINDOW = 60.0
#: Seconds of each io_group's data a DAQ writes in one turn, in the "turns" file order.
TURN_SECONDS = 20

Run = list[tuple[list[np.ndarray], np.ndarray]]  # per data second: its messages and their io_groups


@pytest.fixture(scope="module")
def seconds(module_geometry) -> dict[int, Run]:
    """A clean run of the 2-io_group module, and the same with a copy of it on io_groups 3 and 4."""
    sim = Simulator(module_geometry, SimulationConfig(hit_rate_hz=RATE_HZ, seed=7))
    two = [sim.second(START + t) for t in range(SECONDS)]
    four = [(msgs + msgs, np.concatenate([groups, groups + 2])) for msgs, groups in two]
    return {2: two, 4: four}


def truth_hz(geometry, io_groups: int) -> np.ndarray:
    """The configured self-trigger rate of each io_group 1..n (the copies have the module's channels)."""
    per_group = [geometry.connected[geometry.chips[:, 0] == g].sum() for g in (1, 2)]
    return RATE_HZ * np.array([per_group[g % 2] for g in range(io_groups)], np.float64)


def interleaved(run: Run) -> Run:
    """Each second's messages alternating io_group by io_group, as PACMANs sending at once are written."""
    out = []
    for msgs, groups in run:
        order = np.lexsort((groups, np.concatenate([np.arange((groups == g).sum()) for g in np.unique(groups)])))
        regrouped = np.concatenate([np.flatnonzero(groups == g) for g in np.unique(groups)])[order]
        out.append(([msgs[i] for i in regrouped], groups[regrouped]))
    return out


def in_turns(run: Run) -> Run:
    """Each io_group's ``TURN_SECONDS`` of data written in turn: one io_group runs ahead in file order."""
    out = []
    for first in range(0, len(run), TURN_SECONDS):
        turn = run[first : first + TURN_SECONDS]
        for g in np.unique(turn[0][1]).tolist():
            msgs = [m for ms, gs in turn for m, mg in zip(ms, gs.tolist()) if mg == g]
            out.append((msgs, np.full(len(msgs), g, np.uint8)))
    return out


def read(blocks: Run, cuts: int | None, engine: str) -> Snapshot:
    """Feed the messages in the blocks' order: one chunk per block (``cuts`` None), else ``cuts`` random chunks."""
    acc = Accumulator(QualityConfig(WINDOW, 12, engine=engine))
    clock = DataClock()
    msgs = [m for ms, _ in blocks for m in ms]
    groups = np.concatenate([gs for _, gs in blocks])
    if cuts is None:
        edges = np.cumsum([0] + [len(ms) for ms, _ in blocks])
    else:
        rng = np.random.default_rng(cuts)
        edges = np.unique(np.concatenate([[0, len(msgs)], rng.integers(0, len(msgs), cuts)]))
    for a, b in zip(edges[:-1].tolist(), edges[1:].tolist()):
        acc.add_messages(split_messages(msgs[a:b], groups[a:b]), clock, NOW)
    return acc.snapshot()


def assert_true_rates(snap: Snapshot, truth: np.ndarray, how: str) -> None:
    """Every io_group spans the window, at its configured hit rate and one 'S' sync a second."""
    groups = np.arange(1, len(truth) + 1)
    np.testing.assert_array_equal(snap.io_group_span_seconds[groups], WINDOW, err_msg=how)
    np.testing.assert_allclose(snap.io_group_rate_hz[groups] / truth, 1.0, atol=0.03, err_msg=how)
    np.testing.assert_allclose(snap.sync_rate_hz[groups], 1.0, atol=0.02, err_msg=how)


def assert_same_rates(snap: Snapshot, expected: Snapshot, how: str) -> None:
    """The same spans and rates, per io_group and per chip (rows in key order: chips register as they are met)."""
    for name in ("io_group_span_seconds", "io_group_rate_hz", "sync_rate_hz"):
        np.testing.assert_array_equal(getattr(snap, name), getattr(expected, name), err_msg=f"{how}: {name}")
    got, want = (s.chip_rate_hz[np.lexsort(s.chip_keys.T[::-1])] for s in (snap, expected))
    np.testing.assert_array_equal(got, want, err_msg=f"{how}: chip_rate_hz")


@pytest.fixture(scope="module")
def kernels() -> None:
    assert load_kernels(wait=300), KERNELS.error


@pytest.mark.slow
@pytest.mark.parametrize("engine", [NUMPY, COMPILED])
@pytest.mark.parametrize("io_groups", [2, pytest.param(4, marks=pytest.mark.slow)])
def test_every_io_group_reads_its_true_rates_whole_in_chunks_and_live(
    module_geometry, seconds, kernels, io_groups, engine
):
    run = seconds[io_groups]
    truth = truth_hz(module_geometry, io_groups)
    live = read(interleaved(run), None, engine)  # one chunk per second, as serve reads a live run
    assert_true_rates(live, truth, "live")
    for order in (interleaved, in_turns):
        blocks = order(run)
        for how, cuts in (("whole", 1), ("chunks", 100), ("block by block", None)):
            whole_file = [([m for ms, _ in blocks for m in ms], np.concatenate([gs for _, gs in blocks]))]
            snap = read(whole_file, None, engine) if how == "whole" else read(blocks, cuts, engine)
            label = f"{order.__name__} {how}"
            assert_true_rates(snap, truth, label)
            assert_same_rates(snap, live, label)


@pytest.mark.slow
def test_once_reads_a_backlog_written_in_turns_at_its_true_rates(module_geometry, seconds, tmp_path: Path):
    """``once`` reads the file in chunks (the first one small); io_group 1's turn comes first in each."""
    path = tmp_path / "turns.h5"
    writer = open_writer(path, "raw")
    for msgs, groups in in_turns(seconds[2]):
        writer.append(msgs, groups)
    writer.close()
    once = process_file(str(path), module_geometry, WINDOW).snapshot
    assert_true_rates(once, truth_hz(module_geometry, 2), "once")
    assert_same_rates(once, read(interleaved(seconds[2]), None, NUMPY), "once")
