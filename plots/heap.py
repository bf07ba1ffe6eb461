"""The heap's free pages returned to the system, where the drawing processes' memory needs it."""

from __future__ import annotations

import ctypes


def release_free_heap() -> None:
    """Return the heap's free pages to the system (glibc's ``malloc_trim``; elsewhere nothing). Before forking:
    the counting's freed temporaries, held between the window's entries, would stay resident in both processes,
    and each would copy the pages it reuses while drawing (a module's 1.2 M-packet file: ~90 MB, twice). In
    ``once``'s reading process while its drawing process draws: ~100 MB of that file's read, resident for
    nothing."""
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
    if trim is not None:
        trim(0)
