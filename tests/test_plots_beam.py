"""BeamTriggers: hits per external trigger and per tile over the last triggers, against the simulator's truth.

A simulated beam run is written to files, read back with the exporter's reader and fed to the plot in
chunks; the truth is ``Simulator.spills`` (each spill's trigger time and hits) and, with noise, a pairing
of the file's packets written out here from the rules (time = message second x 10 MHz + tick).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from plothelpers import PNG_SIGNATURE, one_pass

from larpix_dqm.exporter.detector.geometry import Geometry
from larpix_dqm.exporter.quality.accumulator import Accumulator
from larpix_dqm.exporter.reading.cursor import FileCursor
from larpix_dqm.exporter.reading.files import FileReader
from larpix_dqm.exporter.reading.packets import DATA, TICKS_PER_SYNC, TIMESTAMP, TRIGGER
from larpix_dqm.exporter.simulate import SimulationConfig, Simulator, Spill, write_run
from larpix_dqm.plots.base import PlotContext
from larpix_dqm.plots.builtin.beam import N_TRIGGERS, WINDOW_TICKS, BeamTriggers, TriggerHits
from larpix_dqm.plots.discovery import FAST, discover

START = 1_700_000_000
MISSED = (1, 3)  # io_group 1, module tile 3: off in every run here


def simulate(
    geometry: Geometry, tmp_path: Path, fmt: str, seconds: int, start: int = START, **kw: Any
) -> tuple[Simulator, list[Path], np.ndarray]:
    """A backlog run with a triggered beam (no noise unless asked): the simulator, its files, their packets."""
    config = {"hit_rate_hz": 0.0, "seed": 7, "beam_hits": 50.0, "beam_missed_tiles": [MISSED], **kw}
    sim = Simulator(geometry, SimulationConfig(**config))
    paths = write_run(sim, tmp_path / fmt, fmt, seconds, realtime=False, start_time=start)
    parts = []
    for path in paths:
        st = os.stat(path)
        parts += [c.packets for c in FileReader().read_new(FileCursor(str(path), st.st_dev, st.st_ino), time.time())]
    return sim, paths, np.concatenate(parts)


def feed(packets: np.ndarray, geometry: Geometry | None, cuts: int | list[int]) -> BeamTriggers:
    """The plot fed ``packets`` in ``cuts`` chunks (a count, or the rows to cut at)."""
    plot = BeamTriggers()
    ctx = PlotContext("beam.h5", Accumulator(geometry=geometry).snapshot(), geometry)
    for chunk in np.array_split(packets, cuts):
        plot.update(chunk, ctx)
    return plot


def trigger_time(spill: Spill) -> int:
    return spill.second * TICKS_PER_SYNC + spill.tick


def paired_here(packets: np.ndarray) -> dict[int, int]:
    """Hits per external trigger time by the rules, independently of the plot: a packet's second is its
    message's, a data packet stamped after its receipt time belongs to the second before."""
    ptype, ticks = packets["packet_type"], packets["timestamp"].astype(np.int64)
    header = np.maximum.accumulate(np.where(ptype == TIMESTAMP, np.arange(len(packets)), 0))
    times = ticks[header] * TICKS_PER_SYNC + ticks
    receipt = packets["receipt_timestamp"].astype(np.int64)
    times -= np.where((ptype == DATA) & (receipt > 0) & (ticks > receipt), TICKS_PER_SYNC, 0)
    hits = times[(ptype == DATA) & (packets["valid_parity"] == 1) & (packets["trigger_type"] & 3 == 0)]
    triggers = times[(ptype == TRIGGER) & (packets["trigger_type"] & 2 != 0)]
    return {int(t): int(((hits >= t) & (hits < t + WINDOW_TICKS)).sum()) for t in triggers}


def tile_totals(plot: BeamTriggers) -> dict[tuple[int, int], int]:
    """Hits per (io_group, tile) over the triggers the plot shows."""
    assert plot.bins is not None and plot.bins.tiles is not None
    totals = dict.fromkeys(plot.bins.tiles.pairs, 0)
    for trigger in plot.shown():
        for series, count in zip(trigger.bins.tolist(), trigger.counts.tolist()):
            totals[plot.bins.tiles.pairs[series]] += count
    return totals


def as_lists(triggers: list[TriggerHits]) -> list[tuple[int, int, list[int], list[int]]]:
    return [(t.time, t.hits, t.bins.tolist(), t.counts.tolist()) for t in triggers]


def texts(fig: Figure) -> list[str]:
    return [t.get_text() for ax in fig.axes for t in ax.texts] + [t.get_text() for t in fig.texts]


@pytest.mark.parametrize("fmt", ["raw", "packets"])
def test_hits_per_trigger_are_the_spills_hits_and_the_noise_in_their_windows(module_geometry, tmp_path, fmt):
    sim, _, packets = simulate(module_geometry, tmp_path, fmt, 10, hit_rate_hz=0.01, beam_period_s=0.25)
    truth = sim.spills(START, START + 10)
    shown = feed(packets, module_geometry, 17).shown()
    assert [t.time for t in shown] == [trigger_time(s) for s in truth] and len(shown) == 40
    expected = paired_here(packets)
    assert [t.hits for t in shown] == [expected[t.time] for t in shown]  # exactly, noise included
    noise = np.array([t.hits - len(s.channels) for t, s in zip(shown, truth)])
    assert (noise >= 0).all() and noise.sum() <= 20  # ~0.16 noise hits a window at 0.01 Hz a pixel


def test_without_noise_the_missed_tile_has_no_hit_and_every_other_tile_many(module_geometry, tmp_path):
    sim, _, packets = simulate(module_geometry, tmp_path, "raw", 10, beam_period_s=0.25)
    truth = sim.spills(START, START + 10)
    plot = feed(packets, module_geometry, 9)
    shown = plot.shown()
    assert [(t.time, t.hits) for t in shown] == [(trigger_time(s), len(s.channels)) for s in truth[: len(shown)]]
    assert len(shown) >= len(truth) - 1  # the last one waits for data after its window on every io_group
    totals = tile_totals(plot)
    assert totals.pop(MISSED) == 0
    assert len(totals) == 15 and min(totals.values()) > 10 and sum(totals.values()) > 40 * 40
    fig = plot.draw("BeamTriggers", PlotContext("beam.h5", Accumulator(geometry=module_geometry).snapshot(), None))
    hist_ax, group1, group2 = fig.axes
    assert group1.get_title() == "io_group 1: hits per tile" and group2.get_title() == "io_group 2: hits per tile"
    hatched = [p for p in group1.patches if p.get_hatch()]
    assert len(hatched) == 1 and not any(p.get_hatch() for p in group2.patches)
    assert "tile 3\nno hits" in [t.get_text() for t in group1.texts]
    assert len(group1.patches) == len(group2.patches) == 8
    (bars,) = hist_ax.patches  # the histogram: one step patch
    assert bars.get_data()[0].sum() == len(shown)
    assert "tiles without hits (hatched): 1" in fig.texts[1].get_text()


def test_two_chunk_splits_pair_the_same_hits(module_geometry, tmp_path):
    sim, _, packets = simulate(module_geometry, tmp_path, "packets", 8, hit_rate_hz=0.02, beam_period_s=0.3)
    rng = np.random.default_rng(3)
    cuts = sorted(rng.choice(len(packets), 40, replace=False).tolist())
    one, other = feed(packets, module_geometry, 3), feed(packets, module_geometry, cuts)
    assert len(one.shown()) == len(sim.spills(START, START + 8)) == 27
    assert as_lists(one.shown()) == as_lists(other.shown())
    assert one.paired == other.paired > 20  # most were paired for good, not only shown


def test_only_the_last_n_triggers_are_kept_and_held_hits_stay_bounded(module_geometry, tmp_path):
    sim, _, packets = simulate(
        module_geometry, tmp_path, "raw", 8, hit_rate_hz=0.005, beam_period_s=0.025, beam_hits=5.0
    )
    truth = [trigger_time(s) for s in sim.spills(START, START + 8)]
    plot = BeamTriggers()
    ctx = PlotContext("beam.h5", Accumulator(geometry=module_geometry).snapshot(), module_geometry)
    held = []
    for chunk in np.array_split(packets, 40):
        plot.update(chunk, ctx)
        held.append(len(plot.hit_times))
    assert len(truth) == 320 and plot.paired > N_TRIGGERS
    assert len(plot.recent) == N_TRIGGERS == len(plot.shown())
    assert [t.time for t in plot.shown()] == truth[-N_TRIGGERS:]
    data = int((packets["packet_type"] == DATA).sum())
    assert max(held) < data / 4  # about a second of hits at most, of 8


def test_late_hits_of_a_spill_at_a_seconds_end_count_for_it(module_geometry, tmp_path):
    start = 9_999 * 170_017 - 1  # spill 10_000 m + 1 is 100 µs before a second's end (as in test_beam_simulation)
    sim, _, packets = simulate(module_geometry, tmp_path, "raw", 3, start=start, beam_period_s=0.9999, beam_hits=200.0)
    (spill,) = [s for s in sim.spills(start, start + 3) if s.tick > TICKS_PER_SYNC - 1_900]
    assert (spill.ticks >= TICKS_PER_SYNC).sum() > 50
    shown = {t.time: t.hits for t in feed(packets, module_geometry, 5).shown()}
    assert shown[trigger_time(spill)] == len(spill.channels)


def test_draws_bars_without_a_geometry_and_says_when_no_trigger_came(module_geometry, tmp_path):
    _, _, packets = simulate(module_geometry, tmp_path, "raw", 4, hit_rate_hz=0.02, beam_period_s=0.5)
    plot = feed(packets, None, 4)
    assert plot.bins is not None and plot.bins.tiles is None
    ctx = PlotContext("beam.h5", Accumulator().snapshot(), None)
    fig = plot.draw("BeamTriggers", ctx)
    hist_ax, bars_ax = fig.axes
    bars = [p for p in bars_ax.patches if isinstance(p, Rectangle)]
    labels = [t.get_text() for t in bars_ax.get_xticklabels()]
    assert len(bars) == len(labels) == int(plot.seen.sum()) and "1-9" in labels  # a channel of the missed tile
    missed = [h for label, h in zip(labels, (b.get_height() for b in bars)) if label == "1-9"]
    assert missed == [0]
    assert sum(b.get_height() for b in bars) == sum(t.hits for t in plot.shown())
    assert plot.draw("BeamTriggers", ctx, fig) is fig  # kept and refilled
    for geometry, axes in ((module_geometry, 3), (None, 2)):
        idle = feed(packets[packets["packet_type"] != TRIGGER], geometry, 3)
        assert not idle.active and not len(idle.hit_times)  # nothing held without a trigger
        for empty in (idle, BeamTriggers()):
            fig = empty.draw("BeamTriggers", PlotContext("beam.h5", Accumulator().snapshot(), geometry))
            assert len(fig.axes) == axes and texts(fig).count("no external trigger yet") == axes + 1


def test_is_a_builtin_per_file_plot_the_engine_renders(module_geometry, tmp_path):
    spec = discover().plugins["BeamTriggers"]
    assert spec.kind == FAST and spec.per_file and spec.source == "plots/builtin/beam.py"
    _, paths, _ = simulate(module_geometry, tmp_path, "raw", 4, hit_rate_hz=0.02, beam_period_s=0.5)
    engine, _, written = one_pass(paths[0], module_geometry, tmp_path / "out", plots=("BeamTriggers",))
    assert written == 1 and all(h.failures == 0 for h in engine.health.values())
    png = tmp_path / "out" / f"{paths[0].stem}_dqm" / f"{paths[0].stem}_BeamTriggers.png"
    assert png.read_bytes()[:8] == PNG_SIGNATURE
