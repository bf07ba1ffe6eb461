"""The ``larpix-overview`` dashboard: the page an operator keeps open (detector status, exporter health,
firing alerts, packet, hit, sync and trigger rates)."""

from __future__ import annotations

from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm

from dashboards.panels import (
    SELECTED,
    STATUS_MAPPING,
    STATUS_STEPS,
    TARGETS,
    dashed_ok_range,
    finish,
    ingest_loop_panel,
    new_dashboard,
    organize,
    query,
    sort_by,
    stat_panel,
    status_timeline,
    table_panel,
    target_up_panel,
    ts_panel,
)
from larpix_dqm.exporter.monitoring import MixinConfig

UID = "larpix-overview"


def build(monitoring: MixinConfig) -> dm.Dashboard:
    """The overview dashboard; sync lines and the target selector come from ``monitoring``."""
    dash = new_dashboard(
        UID,
        "LArPix / Overview",
        "Detector status from the checks, packet, hit, sync and trigger rates per io_group, exporter health and "
        "firing alerts.",
        monitoring,
    )
    dash = dash.with_row(db.Row("Detector status"))
    dash = (
        dash.with_panel(
            stat_panel(
                "Detector status",
                "Worst check status of the whole detector, every shard of the selected jobs "
                "(job:larpix_detector_status:max, the recording rule over larpix_detector_status of every exporter): "
                "OK, WARNING or ERROR. Which checks fail: LArPix / Chips, row Checks.",
                query('max(job:larpix_detector_status:max{job=~"$job"})', instant=True),
                "none",
                steps=STATUS_STEPS,
                mappings=STATUS_MAPPING,
                h=6,
            )
            .graph_mode(cm.BigValueGraphMode.NONE)
            .no_value("no status")
        )
        .with_panel(
            status_timeline(
                "io_group status",
                "Worst check status of each io_group: its own checks (sync) and its chips' checks "
                "(larpix_io_group_status).",
                query(f"max by (io_group) (larpix_io_group_status{{{SELECTED}}})", "io_group {{io_group}}"),
                w=10,
            )
        )
        .with_panel(
            status_timeline(
                "Tile status",
                "Worst check status of the chips of each tile (larpix_tile_status), for the tiles of the "
                "selected io_groups.",
                query(
                    f"max by (tile) (larpix_tile_status and on (instance, tile) larpix_chip_info{{{SELECTED}}})",
                    "tile {{tile}}",
                ),
                w=10,
            )
        )
    )

    dash = dash.with_row(db.Row("Exporter health"))
    dash = (
        dash.with_panel(target_up_panel(monitoring))
        .with_panel(ingest_loop_panel("larpix_exporter_up: 1 while the ingest loop runs and its last poll completed."))
        .with_panel(
            stat_panel(
                "Ingest lag",
                "Wall clock minus the newest data time seen (larpix_exporter_ingest_lag_seconds).",
                query(f"max(larpix_exporter_ingest_lag_seconds{{{TARGETS}}})"),
                "s",
                steps=[(None, "green"), (60, "yellow"), (300, "red")],
            )
        )
        .with_panel(
            stat_panel(
                "Files tracked",
                "Data files the exporter is watching.",
                query(f"sum(larpix_exporter_files_tracked{{{TARGETS}}})"),
                "none",
                steps=[(None, "yellow"), (1, "green")],
            )
        )
        .with_panel(
            stat_panel(
                "Files in error",
                "Files whose last read failed (all reasons); see the LArPix / Exporter dashboard.",
                query(f"sum(larpix_exporter_files_in_error{{{TARGETS}}}) or vector(0)"),
                "none",
                steps=[(None, "green"), (1, "red")],
            )
        )
        .with_panel(
            stat_panel(
                "Read errors (time range)",
                "Failed reads over the dashboard time range, all reasons.",
                query(
                    f"sum(increase(larpix_exporter_read_errors_total{{{TARGETS}}}[$__range])) or vector(0)",
                    instant=True,
                ),
                "none",
                steps=[(None, "green"), (1, "orange")],
            ).graph_mode(cm.BigValueGraphMode.NONE)
        )
    )

    dash = dash.with_row(db.Row("Active alerts"))
    dash = dash.with_panel(
        table_panel(
            "Firing alerts",
            'Alerts currently firing in Prometheus (ALERTS{alertstate="firing"}).',
            [query('ALERTS{alertstate="firing"}', instant=True, fmt="table")],
            [
                organize(exclude=["Time", "Value", "__name__", "alertstate"]),
                sort_by("severity", desc=False),
            ],
            w=24,
            h=6,
        ).no_value("No alerts firing")
    )

    dash = dash.with_row(db.Row("Packets and hits"))
    dash = (
        dash.with_panel(
            ts_panel(
                "Packet rate by type",
                "Packets per second by io_group and packet type, from larpix_packets_total (log scale).",
                [
                    query(
                        f"sum by (io_group, packet_type) (rate(larpix_packets_total{{{SELECTED}}}[$__rate_interval]))",
                        "io_group {{io_group}} {{packet_type}}",
                    )
                ],
                "pps",
            ).scale_distribution(cb.ScaleDistributionConfig().type(cm.ScaleDistribution.LOG).log(10))
        )
        .with_panel(
            ts_panel(
                "Hit rate per io_group",
                "Data packets per second over the exporter window (data time).",
                [query(f"larpix_io_group_hit_rate_hertz{{{SELECTED}}}", "io_group {{io_group}}")],
                "hertz",
                w=6,
            )
        )
        .with_panel(
            ts_panel(
                "Data age per io_group",
                "Wall clock minus the newest data time seen on each io_group.",
                [query(f"time() - larpix_io_group_last_data_timestamp_seconds{{{SELECTED}}}", "io_group {{io_group}}")],
                "s",
                w=6,
            )
        )
    )

    dash = dash.with_row(db.Row("Timing: syncs and triggers"))
    dash = (
        dash.with_panel(
            dashed_ok_range(
                ts_panel(
                    "Sync rate ('S' syncs per second)",
                    "PACMAN 'S' syncs per second of data time per io_group; expect 1.",
                    [query(f"larpix_io_group_sync_rate_hertz{{{SELECTED}}}", "io_group {{io_group}}")],
                    "hertz",
                )
                .axis_soft_min(0)
                .axis_soft_max(2),
                monitoring.sync_expected_range_hz,
            )
        )
        .with_panel(
            ts_panel(
                "External trigger rate",
                "External trigger packets per second over the window, per io_group.",
                [query(f"larpix_io_group_trigger_rate_hertz{{{SELECTED}}}", "io_group {{io_group}}")],
                "hertz",
            )
        )
        .with_panel(
            ts_panel(
                "Sync offset (p50 / p99)",
                "'S' sync timestamp minus 1e7 ticks, in seconds, from the larpix_sync_offset_seconds histogram.",
                [
                    query(
                        "histogram_quantile(0.5, sum by (io_group, le) "
                        f"(rate(larpix_sync_offset_seconds_bucket{{{SELECTED}}}[$__rate_interval])))",
                        "p50 io_group {{io_group}}",
                        ref="A",
                    ),
                    query(
                        "histogram_quantile(0.99, sum by (io_group, le) "
                        f"(rate(larpix_sync_offset_seconds_bucket{{{SELECTED}}}[$__rate_interval])))",
                        "p99 io_group {{io_group}}",
                        ref="B",
                    ),
                ],
                "s",
            )
        )
        .with_panel(
            ts_panel(
                "Syncs by kind",
                "Sync packets per second by kind: 'S' sync, 'H' heartbeat, 'C' clock switch.",
                [
                    query(
                        f"sum by (io_group, kind) (rate(larpix_syncs_total{{{SELECTED}}}[$__rate_interval]))",
                        "io_group {{io_group}} {{kind}}",
                    )
                ],
                "pps",
            )
        )
        .with_panel(
            ts_panel(
                "PACMAN clock offset",
                "Each io_group's data clock (PACMAN unix time) minus the median clock of the other io_groups;"
                " rates are per io_group and unaffected, LarpixClockOffset warns beyond its threshold.",
                [query(f"larpix_io_group_clock_offset_seconds{{{SELECTED}}}", "io_group {{io_group}}")],
                "s",
            )
        )
    )
    return finish(_beam_row(dash))


def _beam_row(dash: db.Dashboard) -> db.Dashboard:
    """Whether the detector sees the beam: triggers, their charge, and where it lands (``quality/triggers.py``)."""
    rate = "[$__rate_interval]"
    hits = f"larpix_beam_trigger_hits_count{{{SELECTED}}}"
    empty = f'larpix_beam_trigger_hits_bucket{{{SELECTED}, le="0.0"}}'
    tile_in = f'sum by (io_group, tile) (rate(larpix_beam_tile_hits_total{{{SELECTED}, window="in"}}{rate}))'
    tile_out = f'sum by (io_group, tile) (rate(larpix_beam_tile_hits_total{{{SELECTED}, window="out"}}{rate}))'
    seconds_in = f'sum by (io_group) (rate(larpix_beam_seconds_total{{{SELECTED}, window="in"}}{rate}))'
    seconds_all = f'sum by (io_group) (rate(larpix_beam_seconds_total{{{SELECTED}, window="all"}}{rate}))'
    in_rate = f"{tile_in} / on (io_group) group_left() {seconds_in}"
    out_rate = f"{tile_out} / on (io_group) group_left() ({seconds_all} - {seconds_in})"
    return (
        dash.with_row(db.Row("Beam: charge after external triggers"))
        .with_panel(
            ts_panel(
                "Beam triggers per second",
                "External trigger words per second, per io_group whose PACMAN received them; "
                "LarpixBeamTriggersStopped warns when they stop during a beam run.",
                [
                    query(
                        f'sum by (io_group) (rate(larpix_trigger_words_total{{{SELECTED}, bit="1"}}{rate}))',
                        "io_group {{io_group}}",
                    )
                ],
                "hertz",
            )
        )
        .with_panel(
            ts_panel(
                "Triggers with charge",
                "Fraction of the external triggers with self-triggered charge on any io_group within the drift "
                "window after them; LarpixBeamChargeLow warns below its threshold.",
                [
                    query(
                        f"1 - sum by (job, instance) (rate({empty}{rate})) / sum by (job, instance) (rate({hits}{rate}))",
                        "{{instance}}",
                    )
                ],
                "percentunit",
            )
        )
        .with_panel(
            ts_panel(
                "Hits per trigger",
                "Self-triggered hits in the drift window of each external trigger: mean and the 90th percentile.",
                [
                    query(
                        f"sum by (io_group) (rate(larpix_beam_trigger_hits_sum{{{SELECTED}}}{rate})) "
                        f"/ sum by (io_group) (rate({hits}{rate}))",
                        "mean, triggers of io_group {{io_group}}",
                        ref="A",
                    ),
                    query(
                        f"histogram_quantile(0.9, sum by (io_group, le) "
                        f"(rate(larpix_beam_trigger_hits_bucket{{{SELECTED}}}{rate})))",
                        "p90, triggers of io_group {{io_group}}",
                        ref="B",
                    ),
                ],
                "short",
            )
        )
        .with_panel(
            ts_panel(
                "Trigger-to-hit time",
                "Median and 90th percentile of the time from an external trigger to the hits in its drift window, "
                "per io_group of the hit: charge drifting to the window's edge is a timing offset.",
                [
                    query(
                        f"histogram_quantile({q}, sum by (io_group, le) "
                        f"(rate(larpix_beam_hit_delay_seconds_bucket{{{SELECTED}}}{rate})))",
                        f"p{round(q * 100)} io_group {{{{io_group}}}}",
                        ref=ref,
                    )
                    for q, ref in ((0.5, "A"), (0.9, "B"))
                ],
                "s",
            )
        )
        .with_panel(
            ts_panel(
                "Beam signal over background per tile",
                "Hit rate per tile inside the drift windows after external triggers over the rate outside them: "
                "a tile the beam reaches sits far above 1; one at 1 sees no beam (HV off, outside the beam profile).",
                [query(f"({in_rate}) / ({out_rate})", "io_group {{io_group}} tile {{tile}}")],
                "short",
                w=24,
            )
        )
    )
