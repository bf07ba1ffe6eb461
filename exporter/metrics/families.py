"""Turns a data-quality ``Snapshot`` and the exporter ``Health`` into metric families."""

from __future__ import annotations

import time

import numpy as np

from larpix_dqm.exporter.build import build_labels
from larpix_dqm.exporter.detector.geometry import Geometry, GeometrySummary
from larpix_dqm.exporter.metrics.exposition import Family, histogram, label_string
from larpix_dqm.exporter.metrics.health import Health
from larpix_dqm.exporter.quality.accumulator import FIFO_FLAGS
from larpix_dqm.exporter.quality.evaluation import Evaluation
from larpix_dqm.exporter.quality.snapshot import Snapshot
from larpix_dqm.exporter.quality.status import ChannelStatus, CheckStatus
from larpix_dqm.exporter.quality.triggers import HITS_EDGES
from larpix_dqm.exporter.reading.packets import CLOCK_HZ, DATA_TRIGGER_TYPES, PACKET_TYPE_NAMES

CHIP_LABELS = ("io_group", "io_channel", "chip_id")
SYNC_KIND_NAMES = ("sync", "heartbeat", "clock_switch")
#: The check whose chips not ok get ``larpix_chip_expected_hit_rate_hertz``: the rate it compared the hits with.
RATE_CHECK = "hit_rate_ratio"


def _where(keep: np.ndarray, rows: list[tuple[int, int, int]], labels: list[str]) -> tuple[np.ndarray, list, list[str]]:
    """The indices, chip rows and label strings of the chips ``keep`` selects (the series budget: no series for a
    zero count, an ok check or a live chip, issue 22)."""
    index = np.flatnonzero(keep)
    return index, [rows[i] for i in index.tolist()], [labels[i] for i in index.tolist()]


def _run_info_labels(mode: str, mode_setting: str, run: str | None) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    """Label names and the one row of ``larpix_run_info``: the run only when one is known (an empty label is no label)."""
    if run is None:
        return ("mode", "mode_setting"), [(mode, mode_setting)]
    return ("mode", "mode_setting", "run"), [(mode, mode_setting, run)]


class FamilyBuilder:
    """Builds the metric families of one scrape from a snapshot; caches the per-chip label strings (chip rows never move)."""

    def __init__(self, mode_setting: str = "auto", geometry: Geometry | None = None) -> None:
        self.mode_setting = mode_setting  # the configured run mode: auto, or the one given
        self.geometry = GeometrySummary.of(geometry)  # the expected chips (none: only chips that sent data)
        self._chip_rows: list[tuple[int, int, int]] = []
        self._chip_labels: list[str] = []

    def _chips(self, snapshot: Snapshot) -> tuple[list[tuple[int, int, int]], list[str]]:
        keys = snapshot.chip_keys
        for row in keys[len(self._chip_rows) :].tolist():
            self._chip_rows.append(tuple(row))
            self._chip_labels.append(label_string(CHIP_LABELS, row))
        n = len(keys)
        return self._chip_rows[:n], self._chip_labels[:n]

    def families(
        self,
        snapshot: Snapshot,
        health: Health,
        per_pixel: bool = False,
        now: float | None = None,
        evaluation: Evaluation | None = None,
    ) -> list[Family]:
        """All families for one scrape (check statuses when ``evaluation`` carries them)."""
        return [
            *self.detector_families(snapshot, per_pixel, evaluation),
            *self.exporter_families(snapshot, health, now),
        ]

    def detector_families(
        self, snapshot: Snapshot, per_pixel: bool = False, evaluation: Evaluation | None = None, run: str | None = None
    ) -> list[Family]:
        """The families that depend only on one published snapshot (the bulk of a scrape); ``run`` names the
        run being read (a label of ``larpix_run_info`` only, when there is one)."""
        verdicts = self._checks(evaluation, run) if evaluation is not None else []
        pixels = self._pixels(snapshot) if per_pixel else []
        return [*self._detector(snapshot), *verdicts, *pixels]

    def exporter_families(self, snapshot: Snapshot, health: Health, now: float | None = None) -> list[Family]:
        """The exporter's own families, some of which depend on the wall clock (the ingest lag)."""
        return self._exporter(snapshot, health, time.time() if now is None else now)

    def _checks(self, evaluation: Evaluation, run: str | None = None) -> list[Family]:
        snapshot = evaluation.snapshot
        rows, labels = self._chips(snapshot)
        r = evaluation.results
        status = Family(
            "larpix_check_status",
            "gauge",
            "Check status where it is 1 warning or 2 error (ok and unknown: no series; larpix_check_chips counts them).",
        )
        for check, values in zip(r.chip_checks, r.chip_status):
            index, failing, failing_labels = _where(values > CheckStatus.OK, rows, labels)
            status.add(
                ("check", *CHIP_LABELS),
                [(check.name, *row) for row in failing],
                values[index],
                labels=[f'check="{check.name}",{lab}' for lab in failing_labels],
            )
        groups = snapshot.io_groups.tolist()
        for check, values in zip(r.group_checks, r.group_status):
            failing_groups = [g for g in groups if values[g] > CheckStatus.OK]
            status.add(("check", "io_group"), [(check.name, g) for g in failing_groups], values[failing_groups])
        fams = [
            status,
            self._check_counts(evaluation),
            Family("larpix_tile_status", "gauge", "Worst check status of the tile's chips.").add(
                ("tile",), [(int(t),) for t in r.tiles], r.tile_status
            ),
            Family("larpix_io_group_status", "gauge", "Worst check status of the io_group and its chips.").add(
                ("io_group",), [(g,) for g in groups], r.io_group_status[groups]
            ),
            Family("larpix_detector_status", "gauge", "Worst check status of the whole detector.").add(
                (), [()], [r.detector_status]
            ),
            Family(
                "larpix_run_info",
                "gauge",
                "The run being read, the run mode whose check thresholds judge the data, and how it was chosen "
                "(value is always 1).",
            ).add(*_run_info_labels(evaluation.run_mode, self.mode_setting, run), [1]),
        ]
        rate_failing = np.zeros(len(rows), bool)  # no chip when the run mode turns the check off
        for check, values in zip(r.chip_checks, r.chip_status):
            if check.name == RATE_CHECK:
                rate_failing = values > CheckStatus.OK
        index, failing, failing_labels = _where(rate_failing, rows, labels)
        fams.append(
            Family(
                "larpix_chip_expected_hit_rate_hertz",
                "gauge",
                f"Hits per second the verdicts expect of the chip now (learnt or reference rate, tile occupancy);"
                f" only for chips whose {RATE_CHECK} check is not ok.",
            ).add(
                CHIP_LABELS,
                failing,
                snapshot.chip_expected_hits[index] / snapshot.chip_span_seconds[index],
                labels=failing_labels,
            )
        )
        if evaluation.comparison is not None:
            c = evaluation.comparison
            for name, help_text, values in (
                ("larpix_chip_reference_rate_ratio", "Hit rate over the reference run's hit rate.", c.rate_ratio),
                (
                    "larpix_chip_reference_pedestal_shift",
                    "Mean ADC minus the reference run's mean ADC.",
                    c.pedestal_shift,
                ),
                (
                    "larpix_chip_reference_rate_chi2",
                    "Per-channel hit counts against the reference: chi-square per channel.",
                    c.rate_chi2,
                ),
            ):
                fams.append(Family(name, "gauge", help_text).add(CHIP_LABELS, rows, values, labels=labels))
        return fams

    def _check_counts(self, evaluation: Evaluation) -> Family:
        """``larpix_check_chips``: judged chips per chip-scope check, io_group and status, zeros included (a fixed
        4 x checks x io_groups series), so that ok and unknown chips are counted without a series each."""
        snapshot = evaluation.snapshot
        r = evaluation.results
        judged = snapshot.chip_in_geometry & snapshot.chip_judged
        chip_groups = snapshot.chip_keys[judged, 0].astype(np.int64)
        groups = snapshot.io_groups.tolist()
        statuses = list(CheckStatus)
        family = Family(
            "larpix_check_chips",
            "gauge",
            "Judged chips per check and io_group by check status (unknown, ok, warning, error).",
        )
        for check, values in zip(r.chip_checks, r.chip_status):
            counts = np.zeros((len(statuses), 256), np.int64)
            for i, s in enumerate(statuses):
                counts[i] = np.bincount(chip_groups[values[judged] == s], minlength=256)
            family.add(
                ("check", "io_group", "status"),
                [(check.name, g, s.label) for g in groups for s in statuses],
                counts[:, groups].T.reshape(-1),
            )
        return family

    def _detector(self, snapshot: Snapshot) -> list[Family]:
        rows, labels = self._chips(snapshot)
        fams = []
        groups = snapshot.io_groups.tolist()
        group_rows = [(g,) for g in groups]
        type_rows = [(g, name) for g in groups for name in PACKET_TYPE_NAMES]
        fams.append(
            Family("larpix_packets", "counter", "Packets read, by io_group and packet type.").add(
                ("io_group", "packet_type"), type_rows, snapshot.packet_type_counts[groups].reshape(-1)
            )
        )
        foreign = np.flatnonzero(snapshot.io_group_foreign_packets)
        fams.append(
            Family(
                "larpix_foreign_packets",
                "counter",
                "Packets of io_groups another shard serves (--io-groups), read and dropped, by io_group.",
            ).add(("io_group",), [(int(g),) for g in foreign], snapshot.io_group_foreign_packets[foreign])
        )
        fams.append(
            Family("larpix_chip_packets", "counter", "Data packets per chip.").add(
                CHIP_LABELS, rows, snapshot.chip_packets, labels=labels
            )
        )
        index, erring, erring_labels = _where(snapshot.chip_parity_errors > 0, rows, labels)
        fams.append(
            Family(
                "larpix_chip_parity_errors",
                "counter",
                "Data packets with a parity error, per chip (chips that had any since the exporter started).",
            ).add(CHIP_LABELS, erring, snapshot.chip_parity_errors[index], labels=erring_labels)
        )
        links = np.unique(
            np.concatenate(
                [snapshot.chip_keys[:, :2].astype(np.int64), np.argwhere(snapshot.link_parity_errors > 0)]
            ).reshape(-1, 2),
            axis=0,
        )
        fams.append(
            Family(
                "larpix_link_parity_errors",
                "counter",
                "Data packets with a parity error from a chip not known (not in the geometry, no valid packet yet),"
                " per io_group and io_channel.",
            ).add(
                ("io_group", "io_channel"),
                [tuple(r) for r in links.tolist()],
                snapshot.link_parity_errors[tuple(links.T)],
            )
        )
        unexpected = np.flatnonzero(~snapshot.chip_in_geometry)
        fams.append(
            Family(
                "larpix_unexpected_chip_packets",
                "counter",
                "Data packets of chips that are not in the geometry (the geometry maps io_group and io_channel).",
            ).add(
                CHIP_LABELS,
                [rows[i] for i in unexpected],
                snapshot.chip_packets[unexpected],
                labels=[labels[i] for i in unexpected],
            )
        )
        fifo = Family(
            "larpix_chip_fifo_flags",
            "counter",
            "Data packets carrying a FIFO half-full or full flag, per chip and flag (those counted since the exporter"
            " started).",
        )
        for i, (which, level) in enumerate(FIFO_FLAGS):
            index, flagged, flagged_labels = _where(snapshot.chip_fifo_flags[:, i] > 0, rows, labels)
            fifo.add(
                (*CHIP_LABELS, "fifo", "level"),
                [(*r, which, level) for r in flagged],
                snapshot.chip_fifo_flags[index, i],
                labels=[f'{lab},fifo="{which}",level="{level}"' for lab in flagged_labels],
            )
        fams.append(fifo)
        status = Family(
            "larpix_chip_channels",
            "gauge",
            "Channels of the chip by verdict, where there are any: "
            + ", ".join(s.label for s in ChannelStatus.judged())
            + ".",
        )
        for i, name in enumerate(s.label for s in ChannelStatus.judged()):
            index, counted, counted_labels = _where(snapshot.chip_status_counts[:, i] > 0, rows, labels)
            status.add(
                (*CHIP_LABELS, "status"),
                [(*r, name) for r in counted],
                snapshot.chip_status_counts[index, i],
                labels=[f'{lab},status="{name}"' for lab in counted_labels],
            )
        fams.append(status)
        if len(snapshot.chip_masked_active) == len(rows):
            index, leaking, leaking_labels = _where(snapshot.chip_masked_active > 0, rows, labels)
            fams.append(
                Family(
                    "larpix_chip_masked_active_channels",
                    "gauge",
                    "Masked channels (disabled list, channel_mask) that still sent data over the window, per chip"
                    " that has any.",
                ).add(CHIP_LABELS, leaking, snapshot.chip_masked_active[index], labels=leaking_labels)
            )
        index, dead, dead_labels = _where(snapshot.chip_dead, rows, labels)
        fams.append(
            Family(
                "larpix_chip_dead",
                "gauge",
                "1 for each chip proven dead (no hit for longer than the false-alarm budget allows); live chips: no series.",
            ).add(CHIP_LABELS, dead, np.ones(len(index), np.int64), labels=dead_labels)
        )
        for name, help_text, values in (
            ("larpix_chip_hit_rate_hertz", "Data packets per second over the window, per chip.", snapshot.chip_rate_hz),
            ("larpix_chip_adc_mean", "Mean ADC value (dataword) over the window, per chip.", snapshot.chip_adc_mean),
            (
                "larpix_chip_adc_stddev",
                "Standard deviation of the ADC value over the window, per chip.",
                snapshot.chip_adc_std,
            ),
        ):
            fams.append(Family(name, "gauge", help_text).add(CHIP_LABELS, rows, values, labels=labels))
        if len(snapshot.chip_periodic_rate_hz) == len(rows) and snapshot.chip_periodic_rate_hz.any():
            for name, help_text, values in (
                (
                    "larpix_chip_periodic_trigger_rate_hertz",
                    "Periodic-trigger data packets per second over the window, per chip.",
                    snapshot.chip_periodic_rate_hz,
                ),
                (
                    "larpix_chip_pedestal_adc_mean",
                    "Mean ADC of periodic-trigger packets (the pedestal) over the window, per chip.",
                    snapshot.chip_pedestal_mean,
                ),
                (
                    "larpix_chip_pedestal_adc_stddev",
                    "ADC standard deviation of periodic-trigger packets over the window, per chip.",
                    snapshot.chip_pedestal_std,
                ),
            ):
                fams.append(Family(name, "gauge", help_text).add(CHIP_LABELS, rows, values, labels=labels))
        mapped = np.flatnonzero(snapshot.chip_tiles >= 0)
        if len(mapped):
            fams.append(
                Family("larpix_chip_info", "gauge", "Tile of each chip, from the geometry (value is always 1).").add(
                    (*CHIP_LABELS, "tile"),
                    [(*rows[i], int(snapshot.chip_tiles[i])) for i in mapped],
                    np.ones(len(mapped), np.int64),
                    labels=[f'{labels[i]},tile="{int(snapshot.chip_tiles[i])}"' for i in mapped],
                )
            )
        for name, help_text, values in (
            (
                "larpix_io_group_hit_rate_hertz",
                "Data packets per second over the window, per io_group.",
                snapshot.io_group_rate_hz,
            ),
            (
                "larpix_io_group_sync_rate_hertz",
                "'S' sync packets per second of data time over the window (expect 1).",
                snapshot.sync_rate_hz,
            ),
            (
                "larpix_io_group_trigger_rate_hertz",
                "External trigger packets per second over the window.",
                snapshot.trigger_rate_hz,
            ),
            (
                "larpix_io_group_last_data_timestamp_seconds",
                "Newest accepted data time (unix seconds) of the io_group's clock.",
                snapshot.io_group_last_time,
            ),
            (
                "larpix_io_group_clock_offset_seconds",
                "The io_group's data clock minus the median clock of the other io_groups.",
                snapshot.io_group_clock_offset,
            ),
        ):
            fams.append(Family(name, "gauge", help_text).add(("io_group",), group_rows, values[groups]))
        fams.append(
            Family("larpix_syncs", "counter", "Sync packets by kind (sync, heartbeat, clock_switch).").add(
                ("io_group", "kind"),
                [(g, k) for g in groups for k in SYNC_KIND_NAMES],
                snapshot.sync_counts[groups].reshape(-1),
            )
        )
        fams.append(
            Family("larpix_triggers", "counter", "External trigger packets.").add(
                ("io_group",), group_rows, snapshot.trigger_counts[groups]
            )
        )
        type_rows = [(g, name) for g in groups for name in DATA_TRIGGER_TYPES]
        fams.append(
            Family(
                "larpix_data_packets_by_trigger",
                "counter",
                "Data packets by what triggered them (self, external, cross, periodic).",
            ).add(("io_group", "trigger_type"), type_rows, snapshot.trigger_type_counts[groups].reshape(-1))
        )
        fams.append(
            Family(
                "larpix_io_group_data_rate_by_trigger_hertz",
                "gauge",
                "Data packets per second over the window by trigger type (external: the beam/light view).",
            ).add(("io_group", "trigger_type"), type_rows, snapshot.trigger_type_rate_hz[groups].reshape(-1))
        )
        fams.append(
            histogram(
                "larpix_sync_offset_seconds",
                "'S' sync timestamp minus 1e7 ticks, in seconds (one tick is 100 ns).",
                ("io_group",),
                group_rows,
                [b / CLOCK_HZ for b in snapshot.config.sync_offset_buckets_ticks],
                snapshot.sync_offset_bucket_counts[groups],
                snapshot.sync_offset_sum_ticks[groups] / CLOCK_HZ,
            )
        )
        fams.append(
            histogram(
                "larpix_adc",
                "ADC value (dataword) of data packets.",
                ("io_group",),
                group_rows,
                snapshot.config.adc_buckets,
                snapshot.adc_bucket_counts[groups],
                snapshot.adc_sum[groups],
            )
        )
        fams.extend(_trigger_view(snapshot))
        fams.append(
            Family("larpix_window_seconds", "gauge", "Length of the sliding window in data time.").add(
                (), [()], [snapshot.config.window_seconds]
            )
        )
        fams.append(
            Family(
                "larpix_false_alarm_probability",
                "gauge",
                "Probability of at least one false channel or chip verdict per evaluation (the verdicts' budget).",
            ).add((), [()], [snapshot.config.false_alarm_probability])
        )
        return fams

    def _pixels(self, snapshot: Snapshot) -> list[Family]:
        rows, labels = self._chips(snapshot)
        chip, channel = np.nonzero(snapshot.channel_expected | (snapshot.channel_status > 0))
        pixel_rows = [(*rows[c], ch) for c, ch in zip(chip.tolist(), channel.tolist())]
        pixel_labels = [f'{labels[c]},channel_id="{ch}"' for c, ch in zip(chip.tolist(), channel.tolist())]
        names = (*CHIP_LABELS, "channel_id")
        return [
            Family(name, "gauge", help_text).add(names, pixel_rows, values[chip, channel], labels=pixel_labels)
            for name, help_text, values in (
                (
                    "larpix_channel_hit_rate_hertz",
                    "Data packets per second over the window, per channel.",
                    snapshot.channel_rate_hz,
                ),
                ("larpix_channel_adc_mean", "Mean ADC value over the window, per channel.", snapshot.channel_adc_mean),
                (
                    "larpix_channel_adc_stddev",
                    "ADC standard deviation over the window, per channel.",
                    snapshot.channel_adc_std,
                ),
            )
        ]

    def _shard(self, snapshot: Snapshot) -> Family:
        """``larpix_exporter_io_group_served``: the io_groups this exporter judges (``--io-groups``, else those with
        data), 1 each; a central rule sees two shards serving one io_group, or none serving one with data."""
        served = list(snapshot.config.io_groups) or snapshot.io_groups.tolist()
        return Family(
            "larpix_exporter_io_group_served",
            "gauge",
            "1 for each io_group this exporter serves (--io-groups; without it, every io_group with data).",
        ).add(("io_group",), [(g,) for g in served], np.ones(len(served)))

    def _exporter(self, snapshot: Snapshot, health: Health, now: float) -> list[Family]:
        def gauge(name: str, help_text: str, value: float) -> Family:
            return Family(name, "gauge", help_text).add((), [()], [value])

        def by_reason(name: str, kind: str, help_text: str, label: str, values: dict[str, int]) -> Family:
            items = sorted(values.items())
            return Family(name, kind, help_text).add(
                (label,), [(k,) for k, _ in items], np.array([v for _, v in items], np.int64)
            )

        return [
            gauge("larpix_exporter_up", "1 while the ingest loop runs and its last poll completed.", float(health.up)),
            Family(
                "larpix_exporter_build_info", "gauge", "Exporter version, git revision and Python version (always 1)."
            ).add(tuple(build_labels()), [tuple(build_labels().values())], [1]),
            Family(
                "larpix_exporter_geometry_info",
                "gauge",
                'Geometry file and the chips it expects (always 1); geometry="none": chips that never send data '
                "cannot be seen.",
            ).add(("geometry", "chips"), [(self.geometry.name, self.geometry.chips)], [1]),
            self._shard(snapshot),
            gauge(
                "larpix_exporter_last_data_timestamp_seconds",
                "Newest data time seen (unix seconds).",
                snapshot.data_time,
            ),
            gauge(
                "larpix_exporter_ingest_lag_seconds", "Wall clock minus the newest data time.", now - snapshot.data_time
            ),
            gauge(
                "larpix_exporter_last_ingest_timestamp_seconds",
                "Wall time when new packets were last ingested.",
                health.last_ingest_wall,
            ),
            gauge(
                "larpix_exporter_last_poll_timestamp_seconds",
                "Wall time of the last completed poll.",
                health.last_poll_wall,
            ),
            gauge("larpix_exporter_files_tracked", "Files being watched.", health.files_tracked),
            by_reason(
                "larpix_exporter_files_in_error",
                "gauge",
                "Files whose last read failed, by reason.",
                "reason",
                health.files_in_error,
            ),
            by_reason(
                "larpix_exporter_read_errors", "counter", "Failed file reads, by reason.", "reason", health.read_errors
            ),
            by_reason(
                "larpix_exporter_decode_errors", "counter", "Undecodable input, by kind.", "kind", health.decode_errors
            ),
            by_reason(
                "larpix_exporter_packets_ingested",
                "counter",
                "Packets ingested, by file format.",
                "format",
                health.packets_ingested,
            ),
            Family("larpix_exporter_polls", "counter", "Completed polls of the input directories.").add(
                (), [()], [health.polls]
            ),
            gauge("larpix_exporter_poll_duration_seconds", "Duration of the last poll.", health.poll_duration),
            gauge(
                "larpix_exporter_checkpoint_duration_seconds",
                "Duration of the last checkpoint write.",
                health.checkpoint_duration,
            ),
            Family("larpix_exporter_checkpoint_errors", "counter", "Checkpoint writes that failed.").add(
                (), [()], [health.checkpoint_errors]
            ),
            gauge(
                "larpix_exporter_compiled_ingest",
                "1 while the compiled kernels count packets; 0 on the numpy path (a small run, kernels loading or unavailable).",
                float(health.compiled_ingest),
            ),
        ]


def _trigger_view(snapshot: Snapshot) -> list[Family]:
    """The trigger-correlated view (``quality/triggers.py``): trigger words by bit, hits per external trigger,
    trigger-to-hit delays, and per tile the hits inside the drift windows against those outside."""
    words = np.argwhere(snapshot.trigger_words > 0)
    fams = [
        Family(
            "larpix_trigger_words",
            "counter",
            "Trigger words by io_group and bit of their trigger_type (bit 1: the external trigger input).",
        ).add(
            ("io_group", "bit"), [(int(g), int(b)) for g, b in words], snapshot.trigger_words[words[:, 0], words[:, 1]]
        )
    ]
    closed = np.flatnonzero(snapshot.beam_trigger_hit_counts[:, -1] > 0).tolist()
    fams.append(
        histogram(
            "larpix_beam_trigger_hits",
            "Self-triggered hits on every io_group within the drift window after each external trigger, "
            "by the io_group the trigger came on (le=0: triggers without charge).",
            ("io_group",),
            [(g,) for g in closed],
            HITS_EDGES,
            snapshot.beam_trigger_hit_counts[closed],
            snapshot.beam_trigger_hit_sum[closed],
        )
    )
    delayed = np.flatnonzero(snapshot.beam_delay_counts[:, -1] > 0).tolist()
    bins = snapshot.beam_delay_counts.shape[1]
    window = snapshot.config.drift_window_ticks / CLOCK_HZ
    fams.append(
        histogram(
            "larpix_beam_hit_delay_seconds",
            "Time from an external trigger to each self-triggered hit within its drift window, by the hit's io_group.",
            ("io_group",),
            [(g,) for g in delayed],
            [round(window * (i + 1) / bins, 9) for i in range(bins - 1)],
            snapshot.beam_delay_counts[delayed],
            snapshot.beam_delay_sum_ticks[delayed] / CLOCK_HZ,
        )
    )
    timed = np.flatnonzero(snapshot.beam_seconds[:, 1] > 0).tolist()
    fams.append(
        Family(
            "larpix_beam_seconds",
            "counter",
            "Data time by io_group inside the drift window of an external trigger (window=in) and with data at all "
            "(window=all): the exposures of the in-window and out-of-window hit rates.",
        ).add(
            ("io_group", "window"),
            [(g, w) for g in timed for w in ("in", "all")],
            snapshot.beam_seconds[timed].reshape(-1),
        )
    )
    mapped = snapshot.chip_tiles >= 0
    hit = snapshot.chip_beam_hits.sum(axis=1) > 0
    keys = np.stack([snapshot.chip_keys[:, 0].astype(np.int64), np.where(mapped, snapshot.chip_tiles, -1)], axis=1)[hit]
    tiles, where = np.unique(keys, axis=0, return_inverse=True)
    sums = np.zeros((len(tiles), 2), np.int64)
    np.add.at(sums, where.reshape(-1), snapshot.chip_beam_hits[hit])
    fams.append(
        Family(
            "larpix_beam_tile_hits",
            "counter",
            "Self-triggered hits per io_group and tile inside the drift window of an external trigger (window=in) "
            "and outside it (window=out), since the first external trigger (tile -1: chips the geometry does not place).",
        ).add(
            ("io_group", "tile", "window"),
            [(int(g), int(t), w) for g, t in tiles for w in ("in", "out")],
            sums.reshape(-1),
        )
    )
    return fams
