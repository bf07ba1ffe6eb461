"""``once``'s draw shared with a forked helper: every image drawn once, by either process, the same bytes as
one process draws, the helper's failures reported here, and nothing left undrawn if the helper dies or hangs."""

from __future__ import annotations

import gc
import logging
import os
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import simulate_files

from larpix_dqm.exporter.quality.accumulator import Accumulator
from larpix_dqm.exporter.runtime.once import process_file
from larpix_dqm.plots.engine import PlotEngine, PlotSettings
from larpix_dqm.plots.sharing import can_share, draw_shared

pytestmark = pytest.mark.skipif(not can_share(), reason="sharing the draw needs fork and two cores")

# Images that note which process drew them (a line "<pid> <image>" in $SHARING_LOG) and, with $SHARING_WAIT,
# wait up to a deadline until both processes have drawn one: so each surely takes a share, whatever the load.
# $SHARING_DIES makes the helper (any process but $SHARING_PARENT) end in its first image, $SHARING_HANGS hang
# in it; $SHARING_RAISES makes every image fail.
PLUGIN = textwrap.dedent(
    """
    import os
    import time

    from matplotlib.figure import Figure

    from larpix_dqm.plots import Plot


    class Noted(Plot):
        def outputs(self, ctx):
            return [f"Noted_{i}" for i in range(6)]

        def draw(self, name, ctx, fig=None):
            log = os.environ["SHARING_LOG"]
            with open(log, "a") as fh:
                fh.write(f"{os.getpid()} {name}\\n")
            helper = os.getpid() != int(os.environ["SHARING_PARENT"])
            if os.environ.get("SHARING_DIES") and helper:
                os._exit(3)
            if os.environ.get("SHARING_HANGS") and helper:
                time.sleep(120)  # a helper that reports this late has hung
            deadline = time.monotonic() + (60 if os.environ["SHARING_WAIT"] else 0)
            while time.monotonic() < deadline:
                with open(log) as fh:
                    if len({line.split()[0] for line in fh}) >= 2:
                        break
                time.sleep(0.01)
            if os.environ.get("SHARING_RAISES"):
                raise RuntimeError(f"cannot draw {name}")
            fig = fig or Figure(figsize=(2, 2))
            fig.clear()
            fig.add_subplot().set_title(name)
            return fig
    """
)
PLOTS = ("Noted", "PacketRate", "HotPixels", "AnodeOverview")


@pytest.fixture
def run(tmp_path, tile_geometry, monkeypatch):
    """Draws the plots of one simulated file with a fresh engine into ``out``, shared or not; returns
    (images written, engine, the (pid, image) lines the plugin noted). ``plots=()``: every plot."""
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "noted.py").write_text(PLUGIN)
    (path,), _ = simulate_files(tile_geometry, tmp_path / "data", 3, seed=4)
    monkeypatch.setenv("SHARING_PARENT", str(os.getpid()))

    def draw(
        out: str, shared: bool, plots: tuple[str, ...] = PLOTS, between: Callable[[], None] = lambda: None
    ) -> tuple[int, PlotEngine, list[tuple[int, str]]]:
        log = tmp_path / f"{out}.log"
        log.touch()
        monkeypatch.setenv("SHARING_LOG", str(log))
        monkeypatch.setenv("SHARING_WAIT", "1" if shared else "")
        settings = PlotSettings(str(tmp_path / out), plots=plots, plugin_dirs=(str(tmp_path / "plugins"),))
        engine = PlotEngine(settings, tile_geometry)
        empty = Accumulator(geometry=tile_geometry).snapshot()
        result = process_file(str(path), tile_geometry, 60.0, lambda c: engine.update((str(path), 0), c.packets, empty))
        written = draw_shared(engine, result.snapshot, between) if shared else engine.draw(result.snapshot)
        noted = [(int(pid), name) for pid, name in (line.split() for line in log.read_text().splitlines())]
        return written, engine, noted

    return draw


def images(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*.png")}


def test_the_two_processes_draw_every_image_once_and_the_bytes_one_process_draws(run, tmp_path):
    alone, _, noted_alone = run("alone", shared=False, plots=())  # every built-in plot, and Noted
    shared, engine, noted = run("shared", shared=True, plots=())
    # 6 of Noted and one of each built-in plot on one tile; latest/ holds a copy of each
    assert shared == alone == len(images(tmp_path / "alone")) / 2 >= 15
    assert images(tmp_path / "shared") == images(tmp_path / "alone")
    assert {pid for pid, _ in noted_alone} == {os.getpid()}
    assert len({pid for pid, _ in noted}) == 2, noted  # the helper took a share
    assert sorted(name for _, name in noted) == [f"Noted_{i}" for i in range(6)]  # each image drawn once
    assert engine.health["Noted"].renders == 6 and engine.health["PacketRate"].renders == 1  # the helper's counted


def test_the_helpers_failures_are_reported_here(run, monkeypatch):
    monkeypatch.setenv("SHARING_RAISES", "1")
    _, engine, noted = run("shared", shared=True)
    assert len({pid for pid, _ in noted}) == 2, noted
    health = engine.health["Noted"]
    # every image tried failed, in one process or the other (each disables the plot after 3 in a row)
    assert health.failures == len(noted) >= 3 and health.renders == 0
    assert "RuntimeError: cannot draw Noted_" in health.last_error


def test_a_helper_that_dies_leaves_no_image_undrawn(run, tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.WARNING)
    monkeypatch.setenv("SHARING_DIES", "1")
    alone, _, _ = run("alone", shared=False)
    shared, engine, noted = run("shared", shared=True)
    died = {pid for pid, _ in noted} - {os.getpid()}
    assert len(died) == 1, noted  # the helper took an image, and ended in it
    assert "did not report" in caplog.text
    assert shared == alone
    assert images(tmp_path / "shared") == images(tmp_path / "alone")
    assert engine.health["Noted"].failures == 0


def test_a_helper_that_hangs_is_stopped_and_its_images_drawn_here(run, tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.WARNING)
    monkeypatch.setenv("SHARING_HANGS", "1")
    shared, _, noted = run("shared", shared=True, plots=("Noted",))
    (hung,) = {pid for pid, _ in noted} - {os.getpid()}
    assert "did not report" in caplog.text
    assert shared == 6 and len(images(tmp_path / "shared")) == 12
    with pytest.raises(ProcessLookupError):  # stopped and reaped: nothing left behind
        os.kill(hung, 0)


def test_a_helper_stopped_while_writing_an_image_leaves_no_temporary_file(run, tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.WARNING)
    rename = os.replace
    parent = os.getpid()

    def stuck_in_the_helper(source, target):  # the helper hangs with its image written, not yet renamed
        if os.getpid() != parent:
            (tmp_path / "stuck").write_text(str(source))
            time.sleep(120)
        rename(source, target)

    monkeypatch.setattr(os, "replace", stuck_in_the_helper)  # stopped after HELPER_WAIT, ample on a busy machine
    shared, _, _ = run("shared", shared=True, plots=("Noted",))
    assert "did not report" in caplog.text
    assert (tmp_path / "stuck").exists() and not Path((tmp_path / "stuck").read_text()).exists()
    assert shared == 6 and len(images(tmp_path / "shared")) == 12
    assert not list((tmp_path / "shared").rglob("*.tmp"))


def test_both_processes_draw_with_the_collector_frozen_and_leave_it_as_they_found_it(run, monkeypatch):
    """The objects made before the fork are frozen (``gc.freeze``) while the two processes draw, so neither's full
    collections walk them; afterwards the collector is as it was: nothing frozen, or a caller's own freeze kept,
    also when the fork fails (its pipe closed)."""
    frozen: list[int] = []
    run("shared", shared=True, plots=("Noted",), between=lambda: frozen.append(gc.get_freeze_count()))
    assert frozen and min(frozen) > 10_000, frozen  # the read's and the state's objects, and the imports'
    assert gc.get_freeze_count() == 0
    gc.freeze()
    try:
        mine = gc.get_freeze_count()
        run("again", shared=True, plots=("Noted",))
        assert 0.9 * mine < gc.get_freeze_count() <= mine  # kept frozen (less what the draw freed)
    finally:
        gc.unfreeze()
    pipes: list[tuple[int, int]] = []
    pipe = os.pipe
    monkeypatch.setattr(os, "pipe", lambda: pipes.append(pipe()) or pipes[-1])
    monkeypatch.setattr(os, "fork", lambda: (_ for _ in ()).throw(BlockingIOError(11, "fork failed")))
    with pytest.raises(BlockingIOError):
        run("failed", shared=True, plots=("Noted",))
    assert gc.get_freeze_count() == 0
    for fd in pipes[-1]:
        with pytest.raises(OSError):
            os.fstat(fd)
