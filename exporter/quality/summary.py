"""The summary: a ``Snapshot`` of a ``State``, the window summed over its slots, and the verdicts on it.

``summarize`` reads the state and writes only what evaluations learn, over the data since the last one (a
second evaluation of the same data leaves it as it is): the sequential inefficiency test (``cusum...``) and
the learnt rates (``learnt...``, ``learn``). What the
geometry and the run configuration say of each chip comes in as a ``ChipLayout``, the reference's rates
already aligned to the chips.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

import numpy as np

from larpix_dqm.exporter.detector.geometry import CHANNELS_PER_CHIP
from larpix_dqm.exporter.quality.snapshot import Snapshot
from larpix_dqm.exporter.quality.state import State
from larpix_dqm.exporter.quality.status import ChannelStatus
from larpix_dqm.exporter.quality.verdicts import Cusum, VerdictInputs, count_channels, judge
from larpix_dqm.exporter.quality.window import chip_clock, covered_seconds, span_seconds
from larpix_dqm.exporter.reading.packets import CLOCK_HZ, DATA, IO_GROUPS, SELF_TRIGGER


@dataclass(frozen=True)
class ChipLayout:
    """Per chip row, what the geometry and the run configuration say of it (nothing counted)."""

    tiles: np.ndarray  # (n,) int64: pixel tile of the geometry, -1 when unknown
    in_geometry: np.ndarray  # (n,) bool: in the geometry (every chip when it maps no io_group/io_channel)
    expected: np.ndarray  # (n, 64) bool: connected per the geometry, or seen with data; in a network if any
    judged: np.ndarray  # (n,) bool: in a hydra network of the run (every chip without networks)
    masked: np.ndarray  # (n, 64) bool: disabled in the run configuration


def _mean_std(n: np.ndarray, s: np.ndarray, ss: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation from count, sum and sum of squares (NaN where n == 0)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = s / n
        std = ss / n
        std -= mean * mean
        np.maximum(std, 0.0, out=std)
        np.sqrt(std, out=std)
    return mean, std


@dataclass(frozen=True)
class ChannelWindow:
    """Each channel's window: its hits, their rate, ADC mean and spread, and its silence; per chip their sums."""

    hits: np.ndarray  # (chips, 64) int64: self-triggered hits in the window (a copy)
    rate_hz: np.ndarray  # (chips, 64) hits per second of the window's span
    adc_mean: np.ndarray  # (chips, 64) NaN without hits
    adc_std: np.ndarray  # (chips, 64)
    silence: np.ndarray  # (chips, 64) live seconds since the last hit, at most since the run started (0 if unknown)
    chip_hits: np.ndarray  # (chips,) int64
    chip_adc: np.ndarray  # (chips,) int64: ADC sum
    chip_adc_sq: np.ndarray  # (chips,) int64: ADC sum of squares


def channel_window(state: State, n: int, span: np.ndarray, now: np.ndarray, run: np.ndarray) -> ChannelWindow:
    """The window of the ``n`` chips' channels (``span``, ``now`` and ``run`` per chip, ``window.chip_clock``'s)."""
    hits = state.window_hits[:n].copy()
    adc, adc_sq = state.window_adc[:n], state.window_adc_sq[:n]
    mean, std = _mean_std(hits, adc, adc_sq)
    # a silence is judged since the channel's last hit, at most over the live time since the run started
    silence = np.fmax(state.last_hit_end[:n], (now - run)[:, None])
    np.subtract(now[:, None], silence, out=silence)
    np.maximum(silence, 0.0, out=silence)
    np.nan_to_num(silence, copy=False)
    return ChannelWindow(
        hits, hits / span[:, None], mean, std, silence, hits.sum(axis=1), adc.sum(axis=1), adc_sq.sum(axis=1)
    )


def _pedestals(state: State, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per channel the periodic-trigger packets in the window, their ADC mean and standard deviation; per chip
    their count, ADC sum and sum of squares. Without the pedestal window made (no periodic trigger yet) these
    are zeros and NaN, made without summing a window of zeros: the NaN a read-only view of one value, which takes no
    memory (two full arrays were 41 MB of each snapshot at 40,000 chips), the zeros pages never written."""
    if not state.made("win_pedestal"):
        none = np.broadcast_to(np.float64(np.nan), (n, CHANNELS_PER_CHIP))
        return np.zeros((n, CHANNELS_PER_CHIP), np.int64), none, none, np.zeros((n, 3), np.int64)
    pedestal = state.win_pedestal[:, :n].sum(axis=0)
    mean, std = _mean_std(pedestal[..., 0], pedestal[..., 1], pedestal[..., 2])
    return pedestal[..., 0].copy(), mean, std, pedestal.sum(axis=1)


def learn(state: State, now: np.ndarray, run: np.ndarray, status: np.ndarray) -> None:
    """Add each chip's data since its last evaluation to its learnt rates where judged good: its rate checks
    were ok or unknown at that evaluation (``rates_good``) and the channel is not flagged now. A fault is
    not learnt once seen, so the rate it is judged against stays the one it had."""
    n = len(status)
    live = ~np.isnan(now)
    first = np.isnan(state.learnt_time[:n])  # the run's first evaluation learns from the run's start
    seconds = np.where(first, run, np.maximum(now - state.learnt_time[:n], 0.0))
    arrivals = state.arrivals_total[:n]
    new = arrivals - state.learnt_seen[:n]
    np.maximum(new, 0, out=new)
    new[first] = arrivals[first]
    silent, inefficient, noisy = (
        status == np.int8(s) for s in (ChannelStatus.SILENT, ChannelStatus.INEFFICIENT, ChannelStatus.NOISY)
    )
    good = ~(silent | inefficient | noisy)
    good &= (live & (state.rates_good[:n] > 0))[:, None]
    learnt_n, learnt_t = state.learnt[:n, :, 0], state.learnt[:n, :, 1]
    np.add(learnt_n, new, out=learnt_n, where=good)
    np.add(learnt_t, np.nan_to_num(seconds)[:, None], out=learnt_t, where=good)
    np.copyto(state.learnt_seen[:n], arrivals, where=live[:, None])
    state.learnt_time[:n] = np.where(live, now, state.learnt_time[:n])


def settle(
    state: State, now: np.ndarray, run: np.ndarray, status: np.ndarray, masked: np.ndarray, hits: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """What the verdicts leave: the learnt rates (``learn``), the ``masked`` channels' status, and per chip its
    channels of each status (``ChannelStatus.judged()``'s order) and its masked channels with hits."""
    learn(state, now, run, status)
    status[masked] = ChannelStatus.MASKED
    counts = np.stack([count_channels(status == np.int8(s)) for s in ChannelStatus.judged()], 1)
    return counts, count_channels(masked & (hits > 0))


def summarize(
    state: State, layout: ChipLayout, reference_rate_hz: np.ndarray | None = None, kernels: ModuleType | None = None
) -> Snapshot:
    """Copy out everything the exposition and the plots need, with the channel verdicts (judged once,
    against ``reference_rate_hz``, (chips, 64) NaN where the reference does not know a channel); with
    ``kernels`` (``compiled_verdicts``) the passes over the channels are its compiled twins."""
    n = len(state.chips)
    covered = covered_seconds(state)
    group_span = span_seconds(state)
    chip_groups = state.chips.keys[:, 0].astype(np.int64)
    chip_span = group_span[chip_groups]
    tiles, expected = layout.tiles, layout.expected
    now, run = chip_clock(state)
    channels = (channel_window if kernels is None else kernels.channel_window)(state, n, chip_span, now, run)
    hits = channels.hits
    masked = layout.masked & expected
    window_flags = state.win_flags[:, :n].sum(axis=0)
    verdicts = judge(
        VerdictInputs(
            window_hits=hits,
            hits_total=state.self_hits[:n],
            silence_seconds=channels.silence,
            window_seconds=chip_span,
            run_seconds=run,
            expected=expected & ~masked,  # masked channels and chips in no network get no verdict
            # occupancy groups: the tile, else (no geometry) the io_group
            groups=np.where(tiles >= 0, tiles, -1 - chip_groups),
            reference_rate_hz=reference_rate_hz,
            window_parity_errors=window_flags[:, 0],
            links=chip_groups * 256 + state.chips.keys[:, 1],
            window_arrivals=state.window_arrivals[:n],
            arrivals_total=state.arrivals_total[:n],
            cusum=Cusum(state.cusum[:n], state.cusum_seen[:n], state.cusum_good[:n], state.cusum_time[:n]),
            now=now,
            learnt=state.learnt[:n],
        ),
        state.config.false_alarm_probability,
        state.config.noisy_rate_hz,
        None if kernels is None else kernels.CompiledPasses(),
    )
    status = verdicts.channel_status
    status_counts, masked_active = (settle if kernels is None else kernels.settle)(
        state, now, run, status, masked, hits
    )
    chip_hits = channels.chip_hits
    chip_mean, chip_std = _mean_std(chip_hits, channels.chip_adc, channels.chip_adc_sq)
    window_groups = state.window_io_group.sum(axis=0) / group_span[:, None]
    type_counts = state.packet_type_counts.copy()
    type_counts[:, DATA] += np.bincount(chip_groups, state.chip_packets[:n], IO_GROUPS).astype(np.int64)
    type_counts[:, DATA] += state.link_parity.sum(axis=1)
    group_hits = np.bincount(chip_groups, chip_hits, IO_GROUPS)  # whole counts: exact in any order
    active_groups = np.union1d(np.flatnonzero(type_counts.sum(axis=1)), chip_groups)
    edges = np.concatenate([state.config.adc_buckets, [np.inf]])
    below = np.clip(np.floor(edges), -1, 255).astype(np.int64) + 1  # values <= edge
    adc_cum = np.concatenate([np.zeros((IO_GROUPS, 1), np.int64), np.cumsum(state.adc_counts, axis=1)], axis=1)
    adc_buckets = adc_cum[:, below]
    # the arrays count the other trigger types; self-triggered packets are the rest of the data packets
    trigger_counts = state.trigger_type_counts.copy()
    trigger_counts[:, SELF_TRIGGER] = type_counts[:, DATA] - trigger_counts.sum(axis=1)
    trigger_rates = state.window_trigger_types.sum(axis=0) / group_span[:, None]
    trigger_rates[:, SELF_TRIGGER] = group_hits / group_span
    periodic_hits, channel_ped_mean, channel_ped_std, chip_ped = _pedestals(state, n)
    chip_ped_mean, chip_ped_std = _mean_std(chip_ped[:, 0], chip_ped[:, 1], chip_ped[:, 2])
    return Snapshot(
        chip_keys=state.chips.keys.copy(),
        chip_tiles=tiles,
        chip_in_geometry=layout.in_geometry,
        chip_span_seconds=chip_span,
        chip_packets=state.chip_packets[:n].copy(),
        chip_parity_errors=state.chip_parity[:n].copy(),
        link_parity_errors=state.link_parity.copy(),
        chip_fifo_flags=state.chip_fifo[:n].copy(),
        chip_status_counts=status_counts,
        chip_window_packets=chip_hits,
        chip_window_parity_errors=window_flags[:, 0],
        chip_window_fifo_full=window_flags[:, 1],
        chip_rate_hz=chip_hits / chip_span,
        chip_expected_hits=verdicts.chip_expected_hits,
        chip_window_arrivals=verdicts.chip_window_arrivals,
        chip_expected_arrivals=verdicts.chip_expected_arrivals,
        chip_base_hz=verdicts.chip_base_hz,
        chip_quiet_window_hits=verdicts.chip_quiet_window_hits,
        chip_run_seconds=run,
        chip_run_hits=state.self_hits[:n].sum(axis=1),
        chip_dead=verdicts.chip_dead,
        chip_unknown=verdicts.chip_unknown,
        chip_adc_mean=chip_mean,
        chip_adc_std=chip_std,
        channel_status=status,
        channel_expected=expected,
        channel_rate_hz=channels.rate_hz,
        channel_window_hits=hits,
        channel_expected_hz=verdicts.channel_expected_hz,
        channel_adc_mean=channels.adc_mean,
        channel_adc_std=channels.adc_std,
        channel_hits_total=state.hits_total[:n].copy(),
        io_groups=active_groups.astype(np.int64),
        packet_type_counts=type_counts,
        sync_counts=state.sync_counts.copy(),
        trigger_counts=state.trigger_counts.copy(),
        sync_rate_hz=window_groups[:, 0],
        trigger_rate_hz=window_groups[:, 1],
        io_group_rate_hz=group_hits / group_span,
        io_group_last_time=state.clock.head.copy(),
        io_group_span_seconds=group_span,
        io_group_clock_offset=state.clock.offsets(),
        io_group_foreign_packets=state.foreign_packets.copy(),
        sync_offset_bucket_counts=np.cumsum(state.sync_offset_counts, axis=1),
        sync_offset_sum_ticks=state.sync_offset_sum.copy(),
        adc_bucket_counts=adc_buckets,
        adc_sum=(state.adc_counts * np.arange(256)).sum(axis=1),
        trigger_words=state.trigger_words.copy(),
        beam_trigger_hit_counts=np.cumsum(state.beam_trigger_hits, axis=1),
        beam_trigger_hit_sum=state.beam_trigger_hit_sum.copy(),
        beam_delay_counts=np.cumsum(state.beam_delays, axis=1),
        beam_delay_sum_ticks=state.beam_delay_sum.copy(),
        beam_seconds=np.stack([state.beam_window_ticks / CLOCK_HZ, state.beam_live_seconds.astype(np.float64)], 1),
        chip_beam_hits=state.beam_chip_hits[:n].copy(),
        data_time=state.clock.data_time,
        covered_seconds=covered,
        silent_channel_hits=verdicts.silent_channel_hits,
        dead_chip_hits=verdicts.dead_chip_hits,
        config=state.config,
        chip_judged=layout.judged.copy(),
        chip_masked_active=masked_active,
        trigger_type_counts=trigger_counts,
        trigger_type_rate_hz=trigger_rates,
        chip_periodic_rate_hz=chip_ped[:, 0] / chip_span,
        chip_pedestal_mean=chip_ped_mean,
        chip_pedestal_std=chip_ped_std,
        channel_pedestal_mean=channel_ped_mean,
        channel_pedestal_std=channel_ped_std,
        channel_periodic_hits=periodic_hits,
    )
