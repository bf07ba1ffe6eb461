"""What the drawing processes ask of the operating system: their heap's free pages returned, and an end with the
process they draw for."""

from __future__ import annotations

import ctypes
import signal

#: prctl's option that asks for a signal when the parent process ends (linux/prctl.h).
PR_SET_PDEATHSIG = 1


def release_free_heap() -> None:
    """Return the heap's free pages to the system (glibc's ``malloc_trim``; elsewhere nothing). Before forking a
    drawing helper: freed temporaries would stay resident in both processes, and each would copy the pages it
    reuses while drawing (when the counting ran in the forking process, a module's 1.2 M-packet file: ~90 MB,
    twice). In ``once``'s reading process while its drawing process draws: ~70 MB of that file's read (167 to
    100 MB), resident for nothing."""
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
    if trim is not None:
        trim(0)


def die_with_parent() -> None:
    """Be killed when the process that forked this one ends (Linux's ``prctl(PR_SET_PDEATHSIG)``; elsewhere
    nothing): a drawing process whose reading process was killed stops writing images at once."""
    prctl = getattr(ctypes.CDLL(None), "prctl", None)
    if prctl is not None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
