"""Loading the compiled kernels (numba) in a background thread, so no poll waits for compilation."""

from __future__ import annotations

import importlib
import logging
import threading
import time
from collections.abc import Callable
from types import ModuleType

log = logging.getLogger(__name__)


class KernelLoader:
    """Loads (from numba's cache) or compiles the kernels once per process, in a background thread."""

    def __init__(self) -> None:
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
        try:
            self._module = importlib.import_module(
                "exporter.quality.compiled"
            )  # imports numba: not on the caller's time
            warm_up()
        except Exception as err:  # numba missing or broken here: the numpy path goes on
            self.error = f"{type(err).__name__}: {err}"
            log.warning("compiled ingest unavailable, using the numpy path: %s", self.error)
        self.seconds = time.perf_counter() - started
        self._ready.set()

    def ready(self, wait: float = 0.0) -> bool:
        """Whether the kernels can be called now; ``wait`` seconds at most for a load under way."""
        if wait and self._started:
            self._ready.wait(wait)
        return self._ready.is_set() and self.error is None

    @property
    def kernels(self) -> ModuleType:
        """``exporter.quality.compiled``, once ``ready()``."""
        assert self._module is not None
        return self._module
