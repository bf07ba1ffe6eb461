"""The ``larpix-exporter`` dashboard: the exporter's own health (polls, ingest, read and decode errors)."""

from __future__ import annotations

from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm

from dashboards.panels import (
    TARGETS,
    finish,
    ingest_loop_panel,
    new_dashboard,
    query,
    stat_panel,
    target_up_panel,
    ts_panel,
)
from larpix_dqm.exporter.monitoring import MixinConfig

UID = "larpix-exporter"


def build(monitoring: MixinConfig) -> dm.Dashboard:
    """The exporter dashboard; the target selector comes from ``monitoring``."""
    dash = new_dashboard(
        UID,
        "LArPix / Exporter",
        "Health of the larpix-dqm exporter itself: polls, ingest, read and decode errors.",
        monitoring,
    )
    dash = dash.with_row(db.Row("Status"))
    dash = (
        dash.with_panel(target_up_panel(monitoring))
        .with_panel(ingest_loop_panel("1 while the ingest loop runs and its last poll completed."))
        .with_panel(
            stat_panel(
                "Version",
                "larpix_exporter_build_info.",
                query(f"larpix_exporter_build_info{{{TARGETS}}}", "{{version}}", instant=True),
                "none",
                steps=[(None, "blue")],
            )
            .text_mode(cm.BigValueTextMode.NAME)
            .graph_mode(cm.BigValueGraphMode.NONE)
        )
        .with_panel(
            stat_panel(
                "Window",
                "Length of the window the windowed gauges cover (data time).",
                query(f"max(larpix_window_seconds{{{TARGETS}}})"),
                "s",
                steps=[(None, "blue")],
            ).graph_mode(cm.BigValueGraphMode.NONE)
        )
        .with_panel(
            stat_panel(
                "Since last poll",
                "Wall time since the last completed poll.",
                query(f"time() - max(larpix_exporter_last_poll_timestamp_seconds{{{TARGETS}}})"),
                "s",
                steps=[(None, "green"), (30, "yellow"), (120, "red")],
            )
        )
        .with_panel(
            stat_panel(
                "Since last ingest",
                "Wall time since new packets were last ingested.",
                query(f"time() - max(larpix_exporter_last_ingest_timestamp_seconds{{{TARGETS}}})"),
                "s",
                steps=[(None, "green"), (60, "yellow"), (300, "red")],
            )
        )
    )

    dash = dash.with_row(db.Row("Ingest"))
    dash = (
        dash.with_panel(
            ts_panel(
                "Packets ingested by format",
                "Packets per second read from raw PACMAN files and packet files.",
                [
                    query(
                        f"sum by (format) (rate(larpix_exporter_packets_ingested_total{{{TARGETS}}}[$__rate_interval]))",
                        "{{format}}",
                    )
                ],
                "pps",
            )
        )
        .with_panel(
            ts_panel(
                "Ingest lag",
                "Wall clock minus newest data time, and wall time since the last data time seen.",
                [
                    query(f"larpix_exporter_ingest_lag_seconds{{{TARGETS}}}", "ingest lag {{instance}}", ref="A"),
                    query(
                        f"time() - larpix_exporter_last_data_timestamp_seconds{{{TARGETS}}}",
                        "age of newest data {{instance}}",
                        ref="B",
                    ),
                ],
                "s",
            )
        )
        .with_panel(
            ts_panel(
                "Poll duration",
                "Duration of the last poll of the data directory.",
                [
                    query(f"larpix_exporter_poll_duration_seconds{{{TARGETS}}}", "poll duration {{instance}}", ref="A"),
                ],
                "s",
            )
        )
        .with_panel(
            ts_panel(
                "Polls per second",
                "Completed polls per second.",
                [query(f"rate(larpix_exporter_polls_total{{{TARGETS}}}[$__rate_interval])", "{{instance}}")],
                "ops",
            )
        )
        .with_panel(
            ts_panel(
                "Scrape duration",
                "Time the previous /metrics rendering took in the exporter.",
                [query(f"larpix_exporter_scrape_duration_seconds{{{TARGETS}}}", "{{job}} {{instance}}")],
                "s",
            )
        )
        .with_panel(
            ts_panel(
                "Files tracked",
                "Data files the exporter is watching.",
                [query(f"larpix_exporter_files_tracked{{{TARGETS}}}", "{{instance}}")],
                "none",
            )
        )
    )

    dash = dash.with_row(db.Row("Errors"))
    dash = (
        dash.with_panel(
            ts_panel(
                "Read errors by reason",
                "Failed reads per second by reason (not_hdf5, truncated, locked, swmr, ...).",
                [
                    query(
                        f"sum by (reason) (rate(larpix_exporter_read_errors_total{{{TARGETS}}}[$__rate_interval]))",
                        "{{reason}}",
                    )
                ],
                "cps",
                w=8,
            )
        )
        .with_panel(
            ts_panel(
                "Files in error by reason",
                "Files whose last read failed, by reason.",
                [query(f"sum by (reason) (larpix_exporter_files_in_error{{{TARGETS}}})", "{{reason}}")],
                "none",
                w=8,
            ).stacking(cb.StackingConfig().mode(cm.StackingMode.NORMAL))
        )
        .with_panel(
            ts_panel(
                "Decode errors by kind",
                "Words the decoder rejected per second (bad_message, unknown_word, implausible_timestamp).",
                [
                    query(
                        f"sum by (kind) (rate(larpix_exporter_decode_errors_total{{{TARGETS}}}[$__rate_interval]))",
                        "{{kind}}",
                    )
                ],
                "cps",
                w=8,
            )
        )
    )
    return finish(dash)
