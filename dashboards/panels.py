"""Builders shared by every LArPix dashboard: queries, panels, tables, variables and the dashboard frame.

Each dashboard module (overview, chips, exporter_health, pixelmaps) builds its panels from these,
so a panel kind looks and behaves the same on every dashboard.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import heatmap, prometheus, stat, statetimeline, table, timeseries
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models.heatmap import HeatmapColorMode, HeatmapColorScale
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

from larpix_dqm.exporter.monitoring import MixinConfig
from larpix_dqm.exporter.quality.status import CheckStatus

TAGS = ["larpix"]
REFRESH = "30s"

DS = dm.DataSourceRef(type_val="prometheus", uid="${datasource}")
#: The exporters selected (Grafana's ``job`` and ``instance`` variables): one shard, several, or all.
TARGETS = 'job=~"$job", instance=~"$instance"'
#: The selected exporters' selected io_groups: every per-io_group or per-chip query filters on it.
SELECTED = f'{TARGETS}, io_group=~"$io_group"'
CHIP_LABELS = "io_group, io_channel, chip_id"
# The join also matches on instance so that several exporters (e.g. one per module) never
# collide even if they share io_group numbers.
JOIN_LABELS = f"instance, {CHIP_LABELS}"

#: Panels of the exporter's reference comparison are empty unless it runs with --reference.
NO_REFERENCE = "no reference run: start the exporter with --reference FILE"


def with_tile(expr: str) -> str:
    """Join a per-chip expression with ``larpix_chip_info`` to add the ``tile`` label and
    keep only the chips of the selected io_groups and tiles (the info metric is 1)."""
    return f'{expr} * on({JOIN_LABELS}) group_left(tile) larpix_chip_info{{{SELECTED}, tile=~"$tile"}}'


# --------------------------------------------------------------------------- queries and options


def query(
    expr: str, legend: str | None = None, ref: str = "A", instant: bool = False, fmt: str | None = None
) -> prometheus.Dataquery:
    """A Prometheus query on the dashboard's datasource variable."""
    q = prometheus.Dataquery().expr(expr).ref_id(ref).datasource(DS)
    if legend is not None:
        q = q.legend_format(legend)
    if instant:
        q = q.instant()
    if fmt is not None:
        q = q.format(PromQueryFormat(fmt))
    return q


def _json_number(value: float | None) -> float | None:
    """A step value as written by hand (2, not 2.0), so thresholds read from checks keep the JSON stable."""
    if value is not None and float(value).is_integer():
        return int(value)
    return value


def thresholds(*steps: tuple[float | None, str]) -> db.ThresholdsConfig:
    """Absolute colour steps ``(from value, colour)``; the first starts at None (minus infinity)."""
    return (
        db.ThresholdsConfig()
        .mode(dm.ThresholdsMode.ABSOLUTE)
        .steps([dm.Threshold(value=_json_number(value), color=color) for value, color in steps])
    )


def transformation(name: str, **options: Any) -> dm.DataTransformerConfig:
    """A Grafana data transformation by id."""
    return dm.DataTransformerConfig(id_val=name, options=options)


def organize(exclude: Iterable[str] = (), rename: dict[str, str] | None = None) -> dm.DataTransformerConfig:
    """Hide the columns ``exclude`` of a table and rename others."""
    return transformation(
        "organize",
        excludeByName={name: True for name in exclude},
        indexByName={},
        renameByName=rename or {},
    )


def sort_by(field: str, desc: bool = True) -> dm.DataTransformerConfig:
    """Sort a table by one column, highest first unless ``desc`` is False."""
    return transformation("sortBy", fields={}, sort=[{"field": field, "desc": desc}])


def unit_override(unit: str) -> list[dm.DynamicConfigValue]:
    """Field-override properties setting a column's unit."""
    return [dm.DynamicConfigValue(id_val="unit", value=unit)]


def heatmap_colors(scheme: str) -> heatmap.HeatmapColorOptions:
    """The colour options every heatmap uses, with the colour ``scheme``."""
    return (
        heatmap.HeatmapColorOptions()
        .mode(HeatmapColorMode.SCHEME)
        .scheme(scheme)
        .fill("dark-orange")
        .scale(HeatmapColorScale.EXPONENTIAL)
        .exponent(0.5)
        .steps(64)
    )


# --------------------------------------------------------------------------- panels


def ts_panel(
    title: str, desc: str, targets: Iterable[prometheus.Dataquery], unit: str, w: int = 12, h: int = 8
) -> timeseries.Panel:
    """A time series panel with a bottom legend and a multi-series tooltip, highest first."""
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


def dashed_ok_range(panel: timeseries.Panel, ok: tuple[float, float]) -> timeseries.Panel:
    """Draw dashed lines at the ends of the range ``ok`` (red outside it, green inside)."""
    low, high = ok
    return panel.thresholds(thresholds((None, "red"), (low, "green"), (high, "red"))).thresholds_style(
        cb.GraphThresholdsStyleConfig().mode(cm.GraphThresholdsStyleMode.DASHED)
    )


def stat_panel(
    title: str,
    desc: str,
    target: prometheus.Dataquery,
    unit: str,
    steps: list[tuple[float | None, str]] | None = None,
    mappings: list[dm.ValueMap] | None = None,
    w: int = 4,
    h: int = 4,
) -> stat.Panel:
    """A single-value stat coloured by ``steps`` (background), with a sparkline."""
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


def table_panel(
    title: str,
    desc: str,
    targets: Iterable[prometheus.Dataquery],
    transformations: Iterable[dm.DataTransformerConfig],
    w: int = 12,
    h: int = 8,
) -> table.Panel:
    """A table of instant queries shaped by ``transformations``."""
    panel = table.Panel().title(title).description(desc).datasource(DS).span(w).height(h)
    for target in targets:
        panel = panel.with_target(target)
    for step in transformations:
        panel = panel.with_transformation(step)
    return panel


def topk_table(
    title: str, desc: str, k: int, expr: str, column: str, unit: str, w: int = 12, h: int = 8
) -> table.Panel:
    """The ``k`` series of ``expr`` with the highest value, one row each, the value in ``column``."""
    return table_panel(
        title,
        desc,
        [query(f"topk({k}, {expr})", instant=True, fmt="table")],
        [organize(exclude=["Time", "job"], rename={"Value": column}), sort_by(column)],
        w=w,
        h=h,
    ).override_by_name(column, unit_override(unit))


def merged_table(
    title: str,
    desc: str,
    columns: Mapping[str, str],
    sort_column: str,
    exclude: Iterable[str] = ("Time", "job"),
    w: int = 24,
    h: int = 10,
) -> table.Panel:
    """One row per series and one value column per ``{column name: expression}``, sorted by ``sort_column``."""
    refs = [chr(ord("A") + number) for number in range(len(columns))]
    return table_panel(
        title,
        desc,
        [query(expr, ref=ref, instant=True, fmt="table") for ref, expr in zip(refs, columns.values())],
        [
            transformation("merge"),
            organize(exclude=list(exclude), rename={f"Value #{ref}": name for ref, name in zip(refs, columns)}),
            sort_by(sort_column),
        ],
        w=w,
        h=h,
    )


UP_MAPPING = [
    dm.ValueMap(
        options={
            "0": dm.ValueMappingResult(text="DOWN", color="red", index=0),
            "1": dm.ValueMappingResult(text="UP", color="green", index=1),
        }
    )
]


def target_up_panel(monitoring: MixinConfig) -> stat.Panel:
    """Whether Prometheus scrapes the exporter: on the overview and the exporter dashboards."""
    return stat_panel(
        "Target up",
        f"Prometheus could scrape the exporter (up{{{monitoring.job_matcher}}}).",
        query(f"min(up{{{monitoring.job_matcher}, {TARGETS}}})", instant=True),
        "none",
        steps=[(None, "red"), (1, "green")],
        mappings=UP_MAPPING,
    ).no_value("no target")


def ingest_loop_panel(description: str) -> stat.Panel:
    """Whether the exporter's ingest loop runs (larpix_exporter_up)."""
    return stat_panel(
        "Ingest loop up",
        description,
        query(f"min(larpix_exporter_up{{{TARGETS}}})", instant=True),
        "none",
        steps=[(None, "red"), (1, "green")],
        mappings=UP_MAPPING,
    ).no_value("DOWN")


#: Grey: unknown, not enough data to judge yet.
UNKNOWN_COLOR = "#8e8e8e"
#: Colour of each check status on every status panel (grey: unknown, not enough data to judge yet).
STATUS_COLORS = {
    CheckStatus.UNKNOWN: UNKNOWN_COLOR,
    CheckStatus.OK: "green",
    CheckStatus.WARNING: "yellow",
    CheckStatus.ERROR: "red",
}
#: larpix_*_status values shown as UNKNOWN / OK / WARNING / ERROR.
STATUS_MAPPING = [
    dm.ValueMap(
        options={
            str(int(status)): dm.ValueMappingResult(text=status.label.upper(), color=color, index=int(status))
            for status, color in STATUS_COLORS.items()
        }
    )
]
#: The same colours as threshold steps, for colouring by value.
STATUS_STEPS = [(None if i == 0 else int(status), color) for i, (status, color) in enumerate(STATUS_COLORS.items())]


def status_timeline(title: str, desc: str, target: prometheus.Dataquery, w: int, h: int = 6) -> statetimeline.Panel:
    """A state timeline of larpix_*_status series: UNKNOWN / OK / WARNING / ERROR over time."""
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


# --------------------------------------------------------------------------- dashboard frame


def datasource_variable() -> db.DatasourceVariable:
    """The ``datasource`` variable: any Prometheus, the provisioned one by default."""
    return (
        db.DatasourceVariable("datasource")
        .label("Data source")
        .type("prometheus")
        .current(dm.VariableOption(selected=True, text="Prometheus", value="prometheus"))
    )


def all_option() -> dm.VariableOption:
    """The "All" choice a multi-value variable starts with."""
    return dm.VariableOption(selected=True, text="All", value="$__all")


def target_variable(name: str, query_text: str) -> db.QueryVariable:
    """A ``job`` or ``instance`` variable (the Prometheus target labels of the exporters): several at once, All by
    default, so one dashboard shows one shard, several or the whole detector."""
    return (
        db.QueryVariable(name)
        .label(name)
        .datasource(DS)
        .query(query_text)
        .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dm.VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .current(all_option())
    )


def io_group_variable() -> db.QueryVariable:
    """The ``io_group`` variable: io_groups the selected exporters saw packets of, several at once, All by default."""
    return (
        db.QueryVariable("io_group")
        .label("io_group")
        .datasource(DS)
        .query(f"label_values(larpix_packets_total{{{TARGETS}}}, io_group)")
        .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dm.VariableSort.NUMERICAL_ASC)
        .multi(True)
        .include_all(True)
        .current(all_option())
    )


def tile_variable() -> db.QueryVariable:
    """The ``tile`` variable: tiles of the selected io_groups, several at once, All by default."""
    return (
        db.QueryVariable("tile")
        .label("tile")
        .datasource(DS)
        .query(f"label_values(larpix_chip_info{{{SELECTED}}}, tile)")
        .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dm.VariableSort.NUMERICAL_ASC)
        .multi(True)
        .include_all(True)
        .current(all_option())
    )


def new_dashboard(
    uid: str, title: str, description: str, monitoring: MixinConfig, extra_variables: Iterable[Any] = ()
) -> db.Dashboard:
    """A dashboard with what every LArPix dashboard has: tags, links, refresh, alert annotations, variables."""
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
        # every scrape job of the exporters: the per-pixel job keeps only larpix_channel_* series
        .with_variable(target_variable("job", f"label_values(up{{{monitoring.job_matcher}}}, job)"))
        .with_variable(
            target_variable("instance", f'label_values(up{{{monitoring.job_matcher}, job=~"$job"}}, instance)')
        )
        .with_variable(io_group_variable())
    )
    for variable in extra_variables:
        dash = dash.with_variable(variable)
    return dash


def finish(dash: db.Dashboard) -> dm.Dashboard:
    """Build the dashboard and give every panel a stable, unique id (1, 2, ... in order)."""
    model = dash.build()
    for number, panel in enumerate(model.panels or [], start=1):
        panel.id_val = number
    return model
