"""The Snapshot: one consistent, immutable view of the data quality, what /metrics and the plots read.

It is the plot plugins' API (``ctx.snapshot``), so every field says its shape, dtype and unit. Row
``i`` of every per-chip array is the chip ``chip_keys[i]`` (rows never move: a chip keeps its row
for the life of the process); per-channel arrays add a channel axis of 64 (``channel_id``);
per-io_group arrays have 256 rows indexed by io_group. "The window" is the last ``--window``
seconds of each io_group's own data time (``chip_span_seconds`` says how much of it has data).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from larpix_dqm.exporter.quality.config import QualityConfig


@dataclass(frozen=True)
class Snapshot:
    """Immutable view of the data quality at one moment; arrays are copies (n chips, 64 channels, 256 io_groups)."""

    # -- chips: (n,) unless said otherwise -------------------------------------------------------
    chip_keys: np.ndarray  # (n, 3) uint8: io_group, io_channel, chip_id
    chip_tiles: np.ndarray  # int64: pixel tile of the geometry, -1 when unknown
    chip_in_geometry: np.ndarray  # bool: in the geometry (every chip when the geometry maps no io_group/io_channel)
    chip_judged: np.ndarray  # bool: in a hydra network of the run (every chip without networks)
    chip_span_seconds: np.ndarray  # float64 s: data time the window covers for the chip (its io_group's span)
    chip_packets: np.ndarray  # int64: valid data packets, all time
    chip_parity_errors: np.ndarray  # int64: data packets with a parity error, all time
    chip_fifo_flags: np.ndarray  # (n, 4) int64: packets flagged local half, local full, shared half, shared full
    chip_status_counts: np.ndarray  # (n, len(ChannelStatus.judged())) int64: channels per status, in that order
    chip_window_packets: np.ndarray  # int64: self-triggered valid data packets in the window
    chip_window_parity_errors: np.ndarray  # int64: parity errors in the window
    chip_window_fifo_full: np.ndarray  # int64: packets with a FIFO-full flag in the window
    chip_rate_hz: np.ndarray  # float64 Hz: self-triggered data packets per second over the window
    chip_expected_hits: np.ndarray  # float64 hits: what the verdicts expect of the chip over the window
    chip_window_arrivals: np.ndarray  # float64: independent arrivals (hits merged within 1 ms) in the window
    chip_expected_arrivals: np.ndarray  # float64: the arrivals the verdicts expect of the chip over the window
    chip_base_hz: np.ndarray  # float64 Hz: expected rate before the tile's scale, channels under the noisy cut
    chip_quiet_window_hits: np.ndarray  # float64: self-triggered hits in the window of those channels
    chip_run_seconds: np.ndarray  # float64 s: data time since the run started (its io_group's), 0 before any
    chip_run_hits: np.ndarray  # int64: self-triggered valid data packets since the run started (its io_group's)
    chip_dead: np.ndarray  # bool: proven dead (no hit for longer than the false-alarm budget allows)
    chip_unknown: np.ndarray  # bool: no hit in the window, not yet proven dead (not enough statistics)
    chip_masked_active: np.ndarray  # int64: masked channels that still sent data in the window
    chip_adc_mean: np.ndarray  # float64 ADC counts (0-255): mean dataword over the window, NaN without data
    chip_adc_std: np.ndarray  # float64 ADC counts: standard deviation of the dataword over the window
    chip_periodic_rate_hz: np.ndarray  # float64 Hz: periodic-trigger packets per second over the window
    chip_pedestal_mean: np.ndarray  # float64 ADC counts: mean of periodic-trigger packets, NaN without them
    chip_pedestal_std: np.ndarray  # float64 ADC counts: their standard deviation
    # -- channels: (n, 64) ----------------------------------------------------------------------
    channel_status: np.ndarray  # int8: a ChannelStatus code (exporter/quality/status.py)
    channel_expected: np.ndarray  # bool: connected in the geometry (and in a network), or seen with data
    channel_rate_hz: np.ndarray  # float64 Hz: self-triggered hits per second over the window
    channel_window_hits: np.ndarray  # int64: self-triggered hits in the window (channel_rate_hz before the division)
    channel_expected_hz: np.ndarray  # float64 Hz: the rate the verdicts expect now (learnt or reference, scaled)
    channel_adc_mean: np.ndarray  # float64 ADC counts: mean dataword over the window, NaN without hits
    channel_adc_std: np.ndarray  # float64 ADC counts: its standard deviation
    channel_hits_total: np.ndarray  # int64: valid data packets, all time, every trigger type
    channel_pedestal_mean: np.ndarray  # float64 ADC counts: mean of periodic-trigger packets over the window
    channel_pedestal_std: np.ndarray  # float64 ADC counts: their standard deviation
    channel_periodic_hits: np.ndarray  # int64: periodic-trigger packets in the window
    # -- io_groups: (256,) unless said otherwise -----------------------------------------------
    io_groups: np.ndarray  # (k,) int64: the io_groups that sent anything, ascending
    packet_type_counts: np.ndarray  # (256, 8) int64: packets by packet_type (0 data .. 7 trigger), all time
    link_parity_errors: np.ndarray  # (256, 256) int64: parity errors of unknown chips, by io_group and io_channel
    trigger_type_counts: np.ndarray  # (256, 4) int64: data packets by trigger type (self, external, cross, periodic)
    trigger_type_rate_hz: np.ndarray  # (256, 4) float64 Hz: the same per second over the window
    sync_counts: np.ndarray  # (256, 3) int64: sync packets 'S' (sync), 'H' (heartbeat), 'C' (clock switch)
    trigger_counts: np.ndarray  # int64: external trigger packets, all time
    sync_rate_hz: np.ndarray  # float64 Hz: 'S' syncs per second over the window (expect 1)
    trigger_rate_hz: np.ndarray  # float64 Hz: external triggers per second over the window
    io_group_rate_hz: np.ndarray  # float64 Hz: self-triggered data packets per second over the window
    io_group_last_time: np.ndarray  # float64 unix s: newest accepted data time, NaN before any
    io_group_span_seconds: np.ndarray  # float64 s: data time each io_group's window covers
    io_group_clock_offset: np.ndarray  # float64 s: io_group clock minus the median clock of the others
    io_group_foreign_packets: np.ndarray  # int64: packets of io_groups another shard serves, dropped, all time
    sync_offset_bucket_counts: np.ndarray  # (256, buckets + 1) int64: cumulative histogram of sync offsets
    sync_offset_sum_ticks: np.ndarray  # int64 ticks (100 ns): sum of 'S' sync offsets from 1e7 ticks
    adc_bucket_counts: np.ndarray  # (256, buckets + 1) int64: cumulative histogram of datawords, all time
    adc_sum: np.ndarray  # int64 ADC counts: sum of datawords, all time
    # -- the trigger-correlated view (``triggers.py``; counted since the first external trigger) --------
    trigger_words: np.ndarray  # (256, 8) int64: trigger words with each bit of their trigger_type set (1: external)
    beam_trigger_hit_counts: np.ndarray  # (256, buckets + 1) int64: cumulative histogram of hits per closed trigger
    beam_trigger_hit_sum: np.ndarray  # int64: hits in the drift windows of the io_group's closed triggers
    beam_delay_counts: np.ndarray  # (256, bins) int64: cumulative histogram of trigger-to-hit delays, by hit io_group
    beam_delay_sum_ticks: np.ndarray  # int64 ticks: sum of those delays
    beam_seconds: np.ndarray  # (256, 2) float64 s: data time inside a drift window, and with data
    chip_beam_hits: np.ndarray  # (n, 2) int64: self-triggered hits inside a drift window, and outside
    # -- scalars ---------------------------------------------------------------------------------
    data_time: float  # unix s: newest accepted data time over all io_groups (NaN before any)
    covered_seconds: float  # s: the longest io_group span of the window
    silent_channel_hits: float  # hits: expected hits without one that prove a channel dead (ln(N/alpha))
    dead_chip_hits: float  # hits: expected hits without one that prove a chip dead
    config: QualityConfig = field(repr=False)  # the window and threshold settings it was made with


def prefer_finite(preferred: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    """``preferred`` where it is a number, ``fallback`` elsewhere: e.g. the periodic-trigger pedestal where
    the run has periodic triggers, the self-triggered ADC mean otherwise (``fallback`` if shapes differ)."""
    if np.shape(preferred) != np.shape(fallback):
        return fallback
    return np.where(np.isfinite(preferred), preferred, fallback)
