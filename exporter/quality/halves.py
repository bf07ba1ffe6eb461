"""Work over a module's chips in two halves at once: the evaluation's compiled passes run the first half in the calling
thread and the second on a helper thread (the kernels release the GIL), since one core reads and writes memory at
about half the rate two do.

Each chip (or group) is computed alike in either half, so the results are those of one pass. The helper is one
thread, made on first use and again in a forked child (the parent's is not there); at the interpreter's shutdown,
when no thread can be started, the work runs in one piece.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from concurrent.futures import Future, ThreadPoolExecutor

#: Chip rows from which the work is split: the passes over the channels move ~450 bytes a channel, and in two halves
#: a module's window pass takes 0.53 against 0.99 ms; below, the hand-over to the helper costs more than it saves.
SPLIT_FROM_ROWS = 1_024

_T = TypeVar("_T")
_helper: ThreadPoolExecutor | None = None
_helper_lock = threading.Lock()


def _forget_helper() -> None:
    """In a forked child: the parent's helper thread is not there, so a new one is made when needed."""
    global _helper, _helper_lock
    _helper, _helper_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_helper)


def two_cores() -> bool:
    """Whether this process may run on two cores or more (its CPU affinity; a cgroup's CPU quota is not looked at);
    the drawing's helper asks it too (``plots.sharing``)."""
    return len(os.sched_getaffinity(0)) >= 2 if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1) >= 2


def _submit(work: Callable[[slice], _T], part: slice) -> Future[_T] | None:
    """``work`` on ``part`` on the helper thread; None at the interpreter's shutdown, when it cannot be started."""
    global _helper
    with _helper_lock:
        if _helper is None:
            from concurrent.futures import ThreadPoolExecutor  # 5 ms: not for a process that never splits

            _helper = ThreadPoolExecutor(1, thread_name_prefix="evaluation")
        try:
            return _helper.submit(work, part)
        except RuntimeError:  # "cannot schedule new futures after interpreter shutdown"
            return None


def in_halves(work: Callable[[slice], _T], n: int, chip_rows: int | None = None, middle: int | None = None) -> list[_T]:
    """``work`` over items ``0 .. n``, its results in order: in two halves at once, split at ``middle`` (``n // 2``),
    where the chip rows they cover (``chip_rows``, else ``n``: the items are chip rows) are ``SPLIT_FROM_ROWS`` or more,
    two cores are ours and neither half is empty; else in one piece. An error in either half is raised once both
    are done (the halves write disjoint rows of the same arrays: the helper is never left writing)."""
    middle = n // 2 if middle is None else middle
    if (n if chip_rows is None else chip_rows) < SPLIT_FROM_ROWS or not 0 < middle < n or not two_cores():
        return [work(slice(0, n))]
    second = _submit(work, slice(middle, n))
    if second is None:
        return [work(slice(0, n))]
    try:
        first = work(slice(0, middle))
    finally:
        later = second.result()
    return [first, later]
