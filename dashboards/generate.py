#!/usr/bin/env python3
"""Generate the larpix-dqm Grafana dashboards from code.

The dashboards are built with the Grafana Foundation SDK (``grafana-foundation-sdk`` on
PyPI, pinned below) and written as ``dashboards/json/<uid>.json`` with sorted keys and an
indent of 2, so the committed output is stable and reviewable. Never edit the JSON by hand:
change this file and run::

    pip install 'grafana-foundation-sdk==1769699379!11.6.0'
    python dashboards/generate.py            # rewrite dashboards/json/
    python dashboards/generate.py --check    # exit 1 if dashboards/json/ is stale

Every PromQL expression may only use the metric names listed in ``docs/metrics.md`` (plus
Prometheus' own ``up`` and ``ALERTS``); ``tests/test_dashboards.py`` checks that, parses
every expression with ``promtool`` and checks that the committed JSON is up to date.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path

# The SDK is versioned as "<build epoch>!<Grafana version>"; the Grafana part (11.6) is the
# dashboard schema the generated JSON targets. Pin it exactly: another build may serialise
# differently and make the committed JSON look stale.
SDK_DISTRIBUTION = "grafana-foundation-sdk"
SDK_VERSION = "1769699379!11.6.0"

try:
    from grafana_foundation_sdk.builders import common as cb
    from grafana_foundation_sdk.builders import dashboard as db
    from grafana_foundation_sdk.builders import heatmap, prometheus, stat, statetimeline, table, text, timeseries
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models import common as cm
    from grafana_foundation_sdk.models import dashboard as dm
    from grafana_foundation_sdk.models.heatmap import HeatmapColorMode, HeatmapColorScale
    from grafana_foundation_sdk.models.prometheus import PromQueryFormat
    from grafana_foundation_sdk.models.text import TextMode
except ImportError as err:  # pragma: no cover - exercised only without the SDK
    sys.exit(
        f"dashboards/generate.py needs {SDK_DISTRIBUTION}: pip install '{SDK_DISTRIBUTION}=={SDK_VERSION}' ({err})"
    )

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "json"

TAGS = ["larpix"]
REFRESH = "30s"
EXPORTER_URL = "http://localhost:9767"
# Pixel-map plugins are named PixelMap_<io_group>_<tile within the io_group> (larpix-monitor's
# naming): a module has 8 tiles per io_group.
TILES_PER_IO_GROUP = 8

DS = dm.DataSourceRef(type_val="prometheus", uid="${datasource}")
IOG = 'io_group=~"$io_group"'
CHIP_LABELS = "io_group, io_channel, chip_id"
# The join also matches on instance so that several exporters (e.g. one per module) never
# collide even if they share io_group numbers.
JOIN_LABELS = f"instance, {CHIP_LABELS}"


def with_tile(expr: str) -> str:
    """Join a per-chip expression with ``larpix_chip_info`` to add the ``tile`` label and
    keep only the chips of the selected io_groups and tiles (the info metric is 1)."""
    return f'{expr} * on({JOIN_LABELS}) group_left(tile) larpix_chip_info{{{IOG}, tile=~"$tile"}}'


# --------------------------------------------------------------------------- helpers


def query(expr: str, legend: str | None = None, ref: str = "A", instant: bool = False, fmt: str | None = None):
    q = prometheus.Dataquery().expr(expr).ref_id(ref).datasource(DS)
    if legend is not None:
        q = q.legend_format(legend)
    if instant:
        q = q.instant()
    if fmt is not None:
        q = q.format(PromQueryFormat(fmt))
    return q


def thresholds(*steps: tuple[float | None, str]):
    return (
        db.ThresholdsConfig()
        .mode(dm.ThresholdsMode.ABSOLUTE)
        .steps([dm.Threshold(value=value, color=color) for value, color in steps])
    )


def ts_panel(title: str, desc: str, targets: Iterable, unit: str, w: int = 12, h: int = 8):
    panel = (
        timeseries.Panel()
        .title(title)
        .description(desc)
        .datasource(DS)
        .unit(unit)
        .span(w)
        .height(h)
        .fill_opacity(10)
        .legend(
            cb.VizLegendOptions()
            .display_mode(cm.LegendDisplayMode.LIST)
            .placement(cm.LegendPlacement.BOTTOM)
            .show_legend(True)
        )
        .tooltip(cb.VizTooltipOptions().mode(cm.TooltipDisplayMode.MULTI).sort(cm.SortOrder.DESCENDING))
    )
    for target in targets:
        panel = panel.with_target(target)
    return panel


def stat_panel(title: str, desc: str, target, unit: str, steps=None, mappings=None, w: int = 4, h: int = 4):
    panel = (
        stat.Panel()
        .title(title)
        .description(desc)
        .datasource(DS)
        .unit(unit)
        .span(w)
        .height(h)
        .with_target(target)
        .graph_mode(cm.BigValueGraphMode.AREA)
        .color_mode(cm.BigValueColorMode.BACKGROUND)
        .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .thresholds(thresholds(*(steps or [(None, "green")])))
    )
    if mappings is not None:
        panel = panel.mappings(mappings)
    return panel


def table_panel(title: str, desc: str, targets: Iterable, transformations: Iterable, w: int = 12, h: int = 8):
    panel = table.Panel().title(title).description(desc).datasource(DS).span(w).height(h)
    for target in targets:
        panel = panel.with_target(target)
    for transformation in transformations:
        panel = panel.with_transformation(transformation)
    return panel


def heatmap_colors(scheme: str):
    return (
        heatmap.HeatmapColorOptions()
        .mode(HeatmapColorMode.SCHEME)
        .scheme(scheme)
        .fill("dark-orange")
        .scale(HeatmapColorScale.EXPONENTIAL)
        .exponent(0.5)
        .steps(64)
    )


def transformation(name: str, **options) -> dm.DataTransformerConfig:
    return dm.DataTransformerConfig(id_val=name, options=options)


def organize(exclude: Iterable[str] = (), rename: dict[str, str] | None = None) -> dm.DataTransformerConfig:
    return transformation(
        "organize",
        excludeByName={name: True for name in exclude},
        indexByName={},
        renameByName=rename or {},
    )


def sort_by(field: str, desc: bool = True) -> dm.DataTransformerConfig:
    return transformation("sortBy", fields={}, sort=[{"field": field, "desc": desc}])


def datasource_variable():
    return (
        db.DatasourceVariable("datasource")
        .label("Data source")
        .type("prometheus")
        .current(dm.VariableOption(selected=True, text="Prometheus", value="prometheus"))
    )


def all_option() -> dm.VariableOption:
    return dm.VariableOption(selected=True, text="All", value="$__all")


def io_group_variable():
    return (
        db.QueryVariable("io_group")
        .label("io_group")
        .datasource(DS)
        .query("label_values(larpix_packets_total, io_group)")
        .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dm.VariableSort.NUMERICAL_ASC)
        .multi(True)
        .include_all(True)
        .current(all_option())
    )


def tile_variable():
    return (
        db.QueryVariable("tile")
        .label("tile")
        .datasource(DS)
        .query(f"label_values(larpix_chip_info{{{IOG}}}, tile)")
        .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dm.VariableSort.NUMERICAL_ASC)
        .multi(True)
        .include_all(True)
        .current(all_option())
    )


def new_dashboard(uid: str, title: str, description: str, extra_variables: Iterable = ()):
    dash = (
        db.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(TAGS)
        .editable()
        .refresh(REFRESH)
        .time("now-1h", "now")
        .timezone("browser")
        .tooltip(dm.DashboardCursorSync.CROSSHAIR)
        .link(
            db.DashboardLink("LArPix dashboards")
            .type(dm.DashboardLinkType.DASHBOARDS)
            .tags(TAGS)
            .as_dropdown(True)
            .include_vars(True)
            .keep_time(True)
        )
        .annotation(
            db.AnnotationQuery()
            .name("Annotations & Alerts")
            .datasource(dm.DataSourceRef(type_val="grafana", uid="-- Grafana --"))
            .enable(True)
            .hide(True)
            .icon_color("rgba(0, 211, 255, 1)")
            .type("dashboard")
            .built_in(1)
        )
        .annotation(
            db.AnnotationQuery()
            .name("Firing alerts")
            .datasource(DS)
            .enable(True)
            .hide(False)
            .icon_color("red")
            .expr('ALERTS{alertstate="firing"}')
        )
        .with_variable(datasource_variable())
        .with_variable(io_group_variable())
    )
    for variable in extra_variables:
        dash = dash.with_variable(variable)
    return dash


def finish(dash) -> dm.Dashboard:
    """Build the dashboard and give every panel a stable, unique id (1, 2, ... in order)."""
    model = dash.build()
    for number, panel in enumerate(model.panels or [], start=1):
        panel.id_val = number
    return model


UP_MAPPING = [
    dm.ValueMap(
        options={
            "0": dm.ValueMappingResult(text="DOWN", color="red", index=0),
            "1": dm.ValueMappingResult(text="UP", color="green", index=1),
        }
    )
]


def target_up_panel():
    """Whether Prometheus scrapes the exporter: on the overview and the exporter dashboards."""
    return stat_panel(
        "Target up",
        "Prometheus could scrape the exporter (up of job larpix).",
        query('min(up{job="larpix"})', instant=True),
        "none",
        steps=[(None, "red"), (1, "green")],
        mappings=UP_MAPPING,
    ).no_value("no target")


def ingest_loop_panel(description: str):
    """Whether the exporter's ingest loop runs (larpix_exporter_up)."""
    return stat_panel(
        "Ingest loop up",
        description,
        query("min(larpix_exporter_up)", instant=True),
        "none",
        steps=[(None, "red"), (1, "green")],
        mappings=UP_MAPPING,
    ).no_value("DOWN")


#: larpix_*_status values (exporter/quality/checks.py): 0 ok, 1 warning, 2 error.
STATUS_MAPPING = [
    dm.ValueMap(
        options={
            "0": dm.ValueMappingResult(text="OK", color="green", index=0),
            "1": dm.ValueMappingResult(text="WARNING", color="yellow", index=1),
            "2": dm.ValueMappingResult(text="ERROR", color="red", index=2),
        }
    )
]
STATUS_STEPS = [(None, "green"), (1, "yellow"), (2, "red")]
#: Panels of the exporter's reference comparison are empty unless it runs with --reference.
NO_REFERENCE = "no reference run: start the exporter with --reference FILE"


def status_timeline(title: str, desc: str, target, w: int, h: int = 6):
    """A state timeline of larpix_*_status series: OK / WARNING / ERROR over time."""
    return (
        statetimeline.Panel()
        .title(title)
        .description(desc)
        .datasource(DS)
        .span(w)
        .height(h)
        .with_target(target)
        .show_value(cm.VisibilityMode.NEVER)
        .merge_values(True)
        .mappings(STATUS_MAPPING)
        .color_scheme(db.FieldColor().mode(dm.FieldColorModeId.THRESHOLDS))
        .thresholds(thresholds(*STATUS_STEPS))
        .no_value("no check status (exporter without checks?)")
    )


# --------------------------------------------------------------------------- dashboards


def overview() -> dm.Dashboard:
    dash = new_dashboard(
        "larpix-overview",
        "LArPix / Overview",
        "Detector status from the checks, packet, hit, sync and trigger rates per io_group, exporter health and "
        "firing alerts.",
    )
    dash = dash.with_row(db.Row("Detector status"))
    dash = (
        dash.with_panel(
            stat_panel(
                "Detector status",
                "Worst check status of the whole detector (larpix_detector_status): OK, WARNING or ERROR. "
                "Which checks fail: LArPix / Chips, row Checks.",
                query("max(larpix_detector_status)", instant=True),
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
                query(f"max by (io_group) (larpix_io_group_status{{{IOG}}})", "io_group {{io_group}}"),
                w=10,
            )
        )
        .with_panel(
            status_timeline(
                "Tile status",
                "Worst check status of the chips of each tile (larpix_tile_status), for the tiles of the "
                "selected io_groups.",
                query(
                    f"max by (tile) (larpix_tile_status and on (instance, tile) larpix_chip_info{{{IOG}}})",
                    "tile {{tile}}",
                ),
                w=10,
            )
        )
    )

    dash = dash.with_row(db.Row("Exporter health"))
    dash = (
        dash.with_panel(target_up_panel())
        .with_panel(ingest_loop_panel("larpix_exporter_up: 1 while the ingest loop runs and its last poll completed."))
        .with_panel(
            stat_panel(
                "Ingest lag",
                "Wall clock minus the newest data time seen (larpix_exporter_ingest_lag_seconds).",
                query("max(larpix_exporter_ingest_lag_seconds)"),
                "s",
                steps=[(None, "green"), (60, "yellow"), (300, "red")],
            )
        )
        .with_panel(
            stat_panel(
                "Files tracked",
                "Data files the exporter is watching.",
                query("sum(larpix_exporter_files_tracked)"),
                "none",
                steps=[(None, "yellow"), (1, "green")],
            )
        )
        .with_panel(
            stat_panel(
                "Files in error",
                "Files whose last read failed (all reasons); see the LArPix / Exporter dashboard.",
                query("sum(larpix_exporter_files_in_error) or vector(0)"),
                "none",
                steps=[(None, "green"), (1, "red")],
            )
        )
        .with_panel(
            stat_panel(
                "Read errors (time range)",
                "Failed reads over the dashboard time range, all reasons.",
                query("sum(increase(larpix_exporter_read_errors_total[$__range])) or vector(0)", instant=True),
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
                        f"sum by (io_group, packet_type) (rate(larpix_packets_total{{{IOG}}}[$__rate_interval]))",
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
                [query(f"larpix_io_group_hit_rate_hertz{{{IOG}}}", "io_group {{io_group}}")],
                "hertz",
                w=6,
            )
        )
        .with_panel(
            ts_panel(
                "Data age per io_group",
                "Wall clock minus the newest data time seen on each io_group.",
                [query(f"time() - larpix_io_group_last_data_timestamp_seconds{{{IOG}}}", "io_group {{io_group}}")],
                "s",
                w=6,
            )
        )
    )

    dash = dash.with_row(db.Row("Timing: syncs and triggers"))
    dash = (
        dash.with_panel(
            ts_panel(
                "Sync rate ('S' syncs per second)",
                "PACMAN 'S' syncs per second of data time per io_group; expect 1.",
                [query(f"larpix_io_group_sync_rate_hertz{{{IOG}}}", "io_group {{io_group}}")],
                "hertz",
            )
            .axis_soft_min(0)
            .axis_soft_max(2)
            .thresholds(thresholds((None, "red"), (0.9, "green"), (1.1, "red")))
            .thresholds_style(cb.GraphThresholdsStyleConfig().mode(cm.GraphThresholdsStyleMode.DASHED))
        )
        .with_panel(
            ts_panel(
                "External trigger rate",
                "External trigger packets per second over the window, per io_group.",
                [query(f"larpix_io_group_trigger_rate_hertz{{{IOG}}}", "io_group {{io_group}}")],
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
                        f"(rate(larpix_sync_offset_seconds_bucket{{{IOG}}}[$__rate_interval])))",
                        "p50 io_group {{io_group}}",
                        ref="A",
                    ),
                    query(
                        "histogram_quantile(0.99, sum by (io_group, le) "
                        f"(rate(larpix_sync_offset_seconds_bucket{{{IOG}}}[$__rate_interval])))",
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
                        f"sum by (io_group, kind) (rate(larpix_syncs_total{{{IOG}}}[$__rate_interval]))",
                        "io_group {{io_group}} {{kind}}",
                    )
                ],
                "pps",
            )
        )
    )
    return finish(dash)


def chips() -> dm.Dashboard:
    dash = new_dashboard(
        "larpix-chips",
        "LArPix / Chips",
        "Per-chip data quality: checks, hit rates by tile, channel status, ADC, parity errors, FIFO flags and the "
        "comparison with a reference run.",
        extra_variables=[tile_variable()],
    )
    hit = with_tile(f"larpix_chip_hit_rate_hertz{{{IOG}}}")

    dash = dash.with_row(db.Row("Checks"))
    not_ok = with_tile(f"(larpix_check_status{{{IOG}}} > 0)")
    dash = dash.with_panel(
        table_panel(
            "Checks not ok, by chip",
            "Every chip and check whose status is WARNING or ERROR now (larpix_check_status > 0), errors "
            "first. Ranges of each check: docs/metrics.md, Checks.",
            [query(not_ok, instant=True, fmt="table")],
            [
                organize(exclude=["Time", "job", "instance"], rename={"Value": "status"}),
                sort_by("status"),
            ],
            w=14,
            h=9,
        )
        .mappings(STATUS_MAPPING)
        .thresholds(thresholds(*STATUS_STEPS))
        .override_by_name(
            "status",
            [dm.DynamicConfigValue(id_val="custom.cellOptions", value={"type": "color-background"})],
        )
        .no_value("all checks ok")
    ).with_panel(
        ts_panel(
            "Chips not ok by check",
            "Number of selected chips with a check in WARNING or ERROR, per check, over time.",
            [query(f"count by (check) ({not_ok})", "{{check}}")],
            "none",
            w=10,
            h=9,
        )
        .stacking(cb.StackingConfig().mode(cm.StackingMode.NORMAL))
        .no_value("all checks ok")
    )

    dash = dash.with_row(db.Row("Hit rates by tile"))
    dash = (
        dash.with_panel(
            statetimeline.Panel()
            .title("Hit rate per tile")
            .description("Sum of the chip hit rates of each tile (colour: Hz).")
            .datasource(DS)
            .span(12)
            .height(10)
            .unit("hertz")
            .with_target(query(f"sum by (tile) ({hit})", "tile {{tile}}"))
            .show_value(cm.VisibilityMode.NEVER)
            .merge_values(False)
            .color_scheme(db.FieldColor().mode(dm.FieldColorModeId.CONTINUOUS_GR_YL_RD))
        )
        .with_panel(
            statetimeline.Panel()
            .title("Noisiest chip per tile")
            .description(
                "Highest chip hit rate in each tile; yellow above 10 Hz, red above 50 Hz (the DAQ's noise cuts)."
            )
            .datasource(DS)
            .span(12)
            .height(10)
            .unit("hertz")
            .with_target(query(f"max by (tile) ({hit})", "tile {{tile}}"))
            .show_value(cm.VisibilityMode.NEVER)
            .merge_values(False)
            .color_scheme(db.FieldColor().mode(dm.FieldColorModeId.THRESHOLDS))
            .thresholds(thresholds((None, "green"), (10, "yellow"), (50, "red")))
        )
        .with_panel(
            heatmap.Panel()
            .title("Chip hit-rate distribution")
            .description("How many chips have which hit rate, over time (all chips of the selected tiles).")
            .datasource(DS)
            .span(12)
            .height(9)
            .max_data_points(120)
            .with_target(query(hit, "{{io_group}}/{{io_channel}}/{{chip_id}}"))
            .calculate(True)
            .calculation(
                cb.HeatmapCalculationOptions().y_buckets(
                    cb.HeatmapCalculationBucketConfig().scale(
                        cb.ScaleDistributionConfig().type(cm.ScaleDistribution.LOG).log(10)
                    )
                )
            )
            .color(heatmap_colors("Oranges"))
            .y_axis(heatmap.YAxisConfig().unit("hertz"))
            .cell_values(heatmap.CellValues().unit("none"))
        )
        .with_panel(
            table_panel(
                "Top 10 noisiest chips",
                "Chips with the highest hit rate over the exporter window.",
                [query(f"topk(10, {hit})", instant=True, fmt="table")],
                [
                    organize(exclude=["Time", "job"], rename={"Value": "hit rate"}),
                    sort_by("hit rate"),
                ],
                h=9,
            ).override_by_name("hit rate", [dm.DynamicConfigValue(id_val="unit", value="hertz")])
        )
    )

    dash = dash.with_row(db.Row("Channel status"))
    pixel_hit = with_tile(f"larpix_channel_hit_rate_hertz{{{IOG}}}")
    status_targets = []
    for ref, status in (("A", "noisy"), ("B", "silent"), ("C", "active")):
        channels = with_tile(f'larpix_chip_channels{{status="{status}", {IOG}}}')
        expr = f"sum by ({CHIP_LABELS}, tile) ({channels})"
        status_targets.append(query(expr, ref=ref, instant=True, fmt="table"))
    dash = (
        dash.with_panel(
            ts_panel(
                "Channels by status",
                "Channels of the selected chips in each status over the window (stacked).",
                [query(f"sum by (status) ({with_tile(f'larpix_chip_channels{{{IOG}}}')})", "{{status}}")],
                "none",
                w=10,
                h=10,
            ).stacking(cb.StackingConfig().mode(cm.StackingMode.NORMAL))
        )
        .with_panel(
            table_panel(
                "Channels by status per chip",
                "Noisy, silent and active channel counts of each chip; noisiest first.",
                status_targets,
                [
                    transformation("merge"),
                    organize(
                        exclude=["Time", "job"],
                        rename={"Value #A": "noisy", "Value #B": "silent", "Value #C": "active"},
                    ),
                    sort_by("noisy"),
                ],
                w=14,
                h=10,
            )
        )
        .with_panel(
            table_panel(
                "Top 20 noisiest pixels",
                "Channels with the highest hit rate. Per-pixel series come from the larpix-per-pixel "
                "scrape job (/metrics?per_pixel=1, every 60 s); empty without it.",
                [query(f"topk(20, {pixel_hit})", instant=True, fmt="table")],
                [organize(exclude=["Time", "job"], rename={"Value": "hit rate"}), sort_by("hit rate")],
                w=24,
                h=8,
            )
            .override_by_name("hit rate", [dm.DynamicConfigValue(id_val="unit", value="hertz")])
            .no_value("no per-pixel series (enable the larpix-per-pixel scrape job)")
        )
    )

    dash = dash.with_row(db.Row("ADC"))
    summary_targets = [
        query(with_tile(f"larpix_chip_adc_mean{{{IOG}}}"), ref="A", instant=True, fmt="table"),
        query(with_tile(f"larpix_chip_adc_stddev{{{IOG}}}"), ref="B", instant=True, fmt="table"),
        query(hit, ref="C", instant=True, fmt="table"),
    ]
    dash = (
        dash.with_panel(
            ts_panel(
                "ADC mean by tile",
                "Mean ADC (dataword) over the window, averaged over the chips of each tile.",
                [query(f"avg by (tile) ({with_tile(f'larpix_chip_adc_mean{{{IOG}}}')})", "tile {{tile}}")],
                "none",
                w=8,
            )
        )
        .with_panel(
            ts_panel(
                "ADC stddev by tile",
                "ADC standard deviation over the window, averaged over the chips of each tile.",
                [query(f"avg by (tile) ({with_tile(f'larpix_chip_adc_stddev{{{IOG}}}')})", "tile {{tile}}")],
                "none",
                w=8,
            )
        )
        .with_panel(
            heatmap.Panel()
            .title("ADC distribution")
            .description("ADC values of data packets per second, from the larpix_adc histogram.")
            .datasource(DS)
            .span(8)
            .height(8)
            .with_target(
                query(
                    f"sum by (le) (rate(larpix_adc_bucket{{{IOG}}}[$__rate_interval]))",
                    "{{le}}",
                    fmt="heatmap",
                )
            )
            .calculate(False)
            .color(heatmap_colors("Spectral"))
            .y_axis(heatmap.YAxisConfig().unit("none"))
            .cell_values(heatmap.CellValues().unit("pps"))
        )
        .with_panel(
            table_panel(
                "Per-chip summary",
                "ADC mean, ADC stddev and hit rate of every selected chip (sortable; highest stddev first).",
                summary_targets,
                [
                    transformation("merge"),
                    organize(
                        exclude=["Time"],
                        rename={"Value #A": "ADC mean", "Value #B": "ADC stddev", "Value #C": "hit rate"},
                    ),
                    sort_by("ADC stddev"),
                ],
                w=24,
                h=10,
            ).override_by_name("hit rate", [dm.DynamicConfigValue(id_val="unit", value="hertz")])
        )
    )

    dash = dash.with_row(db.Row("Errors and FIFO flags"))
    parity = f"rate(larpix_chip_parity_errors_total{{{IOG}}}[$__rate_interval])"
    packets = f"rate(larpix_chip_packets_total{{{IOG}}}[$__rate_interval])"
    dash = (
        dash.with_panel(
            ts_panel(
                "Parity error ratio by tile",
                "Data packets with a parity error / all data packets, per tile.",
                [query(f"sum by (tile) ({with_tile(parity)}) / sum by (tile) ({with_tile(packets)})", "tile {{tile}}")],
                "percentunit",
                w=8,
            )
        )
        .with_panel(
            ts_panel(
                "FIFO flag rate",
                "Data packets per second carrying a local/shared FIFO half/full flag.",
                [
                    query(
                        "sum by (io_group, fifo, level) "
                        f"({with_tile(f'rate(larpix_chip_fifo_flags_total{{{IOG}}}[$__rate_interval])')})",
                        "io_group {{io_group}} {{fifo}} {{level}}",
                    )
                ],
                "pps",
                w=8,
            )
        )
        .with_panel(
            table_panel(
                "Top 10 chips by parity error ratio",
                "Chips with the highest share of data packets failing the parity check.",
                [query(f"topk(10, {with_tile(f'({parity} / {packets})')} > 0)", instant=True, fmt="table")],
                [
                    organize(exclude=["Time", "job"], rename={"Value": "parity error ratio"}),
                    sort_by("parity error ratio"),
                ],
                w=8,
            ).override_by_name("parity error ratio", [dm.DynamicConfigValue(id_val="unit", value="percentunit")])
        )
    )

    dash = dash.with_row(db.Row("Reference"))
    ratio = with_tile(f"larpix_chip_reference_rate_ratio{{{IOG}}}")
    shift = with_tile(f"larpix_chip_reference_pedestal_shift{{{IOG}}}")
    chi2 = with_tile(f"larpix_chip_reference_rate_chi2{{{IOG}}}")
    only_with_reference = " Only when the exporter runs with --reference FILE."
    dash = (
        dash.with_panel(
            ts_panel(
                "Hit rate / reference by tile",
                "Hit rate over the reference run's hit rate, averaged over the chips of each tile; dashed: the "
                "reference_rate_ratio warning range 0.5-2." + only_with_reference,
                [query(f"avg by (tile) ({ratio})", "tile {{tile}}")],
                "none",
                w=8,
            )
            .thresholds(thresholds((None, "red"), (0.5, "green"), (2, "red")))
            .thresholds_style(cb.GraphThresholdsStyleConfig().mode(cm.GraphThresholdsStyleMode.DASHED))
            .no_value(NO_REFERENCE)
        )
        .with_panel(
            ts_panel(
                "Pedestal shift from reference by tile",
                "Mean ADC minus the reference run's mean ADC, averaged over the chips of each tile; dashed: "
                "the reference_pedestal_shift warning range -5 to 5 ADC." + only_with_reference,
                [query(f"avg by (tile) ({shift})", "tile {{tile}}")],
                "none",
                w=8,
            )
            .thresholds(thresholds((None, "red"), (-5, "green"), (5, "red")))
            .thresholds_style(cb.GraphThresholdsStyleConfig().mode(cm.GraphThresholdsStyleMode.DASHED))
            .no_value(NO_REFERENCE)
        )
        .with_panel(
            ts_panel(
                "Rate chi-square per channel by tile",
                "Chi-square per channel of the chips' per-channel hit counts against the reference, highest "
                "chip of each tile (about 1 when the channels behave as in the reference)." + only_with_reference,
                [query(f"max by (tile) ({chi2})", "tile {{tile}}")],
                "none",
                w=8,
            ).no_value(NO_REFERENCE)
        )
        .with_panel(
            table_panel(
                "Chips against the reference",
                "Rate ratio, pedestal shift and rate chi-square per channel of every selected chip against the "
                "reference run; highest chi-square first." + only_with_reference,
                [
                    query(ratio, ref="A", instant=True, fmt="table"),
                    query(shift, ref="B", instant=True, fmt="table"),
                    query(chi2, ref="C", instant=True, fmt="table"),
                ],
                [
                    transformation("merge"),
                    organize(
                        exclude=["Time", "job"],
                        rename={"Value #A": "rate ratio", "Value #B": "pedestal shift", "Value #C": "rate chi2"},
                    ),
                    sort_by("rate chi2"),
                ],
                w=24,
                h=10,
            ).no_value(NO_REFERENCE)
        )
    )
    return finish(dash)


def exporter() -> dm.Dashboard:
    dash = new_dashboard(
        "larpix-exporter",
        "LArPix / Exporter",
        "Health of the larpix-dqm exporter itself: polls, ingest, read and decode errors.",
    )
    dash = dash.with_row(db.Row("Status"))
    dash = (
        dash.with_panel(target_up_panel())
        .with_panel(ingest_loop_panel("1 while the ingest loop runs and its last poll completed."))
        .with_panel(
            stat_panel(
                "Version",
                "larpix_exporter_build_info.",
                query("larpix_exporter_build_info", "{{version}}", instant=True),
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
                query("max(larpix_window_seconds)"),
                "s",
                steps=[(None, "blue")],
            ).graph_mode(cm.BigValueGraphMode.NONE)
        )
        .with_panel(
            stat_panel(
                "Since last poll",
                "Wall time since the last completed poll.",
                query("time() - max(larpix_exporter_last_poll_timestamp_seconds)"),
                "s",
                steps=[(None, "green"), (30, "yellow"), (120, "red")],
            )
        )
        .with_panel(
            stat_panel(
                "Since last ingest",
                "Wall time since new packets were last ingested.",
                query("time() - max(larpix_exporter_last_ingest_timestamp_seconds)"),
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
                        "sum by (format) (rate(larpix_exporter_packets_ingested_total[$__rate_interval]))",
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
                    query("larpix_exporter_ingest_lag_seconds", "ingest lag {{instance}}", ref="A"),
                    query(
                        "time() - larpix_exporter_last_data_timestamp_seconds",
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
                    query("larpix_exporter_poll_duration_seconds", "poll duration {{instance}}", ref="A"),
                ],
                "s",
            )
        )
        .with_panel(
            ts_panel(
                "Polls per second",
                "Completed polls per second.",
                [query("rate(larpix_exporter_polls_total[$__rate_interval])", "{{instance}}")],
                "ops",
            )
        )
        .with_panel(
            ts_panel(
                "Scrape duration",
                "Time the previous /metrics rendering took in the exporter.",
                [query("larpix_exporter_scrape_duration_seconds", "{{job}} {{instance}}")],
                "s",
            )
        )
        .with_panel(
            ts_panel(
                "Files tracked",
                "Data files the exporter is watching.",
                [query("larpix_exporter_files_tracked", "{{instance}}")],
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
                [query("sum by (reason) (rate(larpix_exporter_read_errors_total[$__rate_interval]))", "{{reason}}")],
                "cps",
                w=8,
            )
        )
        .with_panel(
            ts_panel(
                "Files in error by reason",
                "Files whose last read failed, by reason.",
                [query("sum by (reason) (larpix_exporter_files_in_error)", "{{reason}}")],
                "none",
                w=8,
            ).stacking(cb.StackingConfig().mode(cm.StackingMode.NORMAL))
        )
        .with_panel(
            ts_panel(
                "Decode errors by kind",
                "Words the decoder rejected per second (bad_message, unknown_word, implausible_timestamp).",
                [query("sum by (kind) (rate(larpix_exporter_decode_errors_total[$__rate_interval]))", "{{kind}}")],
                "cps",
                w=8,
            )
        )
    )
    return finish(dash)


def pixelmaps() -> dm.Dashboard:
    dash = new_dashboard(
        "larpix-pixelmaps",
        "LArPix / Pixel maps",
        "Matplotlib plots served by the exporter under /plots/: anode overview and per-tile pixel maps.",
        extra_variables=[
            db.TextBoxVariable("exporter_url")
            .label("Exporter URL")
            .description("Base URL of larpix-dqm as your browser reaches it (the images load in the browser).")
            .default_value(EXPORTER_URL)
            .current(dm.VariableOption(selected=True, text=EXPORTER_URL, value=EXPORTER_URL))
        ],
    )
    # ${__to} changes on every refresh of a relative time range, so browsers reload the PNGs.
    cache_buster = "?t=${__to}"

    def img(name: str, alt: str) -> str:
        return (
            f'<a href="${{exporter_url}}/plots/{name}.png" target="_blank">'
            f'<img src="${{exporter_url}}/plots/{name}.png{cache_buster}" alt="{alt}" '
            'style="max-width:100%;max-height:100%;object-fit:contain"></a>'
        )

    dash = dash.with_row(db.Row("Anode"))
    dash = dash.with_panel(
        text.Panel()
        .title("Anode overview")
        .description("AnodeOverview.png from the exporter. Click the image to open it full size.")
        .span(24)
        .height(16)
        .mode(TextMode.HTML)
        .content(
            img("AnodeOverview", "Anode overview (not rendered yet, or exporter unreachable at ${exporter_url})")
            + '\n<p><a href="${exporter_url}/" target="_blank">All plots on the exporter landing page</a></p>'
        )
    )
    dash = dash.with_row(db.Row("io_group $io_group: pixel maps").repeat("io_group"))
    for tile in range(1, TILES_PER_IO_GROUP + 1):
        name = f"PixelMap_${{io_group}}_{tile}"
        dash = dash.with_panel(
            text.Panel()
            .title(f"io_group $io_group, tile {tile}")
            .description(
                f"{name}.png: mean ADC, ADC stddev and hit rate per pixel (io_channels {4 * tile - 3}-{4 * tile})."
            )
            .span(6)
            .height(16)
            .mode(TextMode.HTML)
            .content(img(name, f"pixel map io_group ${{io_group}} tile {tile} not rendered yet"))
        )
    return finish(dash)


DASHBOARDS = {
    "larpix-overview": overview,
    "larpix-chips": chips,
    "larpix-exporter": exporter,
    "larpix-pixelmaps": pixelmaps,
}


# --------------------------------------------------------------------------- output


def render(model: dm.Dashboard) -> str:
    """Serialise a dashboard model: sorted keys, indent 2, trailing newline."""
    return json.dumps(model, cls=JSONEncoder, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def build_all() -> dict[str, str]:
    """Return ``{file name: JSON text}`` for every dashboard."""
    out = {}
    for uid, build in DASHBOARDS.items():
        model = build()
        if model.uid != uid:
            raise AssertionError(f"dashboard {build.__name__} has uid {model.uid!r}, expected {uid!r}")
        out[f"{uid}.json"] = render(model)
    return out


def check_sdk_version() -> None:
    try:
        installed = metadata.version(SDK_DISTRIBUTION)
    except metadata.PackageNotFoundError:  # pragma: no cover - import above would fail first
        installed = None
    if installed != SDK_VERSION:
        sys.exit(
            f"{SDK_DISTRIBUTION} {installed} is installed but dashboards are generated with "
            f"{SDK_VERSION}: pip install '{SDK_DISTRIBUTION}=={SDK_VERSION}'"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory (default: dashboards/json)")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if the output directory is stale")
    args = parser.parse_args(argv)
    check_sdk_version()

    files = build_all()
    if args.check:
        stale = [
            name
            for name, body in files.items()
            if not (args.out / name).is_file() or (args.out / name).read_text() != body
        ]
        extra = sorted(p.name for p in args.out.glob("*.json") if p.name not in files)
        for name in stale:
            print(f"stale: {args.out / name}", file=sys.stderr)
        for name in extra:
            print(f"not generated (delete it or add it to generate.py): {args.out / name}", file=sys.stderr)
        if stale or extra:
            print("run: python dashboards/generate.py", file=sys.stderr)
            return 1
        return 0

    args.out.mkdir(parents=True, exist_ok=True)
    for name, body in files.items():
        (args.out / name).write_text(body)
        print(f"wrote {args.out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
