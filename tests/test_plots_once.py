"""``once``'s drawing process (``plots.once``): forked before the read, it takes the packets and draws; the
reading process never imports matplotlib, the images are the bytes one process draws, plot options it rejects
are one line and exit 2 (before a run registry is written), and a drawing process that dies costs time, never
an image."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from helpers import running, simulate_files, wait_for
from test_registry import run_cli

from larpix_dqm.exporter.quality.accumulator import Accumulator
from larpix_dqm.exporter.reading.files import FileReader
from larpix_dqm.exporter.reading.tail import DirectoryTail
from larpix_dqm.exporter.registry.reader import read_runs
from larpix_dqm.exporter.runtime import once as once_module
from larpix_dqm.exporter.runtime.once import process_file
from larpix_dqm.plots.engine import PlotEngine, PlotSettings
from larpix_dqm.plots.once import MAX_IN_FLIGHT, OnceDrawing
from larpix_dqm.plots.sharing import can_share

# A file plot that counts the packets its update() saw and shows the count. Each update and draw is noted in
# $ONCE_NOTES ("<pid> <where>"); with $ONCE_DIES set to "update" or "draw", any process but $ONCE_PARENT (the
# reading process) ends there; "update-exit" raises SystemExit in update; "draw-slow" takes a minute to draw;
# "update-lags" takes 20 ms an update.
PLUGIN = textwrap.dedent(
    """
    import os
    import time

    from matplotlib.figure import Figure

    from larpix_dqm.plots import Plot


    def _maybe_die(where):
        if os.environ.get("ONCE_NOTES"):
            with open(os.environ["ONCE_NOTES"], "a") as fh:
                fh.write(f"{os.getpid()} {where}\\n")
        if os.getpid() == int(os.environ.get("ONCE_PARENT", "0")):
            return
        dies = os.environ.get("ONCE_DIES")
        if dies == where:
            os._exit(3)
        if dies == f"{where}-exit":
            raise SystemExit(3)
        if dies == f"{where}-slow":
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                time.sleep(0.05)
        if dies == f"{where}-lags":
            time.sleep(0.02)


    class Counted(Plot):
        per_file = True

        def __init__(self):
            self.packets = 0

        def update(self, packets, ctx):
            _maybe_die("update")
            self.packets += len(packets)

        def outputs(self, ctx):
            return [f"Counted_{i}" for i in range(4)]

        def draw(self, name, ctx, fig=None):
            _maybe_die("draw")
            fig = fig or Figure(figsize=(3, 2))
            fig.clear()
            fig.add_subplot().set_title(f"{name}: {self.packets} packets")
            return fig
    """
)
PLOTS = "Counted,PacketRate,HotPixels,AnodeOverview,TimestampHistograms"
LAYOUT = "layout-2.4.0"


@pytest.fixture(scope="module")
def data(tile_geometry, tmp_path_factory) -> tuple[Path, Path]:
    """One simulated raw file and a folder with the ``Counted`` plugin."""
    folder = tmp_path_factory.mktemp("once")
    (path,), _ = simulate_files(tile_geometry, folder / "data", 3, seed=7)
    (folder / "plugins").mkdir()
    (folder / "plugins" / "counted.py").write_text(PLUGIN)
    return path, folder / "plugins"


def images(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*.png")}


def drawn_in_one_process(path: Path, plugins: Path, out: Path, tile_geometry) -> dict[str, bytes]:
    """The images one process draws of ``path`` with the same plots, fed in small chunks."""
    settings = PlotSettings(str(out), plots=tuple(PLOTS.split(",")), plugin_dirs=(str(plugins),), latest=False)
    engine = PlotEngine(settings, tile_geometry)
    empty = Accumulator(geometry=tile_geometry).snapshot()
    result = process_file(
        str(path),
        tile_geometry,
        60.0,
        lambda c: engine.update((str(path), 0), c.packets, empty),
        reader=FileReader(raw_chunk_messages=37),  # chunks of other sizes than once's: the images do not depend on them
    )
    assert engine.draw(result.snapshot) == 8
    return images(out)


def children() -> list[int]:
    """This process's child processes (zombies included)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == os.getpid():
            found.append(int(stat.parent.name))
    return found


def noted(notes: Path, where: str) -> set[int]:
    """The processes that noted ``where`` in the plugin's notes."""
    lines = notes.read_text().splitlines() if notes.exists() else []
    return {int(pid) for pid, place in (line.split() for line in lines) if place == where}


def once_script(path: Path, out: Path, plugins: Path, atexit_file: Path) -> str:
    """A Python program that runs ``once`` with the plots and, at its exit, appends its process number and
    whether it imported matplotlib to ``atexit_file``; the reading process is $ONCE_PARENT."""
    return textwrap.dedent(
        f"""
        import atexit, os, sys
        from larpix_dqm.exporter.cli import run
        os.environ["ONCE_PARENT"] = str(os.getpid())
        def note():
            with open({str(atexit_file)!r}, "a") as fh:
                fh.write(f"{{os.getpid()}} {{'matplotlib' in sys.modules}}\\n")
        atexit.register(note)
        sys.argv = ["larpix-dqm", "once", {str(path)!r}, "-o", {str(out)!r}, "--geometry", {LAYOUT!r},
                    "--plots", {PLOTS!r}, "--plugin-dir", {str(plugins)!r}]
        run()
        """
    )


def test_the_reading_process_does_not_import_matplotlib_and_the_images_are_one_processs(data, tmp_path, tile_geometry):
    path, plugins = data
    out, exits = tmp_path / "once", tmp_path / "exits"
    script = once_script(path, out, plugins, exits)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "wrote 8 plot image(s)" in result.stderr, result.stderr
    # one process ran the exit handlers, and had not imported matplotlib: the drawing process did
    assert [line.split()[1] for line in exits.read_text().splitlines()] == ["False"]
    drawn = images(out)
    assert drawn == drawn_in_one_process(path, plugins, tmp_path / "alone", tile_geometry)
    assert (out / "summary.json").exists()


def test_a_plugin_that_exits_in_the_drawing_process_runs_none_of_the_reading_processs_code(data, tmp_path):
    path, plugins = data
    out, exits = tmp_path / "once", tmp_path / "exits"
    env = {**os.environ, "ONCE_DIES": "update-exit"}
    script = once_script(path, out, plugins, exits)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr
    # the drawing process ended there (os._exit(1)), not as the reading process would (sys.exit(3), its exit handlers)
    assert "exited with status 1 without reporting; the plots are drawn here" in result.stderr, result.stderr
    assert len(exits.read_text().splitlines()) == 1
    assert len(images(out)) == 8


def test_killing_the_reading_process_ends_its_drawing_processes(data, tmp_path):
    path, plugins = data
    notes = tmp_path / "notes"
    env = {**os.environ, "ONCE_DIES": "draw-slow", "ONCE_NOTES": str(notes)}
    script = once_script(path, tmp_path / "once", plugins, tmp_path / "exits")
    process = subprocess.Popen([sys.executable, "-c", script], env=env, stderr=subprocess.DEVNULL)
    drawers = 2 if can_share() else 1  # the drawing process, and its helper on a second core
    try:
        wait_for(lambda: len(noted(notes, "draw")) >= drawers, timeout=120, what="both drawing processes to draw")
        drawing = noted(notes, "draw")
        assert len(drawing) == drawers and process.pid not in drawing  # each in its (minute-long) draw
    finally:
        process.kill()
        process.wait()
    ended = drawing | noted(notes, "update") - {process.pid}
    wait_for(lambda: not any(running(pid) for pid in ended), timeout=10, what=f"drawing processes {ended} to end")


@pytest.mark.parametrize("where", ["update", "draw"])
def test_a_drawing_process_that_dies_costs_time_never_an_image(
    data, tmp_path, monkeypatch, capsys, tile_geometry, where
):
    path, plugins = data
    monkeypatch.setenv("ONCE_PARENT", str(os.getpid()))
    monkeypatch.setenv("ONCE_DIES", where)  # in the drawing process and its helper, never in this one
    notes = tmp_path / "notes"
    monkeypatch.setenv("ONCE_NOTES", str(notes))
    out = tmp_path / "once"
    args = ("once", str(path), "-o", str(out), "--geometry", LAYOUT, "--plots", PLOTS, "--plugin-dir", str(plugins))
    code, _, err = run_cli(monkeypatch, capsys, *args)
    assert code == 0, err
    assert "exited with status 3 without reporting; the plots are drawn here" in err, err
    assert "wrote 8 plot image(s)" in err, err
    assert images(out) == drawn_in_one_process(path, plugins, tmp_path / "alone", tile_geometry)
    assert not list(out.rglob(".*.tmp"))  # nothing half-written left
    assert children() == []  # the drawing process is reaped
    ended = noted(notes, where) - {os.getpid()}  # and its helper has ended with it
    wait_for(lambda: not any(running(pid) for pid in ended), timeout=10, what=f"drawing processes {ended} to end")


def test_plots_slower_than_the_read_hold_it_back_rather_than_the_file(data, tmp_path, monkeypatch, capsys):
    path, plugins = data
    notes = tmp_path / "notes"
    monkeypatch.setenv("ONCE_PARENT", str(os.getpid()))
    monkeypatch.setenv("ONCE_DIES", "update-lags")
    monkeypatch.setenv("ONCE_NOTES", str(notes))
    monkeypatch.setattr(  # many small chunks
        once_module,
        "DirectoryTail",
        lambda inputs, reader, on_error: DirectoryTail(inputs, FileReader(raw_chunk_messages=20)),
    )
    ahead: list[int] = []  # chunks sent and not yet begun by the plots, after each chunk sent
    feed = OnceDrawing.feed

    def counted(self: OnceDrawing, packets: np.ndarray) -> None:
        feed(self, packets)
        begun = notes.read_text().count(" update\n") if notes.exists() else 0
        ahead.append(len(ahead) + 1 - begun)

    monkeypatch.setattr(OnceDrawing, "feed", counted)
    args = ("once", str(path), "-o", str(tmp_path / "once"), "--geometry", LAYOUT, "--plots", "Counted")
    code, _, err = run_cli(monkeypatch, capsys, *args, "--plugin-dir", str(plugins))
    assert code == 0, err
    assert len(ahead) > 3 * MAX_IN_FLIGHT  # the plots lagged behind many chunks' reading
    assert max(ahead) <= MAX_IN_FLIGHT, ahead


# A plugin folder slow to import: until the registry $ONCE_REGISTRY holds a run, for at most 3 s (a reading process
# that did not wait for the drawing process's verdict on the options would have written one by then).
SLOW = textwrap.dedent(
    """
    import os
    import sqlite3
    import time

    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        try:
            with sqlite3.connect(os.environ["ONCE_REGISTRY"]) as db:
                if db.execute("SELECT count(*) FROM runs").fetchone()[0]:
                    break
        except sqlite3.Error:
            pass
        time.sleep(0.02)
    """
)


def test_rejected_plot_options_end_once_before_its_run_is_registered(tile_geometry, tmp_path, monkeypatch, capsys):
    (path,), _ = simulate_files(tile_geometry, tmp_path / "data", 30, seed=8)
    registry = tmp_path / "runs.sqlite"
    (tmp_path / "slow").mkdir()
    (tmp_path / "slow" / "slow.py").write_text(SLOW)
    monkeypatch.setenv("ONCE_REGISTRY", str(registry))
    monkeypatch.setattr(  # read in small chunks, as a big file is: the registry is written while it is read
        once_module,
        "DirectoryTail",
        lambda inputs, reader, on_error: DirectoryTail(inputs, FileReader(raw_chunk_messages=50)),
    )
    out = ["-o", str(tmp_path / "out"), "--plugin-dir", str(tmp_path / "slow")]
    code, _, err = run_cli(monkeypatch, capsys, "once", str(path), *out, "--registry", str(registry), "--plots", "Nope")
    assert code == 2 and "--plots Nope: no such plot" in err and len(err.strip().splitlines()) == 1, err
    assert read_runs([registry]) == []
    assert children() == []
    for args, message in (
        (["--plots", "Nope"], "--plots Nope: no such plot"),
        (["--ext", "xyz"], "--ext xyz: matplotlib cannot write it"),
    ):  # without a registry: at the next chunk, or at the draw
        code, _, err = run_cli(monkeypatch, capsys, "once", str(path), "-o", str(tmp_path / "out"), *args)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    code, _, err = run_cli(monkeypatch, capsys, "once", str(path), "--no-plots", "--registry", str(registry))
    assert code == 0, err  # the file was not counted by the rejected run
    assert len(read_runs([registry])) == 1


def test_a_file_that_cannot_be_read_stops_the_drawing_process(tmp_path, monkeypatch, capsys):
    broken = tmp_path / "broken.h5"
    broken.write_bytes(b"not HDF5 at all, " * 100)
    code, _, err = run_cli(
        monkeypatch, capsys, "once", str(broken), "-o", str(tmp_path / "out"), "--plots", "HotPixels"
    )
    assert code == 2 and str(broken) in err, err
    assert children() == []
