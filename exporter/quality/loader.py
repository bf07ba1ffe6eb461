"""Loading the compiled kernels (numba) in a background thread, so no poll waits for compilation."""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from types import ModuleType

log = logging.getLogger(__name__)


class KernelLoader:
    """Loads (from numba's cache) or compiles a module of kernels once per process, in a background thread."""

    def __init__(self, module: str, what: str) -> None:
        self.module = module  # its import name; it says why numba would not compile it (``not_compiled``)
        self.what = what  # what it does, for the log: "compiled ingest"
        self._ready = threading.Event()
        self._lock = threading.Lock()
        self._started = False
        self.seconds = float("nan")  # how long loading or compiling took
        self.error: str | None = None
        self._module: ModuleType | None = None

    def start(self, warm_up: Callable[[], None]) -> None:
        """Begin loading in the background by calling ``warm_up`` (kernels on tiny inputs of the
        production types); once per process."""
        with self._lock:
            if self._started:
                return
            self._started = True
        threading.Thread(target=self._load, args=(warm_up,), name="compile", daemon=True).start()

    def _load(self, warm_up: Callable[[], None]) -> None:
        started = time.perf_counter()
        self.error = self._try_load(warm_up)
        if self.error is not None:
            log.warning("%s unavailable, using the numpy engine: %s", self.what, self.error)
        self.seconds = time.perf_counter() - started
        self._ready.set()

    def _try_load(self, warm_up: Callable[[], None]) -> str | None:
        """Import the kernels and run ``warm_up``; why the numpy engine must do their work instead, or None."""
        try:
            self._module = importlib.import_module(self.module)  # numba: not on the caller's time
            interpreted = self._module.not_compiled()
            if interpreted is not None:  # run as Python, the kernels would be far slower than the numpy engine
                return f"{interpreted}, so numba would run the kernels as Python"
            with _no_blas_probe(), contextlib.suppress(ImportError):  # (a numba that moved it loads it later)
                importlib.import_module("numba.np.arraymath")  # numba's numpy functions, where it probes for BLAS
            warm_up()
        except Exception as err:  # numba missing, broken or unable to compile here
            return f"{type(err).__name__}: {err}"
        return None

    def ready(self, wait: float = 0.0) -> bool:
        """Whether the kernels can be called now; ``wait`` seconds at most for a load under way."""
        if wait and self._started:
            self._ready.wait(wait)
        return self._ready.is_set() and self.error is None

    @property
    def kernels(self) -> ModuleType:
        """The module, once ``ready()``."""
        assert self._module is not None
        return self._module


BLAS = "scipy.linalg.cython_blas"


@contextlib.contextmanager
def _no_blas_probe() -> Iterator[None]:
    """Keep numba from importing scipy's BLAS when it first loads its numpy functions: a probe for ``np.dot``'s and
    ``np.cov``'s fast paths, which no kernel here calls, that costs 0.2-0.3 s of CPU where scipy is installed. Meanwhile
    (tens of ms, once a process) another thread's import of it fails too; the exporter's threads make none."""
    if BLAS in sys.modules:  # imported already: the probe costs nothing
        yield
        return
    sys.modules[BLAS] = None  # type: ignore[assignment]  # import raises ModuleNotFoundError: scipy found no BLAS
    try:
        yield
    finally:
        _allow_blas()


def _allow_blas() -> None:
    """Let scipy's BLAS be imported again; also in a process forked while the kernels loaded (``once``'s drawing
    helper, whose plugins may import scipy)."""
    if sys.modules.get(BLAS, BLAS) is None:
        del sys.modules[BLAS]


os.register_at_fork(after_in_child=_allow_blas)
