"""A simulated LArPix run: PACMAN messages as the DAQ writes them, with optional faults.

Every second of data time produces, per io_group, data words (Poisson self-triggered hits on
every connected channel, ADC pedestal ~ N(80, 6); optionally periodic triggers on every channel),
one 'S' sync word, and external-trigger words, packed into PACMAN data messages. Writers append them to raw (SWMR) or packet files.
An ``Activity`` adds what a detector makes besides noise (tracks, beam spills, pauses, runs; see
exporter/simulation/activity.py), ``Faults.rate_changes`` faults that start at a data time.
A triggered beam (``SimulationConfig.beam_period_s``) gives each spill a trigger word on one io_group
and charge on all of them within a drift time after it: a known truth (``Simulator.spills``) for a
monitor's trigger-correlated view.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from larpix_dqm.exporter.detector.geometry import Geometry
from larpix_dqm.exporter.reading.decode import HEADER_BYTES, WORD_BYTES, decode_messages
from larpix_dqm.exporter.reading.packets import PACKET_DTYPE, PERIODIC_TRIGGER, TICKS_PER_SYNC
from larpix_dqm.exporter.simulation.activity import DRIFT_TICKS, Activity, RateChange, Tracks

RAW_VERSION = "0.0"
PACKET_VERSION = "2.4"
#: Random external triggers per second per io_group when ``trigger_rate_hz`` is not given and there is no beam.
TRIGGER_RATE_HZ = 0.2
#: Earliest drift delay of a beam hit after its trigger, in ticks (10 µs); the latest is ``DRIFT_TICKS`` (190 µs).
BEAM_MIN_DELAY_TICKS = 100


@dataclass
class Faults:
    """Faults to inject: chips that never speak, channels that fire too often, bad bits."""

    silent_chips: list[tuple[int, ...]] = field(default_factory=list)
    noisy_channels: list[tuple[int, ...]] = field(default_factory=list)
    noisy_rate_hz: float = 50.0
    parity_error_fraction: float = 0.0
    fifo_full_chips: list[tuple[int, ...]] = field(default_factory=list)
    fifo_flag_fraction: float = 0.01
    pedestal_shift_chips: list[tuple[int, ...]] = field(default_factory=list)
    pedestal_shift: float = 30.0
    rate_scale_chips: list[tuple[int, int, int]] = field(default_factory=list)
    rate_scale: float = 3.0
    #: Regions whose activity changes at a data time (HV trip, hot tile, inefficient or bursting channel).
    rate_changes: list[RateChange] = field(default_factory=list)
    #: Chips every data packet of which fails parity (a broken link).
    bad_parity_chips: list[tuple[int, ...]] = field(default_factory=list)


@dataclass
class SimulationConfig:
    """Rates and shapes of the simulated run."""

    hit_rate_hz: float = 0.5
    pedestal: float = 80.0
    pedestal_noise: float = 6.0
    #: Random external triggers (trigger words) per second per io_group; None: ``TRIGGER_RATE_HZ``, 0 with a beam.
    trigger_rate_hz: float | None = None
    #: Periodic triggers per second on every channel (trigger type 3; a pedestal run: tens of Hz), 0 for none.
    periodic_trigger_hz: float = 0.0
    words_per_message: int = 6
    sync_jitter_ticks: int = 3
    seed: int = 0
    #: Seconds between beam spills, spill k at unix time k * beam_period_s with a trigger word; 0: no beam.
    beam_period_s: float = 0.0
    #: Mean self-triggered hits of a spill that brings charge (Poisson), on the connected channels of every
    #: io_group; those on missed tiles or dead channels are lost (the mean is then lower).
    beam_hits: float = 50.0
    #: The io_group whose PACMAN receives the beam's trigger words.
    beam_io_group: int = 1
    #: Fraction of spills that bring charge; the others are a trigger word alone.
    beam_charge_fraction: float = 1.0
    #: (io_group, tile) pairs, tiles as the geometry numbers them, that get no beam charge (e.g. HV off).
    beam_missed_tiles: list[tuple[int, int]] = field(default_factory=list)

    @property
    def random_trigger_hz(self) -> float:
        """The random external-trigger rate: ``trigger_rate_hz`` if given, else 0.2 Hz without a beam, 0 with one."""
        if self.trigger_rate_hz is not None:
            return self.trigger_rate_hz
        return 0.0 if self.beam_period_s > 0 else TRIGGER_RATE_HZ


@dataclass(frozen=True)
class Spill:
    """One spill of the triggered beam as written: its trigger word and the hits of its charge.

    Hits per io_group or tile: ``Simulator.channels[channels, 0]``, ``Simulator.tiles[channels]``.
    """

    index: int  # k: the spill at unix time k * beam_period_s
    second: int  # unix second of the trigger word
    tick: int  # its tick in that second
    charged: bool  # whether the spill brought charge (it may still make no hit: Poisson)
    channels: np.ndarray  # rows of Simulator.channels hit, after missed tiles and dead channels
    ticks: np.ndarray  # their ticks from the start of ``second`` (>= TICKS_PER_SYNC: written in the next second)


def channel_keys(geometry: Geometry) -> np.ndarray:
    """(n, 4) uint8 rows of io_group, io_channel, chip_id, channel_id for every connected pixel."""
    rows, channels = np.nonzero(geometry.connected)
    if geometry.has_io_mapping:
        keys = geometry.chips[rows]
    else:
        chip_ids = np.array(sorted(geometry.by_chip_id, key=geometry.by_chip_id.__getitem__), np.uint8)
        keys = np.stack(
            [np.ones(len(rows), np.uint8), 1 + (np.arange(len(chip_ids))[rows] * 4 // len(chip_ids)), chip_ids[rows]], 1
        )
    return np.column_stack([keys, channels]).astype(np.uint8)


def _matches(channels: np.ndarray, keys: Sequence[tuple[int, ...]], width: int = 0) -> np.ndarray:
    """Channels matching any key on its first ``width`` fields (0: as many as the key has)."""
    mask = np.zeros(len(channels), bool)
    for key in keys:
        n = width or len(key)
        mask |= (channels[:, :n] == np.array(key, np.uint8)).all(axis=1)
    return mask


def pack_data_words(
    chip_id: np.ndarray,
    channel_id: np.ndarray,
    timestamp: np.ndarray,
    adc: np.ndarray,
    local_fifo: np.ndarray,
    shared_fifo: np.ndarray,
    flip_parity: np.ndarray,
    trigger_type: np.ndarray,
) -> np.ndarray:
    """64-bit LArPix data words with downstream marker set and odd parity (unless flipped)."""
    u = np.uint64
    word = (
        (chip_id.astype(u) << u(2))
        | (channel_id.astype(u) << u(10))
        | (timestamp.astype(u) << u(16))
        | (adc.astype(u) << u(48))
        | (trigger_type.astype(u) << u(56))
        | (local_fifo.astype(u) << u(58))
        | (shared_fifo.astype(u) << u(60))
        | (u(1) << u(62))
    )
    parity = (1 - (np.bitwise_count(word) & 1)).astype(u) ^ flip_parity.astype(u)
    return word | (parity << u(63))


def trigger_words(ticks: np.ndarray) -> np.ndarray:
    """PACMAN external-trigger words ('T', trigger type 2) at ``ticks``."""
    words = np.zeros((len(ticks), WORD_BYTES), np.uint8)
    words[:, 0], words[:, 1] = ord("T"), 2
    words[:, 4:8] = np.asarray(ticks).astype("<u4")[:, None].view(np.uint8)
    return words


class Simulator:
    """Generates one second of PACMAN messages at a time from a geometry, faults and activity.

    Data time counts from the first second asked for (``start_time``): activity and faults that start
    later are given in seconds since then.
    """

    def __init__(
        self,
        geometry: Geometry,
        config: SimulationConfig | None = None,
        faults: Faults | None = None,
        activity: Activity | None = None,
    ) -> None:
        self.config = config or SimulationConfig()
        self.faults = faults or Faults()
        self.activity = activity or Activity()
        self.rng = np.random.default_rng(self.config.seed)
        self.channels = channel_keys(geometry)
        self.start_time: int | None = None
        rows, channel_ids = np.nonzero(geometry.connected)
        self.tiles = geometry.tiles[rows]
        x, y = geometry.x[rows, channel_ids], geometry.y[rows, channel_ids]
        self.tracks = Tracks(x, y, self.channels[:, 0], geometry.pixel_pitch)
        rate = np.full(len(self.channels), self.config.hit_rate_hz)
        rate *= self.activity.noise_factors(x, y, self.tiles, geometry.pixel_pitch, self.config.seed)
        checked: tuple[tuple[Sequence[tuple[int, ...]], int, str], ...] = (
            (self.faults.silent_chips, 3, "silent chip"),
            (self.faults.noisy_channels, 4, "noisy channel"),
            (self.faults.fifo_full_chips, 3, "FIFO-full chip"),
            (self.faults.pedestal_shift_chips, 3, "pedestal-shift chip"),
            (self.faults.rate_scale_chips, 3, "rate-scale chip"),
            (self.faults.bad_parity_chips, 3, "bad-parity chip"),
            *((change.keys, 0, "rate-change region") for change in self.faults.rate_changes),
        )
        for keys, width, what in checked:
            for key in keys:
                if not _matches(self.channels, [key], width).any():
                    raise ValueError(
                        f"{what} {'-'.join(map(str, key))} is not a connected chip/channel of the geometry"
                    )
        rate[_matches(self.channels, self.faults.rate_scale_chips, 3)] *= self.faults.rate_scale
        self.silent = _matches(self.channels, self.faults.silent_chips, 3)
        rate[self.silent] = 0.0
        rate[_matches(self.channels, self.faults.noisy_channels, 4)] = self.faults.noisy_rate_hz
        self.rate = rate
        self.fifo_full = _matches(self.channels, self.faults.fifo_full_chips, 3)
        self.pedestal = np.full(len(self.channels), self.config.pedestal)
        self.pedestal[_matches(self.channels, self.faults.pedestal_shift_chips, 3)] += self.faults.pedestal_shift
        self.io_groups = np.unique(self.channels[:, 0])
        self.bad_parity = _matches(self.channels, self.faults.bad_parity_chips, 3)
        self.change_masks = [self._region(change) for change in self.faults.rate_changes]
        if self.config.beam_period_s > 0:
            self._check_beam()
        centre = (self.tracks.low + self.tracks.high) / 2
        profile = np.exp(-((self.tracks.position - centre) ** 2).sum(axis=1) / (2 * self.activity.beam_sigma_mm**2))
        #: Probability of each channel to take a beam hit: the spills' Gaussian profile, the same on every io_group.
        self.beam_profile = profile / profile.sum()
        missed = np.column_stack([self.channels[:, 0], self.tiles])
        #: Channels that never fire a beam hit: on a missed tile, or on a silent chip.
        self.beam_blind = self.silent | _matches(missed, self.config.beam_missed_tiles)
        self._carried = (-1, np.zeros(0, np.int64), np.zeros(0, np.int64))  # (second, channels, ticks) of late hits

    def _check_beam(self) -> None:
        """ValueError for beam settings the geometry or arithmetic refuses."""
        cfg = self.config
        if cfg.beam_hits < 0 or not 0 <= cfg.beam_charge_fraction <= 1:
            raise ValueError("beam hits must be >= 0 and the beam charge fraction within [0, 1]")
        if cfg.beam_io_group not in self.io_groups:
            raise ValueError(f"beam io_group {cfg.beam_io_group} has no connected channel in the geometry")
        for io_group, tile in cfg.beam_missed_tiles:
            if not ((self.channels[:, 0] == io_group) & (self.tiles == tile)).any():
                raise ValueError(f"beam-missed tile {io_group}-{tile} is not a tile of io_group {io_group}")

    def _region(self, change: RateChange) -> np.ndarray:
        """The channels of a rate change's region; ValueError if it names a tile the geometry lacks."""
        missing = set(change.tiles) - set(self.tiles.tolist())
        if missing:
            raise ValueError(f"rate-change tiles {sorted(missing)} are not tiles of the geometry")
        return np.isin(self.tiles, change.tiles) | _matches(self.channels, change.keys)

    def elapsed(self, unix_time: int) -> int:
        """Data seconds since the run's first second (which the first call fixes)."""
        if self.start_time is None:
            self.start_time = unix_time
        return unix_time - self.start_time

    def live(self, unix_time: int) -> bool:
        """Whether the DAQ writes anything in this second (not in a pause or between runs)."""
        return self.activity.live(self.elapsed(unix_time))

    def run_number(self, unix_time: int) -> int:
        """The run this second belongs to (a new run is a new file)."""
        return self.activity.run_number(self.elapsed(unix_time))

    def _rate_at(self, elapsed: int) -> np.ndarray:
        """Noise rate per channel in this second, with the rate changes that raise it."""
        rate = self.rate
        for change, mask in zip(self.faults.rate_changes, self.change_masks):
            if change.active(elapsed) and (change.scale > 1 or change.add_hz):
                rate = rate.copy() if rate is self.rate else rate
                rate[mask] = rate[mask] * max(change.scale, 1.0) + change.add_hz
        return rate

    def _activity_hits(self, elapsed: int, hit: np.ndarray, ticks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Add this second's track and spill hits to the noise hits, then thin the regions that lost efficiency."""
        act, rng = self.activity, self.rng
        parts = [(hit, ticks)]
        if act.cosmic_rate_hz > 0:
            parts.append(self.tracks.cosmics(rng, int(rng.poisson(act.cosmic_rate_hz)), act.steep_fraction))
        if act.beam_spill_period > 0:
            first = int(np.ceil(elapsed / act.beam_spill_period))
            for k in range(first, int(np.ceil((elapsed + 1) / act.beam_spill_period))):
                at = k * act.beam_spill_period
                if act.beam_on(at):
                    tick = int((at - elapsed) * TICKS_PER_SYNC)
                    parts.append(self.tracks.spill(rng, tick, act.beam_tracks_per_spill, act.beam_sigma_mm))
        hit = np.concatenate([p[0] for p in parts])
        ticks = np.concatenate([p[1] for p in parts])
        keep = np.ones(len(self.channels))
        for change, mask in zip(self.faults.rate_changes, self.change_masks):
            if change.active(elapsed) and change.scale < 1:
                keep[mask] *= change.scale
        if (keep < 1).any():
            kept = rng.random(len(hit)) < keep[hit]
            hit, ticks = hit[kept], ticks[kept]
        return hit, ticks

    def spills(self, start: float, stop: float) -> list[Spill]:
        """The beam's spills with their trigger in [``start``, ``stop``) unix seconds, as ``second`` writes them
        (in a second that is written: a pause writes nothing, and late hits cross no gap).

        Each spill draws from its own random stream, so asking changes nothing written; it fixes the run's
        start at ``start`` if no second was asked for yet (regional faults count from it).
        """
        cfg = self.config
        if cfg.beam_period_s <= 0:
            return []
        self.elapsed(int(np.floor(start)))
        lo, hi = int(np.floor(start / cfg.beam_period_s)), int(np.ceil(stop / cfg.beam_period_s))
        return [self._spill(k) for k in range(lo, hi + 1) if start <= k * cfg.beam_period_s < stop]

    def _spill(self, k: int) -> Spill:
        """Spill ``k``: its trigger time, whether it brings charge, and its hits (Gaussian profile, drift delays)."""
        cfg = self.config
        at = k * cfg.beam_period_s
        second = int(np.floor(at))
        tick = int((at - second) * TICKS_PER_SYNC)
        rng = np.random.default_rng([cfg.seed, 2, k])
        charged = bool(rng.random() < cfg.beam_charge_fraction)
        n = int(rng.poisson(cfg.beam_hits)) if charged else 0
        channels = rng.choice(len(self.channels), n, p=self.beam_profile)
        ticks = tick + rng.integers(BEAM_MIN_DELAY_TICKS, DRIFT_TICKS, n)
        keep = np.where(self.beam_blind, 0.0, 1.0)
        for change, mask in zip(self.faults.rate_changes, self.change_masks):
            if change.active(self.elapsed(second)) and change.scale < 1:
                keep[mask] *= change.scale
        kept = rng.random(n) < keep[channels]
        return Spill(k, second, tick, charged, channels[kept], ticks[kept])

    def _beam_hits(
        self, unix_time: int, spills: list[Spill], hit: np.ndarray, ticks: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Add this second's beam hits, and those of the last second's late spills, to the hits; keep the late ones."""
        second, late_hit, late_ticks = self._carried
        parts = [(hit, ticks)] + ([(late_hit, late_ticks)] if second == unix_time else [])
        parts += [(spill.channels, spill.ticks) for spill in spills]
        hit = np.concatenate([p[0] for p in parts])
        ticks = np.concatenate([p[1] for p in parts]).astype(np.int64)
        late = ticks >= TICKS_PER_SYNC
        self._carried = (unix_time + 1, hit[late], ticks[late] - TICKS_PER_SYNC)
        return hit[~late], ticks[~late]

    def second(self, unix_time: int) -> tuple[list[np.ndarray], np.ndarray]:
        """PACMAN messages (uint8 arrays) and their io_groups for one second of data."""
        cfg, rng = self.config, self.rng
        elapsed = self.elapsed(unix_time)
        counts = rng.poisson(self._rate_at(elapsed))
        hit = np.repeat(np.arange(len(self.channels)), counts)
        ticks = rng.integers(0, TICKS_PER_SYNC, len(hit))
        if self.faults.rate_changes or self.activity.cosmic_rate_hz > 0 or self.activity.beam_spill_period > 0:
            hit, ticks = self._activity_hits(elapsed, hit, ticks)
        spills = self.spills(unix_time, unix_time + 1)
        if cfg.beam_period_s > 0:
            hit, ticks = self._beam_hits(unix_time, spills, hit, ticks)
        trigger_type = np.zeros(len(hit), np.uint8)
        if cfg.periodic_trigger_hz > 0:  # a chip-wide timer: every live channel fires at the same ticks
            n_periodic = int(
                np.floor(cfg.periodic_trigger_hz * (unix_time + 1)) - np.floor(cfg.periodic_trigger_hz * unix_time)
            )
            live = np.flatnonzero(~self.silent)
            periodic_ticks = ((np.arange(n_periodic) + 0.5) * TICKS_PER_SYNC / max(n_periodic, 1)).astype(np.int64)
            hit = np.concatenate([hit, np.repeat(live, n_periodic)])
            ticks = np.concatenate([ticks, np.tile(periodic_ticks, len(live))])
            trigger_type = np.concatenate([trigger_type, np.full(len(live) * n_periodic, PERIODIC_TRIGGER, np.uint8)])
        ch = self.channels[hit]
        n = len(hit)
        adc = np.clip(np.rint(rng.normal(self.pedestal[hit], cfg.pedestal_noise)), 0, 255).astype(np.uint8)
        fifo = (self.fifo_full[hit] & (rng.random(n) < self.faults.fifo_flag_fraction)).astype(np.uint8) * 2
        flip = (rng.random(n) < self.faults.parity_error_fraction) | self.bad_parity[hit]
        words = pack_data_words(ch[:, 2], ch[:, 3], ticks, adc, fifo, fifo, flip, trigger_type)
        msgs: list[np.ndarray] = []
        groups: list[int] = []
        for group in self.io_groups:
            sel = np.flatnonzero(ch[:, 0] == group)
            sel = sel[np.argsort(ticks[sel], kind="stable")]
            body = np.zeros((len(sel), WORD_BYTES), np.uint8)
            body[:, 0] = ord("D")
            body[:, 1] = ch[sel, 1]
            body[:, 2:6] = ticks[sel].astype("<u4")[:, None].view(np.uint8)
            body[:, 8:16] = words[sel][:, None].view(np.uint8)
            if group == cfg.beam_io_group and spills:  # beam triggers in time order among the data words
                beam_ticks = np.array([spill.tick for spill in spills])
                order = np.argsort(np.concatenate([ticks[sel], beam_ticks]), kind="stable")
                body = np.concatenate([body, trigger_words(beam_ticks)])[order]
            n_trig = rng.poisson(cfg.random_trigger_hz)
            trig = trigger_words(np.sort(rng.integers(0, TICKS_PER_SYNC, n_trig)))
            sync = np.zeros((1, WORD_BYTES), np.uint8)
            sync[0, 0], sync[0, 1], sync[0, 2] = ord("S"), ord("S"), 1
            jitter = int(rng.integers(-cfg.sync_jitter_ticks, cfg.sync_jitter_ticks + 1))
            sync[0, 4:8] = np.array([TICKS_PER_SYNC - 1 + jitter], "<u4").view(np.uint8)
            all_words = np.concatenate([body, trig, sync])
            for start in range(0, len(all_words), cfg.words_per_message):
                block = all_words[start : start + cfg.words_per_message]
                header = np.zeros(HEADER_BYTES, np.uint8)
                header[0] = ord("D")
                header[1:5] = np.array([unix_time], "<u4").view(np.uint8)
                header[6:8] = np.array([len(block)], "<u2").view(np.uint8)
                msgs.append(np.concatenate([header, block.reshape(-1)]))
                groups.append(int(group))
        return msgs, np.array(groups, np.uint8)


class RawFileWriter:
    """Appends PACMAN messages to a rawhdf5format 0.0 file in SWMR mode, as the DAQ does.

    Like larpix-control's writer it disables HDF5 file locking, so readers never block it.
    """

    def __init__(self, path: str | Path) -> None:
        self.fh = h5py.File(path, "w", libver="latest", locking=False)
        now = time.time()
        meta = self.fh.create_group("meta")
        meta.attrs["version"] = RAW_VERSION
        meta.attrs["created"] = now
        meta.attrs["modified"] = now
        self.fh.create_dataset(
            "msgs", (0,), maxshape=(None,), compression="gzip", dtype=h5py.vlen_dtype(np.dtype("u1"))
        )
        self.fh.create_dataset(
            "msg_headers", (0,), maxshape=(None,), compression="gzip", dtype=np.dtype([("io_groups", "u1")])
        )
        self.fh.swmr_mode = True

    def append(self, msgs: list[np.ndarray], io_groups: np.ndarray) -> None:
        start = len(self.fh["msgs"])
        arr = np.empty(len(msgs), object)
        for i, msg in enumerate(msgs):  # element-wise, or numpy makes equal-length rows 2-D
            arr[i] = msg
        headers = np.zeros(len(msgs), self.fh["msg_headers"].dtype)
        headers["io_groups"] = io_groups
        self.fh["msgs"].resize((start + len(msgs),))
        self.fh["msg_headers"].resize((start + len(msgs),))
        # write_direct keeps an object array of equal-length rows 1-D (plain assignment broadcasts it as 2-D)
        self.fh["msgs"].write_direct(arr, dest_sel=np.s_[start : start + len(msgs)])
        self.fh["msg_headers"][start:] = headers
        self.fh.flush()

    def close(self) -> None:
        self.fh.close()


class PacketFileWriter:
    """Appends packet records to an hdf5format 2.4 file, opening and closing it each time."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        now = time.time()
        with h5py.File(self.path, "w", locking=False) as fh:
            header = fh.create_group("_header")
            header.attrs["version"] = PACKET_VERSION
            header.attrs["created"] = now
            header.attrs["modified"] = now
            fh.create_dataset("packets", (0,), maxshape=(None,), dtype=PACKET_DTYPE)
            fh.create_dataset(
                "messages", (0,), maxshape=(None,), dtype=[("message", "S64"), ("timestamp", "u8"), ("index", "u4")]
            )

    def append(self, msgs: list[np.ndarray], io_groups: np.ndarray) -> None:
        packets = decode_messages(msgs, io_groups).packets
        with h5py.File(self.path, "a", locking=False) as fh:
            dset = fh["packets"]
            start = len(dset)
            dset.resize((start + len(packets),))
            dset[start:] = packets
            fh["_header"].attrs["modified"] = time.time()

    def close(self) -> None:
        """Nothing stays open between appends."""


def open_writer(path: str | Path, fmt: str) -> RawFileWriter | PacketFileWriter:
    """A writer for ``fmt`` 'raw' or 'packets'."""
    if fmt == "raw":
        return RawFileWriter(path)
    if fmt == "packets":
        return PacketFileWriter(path)
    raise ValueError(f"unknown format {fmt!r}: use 'raw' or 'packets'")


class Truth:
    """Exact counts of what the simulator wrote, for tests to compare the exporter against."""

    def __init__(self) -> None:
        self.chips: dict[str, dict[str, int]] = {}
        self.packet_types: dict[str, int] = {}

    def add(self, packets: np.ndarray) -> None:
        keys, counts = np.unique(np.stack([packets["io_group"], packets["packet_type"]], 1), axis=0, return_counts=True)
        for (group, ptype), count in zip(keys.tolist(), counts.tolist()):
            key = f"{group}/{ptype}"
            self.packet_types[key] = self.packet_types.get(key, 0) + count
        data = packets[packets["packet_type"] == 0]
        chip = np.stack([data["io_group"], data["io_channel"], data["chip_id"]], 1)
        for name, mask in (
            ("packets", np.ones(len(data), bool)),
            ("parity_errors", data["valid_parity"] == 0),
            ("fifo_full", (data["local_fifo"] & 2) != 0),
        ):
            if not mask.any():
                continue
            keys, counts = np.unique(chip[mask], axis=0, return_counts=True)
            for key, count in zip(keys.tolist(), counts.tolist()):
                entry = self.chips.setdefault("-".join(map(str, key)), {})
                entry[name] = entry.get(name, 0) + count

    def to_dict(self) -> dict:
        return {"chips": self.chips, "packet_types": self.packet_types}


def write_run(
    simulator: Simulator,
    outdir: str | Path,
    fmt: str = "raw",
    seconds: int = 0,
    realtime: bool = True,
    start_time: int | None = None,
    file_seconds: int = 0,
    stop: threading.Event | None = None,
    truth: Truth | None = None,
    name: str = "sim",
    on_second: Callable[[int], None] | None = None,
) -> list[Path]:
    """Write ``seconds`` seconds of data (0: until ``stop``), one append per second of data.

    ``realtime`` paces appends with the wall clock and stamps them with it; otherwise data
    time starts at ``start_time`` and appends follow each other at full speed. A new file is
    started every ``file_seconds`` seconds of data (0: one file) and at each new run of the
    simulator's activity; its pauses write nothing. ``on_second(data_time)`` is called after
    every second, written or not (a bench reads the files between seconds as a live exporter would).
    """
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    stop = stop or threading.Event()
    data_time = int(time.time()) if realtime or start_time is None else int(start_time)
    paths: list[Path] = []
    writer = None
    elapsed = 0
    file_started = run = 0
    try:
        while not stop.is_set() and (seconds <= 0 or elapsed < seconds):
            if simulator.live(data_time):
                new_run = simulator.run_number(data_time)
                if writer is None or new_run != run or (file_seconds and data_time - file_started >= file_seconds):
                    if writer is not None:
                        writer.close()
                    path = outdir / f"{name}-{data_time}-{len(paths):04d}.h5"
                    writer = open_writer(path, fmt)
                    paths.append(path)
                    file_started, run = data_time, new_run
                msgs, groups = simulator.second(data_time)
                writer.append(msgs, groups)
                if truth is not None:
                    truth.add(decode_messages(msgs, groups).packets)
            elapsed += 1
            data_time += 1
            if on_second is not None:
                on_second(data_time)
            if realtime:
                stop.wait(max(0.0, data_time - time.time()))
    finally:
        if writer is not None:
            writer.close()
    return paths
