"""The state table (``exporter/quality/state.py``) against everything derived from it or written beside it:
the kernels' argument lists, both engines, the checkpoint and the window's clearing.

A per-packet quantity added to the table but not to an engine, the kernel or the checkpoint fails here.
"""

from __future__ import annotations

import ast
import copy
import importlib.util
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_same_state, dense_slots

from larpix_dqm.exporter.detector.geometry import load_geometry, packaged_layout
from larpix_dqm.exporter.quality import engine
from larpix_dqm.exporter.quality.accumulator import COMPILED, KERNELS, NUMPY, Accumulator, QualityConfig, load_kernels
from larpix_dqm.exporter.quality.clock import DataClock
from larpix_dqm.exporter.quality.slots import COLUMNS, slot_names
from larpix_dqm.exporter.quality.state import (
    BY_NAME,
    CHIP,
    COUNT,
    COUNTERS,
    FIELDS,
    FOLD,
    LEARNING,
    SLOT_CHIP,
    SUMS,
    WINDOW,
    WINDOW_ARRAYS,
    WINDOW_FILE,
    State,
    kernel_fields,
)
from larpix_dqm.exporter.reading.decode import split_messages
from larpix_dqm.exporter.reading.packets import DATA, PACKET_DTYPE, TIMESTAMP
from larpix_dqm.exporter.simulate import Faults, SimulationConfig, Simulator

START = 1_700_000_000
FAULTS = Faults(parity_error_fraction=0.02, fifo_full_chips=[(1, 2, 40)], fifo_flag_fraction=0.05)


def kernel_unpacking(function: str) -> list[str]:
    """The names ``compiled.<function>`` unpacks its ``state`` argument into, read from the source."""
    origin = importlib.util.find_spec("larpix_dqm.exporter.quality.compiled").origin  # type: ignore[union-attr]
    tree = ast.parse(Path(str(origin)).read_text())
    body = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == function)
    for node in ast.walk(body):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Name) and node.value.id == "state":
            (target,) = node.targets
            assert isinstance(target, ast.Tuple)
            return [t.id for t in target.elts if isinstance(t, ast.Name)]
    raise AssertionError(f"compiled.{function} does not unpack its state")


@pytest.mark.parametrize("kernel, function", [(COUNT, "count_chunk"), (FOLD, "fold_hits")])
def test_each_kernel_unpacks_its_fields_in_the_tables_order(kernel: str, function: str) -> None:
    assert kernel_unpacking(function) == [f.name for f in kernel_fields(kernel)]


def test_the_table_is_consistent() -> None:
    assert len(BY_NAME) == len(FIELDS)
    for f in FIELDS:
        assert f.checkpoint in (COUNTERS, WINDOW, LEARNING, None), f.name
        assert set(f.kernels) <= {COUNT, FOLD}, f.name
        # what evaluations learnt is in the window file only since it moved there: optional, and counted by no kernel
        assert f.checkpoint != LEARNING or (f.optional and not f.kernels and f.per_chip), f.name
    assert set(WINDOW_FILE) == set(WINDOW_ARRAYS) | {f.name for f in FIELDS if f.checkpoint == LEARNING}


def simulated(seconds: int) -> list[np.ndarray]:
    """Packet records of every kind the engines count: data of each trigger type, parity errors and
    FIFO flags, syncs, external triggers, periodic triggers (the pedestal window)."""
    geometry = load_geometry(packaged_layout())
    config = SimulationConfig(seed=3, trigger_rate_hz=2.0, periodic_trigger_hz=2.0)
    sim = Simulator(geometry, config, FAULTS)
    chunks = [split_messages(*sim.second(START + t)).decode() for t in range(seconds)]
    for packets in chunks:  # parity errors on a link without a known chip
        data = np.flatnonzero(packets["packet_type"] == DATA)[:3]
        packets["io_channel"][data], packets["valid_parity"][data] = 77, 0
    return chunks


ENGINES = (NUMPY, COMPILED)


@pytest.fixture(scope="module")
def fed() -> dict[str, Accumulator]:
    """One accumulator per engine, fed the same packets."""
    assert load_kernels(wait=300), KERNELS.error
    geometry = load_geometry(packaged_layout())
    config = {"window_seconds": 10.0, "window_bins": 5}
    accs = {e: Accumulator(QualityConfig(engine=e, **config), geometry) for e in ENGINES}  # type: ignore[arg-type]
    clocks = {e: DataClock() for e in ENGINES}
    for packets in simulated(14):
        for e, acc in accs.items():
            acc.add(packets, clocks[e], START + 100.0)
    assert accs[COMPILED].compiled and not accs[NUMPY].compiled
    return accs


@pytest.mark.slow
def test_both_engines_count_every_field_of_the_table_alike(fed: dict[str, Accumulator]) -> None:
    numpy_state, compiled_state = fed[NUMPY].state, fed[COMPILED].state
    assert numpy_state.capacity == compiled_state.capacity
    for f in FIELDS:
        a, b = getattr(numpy_state, f.name), getattr(compiled_state, f.name)
        np.testing.assert_array_equal(b, a, err_msg=f.name)
        if f.kernels:  # the packets exercise every counted field: one left out of an engine shows
            assert (np.nan_to_num(a, nan=f.fill) != f.fill).any(), f.name
    for slot in range(len(numpy_state.slot_sums)):  # the window slots' entries, merged (one a channel)
        for name, a, b in zip(
            slot_names(slot), numpy_state.slot_sums.merged(slot), compiled_state.slot_sums.merged(slot)
        ):
            np.testing.assert_array_equal(b, a, err_msg=name)
    for column in COLUMNS:
        assert dense_slots(numpy_state, column).any(), column


@pytest.mark.parametrize("dense", [0, 10**9], ids=["over the distinct cells", "over every cell"])
def test_the_numpy_engine_sums_a_chunk_over_every_cell_or_the_distinct_ones_alike(
    dense: int, fed: dict[str, Accumulator], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chunk's per-channel sums are taken over all its cells when they are a few a packet (a module), over its
    distinct cells when many more (50 io_groups): either way the state the kernels count."""
    monkeypatch.setattr(engine, "DENSE_CELLS_PER_PACKET", dense)
    acc = Accumulator(fed[NUMPY].config, fed[NUMPY].geometry)
    clock = DataClock()
    for packets in simulated(14):
        acc.add(packets, clock, START + 100.0)
    assert_same_state(acc.export_state(), fed[COMPILED].export_state())


@pytest.mark.slow
def test_chips_found_in_the_data_get_rows_to_spare_alike_on_both_engines() -> None:
    """Without a geometry, chips come with the data and each registration leaves a quarter more rows than the chips
    need (the next chips come soon: growing copies the state), the same rows on both engines with the same entries;
    a geometry's chips get their rows exactly."""
    assert load_kernels(wait=300), KERNELS.error
    accs = {e: Accumulator(QualityConfig(engine=e, window_seconds=10.0, window_bins=5)) for e in ENGINES}
    clock = {e: DataClock() for e in ENGINES}
    for packets in simulated(4):
        for e, acc in accs.items():
            acc.add(packets, clock[e], START + 100.0)
    chips = len(accs[NUMPY].chips)
    assert accs[COMPILED].compiled and chips > 64 and accs[NUMPY].state.capacity >= chips + chips // 4
    assert accs[COMPILED].state.capacity == accs[NUMPY].state.capacity
    assert_same_state(accs[COMPILED].export_state(), accs[NUMPY].export_state())
    geometry = load_geometry(packaged_layout())
    assert Accumulator(QualityConfig(engine=NUMPY), geometry).state.capacity == len(geometry.chips)


def test_every_field_is_checkpointed_and_restored(fed: dict[str, Accumulator]) -> None:
    """Restored twice into one state, a checkpoint gives what it holds: a restore replaces, never adds to, the
    window's sums over its slots."""
    acc = fed[NUMPY]
    saved = acc.export_state()
    assert {f.name for f in FIELDS if f.checkpoint is not None} <= saved.keys()
    restored = Accumulator(acc.config, acc.geometry)
    assert restored.import_state(saved) and restored.import_state(saved)
    n = len(acc.chips)
    for f in FIELDS:
        a, b = getattr(acc.state, f.name), getattr(restored.state, f.name)
        if f.scope == CHIP:
            a, b = a[:n], b[:n]
        elif f.scope == SLOT_CHIP:
            a, b = a[:, :n], b[:, :n]
        np.testing.assert_array_equal(b, a, err_msg=f.name)
    for column in COLUMNS:
        got, want = dense_slots(restored.state, column), dense_slots(acc.state, column)
        np.testing.assert_array_equal(got[:, :n], want[:, :n], err_msg=column)


def test_another_window_restores_the_counters_and_starts_the_window_empty(fed: dict[str, Accumulator]) -> None:
    acc = fed[NUMPY]
    restored = Accumulator(QualityConfig(engine=NUMPY, window_seconds=12.0, window_bins=6), acc.geometry)
    assert not restored.import_state(acc.export_state())
    n = len(acc.chips)
    for f in FIELDS:
        got = getattr(restored.state, f.name)
        if f.windowed and f.per_slot:
            assert got is None or not got.any(), f.name
        elif f.sums is not None:
            assert not got.any(), f.name
        elif not f.windowed:
            want = getattr(acc.state, f.name)
            np.testing.assert_array_equal(got[:n] if f.per_chip else got, want[:n] if f.per_chip else want, f.name)
    np.testing.assert_array_equal(restored.state.window_end, acc.state.clock.head)
    assert dense_slots(acc.state, "hits").any() and not dense_slots(restored.state, "hits").any()


def test_clearing_a_slot_empties_every_windowed_field_of_its_io_group(fed: dict[str, Accumulator]) -> None:
    state = fed[NUMPY].state
    saved = {f.name: getattr(state, f.name).copy() for f in FIELDS}
    entries = copy.deepcopy(state.slot_sums)
    try:
        g = int(state.chips.keys[0, 0])
        rows = state.chips.keys[:, 0] == g
        assert dense_slots(state, "hits")[:, : len(rows)][:, rows].any()
        state.clear([g], tuple(range(state.config.window_bins)))
        for f in FIELDS:
            if f.per_slot:
                array = getattr(state, f.name)
                cleared = array[:, : len(rows)][:, rows] if f.per_chip else array[:, g]
                assert (cleared == f.fill).all(), f.name
        for column in COLUMNS:
            assert not dense_slots(state, column)[:, : len(rows)][:, rows].any(), column
            assert dense_slots(state, column)[:, : len(rows)][:, ~rows].any(), column
    finally:
        for name, value in saved.items():
            setattr(state, name, value)
        state.slot_sums = entries


def test_io_groups_cleared_together_are_cleared_as_one_after_another(fed: dict[str, Accumulator]) -> None:
    """Clearing io_groups at once (as windows that move together are) empties what clearing each does; clearing
    one leaves the other's rows alone."""
    state = fed[NUMPY].state
    groups = np.unique(state.chips.keys[:, 0]).tolist()
    assert len(groups) >= 2
    slots = (int(state.newest_bin[groups[0]]) % 5,)
    saved = {f.name: getattr(state, f.name).copy() for f in FIELDS if getattr(state, f.name) is not None}
    entries = copy.deepcopy(state.slot_sums)
    sums = {f.name for f in SUMS}

    def restore() -> None:
        for name, value in saved.items():
            setattr(state, name, value.copy())
        state.slot_sums = copy.deepcopy(entries)

    def with_slots() -> dict[str, np.ndarray]:
        return {**{name: getattr(state, name).copy() for name in saved}, **{c: dense_slots(state, c) for c in COLUMNS}}

    try:
        before = with_slots()
        state.clear(groups, slots)
        at_once = with_slots()
        restore()
        for g in groups:
            state.clear([g], slots)
        one_by_one = with_slots()
        for name, value in before.items():
            np.testing.assert_array_equal(at_once[name], one_by_one[name], err_msg=name)
            if name in sums or name in COLUMNS:
                assert (at_once[name] != value).any(), name  # the clearing took something out
        restore()
        state.clear(groups[:1], slots)
        n = len(state.chips.keys)
        other = state.chips.keys[:, 0] == groups[1]
        for name, value in with_slots().items():
            if name in COLUMNS or (BY_NAME[name].per_slot and BY_NAME[name].per_chip):
                np.testing.assert_array_equal(value[:, :n][:, other], before[name][:, :n][:, other], err_msg=name)
    finally:
        for name, value in saved.items():
            setattr(state, name, value)
        state.slot_sums = entries


def test_the_window_sums_are_the_sums_of_the_slots_as_they_are_counted_and_cleared(fed: dict[str, Accumulator]) -> None:
    """14 s of data through a 10 s window (slots cleared as it moves), by both engines, then one io_group's slot
    cleared: each sum stays its slots' sum."""
    assert SUMS
    for acc in fed.values():
        state = acc.state
        saved = {f.name: getattr(state, f.name).copy() for f in FIELDS if getattr(state, f.name) is not None}
        entries = copy.deepcopy(state.slot_sums)
        try:
            for cleared in (False, True):
                if cleared:
                    state.clear([int(state.chips.keys[0, 0])], (int(state.newest_bin[state.chips.keys[0, 0]]) % 5,))
                for f in SUMS:
                    slots = dense_slots(state, str(f.sums)).sum(axis=0)
                    assert slots.any(), f.name
                    np.testing.assert_array_equal(getattr(state, f.name), slots, err_msg=f.name)
        finally:
            for name, value in saved.items():
                setattr(state, name, value)
            state.slot_sums = entries


def test_a_chip_first_seen_in_a_later_chunk_gets_its_tile(tile_geometry) -> None:
    """Chips registered within the arrays' capacity are looked up in the geometry too (a geometry by
    chip_id registers no chip up front; before, only chips that grew the arrays got their tile)."""
    chips = sorted(tile_geometry.by_chip_id)[:2]
    acc = Accumulator(QualityConfig(engine=NUMPY), tile_geometry)
    clock = DataClock()
    for chip in chips:
        packets = np.zeros(2, PACKET_DTYPE)
        packets["packet_type"], packets["timestamp"][0] = (TIMESTAMP, DATA), START
        packets["io_group"], packets["io_channel"], packets["chip_id"][1], packets["valid_parity"] = 1, 1, chip, 1
        acc.add(packets, clock, START + 100.0)
    rows = [tile_geometry.row_of(1, 1, chip) for chip in chips]
    assert acc.geo_row.tolist() == rows
    assert acc.snapshot().chip_tiles.tolist() == tile_geometry.tiles[rows].tolist()


def test_a_window_that_never_moved_is_not_cleared(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fresh state's first seconds move each io_group's window from nowhere: nothing was counted into its slots, so
    nothing is cleared (a module's 12 slots cost 45 ms, their pages faulted in); later moves clear the slots they move
    into, each io_group's once its window has moved."""
    cleared: list[tuple[list[int], tuple[int, ...]]] = []
    clear = State.clear
    monkeypatch.setattr(
        State, "clear", lambda self, groups, slots: cleared.append((groups, slots)) or clear(self, groups, slots)
    )
    acc = Accumulator(QualityConfig(engine=NUMPY, window_seconds=10.0, window_bins=5), load_geometry(packaged_layout()))
    clock = DataClock()
    seconds = simulated(6)
    acc.add(seconds[0], clock, START + 100.0)
    moved = np.flatnonzero(acc.state.newest_bin >= 0).tolist()
    assert moved and cleared == []
    for packets in seconds[1:]:
        acc.add(packets, clock, START + 100.0)
    assert cleared and {g for groups, _ in cleared for g in groups} == set(moved)
    assert all(len(slots) < 5 for _, slots in cleared)
