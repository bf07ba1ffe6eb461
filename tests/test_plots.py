"""Built-in plots: each renders from simulated files of both formats and every packaged layout,
and drawing poll by poll ends with the same figure data as one pass over the whole file."""

from __future__ import annotations

import re
import struct

import numpy as np
import pytest
from helpers import START, simulate_files
from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatterSciNotation
from plothelpers import PNG_SIGNATURE, assert_same_figure_data, figure_data, figures, one_pass, rate_image

from larpix_dqm.exporter.detector.geometry import GeometryError, load_geometry, packaged_layout
from larpix_dqm.exporter.monitor import Monitor
from larpix_dqm.exporter.quality.accumulator import Accumulator, prefer_finite
from larpix_dqm.exporter.quality.clock import DataClock, DetectorClock
from larpix_dqm.exporter.quality.status import ChannelStatus
from larpix_dqm.exporter.reading.decode import decode_messages
from larpix_dqm.exporter.reading.files import FileReader
from larpix_dqm.exporter.reading.tail import InputSpec
from larpix_dqm.exporter.runtime.ingest import Ingester
from larpix_dqm.exporter.simulate import Faults, SimulationConfig, Simulator, open_writer
from larpix_dqm.plots import PlotContext
from larpix_dqm.plots.builtin.anode import AnodeOverview
from larpix_dqm.plots.builtin.beam import BeamTriggers
from larpix_dqm.plots.builtin.fifo import FIFOFlags
from larpix_dqm.plots.builtin.hot import HotPixels, top_channels
from larpix_dqm.plots.builtin.pixelmap import PixelMap
from larpix_dqm.plots.builtin.rates import PacketRate, TileRate
from larpix_dqm.plots.builtin.timing import TimestampHistograms, TriggerHistograms
from larpix_dqm.plots.draw import log_scale
from larpix_dqm.plots.engine import PlotEngine, PlotSettings, render

FAULTS = Faults(
    silent_chips=[(1, 1, 11)],
    noisy_channels=[(1, 1, 12, 3)],
    noisy_rate_hz=40,
    parity_error_fraction=0.002,
    fifo_full_chips=[(1, 2, 40)],
    fifo_flag_fraction=0.2,
)
TILE_FAULTS = Faults(silent_chips=[(1, 1, 11)], noisy_channels=[(1, 1, 12, 3)], noisy_rate_hz=40)
NOT_MAPS = [
    "AnodeOverview",
    "PacketRate",
    "TileRate",
    "FIFOFlags",
    "TimestampHistograms",
    "TriggerHistograms",
    "BeamTriggers",
    "HotPixels",
]


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_SIGNATURE
    return struct.unpack(">II", data[16:24])


def test_module_pixel_maps_are_named_by_tile_within_io_group(module_geometry):
    ctx = PlotContext(None, Accumulator(geometry=module_geometry).snapshot(), module_geometry)
    plot = PixelMap()
    names = plot.outputs(ctx)
    assert names == [f"PixelMap_{g}_{t}" for g in (1, 2) for t in range(1, 9)]
    assert plot.tiles(ctx)["PixelMap_2_1"].tile == 9


@pytest.mark.parametrize(
    "layout, fmt",
    [
        # a whole module takes seconds per case: end-to-end; the single tiles below are the fast subset's
        pytest.param("multi_tile_layout-2.4.16.yaml", "raw", marks=pytest.mark.slow),
        pytest.param("multi_tile_layout-2.4.16.yaml", "packets", marks=pytest.mark.slow),
        pytest.param("multi_tile_layout-2.3.16.yaml", "raw", marks=pytest.mark.slow),  # geometry-dependent plots only
        ("layout-2.4.0.yaml", "raw"),
        pytest.param("layout-2.4.0.yaml", "packets", marks=pytest.mark.slow),  # both formats run on other tiles
        ("layout-3.0.0.yaml", "packets"),
    ],
)
@pytest.mark.slow
def test_every_builtin_plot_renders(tmp_path, layout, fmt):
    geometry = load_geometry(packaged_layout(layout))
    module = geometry.has_io_mapping
    faults = FAULTS if module else TILE_FAULTS
    paths, _ = simulate_files(geometry, tmp_path / "data", 6, fmt, faults, trigger_rate_hz=3, hit_rate_hz=1.5)
    maps = ["PixelMap_1_1", "PixelMap_2_1"] if module else ["PixelMap_1_1"]  # the other maps are the same code
    others = ["AnodeOverview", "TileRate"] if "2.3" in layout else NOT_MAPS
    engine, result, written = one_pass(paths[0], geometry, tmp_path / "out", plots=(*maps, *others))
    assert all(h.failures == 0 for h in engine.health.values()), {n: h.last_error for n, h in engine.health.items()}
    assert written == len(maps) + len(others)
    stem = paths[0].stem
    for name in (*maps, *others):
        data = (tmp_path / "out" / f"{stem}_dqm" / f"{stem}_{name}.png").read_bytes()
        width, height = png_size(data)
        assert width == 1280 and 300 < height < 1200, (name, width, height)
        assert len(data) > 20_000, name
    # the first pixel map shows a rate for exactly the channels of its tile with hits in the window
    snap = result.snapshot
    rows = np.array([-1 if r is None else r for r in (geometry.row_of(*k) for k in snap.chip_keys.tolist())])
    mine = (snap.chip_keys[:, 0] == 1) & (rows >= 0) & (geometry.tiles[rows] == geometry.tiles.min())
    status = snap.channel_status[mine]
    rate, _ = rate_image(figures(engine)["PixelMap_1_1"])
    assert np.isfinite(rate).sum() == np.isin(status, [ChannelStatus.ACTIVE, ChannelStatus.NOISY]).sum()
    silent_chip = int(geometry.connected[geometry.row_of(1, 1, 11)].sum())
    assert (~np.isfinite(rate)).sum() >= silent_chip
    if module:  # single-tile layouts only learn of a chip from its data: one that never speaks is not "silent"
        assert (status == ChannelStatus.SILENT).sum() >= silent_chip
    assert np.nanmax(rate) > 30  # the noisy channel


def test_log_axes_are_labelled_in_plain_text_without_mathtext(tmp_path, monkeypatch):
    """matplotlib labels log axes in mathtext, whose parser took a fifth of the CPU of ``once``'s 8-plot draw;
    the built-in plots label them 10⁻¹, 10³ or 2×10⁰ in plain text, and never call that parser."""
    import matplotlib.mathtext

    parsed: list[str] = []
    parse = matplotlib.mathtext.MathTextParser.parse
    monkeypatch.setattr(
        matplotlib.mathtext.MathTextParser,
        "parse",
        lambda self, s, *a, **k: parsed.append(s) or parse(self, s, *a, **k),
    )
    geometry = load_geometry(packaged_layout("layout-2.4.0.yaml"))
    paths, _ = simulate_files(geometry, tmp_path / "data", 4, "raw", TILE_FAULTS, hit_rate_hz=1.5)
    logs = ["AnodeOverview", "PacketRate", "TimestampHistograms", "HotPixels"]
    engine, _, written = one_pass(paths[0], geometry, tmp_path / "out", plots=tuple(logs))
    assert written == len(logs) and all(h.failures == 0 for h in engine.health.values())
    assert parsed == []
    labels = [text for fig in figures(engine).values() for text in _texts(fig)]
    decades = [text for text in labels if text.startswith("10") and text[2:3] in "⁻⁰¹²³⁴⁵⁶⁷⁸⁹" and text[2:]]
    assert len(decades) >= 8 and not any("$" in text for text in labels), decades


@pytest.mark.parametrize(
    "value, label",
    [(1.0, "10⁰"), (10.0, "10¹"), (1e5, "10⁵"), (0.01, "10⁻²"), (2.0, "2×10⁰"), (0.03, "3×10⁻²"), (2e-7, "2×10⁻⁷")],
)
def test_plain_log_labels(value, label):
    ax = Figure().add_subplot()
    log_scale(ax, "y")
    ax.set_ylim(1e-9, 1e9)
    assert ax.yaxis.get_major_formatter()(value) == label


_MATHTEXT_LABEL = re.compile(r"\$\\mathdefault\{(?:(.+?)\\times)?10\^\{(-?\d+)\}\}\$")


@pytest.mark.parametrize(
    "limits", [(1e-3, 1e5), (0.5, 20), (2, 8), (2100, 2900), (0.0985, 0.1012), (3e-12, 7e-12), (1, 1e12), (1e-13, 1e7)]
)
def test_plain_log_labels_say_what_matplotlibs_own_say(limits):
    """At every major and minor tick matplotlib places, on views of many decades or within one, the label is
    matplotlib's mathtext label written in plain text (or empty where that one is)."""
    ax = Figure().add_subplot()
    log_scale(ax, "y")
    ax.set_ylim(*limits)
    axis = ax.yaxis
    shown = 0
    for ours, locator in (
        (axis.get_major_formatter(), axis.get_major_locator()),
        (axis.get_minor_formatter(), axis.get_minor_locator()),
    ):
        theirs = LogFormatterSciNotation(labelOnlyBase=ours.labelOnlyBase)
        theirs.set_axis(axis)
        locations = locator()
        ours.set_locs(locations)
        theirs.set_locs(locations)
        for value in locations:
            match = _MATHTEXT_LABEL.fullmatch(theirs(value))
            coefficient, exponent = match.groups() if match else (None, None)
            power = "10" + str(exponent).translate(str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")) if match else ""
            assert ours(value) == (f"{coefficient}×{power}" if coefficient else power), (limits, value, theirs(value))
            shown += bool(power)
    assert shown >= 2


def test_pixel_map_refuses_a_layout_off_the_grid_clearly(tmp_path):
    layout = tmp_path / "odd.yaml"
    layout.write_text("chips: [[11, [0, 1]]]\npixels: [[0, 0.0, 0.0], [1, 3.1, 1.7]]\n")
    geometry = load_geometry(layout)
    with pytest.raises(GeometryError, match="not on a regular grid"):
        PixelMap.check(geometry)


# One whole-detector plot (they all draw the published snapshot) and every per-file plot.
SOME = ("PixelMap_1_1", "PacketRate", "TileRate", "FIFOFlags", "TimestampHistograms", "TriggerHistograms")


def live_polls(directory, geometry, fmt: str, seconds: int, outdir) -> PlotEngine:
    """Write a file second by second and poll it with the real ingester, drawing after every poll."""
    sim = Simulator(geometry, SimulationConfig(seed=5, trigger_rate_hz=4), FAULTS)
    directory.mkdir()
    writer = open_writer(directory / "live.h5", fmt)
    reader = FileReader(chunk_rows=7_001, raw_chunk_messages=1_003)
    ingester = Ingester([InputSpec(str(directory))], Monitor(geometry, window=60.0), 1.0, reader=reader)
    engine = PlotEngine(PlotSettings(str(outdir), plots=SOME), geometry)
    ingester.listeners.append(
        lambda chunk: engine.update((chunk.cursor.path, chunk.cursor.inode), chunk.packets, ingester.published.snapshot)
    )
    try:
        for t in range(seconds):
            writer.append(*sim.second(START + t))
            if t % 5 == 1 or t == seconds - 1:
                ingester.poll()
                assert engine.draw(ingester.published.snapshot) > 0
    finally:
        writer.close()
    return engine


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["raw", "packets"])
def test_polls_end_with_the_same_figures_as_one_pass(tmp_path, module_geometry, fmt):
    live = live_polls(tmp_path / "data", module_geometry, fmt, 11, tmp_path / "live")
    engine, _, _ = one_pass(tmp_path / "data" / "live.h5", module_geometry, tmp_path / "once", plots=SOME)
    live_figures, once_figures = figures(live), figures(engine)
    assert sorted(live_figures) == sorted(once_figures) == sorted(SOME)
    for name in once_figures:
        assert_same_figure_data(live_figures[name], once_figures[name], name)
    triggers = sum(p.get_height() for p in once_figures["TriggerHistograms"].axes[1].patches)
    assert triggers > 40  # 4 Hz for 11 s on 2 io_groups: the live run had to pair across polls and chunks


def test_hot_pixels_lists_equal_rates_by_chip_key_whatever_order_the_chips_were_seen_in():
    rng = np.random.default_rng(5)
    keys = np.array([(g, c, i) for g in (1, 2) for c in (1, 2, 3) for i in range(11, 30)], np.int64)
    rates = rng.choice([0.0, 1.0, 2.0, 3.0], size=(len(keys), 64), p=[0.5, 0.3, 0.19, 0.01])
    listed = []
    for _ in range(5):  # the same channels, their chips in another order each time
        order = rng.permutation(len(keys))
        top = top_channels(rates[order], keys[order])
        chips, channels = np.divmod(top, 64)
        listed.append([(*keys[order][c].tolist(), ch) for c, ch in zip(chips.tolist(), channels.tolist())])
    assert all(found == listed[0] for found in listed), listed
    flat = rates.ravel()
    expected = sorted((-flat[i], *keys[i // 64].tolist(), i % 64) for i in range(flat.size) if flat[i] > 0)[:20]
    assert listed[0] == [tuple(e[1:]) for e in expected]
    rates[:3] = np.nan  # channels without a rate are not listed, and take no place of one
    assert len(top_channels(rates, keys)) == 20
    assert all(np.isfinite(rates.ravel()[top_channels(rates, keys)]))


def _expected_image(geometry, stats, values, io_group, tile, extent, shape) -> np.ndarray:
    """Per-channel ``values`` of the snapshot placed at their pixels' positions, independently of the plot code."""
    left, _, bottom, _ = extent
    out = np.full(shape, np.nan)
    for i, key in enumerate(stats.chip_keys.tolist()):
        row = geometry.row_of(*key)
        if key[0] != io_group or row is None or geometry.tiles[row] != tile:
            continue
        connected = geometry.connected[row]
        ix = np.floor((geometry.x[row][connected] - left) / geometry.pixel_pitch).astype(int)
        iy = np.floor((geometry.y[row][connected] - bottom) / geometry.pixel_pitch).astype(int)
        out[iy, ix] = values[i][connected]
    return out


def test_pixel_map_draws_the_snapshot_pixel_for_pixel_also_when_updated_in_place(module_geometry):
    sim = Simulator(module_geometry, SimulationConfig(seed=9), FAULTS)
    accumulator, clock = Accumulator(geometry=module_geometry), DataClock()
    plot, fig = PixelMap(), None
    noisy_row = module_geometry.row_of(1, 1, 12)
    tile = int(module_geometry.tiles[noisy_row])
    for start, seconds in ((0, 3), (3, 4)):  # a first draw builds the figure, the second updates it in place
        for t in range(start, start + seconds):
            accumulator.add(decode_messages(*sim.second(START + t)).packets, clock, START + 100)
        stats = accumulator.snapshot()
        ctx = PlotContext(None, stats, module_geometry)
        (name,) = [n for n, ref in plot.tiles(ctx).items() if ref.tile == tile]
        drawn = plot.draw(name, ctx, fig)
        assert fig is None or drawn is fig
        fig = drawn
        panels = [ax.images[1] for ax in fig.axes if ax.images]  # [0] is the status layer under each
        assert len(panels) == 3
        extent, shape = panels[0].get_extent(), panels[0].get_array().shape
        rate = np.where(stats.channel_rate_hz > 0, stats.channel_rate_hz, np.nan)
        mean = prefer_finite(stats.channel_pedestal_mean, stats.channel_adc_mean)
        std = prefer_finite(stats.channel_pedestal_std, stats.channel_adc_std)
        for image, values in zip(panels, (rate, mean, std)):
            drawn_values = np.ma.filled(np.ma.asarray(image.get_array(), dtype=float), np.nan)
            expected = _expected_image(module_geometry, stats, values, 1, tile, extent, shape)
            np.testing.assert_array_equal(drawn_values, expected)
        noisy = _expected_image(
            module_geometry, stats, stats.channel_status == ChannelStatus.NOISY, 1, tile, extent, shape
        )
        rings = fig.axes[0].collections[0].get_offsets()
        assert len(rings) == int(np.nansum(noisy)) >= 1  # the noisy channel 1-1-12-3, ringed
        pitch = module_geometry.pixel_pitch
        centres = np.floor((rings - [extent[0], extent[2]]) / pitch).astype(int)
        assert all(noisy[iy, ix] == 1 for ix, iy in centres.tolist())
        assert np.isfinite(panels[0].get_clim()).all() and panels[0].get_clim()[1] >= np.nanmax(rate[np.isfinite(rate)])


def _texts(fig) -> list[str]:
    """Every text a figure shows: titles, axis labels, tick labels, legend entries, notes."""
    out = [t.get_text() for t in fig.texts]
    for ax in fig.axes:
        out += [ax.get_title(), ax.get_xlabel(), ax.get_ylabel(), *(t.get_text() for t in ax.texts)]
        out += [t.get_text() for t in (*ax.get_xticklabels(), *ax.get_yticklabels())]
        legend = ax.get_legend()
        if legend is not None:
            out += [t.get_text() for t in legend.get_texts()]
    return out


@pytest.mark.slow
def test_figures_kept_between_cycles_show_the_new_data_as_a_new_figure_would(module_geometry):
    """HotPixels and the per-file plots empty and refill a kept figure: the second draw on it shows
    exactly what a new plot fed everything and drawn once shows (data, texts, colours, scales)."""
    sim = Simulator(module_geometry, SimulationConfig(seed=11, trigger_rate_hz=4), FAULTS)
    accumulator, clock = Accumulator(geometry=module_geometry), DataClock()
    detector, file_clock = DetectorClock(), DataClock()
    classes = (HotPixels, PacketRate, TileRate, FIFOFlags, TimestampHistograms, TriggerHistograms, BeamTriggers)
    kept = {cls: cls() for cls in classes}
    figures_drawn: dict = {}
    chunks = []
    for start, seconds in ((0, 3), (3, 4)):
        for t in range(start, start + seconds):
            packets = decode_messages(*sim.second(START + t)).packets
            accumulator.add(packets, clock, START + 100)
            chunks.append(packets)
            times = detector.times(packets, file_clock, START + 100)
            ctx = PlotContext("run.h5", accumulator.snapshot(), module_geometry, times)
            for plot in kept.values():
                plot.update(packets, ctx)
        ctx = PlotContext("run.h5", accumulator.snapshot(), module_geometry)
        for cls, plot in kept.items():
            fig = plot.draw(cls.plot_name(), ctx, figures_drawn.get(cls))
            assert figures_drawn.get(cls, fig) is fig, cls.plot_name()  # the same figure, changed in place
            figures_drawn[cls] = fig
            render(fig, ".png")
    fresh_clock = DetectorClock()
    for cls, fig in figures_drawn.items():
        plot, data_clock = cls(), DataClock()
        for packets in chunks:
            plot.update(
                packets,
                PlotContext(
                    "run.h5", ctx.snapshot, module_geometry, fresh_clock.times(packets, data_clock, START + 100)
                ),
            )
        new = plot.draw(cls.plot_name(), ctx, None)
        render(new, ".png")
        assert len(figure_data(new)) > 4, cls.plot_name()  # data drawn, not only "no data yet"
        assert_same_figure_data(fig, new, cls.plot_name())
        assert _texts(fig) == _texts(new), cls.plot_name()
        for old_ax, new_ax in zip(fig.axes, new.axes):
            assert (old_ax.get_xscale(), old_ax.get_yscale()) == (new_ax.get_xscale(), new_ax.get_yscale())
            assert [line.get_color() for line in old_ax.lines] == [line.get_color() for line in new_ax.lines]
            np.testing.assert_allclose(old_ax.get_xlim(), new_ax.get_xlim())
            np.testing.assert_allclose(old_ax.get_ylim(), new_ax.get_ylim())


def _two_snapshots(geometry) -> list:
    """Snapshots of a simulated module after 2 and after 8 seconds (with the faults: colour bars change between)."""
    sim = Simulator(geometry, SimulationConfig(seed=9), FAULTS)
    accumulator, clock = Accumulator(geometry=geometry), DataClock()
    snapshots = []
    for start, seconds in ((0, 2), (2, 6)):
        for t in range(start, start + seconds):
            accumulator.add(decode_messages(*sim.second(START + t)).packets, clock, START + 100)
        snapshots.append(accumulator.snapshot())
    return snapshots


@pytest.mark.slow
def test_pixel_maps_kept_between_cycles_render_the_pixels_of_a_new_figure(module_geometry):
    """Colour bars, status layers and titles are rendered only when they change and their pixels
    kept: a map kept across snapshots (and back to an earlier one) renders exactly as a new map."""
    snapshots = _two_snapshots(module_geometry)
    plots = [PixelMap(), AnodeOverview()]
    names = ["PixelMap_1_1", "AnodeOverview"]
    kept: dict = {}
    limits = set()
    for stats in (snapshots[0], snapshots[1], snapshots[0]):
        ctx = PlotContext(None, stats, module_geometry)
        for plot, name in zip(plots, names):
            kept[name] = plot.draw(name, ctx, kept.get(name))
            new = type(plot)().draw(name, ctx, None)
            assert render(kept[name], ".png") == render(new, ".png"), name
        limits.add(tuple(image.get_clim() for ax in kept["PixelMap_1_1"].axes for image in ax.images[1:]))
    assert len(limits) == 2  # the colour bars changed, and changed back


@pytest.mark.slow
def test_tiles_at_the_same_place_share_a_figure_and_each_renders_as_a_new_map(module_geometry):
    """Module tiles 2 and 9 lie at the same place in the two io_groups, and so do 4 and 11 (whose extents in
    the layout differ by rounding): each pair shares one figure (its axes and ticks are most of a first
    render); drawn in turn across snapshots, each tile renders exactly as a new map of its own."""
    snapshots = _two_snapshots(module_geometry)
    plot, kept = PixelMap(), {}
    names = ["PixelMap_1_2", "PixelMap_2_1", "PixelMap_1_4", "PixelMap_2_3", "PixelMap_1_1"]
    for stats in (snapshots[0], snapshots[1], snapshots[0]):
        ctx = PlotContext(None, stats, module_geometry)
        for name in names:
            kept[name] = plot.draw(name, ctx, kept.get(name))
            assert render(kept[name], ".png") == render(PixelMap().draw(name, ctx, None), ".png"), name
    assert kept["PixelMap_1_2"] is kept["PixelMap_2_1"] and kept["PixelMap_1_4"] is kept["PixelMap_2_3"]
    assert len({id(fig) for fig in kept.values()}) == 3
    assert [plot.tiles(ctx)[name].tile for name in names] == [2, 9, 4, 11, 1]


def test_pixel_map_says_what_it_covers_data_time_span_and_channels_seen_and_unknown(module_geometry):
    sim = Simulator(module_geometry, SimulationConfig(seed=9), FAULTS)
    accumulator, clock = Accumulator(geometry=module_geometry), DataClock()
    for t in range(3):  # a first picture: 3 s of data in a 60 s window
        accumulator.add(decode_messages(*sim.second(START + t)).packets, clock, START + 100)
    stats = accumulator.snapshot()
    ctx = PlotContext(None, stats, module_geometry)
    fig = PixelMap().draw("PixelMap_1_1", ctx)
    texts = [t.get_text() for t in fig.texts]
    (subtitle,) = [t for t in texts if "of data time" in t]
    assert f"last {round(stats.covered_seconds, 1):g} s of data time" in subtitle
    assert "(of a 60 s window, still filling)" in subtitle
    ref = PixelMap().tiles(ctx)["PixelMap_1_1"]
    rows = (module_geometry.chips[:, 0] == ref.io_group) & (module_geometry.tiles == ref.tile)
    seen = int(((stats.channel_rate_hz[rows] > 0) & module_geometry.connected[rows]).sum())
    unknown = int(((stats.channel_status[rows] == ChannelStatus.UNKNOWN) & module_geometry.connected[rows]).sum())
    assert unknown and f"{seen:,} seen" in subtitle and f"{unknown:,} unknown" in subtitle, subtitle
    assert "0 noisy" not in subtitle  # statuses no pixel has are left out: the line fits the figure
    fig.canvas.draw()
    box = next(t for t in fig.texts if "of data time" in t.get_text()).get_window_extent()
    assert 0 <= box.x0 and box.x1 <= fig.bbox.x1, (box, subtitle)
