"""Reference runs: per-channel expected rate and pedestal, and comparisons against them.

A reference is an ``.npz`` file with arrays ``chip_keys`` (n, 3: io_group, io_channel,
chip_id), ``rate_hz``, ``adc_mean``, ``adc_std`` and ``hits`` (n, 64 each), ``duration_s``
and ``sources`` (the files it was made from, JSON). ``larpix-dqm baseline`` writes it.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass
from typing import Any

import numpy as np

from larpix_dqm.exporter.quality.snapshot import Snapshot, prefer_finite

REFERENCE_ARRAYS = ("chip_keys", "rate_hz", "adc_mean", "adc_std", "hits", "duration_s")
#: The first bytes of a zip archive, which an .npz file is.
ZIP_MAGIC = b"PK\x03\x04"


class ReferenceFileError(ValueError):
    """The reference file is unusable; the message names it and the problem."""


@dataclass(frozen=True)
class Comparison:
    """A snapshot against the reference, per chip and per channel (NaN where either has no data)."""

    rate_ratio: np.ndarray  # chip rate / reference chip rate
    pedestal_shift: np.ndarray  # chip mean ADC - reference chip mean ADC (hit-weighted)
    rate_chi2: np.ndarray  # per chip: chi-square of the channels' hit counts against the reference, per channel
    channel_rate_ratio: np.ndarray  # (chips, 64)
    channel_pedestal_shift: np.ndarray  # (chips, 64)


class Reference:
    """Per-channel reference values, looked up by chip key."""

    def __init__(self, arrays: dict[str, np.ndarray], sources: list[str]) -> None:
        self.arrays = arrays
        self.sources = sources
        keys = arrays["chip_keys"].astype(np.int64)
        self._index = {tuple(k): i for i, k in enumerate(keys.tolist())}
        # an update looks the reference up for its chips and compares one snapshot in several places
        # (the verdicts, the checks, the published comparison): each is computed once, for the newest
        self._rows: tuple[bytes, np.ndarray, np.ndarray] = (b"", np.zeros(0, np.int64), np.zeros((0, 64)))
        self._compared: tuple[Snapshot, Comparison] | None = None

    @classmethod
    def from_snapshot(cls, snapshot: Snapshot, sources: list[str]) -> Reference:
        """Reference values from a snapshot whose window covers the whole reference run.

        ADC mean and spread come from periodic-trigger packets where the run has them (a pedestal run),
        else from the self-triggered ones; ``hits`` counts the packets behind them.
        """
        self_hits = snapshot.channel_window_hits
        periodic_hits = prefer_finite(snapshot.channel_periodic_hits, np.zeros_like(self_hits))  # zeros without any
        arrays = {
            "chip_keys": snapshot.chip_keys.copy(),
            "rate_hz": snapshot.channel_rate_hz.copy(),
            "adc_mean": prefer_finite(snapshot.channel_pedestal_mean, snapshot.channel_adc_mean),
            "adc_std": prefer_finite(snapshot.channel_pedestal_std, snapshot.channel_adc_std),
            "hits": np.where(periodic_hits > 0, periodic_hits, self_hits),
            "duration_s": np.array(snapshot.covered_seconds),
        }
        return cls(arrays, sources)

    def save(self, path: str | os.PathLike) -> None:
        payload: dict[str, Any] = {**self.arrays, "sources": np.frombuffer(json.dumps(self.sources).encode(), np.uint8)}
        np.savez(path, **payload)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Reference:
        """Read a reference file; ReferenceFileError names it and says what is wrong, in one line."""
        try:
            with open(path, "rb") as fh:
                magic = fh.read(len(ZIP_MAGIC))
        except OSError as err:
            raise ReferenceFileError(f"reference file {path}: {err.strerror or err}") from None
        if magic != ZIP_MAGIC:
            problem = "empty file" if not magic else "not an .npz file"
            raise ReferenceFileError(f"reference file {path}: {problem} (make it with 'larpix-dqm baseline')")
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {name: data[name] for name in data.files}
            sources = json.loads(arrays.pop("sources").tobytes()) if "sources" in arrays else []
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
            raise ReferenceFileError(f"reference file {path}: unreadable .npz ({err})") from None
        missing = [name for name in REFERENCE_ARRAYS if name not in arrays]
        if missing:
            raise ReferenceFileError(
                f"reference file {path}: missing arrays {', '.join(missing)} (make it with 'larpix-dqm baseline')"
            )
        n = len(arrays["chip_keys"])
        if arrays["chip_keys"].shape != (n, 3) or any(
            arrays[a].shape != (n, 64) for a in ("rate_hz", "adc_mean", "adc_std", "hits")
        ):
            raise ReferenceFileError(f"reference file {path}: arrays have inconsistent shapes")
        return cls(arrays, sources)

    def rows_for(self, chip_keys: np.ndarray) -> np.ndarray:
        """Reference row of each chip key, -1 where the reference does not know the chip."""
        return self._lookup(chip_keys)[0]

    def _lookup(self, chip_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rows and aligned rates of ``chip_keys``, read-only, looked up once per set of chips."""
        keys = np.ascontiguousarray(chip_keys, np.int64)
        if keys.tobytes() != self._rows[0]:
            rows = np.array([self._index.get(tuple(k), -1) for k in keys.tolist()], np.int64)
            rates = self.aligned("rate_hz", rows)
            rows.setflags(write=False)
            rates.setflags(write=False)
            self._rows = (keys.tobytes(), rows, rates)
        return self._rows[1], self._rows[2]

    def aligned(self, name: str, rows: np.ndarray) -> np.ndarray:
        """Reference array ``name`` laid out like the snapshot's chips (NaN for unknown chips)."""
        out = np.full((len(rows), 64), np.nan)
        known = rows >= 0
        out[known] = self.arrays[name][rows[known]]
        return out

    def aligned_rates(self, chip_keys: np.ndarray) -> np.ndarray:
        """(chips, 64) reference rate of each channel of ``chip_keys`` (NaN for chips it does not know)."""
        return self._lookup(chip_keys)[1]

    def compare(self, snapshot: Snapshot) -> Comparison:
        """Rate and pedestal of every chip and channel against the reference (computed once per snapshot)."""
        if self._compared is None or self._compared[0] is not snapshot:
            self._compared = (snapshot, self._compare(snapshot))
        return self._compared[1]

    def _compare(self, snapshot: Snapshot) -> Comparison:
        rows = self.rows_for(snapshot.chip_keys)
        ref_rate, ref_mean, ref_hits = (
            self.aligned("rate_hz", rows),
            self.aligned("adc_mean", rows),
            self.aligned("hits", rows),
        )
        with np.errstate(invalid="ignore", divide="ignore"):
            chip_ref_rate = np.nansum(ref_rate, axis=1)
            rate_ratio = np.where(chip_ref_rate > 0, snapshot.chip_rate_hz / chip_ref_rate, np.nan)
            weights = np.where(np.isnan(ref_mean), 0.0, np.nan_to_num(ref_hits))
            chip_ref_mean = (np.nan_to_num(ref_mean) * weights).sum(axis=1) / weights.sum(axis=1)
            pedestal_shift = prefer_finite(snapshot.chip_pedestal_mean, snapshot.chip_adc_mean) - chip_ref_mean
            span = snapshot.chip_span_seconds[:, None]  # each chip's io_group window
            expected = ref_rate * span
            observed = snapshot.channel_window_hits
            # the reference is a measurement too: its counts add variance expected * (now / reference duration)
            variance = expected * (1.0 + span / float(self.arrays["duration_s"]))
            terms = np.where(expected > 0, (observed - expected) ** 2 / variance, np.nan)
            counted = np.sum(~np.isnan(terms), axis=1)
            rate_chi2 = np.where(counted > 0, np.nansum(terms, axis=1) / np.maximum(counted, 1), np.nan)
            channel_ratio = np.where(ref_rate > 0, snapshot.channel_rate_hz / ref_rate, np.nan)
        channel_mean = prefer_finite(snapshot.channel_pedestal_mean, snapshot.channel_adc_mean)
        return Comparison(rate_ratio, pedestal_shift, rate_chi2, channel_ratio, channel_mean - ref_mean)
