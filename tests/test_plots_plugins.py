"""Plot plugins: the predecessor's contract works unchanged, broken plugins are isolated, selection."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
from helpers import START, simulate_files

from larpix_dqm.exporter.detector.geometry import packaged_layout
from larpix_dqm.exporter.quality.accumulator import Accumulator
from larpix_dqm.exporter.reading.packets import PACKET_DTYPE
from larpix_dqm.exporter.reading.tail import DirectoryTail, InputSpec
from larpix_dqm.exporter.simulate import SimulationConfig, Simulator, open_writer
from larpix_dqm.plots.discovery import Selection, discover
from larpix_dqm.plots.engine import MAX_CONSECUTIVE_FAILURES, PlotEngine, PlotSettings
from larpix_dqm.plots.errors import PlotConfigError

# The seed README's template, verbatim except its "maplotlib" typo (it could never import).
TEMPLATE = """
import matplotlib.pyplot as plt
import numpy as np

class TemplatePlot(object):
    def __call__(self, filename, fh, fig=None):
        # pre-process data in fh
        if fig is not None:
            # do stuff to update plot
            pass
        else:
            # do stuff to make new plot
            fig = plt.figure()
        return fig
"""

# The README's example of updating a figure in place: add points to a line plot.
LINES = """
import matplotlib.pyplot as plt
import numpy as np

class DataPackets(object):
    '''Running count of data packets, one point per call, as the README's line-plot update.'''

    def __init__(self):
        self.calls = 0
        self.total = 0
        self.seen = []

    def __call__(self, filename, fh, fig=None):
        packets = fh['packets']
        self.seen.append((filename, packets.dtype, len(packets)))
        self.calls += 1
        self.total += int(np.count_nonzero(packets['packet_type'][:] == 0))
        new_xy = np.array([[self.calls, self.total]])
        if fig is not None:
            axes = fig.get_axes()
            lines = axes[0].get_lines()
            old_xy = lines[0].get_xydata()
            xy = np.append(old_xy, new_xy, axis=0)
            lines[0].set_xdata(xy[:,0])
            lines[0].set_ydata(xy[:,1])
        else:
            fig = plt.figure()
            fig.add_subplot().plot(new_xy[:, 0], new_xy[:, 1])
        return fig
"""

BROKEN = {
    "broken_import.py": "import not_a_module_anywhere\n",
    "broken_syntax.py": "def oops(:\n",
    "raises.py": "class RaisesInCall:\n    def __call__(self, filename, fh, fig=None):\n        raise RuntimeError('boom')\n",
    "bad_init.py": "class BadInit:\n    def __init__(self):\n        raise ValueError('no')\n\n    def __call__(self, filename, fh, fig=None):\n        pass\n",
    "returns_none.py": "class ReturnsNone:\n    def __call__(self, filename, fh, fig=None):\n        return None\n",
    "fast_broken.py": textwrap.dedent(
        """
        from larpix_dqm.plots import Plot

        class BrokenFast(Plot):
            def update(self, packets, ctx):
                raise KeyError('no such field')

            def draw(self, name, ctx, fig=None):
                raise ZeroDivisionError('drawing')
        """
    ),
    "_helper.py": "class NotAPlot:\n    def __call__(self):\n        raise AssertionError('underscore modules are not plugins')\n",
}


def write_plugins(folder, files: dict[str, str]):
    folder.mkdir(exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


def feed_in_polls(engine: PlotEngine, directory, geometry, polls: int, seconds_per_poll: int) -> None:
    """Append to a live packet file and read its new rows after each append, drawing every time."""
    sim = Simulator(geometry, SimulationConfig(seed=9))
    directory.mkdir()
    writer = open_writer(directory / "live.h5", "packets")
    tail = DirectoryTail([InputSpec(str(directory))])
    stats = Accumulator(geometry=geometry).snapshot()
    t = 0
    for _ in range(polls):
        for _ in range(seconds_per_poll):
            writer.append(*sim.second(START + t))
            t += 1
        tail.pump(lambda chunk: engine.update((chunk.cursor.path, chunk.cursor.inode), chunk.packets, stats))
        engine.draw(stats)


def test_predecessor_plugins_work_unchanged(tmp_path, tile_geometry):
    plugins = write_plugins(tmp_path / "plugins", {"template.py": TEMPLATE, "lines.py": LINES})
    settings = PlotSettings(str(tmp_path / "out"), plots=("TemplatePlot", "DataPackets"), plugin_dirs=(str(plugins),))
    engine = PlotEngine(settings, tile_geometry)
    assert {s.name: s.kind for s in engine.specs} == {"TemplatePlot": "legacy", "DataPackets": "legacy"}
    feed_in_polls(engine, tmp_path / "data", tile_geometry, polls=4, seconds_per_poll=2)
    (state,) = engine.files.values()
    plugin = state.plots["DataPackets"]
    assert plugin.calls == 4  # one call per poll, each with only the packets new since the last
    assert all(dtype == PACKET_DTYPE and n > 0 for _, dtype, n in plugin.seen)
    xy = state.figures["DataPackets"].axes[0].get_lines()[0].get_xydata()
    assert xy[:, 0].tolist() == [1, 2, 3, 4]  # the figure was updated in place, point by point
    with h5py.File(tmp_path / "data" / "live.h5", "r") as fh:
        truth = int(np.count_nonzero(fh["packets"]["packet_type"] == 0))
    assert xy[-1, 1] == truth
    out = tmp_path / "out"
    assert (out / "live_dqm" / "live_TemplatePlot.png").stat().st_size > 1000
    assert (out / "latest" / "DataPackets.png").read_bytes() == (out / "live_dqm" / "live_DataPackets.png").read_bytes()
    assert not list(out.rglob("*.tmp"))


@pytest.mark.slow
def test_broken_plugins_are_reported_by_name_and_skipped(tmp_path, tile_geometry, caplog):
    plugins = write_plugins(tmp_path / "plugins", {**BROKEN, "template.py": TEMPLATE})
    caplog.set_level(logging.INFO)
    catalog = discover([plugins])
    assert set(catalog.errors) == {str(plugins / "broken_import.py"), str(plugins / "broken_syntax.py")}
    assert "ModuleNotFoundError" in catalog.errors[str(plugins / "broken_import.py")]
    assert "NotAPlot" not in catalog.plugins
    settings = PlotSettings(
        str(tmp_path / "out"),
        plots=("RaisesInCall", "BadInit", "ReturnsNone", "BrokenFast", "TemplatePlot", "PacketRate", "HotPixels"),
        plugin_dirs=(str(plugins),),
    )
    engine = PlotEngine(settings, tile_geometry, catalog)
    feed_in_polls(engine, tmp_path / "data", tile_geometry, polls=MAX_CONSECUTIVE_FAILURES + 1, seconds_per_poll=1)
    health = engine.health
    for name in ("RaisesInCall", "BadInit", "ReturnsNone", "BrokenFast"):
        assert health[name].failures >= 1 and health[name].renders == 0, name
        assert name in caplog.text
    assert "RuntimeError: boom" in health["RaisesInCall"].last_error
    assert "not a matplotlib Figure" in health["ReturnsNone"].last_error
    assert health["RaisesInCall"].disabled and health["RaisesInCall"].failures == MAX_CONSECUTIVE_FAILURES
    for name in ("TemplatePlot", "PacketRate", "HotPixels"):
        assert health[name].failures == 0 and health[name].renders == MAX_CONSECUTIVE_FAILURES + 1, name
    latest = sorted(p.name for p in (tmp_path / "out" / "latest").iterdir())
    assert latest == ["HotPixels.png", "PacketRate.png", "TemplatePlot.png"]


def test_selection_by_class_image_or_pattern():
    assert Selection().image("PixelMap", "PixelMap_2_1")
    every_map = Selection(["PixelMap"])
    assert every_map.plugin("PixelMap") and every_map.image("PixelMap", "PixelMap_2_8")
    assert not every_map.plugin("HotPixels")
    one = Selection(["PixelMap_2_1"])
    assert (
        one.plugin("PixelMap") and one.image("PixelMap", "PixelMap_2_1") and not one.image("PixelMap", "PixelMap_2_2")
    )
    group = Selection(["PixelMap_1_*", "Hot*"])
    assert group.image("PixelMap", "PixelMap_1_7") and not group.image("PixelMap", "PixelMap_2_7")
    assert group.plugin("HotPixels") and group.unmatched(["PixelMap", "HotPixels"]) == []
    assert Selection(["Nope"]).unmatched(["PixelMap"]) == ["Nope"]


def test_unknown_plot_and_missing_geometry_are_refused(tmp_path):
    with pytest.raises(PlotConfigError, match=r"--plots Nope: no such plot \(available: .*PixelMap"):
        PlotEngine(PlotSettings(str(tmp_path), plots=("Nope",)), None)
    with pytest.raises(PlotConfigError, match="PixelMap: needs a pixel geometry"):
        PlotEngine(PlotSettings(str(tmp_path), plots=("PixelMap",)), None)
    engine = PlotEngine(PlotSettings(str(tmp_path)), None)  # everything: maps skipped, said why
    assert set(engine.skipped) == {"PixelMap", "AnodeOverview"}
    with pytest.raises(PlotConfigError, match="--ext .xyz"):
        PlotSettings(str(tmp_path), ext=".xyz")


def run_cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PIXEL_GEOMETRY_PATH"}
    env["COLUMNS"] = "250"
    return subprocess.run(
        [sys.executable, "-m", "larpix_dqm.exporter.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=cwd,
    )


@pytest.mark.external
def test_once_draws_chosen_plots_and_reports_option_errors(tmp_path, tile_geometry):
    paths, truth = simulate_files(tile_geometry, tmp_path / "data", 12, "raw")
    out = tmp_path / "out"
    layout = str(packaged_layout("layout-2.4.0.yaml"))
    plugins = write_plugins(tmp_path / "plugins", {"template.py": TEMPLATE, "raises.py": BROKEN["raises.py"]})
    result = run_cli(
        "once", str(paths[0]), "-o", str(out), "--geometry", layout, "--plots", "PixelMap,HotPixels",
        "--plots", "TemplatePlot RaisesInCall", "--plugin-dir", str(plugins),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    stem = paths[0].stem
    drawn = sorted(p.name for p in (out / f"{stem}_dqm").iterdir())
    assert drawn == [f"{stem}_{n}.png" for n in ("HotPixels", "PixelMap_1_1", "TemplatePlot")]
    assert "RaisesInCall failed" in result.stderr and "wrote 3 plot image(s)" in result.stderr
    assert (out / "summary.json").exists()
    for args, message in (
        (["--plots", "Nope"], "no such plot"),
        (["--plots", "PixelMap"], "needs a pixel geometry"),
        (["--ext", "xyz"], "--ext xyz"),
    ):
        result = run_cli("once", str(paths[0]), "-o", str(out), *args, cwd=tmp_path)
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr)
    result = run_cli("once", str(paths[0]), "--plots", "HotPixels", cwd=tmp_path)
    assert result.returncode == 2 and "need -o" in result.stderr


def doc_blocks(text: str) -> list[str]:
    """The indented code blocks of a Markdown text, dedented."""
    blocks, current = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("    ") or (current and not line.strip()):
            current.append(line)
        elif current:
            blocks.append(textwrap.dedent("\n".join(current)).strip() + "\n")
            current = []
    return blocks


def test_the_documented_templates_work(tmp_path, tile_geometry):
    docs = (Path(__file__).parent.parent / "docs" / "plots.md").read_text(encoding="utf-8")
    templates = {name: b for b in doc_blocks(docs) for name in ("TemplatePlot", "AdcSpectrum") if f"class {name}" in b}
    assert set(templates) == {"TemplatePlot", "AdcSpectrum"}
    plugins = write_plugins(tmp_path / "plugins", {f"{n.lower()}.py": text for n, text in templates.items()})
    settings = PlotSettings(str(tmp_path / "out"), plots=tuple(templates), plugin_dirs=(str(plugins),))
    engine = PlotEngine(settings, tile_geometry)
    assert {s.name: s.kind for s in engine.specs} == {"TemplatePlot": "legacy", "AdcSpectrum": "fast"}
    feed_in_polls(engine, tmp_path / "data", tile_geometry, polls=2, seconds_per_poll=2)
    assert all(h.failures == 0 and h.renders == 2 for h in engine.health.values()), engine.status()
    assert (tmp_path / "out" / "latest" / "AdcSpectrum.png").stat().st_size > 10_000
