"""Activity the way a LArPix module makes it, for the simulator: rate spread, edge pixels, tracks, beam, pauses, runs.

The verdicts were first proven on independent Poisson hits; a detector is not that. Here a cosmic
track fires a line of pixels within a drift time (~190 µs), a steep one (along the drift) makes
1-3 pixels re-trigger 30-150 times within a millisecond, beam spills (NuMI-like: ~10 µs every
1.2 s, on and off for minutes) bring tracks spread with a Gaussian profile, the DAQ pauses and
starts new runs, and faults change a region's activity at a given data time (HV trips, hot
tiles, inefficient or intermittently noisy channels). Times are data seconds since the run's
first second; ticks are the 10 MHz LArPix timestamps within a second.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from larpix_dqm.exporter.reading.packets import TICKS_PER_SYNC

#: Longest drift time in ticks (~30 cm at 1.6 mm/µs: 190 µs of 100 ns ticks).
DRIFT_TICKS = 1900
#: Span in ticks over which a steep track's pixels re-trigger (1 ms).
STEEP_TICKS = 10_000
#: Length of a beam spill in ticks (10 µs).
SPILL_TICKS = 100


@dataclass
class RateChange:
    """A region whose activity changes from ``start``; with ``period``, for ``duration`` s every ``period`` s.

    ``scale`` < 1 thins every hit of the region, tracks included (an HV trip, a lost efficiency, a
    dead region at 0); ``scale`` > 1 multiplies its own noise hits (a tile at 5x); ``add_hz`` adds
    noise hits per channel (a noisy burst). The region: ``tiles`` (geometry tile numbers) and
    ``keys`` (io_group, io_channel[, chip_id[, channel_id]]).
    """

    tiles: list[int] = field(default_factory=list)
    keys: list[tuple[int, ...]] = field(default_factory=list)
    scale: float = 1.0
    add_hz: float = 0.0
    start: float = 0.0
    period: float = 0.0
    duration: float = 0.0

    def active(self, elapsed: float) -> bool:
        """Whether the change holds at ``elapsed`` data seconds into the run."""
        if elapsed < self.start:
            return False
        return not self.period or (elapsed - self.start) % self.period < self.duration


@dataclass
class Activity:
    """What a detector sees beyond independent noise hits; every part is off by default.

    ``pauses``: (start, duration) in data seconds with no packet at all (no sync either).
    ``run_seconds``: a new run (a new file) every this many data seconds, after ``run_gap_seconds`` without data.
    """

    rate_spread: float = 0.0  # sigma of the log-normal factor on each channel's noise rate
    edge_factor: float = 1.0  # noise-rate factor of the pixels on a tile's edge
    cosmic_rate_hz: float = 0.0  # cosmic tracks per second in the whole detector
    steep_fraction: float = 0.1  # of cosmic tracks, along the drift: few pixels re-triggering
    beam_spill_period: float = 0.0  # seconds between spills; 0: no beam
    beam_tracks_per_spill: float = 20.0
    beam_on_seconds: float = 300.0
    beam_off_seconds: float = 300.0
    beam_sigma_mm: float = 250.0  # Gaussian profile of the spill's tracks across the anode
    pauses: list[tuple[float, float]] = field(default_factory=list)
    run_seconds: float = 0.0
    run_gap_seconds: float = 30.0

    def live(self, elapsed: float) -> bool:
        """Whether the DAQ writes anything at ``elapsed`` data seconds into the run."""
        if any(start <= elapsed < start + length for start, length in self.pauses):
            return False
        return not self.run_seconds or elapsed % (self.run_seconds + self.run_gap_seconds) < self.run_seconds

    def run_number(self, elapsed: float) -> int:
        """The run (0, 1, ...) that ``elapsed`` falls in."""
        return int(elapsed // (self.run_seconds + self.run_gap_seconds)) if self.run_seconds else 0

    def beam_on(self, elapsed: float) -> bool:
        """Whether the beam is on at ``elapsed`` (cycles of on, then off, from the run's start)."""
        return elapsed % (self.beam_on_seconds + self.beam_off_seconds) < self.beam_on_seconds

    def noise_factors(self, x: np.ndarray, y: np.ndarray, tiles: np.ndarray, pitch: float, seed: int) -> np.ndarray:
        """Per-channel factor on the noise rate: a log-normal spread (mean 1) times ``edge_factor`` on tile edges."""
        factor = np.ones(len(x))
        if self.rate_spread > 0:
            rng = np.random.default_rng([seed, 1])  # its own stream: the hits of a run without spread stay the same
            factor = rng.lognormal(-0.5 * self.rate_spread**2, self.rate_spread, len(x))
        if self.edge_factor != 1.0:
            edge = np.zeros(len(x), bool)
            for tile in np.unique(tiles):
                on = tiles == tile
                for coord in (x, y):
                    low, high = np.nanmin(coord[on]), np.nanmax(coord[on])
                    edge |= on & ((coord < low + pitch / 2) | (coord > high - pitch / 2))
            factor[edge] *= self.edge_factor
        return factor


class Tracks:
    """Pixels along straight segments on each anode plane (one plane per io_group): the hits of tracks."""

    def __init__(self, x: np.ndarray, y: np.ndarray, io_group: np.ndarray, pitch: float) -> None:
        self.pitch = pitch
        self.groups = np.unique(io_group)
        self.low = np.array([np.nanmin(x), np.nanmin(y)])
        self.high = np.array([np.nanmax(x), np.nanmax(y)])
        ix = np.rint((x - self.low[0]) / pitch).astype(int)
        iy = np.rint((y - self.low[1]) / pitch).astype(int)
        self.grid = np.full((len(self.groups), ix.max() + 1, iy.max() + 1), -1)
        self.grid[np.searchsorted(self.groups, io_group), ix, iy] = np.arange(len(x))
        self.position = np.column_stack([x, y])

    def pixels(self, plane: int, start: np.ndarray, end: np.ndarray) -> np.ndarray:
        """Channel indices of the pixels a segment crosses, in order from ``start``."""
        steps = int(np.hypot(*(end - start)) / (self.pitch / 2)) + 1
        points = start + np.linspace(0.0, 1.0, steps + 1)[:, None] * (end - start)
        cells = np.rint((points - self.low) / self.pitch).astype(int)
        inside = (cells >= 0).all(axis=1) & (cells < self.grid.shape[1:]).all(axis=1)
        ids = self.grid[plane, cells[inside, 0], cells[inside, 1]]
        ids = ids[ids >= 0]
        _, first = np.unique(ids, return_index=True)
        return ids[np.sort(first)]

    def flat(
        self, rng: np.random.Generator, t0: int, start: np.ndarray, angle: float, length: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """A track across the anode: each pixel once, at its drift time (a linear ramp along the track)."""
        plane = int(rng.integers(len(self.groups)))
        end = start + length * np.array([np.sin(angle), -np.cos(angle)])
        ids = self.pixels(plane, start, end)
        first, last = rng.integers(0, DRIFT_TICKS, 2)
        drift = np.linspace(first, last, len(ids)) + rng.integers(0, 20, len(ids))
        return ids, t0 + drift.astype(np.int64)

    def steep(self, rng: np.random.Generator, t0: int) -> tuple[np.ndarray, np.ndarray]:
        """A track along the drift: 1-3 neighbouring pixels, each re-triggering 30-150 times within 1 ms."""
        plane = int(rng.integers(len(self.groups)))
        on_plane = self.grid[plane][self.grid[plane] >= 0]
        start = self.position[rng.choice(on_plane)]
        angle = rng.uniform(0, 2 * np.pi)
        span = int(rng.integers(0, 3)) * self.pitch
        ids = self.pixels(plane, start, start + span * np.array([np.cos(angle), np.sin(angle)]))[:3]
        counts = rng.integers(30, 151, len(ids))
        ticks = t0 + np.sort(rng.integers(0, STEEP_TICKS, counts.sum()))
        return np.repeat(ids, counts), ticks

    def cosmics(self, rng: np.random.Generator, count: int, steep_fraction: float) -> tuple[np.ndarray, np.ndarray]:
        """Hits (channel indices, ticks) of ``count`` cosmic tracks in one second, mostly vertical (-y)."""
        parts = [self._empty()]
        for _ in range(count):
            t0 = int(rng.integers(0, TICKS_PER_SYNC - STEEP_TICKS))
            if rng.random() < steep_fraction:
                parts.append(self.steep(rng, t0))
            else:
                start = rng.uniform(self.low, self.high)
                parts.append(self.flat(rng, t0, start, rng.normal(0.0, 0.4), rng.uniform(50.0, 1400.0)))
        return self._join(parts)

    def spill(self, rng: np.random.Generator, tick: int, tracks: float, sigma: float) -> tuple[np.ndarray, np.ndarray]:
        """Hits of one beam spill at ``tick``: tracks along x starting at a Gaussian profile around the centre."""
        parts = [self._empty()]
        centre = (self.low + self.high) / 2
        for _ in range(rng.poisson(tracks)):
            start = np.clip(rng.normal(centre, sigma), self.low, self.high)
            angle = np.pi / 2 + rng.normal(0.0, 0.2) + np.pi * rng.integers(2)
            parts.append(self.flat(rng, tick + int(rng.integers(0, SPILL_TICKS)), start, angle, rng.uniform(100, 1000)))
        return self._join(parts)

    @staticmethod
    def _empty() -> tuple[np.ndarray, np.ndarray]:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)

    @staticmethod
    def _join(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
        ids, ticks = zip(*parts)
        return np.concatenate(ids).astype(np.int64), np.minimum(np.concatenate(ticks), TICKS_PER_SYNC - 1)
