"""The accumulation settings: window, thresholds, histogram buckets and engine (no dependencies)."""

from __future__ import annotations

from dataclasses import dataclass

#: Accumulation engines: numba kernels (the default), or the numpy reference implementation.
COMPILED, NUMPY = "compiled", "numpy"
ENGINES = (COMPILED, NUMPY)


@dataclass(frozen=True)
class QualityConfig:
    """Window and threshold settings (documented defaults; see README)."""

    window_seconds: float = 60.0
    window_bins: int = 12
    noisy_rate_hz: float = 10.0
    #: Detector-wide probability of at least one false verdict per evaluation (exporter/quality/verdicts.py).
    false_alarm_probability: float = 0.01
    #: ``compiled`` (numba kernels, loaded in the background; numpy until then) or ``numpy`` (the reference).
    engine: str = COMPILED
    adc_buckets: tuple[float, ...] = tuple(range(16, 257, 16))
    sync_offset_buckets_ticks: tuple[float, ...] = (-1000, -100, -10, -1, 0, 1, 10, 100, 1000)
    #: The io_groups this exporter serves (one shard of a directory several exporters read); empty: every one.
    io_groups: tuple[int, ...] = ()
    #: How long after an external trigger its charge may come (the drift time across the TPC), in µs.
    drift_window_us: float = 200.0

    @property
    def bin_seconds(self) -> float:
        return self.window_seconds / self.window_bins

    @property
    def drift_window_ticks(self) -> int:
        """The drift window in ticks of the 10 MHz clock."""
        return round(self.drift_window_us * 10)
