"""Start-up loads only what the run uses (issue 21 item 1): ``--help`` and completion no numpy, h5py,
matplotlib, numba, prometheus_client, yaml or pydantic; ``once --no-plots`` on a small file neither matplotlib,
numba nor pydantic (typer 0.29's coercion of the options), and off a terminal neither rich (its progress display)
nor yaml (no layout, checks or config file to parse);
``serve``'s modules no matplotlib (the drawing process imports it)."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "larpix_dqm.exporter.cli"]
HEAVY = ("numpy", "h5py", "matplotlib", "numba", "prometheus_client", "yaml", "pydantic")
#: What makes rich show (TTY_COMPATIBLE=1, FORCE_COLOR) or hide (TTY_COMPATIBLE=0) its display whatever stderr is.
TERMINAL_VARIABLES = ("TTY_COMPATIBLE", "TTY_INTERACTIVE", "FORCE_COLOR")


def loaded_after(code: str, *argv: str) -> set[str]:
    """The top-level modules a fresh interpreter holds after running ``code`` with ``sys.argv`` set to
    ``argv`` (what it prints goes to /dev/null); a SystemExit of the CLI counts as done."""
    probe = (
        f"import os, sys\nsys.argv = {list(argv)!r}\nsys.stdout = open(os.devnull, 'w')\n"
        f"try:\n    {code}\nexcept SystemExit:\n    pass\nprint('\\n'.join(sys.modules), file=sys.__stdout__)"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert "Traceback" not in done.stderr, done.stderr
    return {name for name in done.stdout.split() if "." not in name}


def simulated_second(folder: Path) -> Path:
    """A raw file of one simulated second of the packaged module, written in ``folder``."""
    made = subprocess.run(
        [*CLI, "simulate", str(folder), "--seconds", "1", "--fast", "--start-time", "1700000000"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert made.returncode == 0, made.stderr
    (path,) = folder.glob("*.h5")
    return path


def test_the_probe_sees_a_heavy_import():
    assert {"numpy", "matplotlib"} <= loaded_after("import larpix_dqm.plots.engine")


@pytest.mark.parametrize("argv", [["--help"], ["once", "--help"], ["serve", "--help"], ["runs", "--help"]])
def test_help_loads_none_of_the_heavy_modules(argv):
    loaded = loaded_after("from larpix_dqm.exporter.cli import run; run()", "larpix-dqm", *argv)
    assert "typer" in loaded
    assert loaded.isdisjoint(HEAVY), sorted(loaded.intersection(HEAVY))


def test_completion_loads_none_of_the_heavy_modules(monkeypatch):
    monkeypatch.setenv("_LARPIX_DQM_COMPLETE", "complete_bash")
    monkeypatch.setenv("COMP_WORDS", "larpix-dqm on")
    monkeypatch.setenv("COMP_CWORD", "1")
    loaded = loaded_after("from larpix_dqm.exporter.cli import run; run()", "larpix-dqm")
    assert loaded.isdisjoint(HEAVY), sorted(loaded.intersection(HEAVY))


def test_serve_modules_do_not_load_matplotlib():
    loaded = loaded_after("import larpix_dqm.exporter.runtime.service, larpix_dqm.exporter.web.server", "x")
    assert "prometheus_client" in loaded and "matplotlib" not in loaded


@pytest.mark.external
def test_once_without_plots_on_a_small_file_loads_neither_matplotlib_nor_numba(tmp_path, monkeypatch):
    path = simulated_second(tmp_path)
    for name in TERMINAL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    once = ("from larpix_dqm.exporter.cli import run; run()", "larpix-dqm", "once", str(path))
    for options in (["--no-plots"], []):  # without -o nothing is drawn either
        loaded = loaded_after(*once, *options)
        assert "h5py" in loaded  # the file was read
        assert "matplotlib" not in loaded and "numba" not in loaded and "pydantic" not in loaded
        assert "rich" not in loaded and "yaml" not in loaded  # stderr is a pipe here
    monkeypatch.setenv("TTY_COMPATIBLE", "1")  # rich's own say that the pipe shows a progress display
    assert "rich" in loaded_after(*once, "--no-plots")


@pytest.mark.external
def test_once_shows_its_progress_on_a_terminal(tmp_path):
    """The progress display that is not loaded off a terminal is there on one: the file's rows, then the images
    (both processes' when the draw is shared)."""
    path = simulated_second(tmp_path)
    terminal, child = pty.openpty()
    shown = bytearray()

    def read() -> None:  # until the child's side closes (EIO): a full pty would block the child
        while True:
            try:
                data = os.read(terminal, 4096)
            except OSError:
                return
            if not data:
                return
            shown.extend(data)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    env = {name: value for name, value in os.environ.items() if name not in TERMINAL_VARIABLES}
    try:
        done = subprocess.run(
            [*CLI, "once", str(path), "-o", str(tmp_path / "out"), "--plots", "PacketRate,FIFOFlags"],
            stdout=subprocess.PIPE,
            stderr=child,
            cwd=ROOT,
            timeout=300,
            env={**env, "COLUMNS": "120", "TERM": "xterm"},
        )
    finally:
        os.close(child)
        reader.join(30)
    assert not reader.is_alive(), "the terminal stayed open after once exited"
    os.close(terminal)
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", shown.decode(errors="replace"))  # without the colours
    assert done.returncode == 0, text
    assert re.search(rf"reading {re.escape(path.name)} \(rows\) .* (\d+)/\1 ", text)  # every row read
    assert re.search(r"drawing plots \(images\) .* 2/\? ", text)


def test_a_finished_command_leaves_its_objects_out_of_the_exits_garbage_collection(tmp_path):
    """At the process's exit, after the command, ``cli.run`` has the garbage collector's objects frozen (the exit's
    collection then skips them), and the command's output is whole; a caller going on in the same process finds its
    collector as it was."""
    path = simulated_second(tmp_path)
    probe = (
        "import atexit, gc, sys\n"
        f"sys.argv = ['larpix-dqm', 'once', {str(path)!r}, '--no-plots']\n"
        "atexit.register(lambda: print('frozen', gc.get_freeze_count()))\n"
        "from larpix_dqm.exporter.cli import run\n"
        "try:\n"
        "    run()\n"
        "except SystemExit:\n"
        "    print('after', gc.get_freeze_count())\n"
        "    run()\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "\nafter 0\n" in done.stdout, done.stdout[-300:]
    summary, _, frozen = done.stdout.rpartition("frozen ")
    summary = summary.split("after 0\n", 1)[1]  # the second run's
    assert int(frozen) > 10_000, frozen  # the imported modules' objects at least
    assert json.loads(summary)["window_seconds"] > 0


@pytest.mark.parametrize("setting, expected", [(None, "False"), ("1", "True")])
def test_the_cli_advises_no_huge_pages_unless_the_environment_asks(tmp_path, setting, expected):
    """numpy's transparent huge page advice is off in a CLI process (``cli.HUGE_PAGES_VARIABLE``), on when the
    environment sets numpy's own variable to 1."""
    path = simulated_second(tmp_path)
    probe = (
        "import atexit, sys\n"
        f"sys.argv = ['larpix-dqm', 'once', {str(path)!r}, '--no-plots']\n"
        "atexit.register(lambda: print('advised', sys.modules['numpy']._core.multiarray._get_madvise_hugepage()))\n"
        "from larpix_dqm.exporter.cli import run\n"
        "run()\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "NUMPY_MADVISE_HUGEPAGE"}
    if setting is not None:
        env["NUMPY_MADVISE_HUGEPAGE"] = setting
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"advised {expected}" in done.stdout.splitlines(), done.stdout[-500:]
