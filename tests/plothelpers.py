"""Helpers for the plot tests: run plots over simulated files, read the data a figure shows."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle, StepPatch

from larpix_dqm.exporter.detector.geometry import Geometry
from larpix_dqm.exporter.quality.accumulator import Accumulator
from larpix_dqm.exporter.runtime.once import FileResult, process_file
from larpix_dqm.plots.engine import PlotEngine, PlotSettings

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def one_pass(path: Path, geometry: Geometry | None, outdir: Path, **settings) -> tuple[PlotEngine, FileResult, int]:
    """All selected plots for one whole file, as ``once`` makes them; returns engine, result, images written."""
    engine = PlotEngine(PlotSettings(str(outdir), latest=False, **settings), geometry)
    empty = Accumulator(geometry=geometry).snapshot()
    key = (str(path), 0)
    result = process_file(str(path), geometry, 60.0, lambda chunk: engine.update(key, chunk.packets, empty))
    return engine, result, engine.draw(result.snapshot)


def figures(engine: PlotEngine) -> dict[str, Figure]:
    """Every figure an engine holds, by image name (whole-detector and per-file)."""
    out = dict(engine.shared_figures)
    for state in engine.files.values():
        out.update(state.figures)
    return out


def figure_data(fig: Figure) -> list[np.ndarray]:
    """The numbers a figure shows: image arrays, line points, collection offsets and values, bar rectangles."""
    data: list[np.ndarray] = []
    for ax in fig.axes:
        for image in ax.images:
            data.append(np.ma.filled(np.ma.asarray(image.get_array(), dtype=float), np.nan))
        for line in ax.lines:
            data.append(np.asarray(line.get_xydata(), dtype=float))
        for collection in ax.collections:
            data.append(np.asarray(collection.get_offsets(), dtype=float))
            values = collection.get_array()
            if values is not None:
                data.append(np.ma.filled(np.ma.asarray(values, dtype=float), np.nan))
        for patch in ax.patches:
            if isinstance(patch, StepPatch):
                values, edges, _ = patch.get_data()
                data += [np.asarray(values, dtype=float), np.asarray(edges, dtype=float)]
            elif isinstance(patch, Rectangle):
                data.append(np.asarray(patch.get_bbox().bounds, dtype=float))
    return data


def assert_same_figure_data(a: Figure, b: Figure, name: str) -> None:
    da, db = figure_data(a), figure_data(b)
    assert len(da) == len(db), f"{name}: {len(da)} vs {len(db)} artists"
    for i, (x, y) in enumerate(zip(da, db)):
        np.testing.assert_array_equal(x, y, err_msg=f"{name}: artist {i} differs")


def rate_image(fig: Figure) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """The hit-rate image of a PixelMap figure (Hz, NaN where no hit) and its extent (mm)."""
    image = fig.axes[0].images[1]  # [0] is the status layer under it
    return np.ma.filled(np.ma.asarray(image.get_array(), dtype=float), np.nan), tuple(image.get_extent())


def chromium(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    """Run headless Chromium with a fresh profile; its whole process group is killed afterwards, always."""
    profile = tempfile.mkdtemp(prefix="larpix-dqm-chromium-")
    cmd = [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
        return subprocess.CompletedProcess(cmd, proc.returncode, out, err)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # renderer and helper processes too
        except ProcessLookupError:
            pass
        proc.wait()
        shutil.rmtree(profile, ignore_errors=True)
