"""The evaluation's work in two halves at once (``quality/halves.py``): when it splits, in a forked child, and at the
interpreter's shutdown."""

from __future__ import annotations

import os
import signal
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from helpers import running, wait_for

from larpix_dqm.exporter.quality import halves


@pytest.fixture
def two_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    """Halves from 64 chip rows on, whatever the cores."""
    monkeypatch.setattr(halves, "SPLIT_FROM_ROWS", 64)
    monkeypatch.setattr(halves, "two_cores", lambda: True)


def thread_and_rows(rows: slice) -> tuple[str, int, int]:
    return threading.current_thread().name, rows.start, rows.stop


def test_the_second_half_runs_on_the_helper_and_the_results_come_in_order(two_cores):
    (first, start, middle), (second, middle_again, stop) = halves.in_halves(thread_and_rows, 128)
    assert (start, middle, middle_again, stop) == (0, 64, 64, 128)
    assert first == threading.current_thread().name and second.startswith("evaluation")
    assert [r[1:] for r in halves.in_halves(thread_and_rows, 10, chip_rows=640, middle=3)] == [(0, 3), (3, 10)]


@pytest.mark.parametrize(
    ("n", "chip_rows", "middle"), [(63, None, None), (10, 63, None), (1, 640, None), (10, 640, 0), (10, 640, 10)]
)
def test_too_few_rows_or_an_empty_half_run_in_one_piece(two_cores, n, chip_rows, middle):
    assert halves.in_halves(thread_and_rows, n, chip_rows, middle) == [(threading.current_thread().name, 0, n)]


def test_on_one_core_the_work_runs_in_one_piece(monkeypatch):
    monkeypatch.setattr(halves, "SPLIT_FROM_ROWS", 64)
    monkeypatch.setattr(halves, "two_cores", lambda: False)
    assert halves.in_halves(thread_and_rows, 128) == [(threading.current_thread().name, 0, 128)]


def test_a_helper_that_cannot_start_work_leaves_it_in_one_piece(two_cores, monkeypatch):
    """At the interpreter's shutdown no thread takes work (``submit`` raises): an evaluation in a daemon thread
    still finishes."""
    stopped = ThreadPoolExecutor(1)
    stopped.shutdown()
    monkeypatch.setattr(halves, "_helper", stopped)
    assert halves.in_halves(thread_and_rows, 128) == [(threading.current_thread().name, 0, 128)]


def test_an_error_in_the_first_half_is_raised_once_the_second_is_done(two_cores):
    done = threading.Event()

    def work(rows: slice) -> None:
        if rows.start == 0:
            raise ValueError("first half")
        threading.Event().wait(0.2)  # a second half slower than the first
        done.set()

    with pytest.raises(ValueError, match="first half"):
        halves.in_halves(work, 128)
    assert done.is_set()


def test_a_process_forked_after_a_split_makes_its_own_helper(two_cores):
    """The helper thread is not in a forked child (the drawing processes are forked): the child makes its own
    instead of waiting for ever on its parent's."""
    assert halves.in_halves(thread_and_rows, 128)[1][0].startswith("evaluation")
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = 0 if [r[1:] for r in halves.in_halves(thread_and_rows, 128)] == [(0, 64), (64, 128)] else 1
        finally:
            os._exit(code)
    try:
        wait_for(lambda: not running(pid), 30, "the forked child to finish its halves")
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    finally:
        if running(pid):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
