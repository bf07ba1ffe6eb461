"""The ``larpix-chips`` dashboard: per-chip data quality (checks, hit rates by tile, channel status, ADC,
parity errors and FIFO flags, and the comparison with a reference run)."""

from __future__ import annotations

from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import heatmap, statetimeline
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm

from dashboards.panels import (
    CHIP_LABELS,
    DS,
    NO_REFERENCE,
    SELECTED,
    STATUS_MAPPING,
    STATUS_STEPS,
    dashed_ok_range,
    finish,
    heatmap_colors,
    merged_table,
    new_dashboard,
    organize,
    query,
    sort_by,
    table_panel,
    thresholds,
    tile_variable,
    topk_table,
    ts_panel,
    unit_override,
    with_tile,
)
from larpix_dqm.exporter.monitoring import MixinConfig, format_threshold
from larpix_dqm.exporter.quality.status import ChannelStatus, CheckStatus

UID = "larpix-chips"
#: The DAQ's upper noise cut (its scripts cut noisy channels at 10-50 Hz; the lower cut is the
#: exporter's noisy threshold): the red line of the noisiest-chip timeline.
DAQ_HIGH_NOISE_CUT_HZ = 50.0
#: Column order of the per-chip channel table: the problems first.
CHANNEL_TABLE_ORDER = (
    ChannelStatus.NOISY,
    ChannelStatus.SILENT,
    ChannelStatus.INEFFICIENT,
    ChannelStatus.UNKNOWN,
    ChannelStatus.ACTIVE,
    ChannelStatus.MASKED,
)


def build(monitoring: MixinConfig) -> dm.Dashboard:
    """The chips dashboard; the noise cut and the reference ranges come from ``monitoring``."""
    dash = new_dashboard(
        UID,
        "LArPix / Chips",
        "Per-chip data quality: checks, hit rates by tile, channel status, ADC, parity errors, FIFO flags and the "
        "comparison with a reference run.",
        monitoring,
        extra_variables=[tile_variable()],
    )
    hit = with_tile(f"larpix_chip_hit_rate_hertz{{{SELECTED}}}")

    dash = dash.with_row(db.Row("Checks"))
    not_ok_status = f"larpix_check_status > {int(CheckStatus.OK)}"
    not_ok = with_tile(f"(larpix_check_status{{{SELECTED}}} > {int(CheckStatus.OK)})")
    dash = (
        dash.with_panel(
            table_panel(
                "Checks not ok, by chip",
                f"Every chip and check whose status is WARNING or ERROR now ({not_ok_status}), errors "
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
        )
        .with_panel(
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
        .with_panel(
            merged_table(
                "Chips by check and status",
                "Judged chips of the selected io_groups per check: in error, in warning, unknown (not enough data yet) "
                "and ok (larpix_check_chips; only the chips not ok have a larpix_check_status series).",
                {
                    status.label: f'sum by (check) (larpix_check_chips{{status="{status.label}", {SELECTED}}})'
                    for status in sorted(CheckStatus, reverse=True)
                },
                CheckStatus.ERROR.label,
                h=7,
            )
        )
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
                f"Highest chip hit rate in each tile; yellow above {format_threshold(monitoring.noisy_rate_hz)} Hz, "
                f"red above {format_threshold(DAQ_HIGH_NOISE_CUT_HZ)} Hz (the DAQ's noise cuts)."
            )
            .datasource(DS)
            .span(12)
            .height(10)
            .unit("hertz")
            .with_target(query(f"max by (tile) ({hit})", "tile {{tile}}"))
            .show_value(cm.VisibilityMode.NEVER)
            .merge_values(False)
            .color_scheme(db.FieldColor().mode(dm.FieldColorModeId.THRESHOLDS))
            .thresholds(
                thresholds((None, "green"), (monitoring.noisy_rate_hz, "yellow"), (DAQ_HIGH_NOISE_CUT_HZ, "red"))
            )
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
            topk_table(
                "Top 10 noisiest chips",
                "Chips with the highest hit rate over the exporter window.",
                10,
                hit,
                "hit rate",
                "hertz",
                h=9,
            )
        )
    )

    dash = dash.with_row(db.Row("Channel status"))
    pixel_hit = with_tile(f"larpix_channel_hit_rate_hertz{{{SELECTED}}}")
    channels_per_status = {}
    for status in CHANNEL_TABLE_ORDER:
        channels = with_tile(f'larpix_chip_channels{{status="{status.label}", {SELECTED}}}')
        channels_per_status[status.label] = f"sum by ({CHIP_LABELS}, tile) ({channels})"
    dash = (
        dash.with_panel(
            ts_panel(
                "Channels by status",
                "Channels of the selected chips by verdict (stacked); unknown: no hit in the window and "
                "not yet provably dead (not enough data).",
                [query(f"sum by (status) ({with_tile(f'larpix_chip_channels{{{SELECTED}}}')})", "{{status}}")],
                "none",
                w=10,
                h=10,
            ).stacking(cb.StackingConfig().mode(cm.StackingMode.NORMAL))
        )
        .with_panel(
            merged_table(
                "Channels by status per chip",
                "Noisy, silent, inefficient, unknown (not enough data yet), active and masked channel counts "
                "of each chip; noisiest first.",
                channels_per_status,
                ChannelStatus.NOISY.label,
                w=14,
            )
        )
        .with_panel(
            topk_table(
                "Top 20 noisiest pixels",
                "Channels with the highest hit rate. Per-pixel series come from the larpix-per-pixel "
                "scrape job (/metrics?per_pixel=1, every 60 s); empty without it.",
                20,
                pixel_hit,
                "hit rate",
                "hertz",
                w=16,
            ).no_value("no per-pixel series (enable the larpix-per-pixel scrape job)")
        )
        .with_panel(
            topk_table(
                "Masked channels still sending",
                "Chips with masked channels (disabled list, channel_mask) that still sent data over the window: "
                "a mask the chip did not apply.",
                20,
                with_tile(f"larpix_chip_masked_active_channels{{{SELECTED}}}"),
                "channels",
                "none",
                w=8,
            ).no_value("every mask holds")
        )
    )

    dash = dash.with_row(db.Row("ADC"))
    dash = (
        dash.with_panel(
            ts_panel(
                "ADC mean by tile",
                "Mean ADC (dataword) over the window, averaged over the chips of each tile.",
                [query(f"avg by (tile) ({with_tile(f'larpix_chip_adc_mean{{{SELECTED}}}')})", "tile {{tile}}")],
                "none",
                w=8,
            )
        )
        .with_panel(
            ts_panel(
                "ADC stddev by tile",
                "ADC standard deviation over the window, averaged over the chips of each tile.",
                [query(f"avg by (tile) ({with_tile(f'larpix_chip_adc_stddev{{{SELECTED}}}')})", "tile {{tile}}")],
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
                    f"sum by (le) (rate(larpix_adc_bucket{{{SELECTED}}}[$__rate_interval]))",
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
            merged_table(
                "Per-chip summary",
                "ADC mean, ADC stddev and hit rate of every selected chip (sortable; highest stddev first).",
                {
                    "ADC mean": with_tile(f"larpix_chip_adc_mean{{{SELECTED}}}"),
                    "ADC stddev": with_tile(f"larpix_chip_adc_stddev{{{SELECTED}}}"),
                    "hit rate": hit,
                },
                "ADC stddev",
                exclude=["Time"],
            ).override_by_name("hit rate", unit_override("hertz"))
        )
    )

    dash = dash.with_row(db.Row("Errors and FIFO flags"))
    parity = f"rate(larpix_chip_parity_errors_total{{{SELECTED}}}[$__rate_interval])"
    packets = f"rate(larpix_chip_packets_total{{{SELECTED}}}[$__rate_interval])"
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
                        f"({with_tile(f'rate(larpix_chip_fifo_flags_total{{{SELECTED}}}[$__rate_interval])')})",
                        "io_group {{io_group}} {{fifo}} {{level}}",
                    )
                ],
                "pps",
                w=8,
            )
        )
        .with_panel(
            topk_table(
                "Top 10 chips by parity error ratio",
                "Chips with the highest share of data packets failing the parity check.",
                10,
                f"{with_tile(f'({parity} / {packets})')} > 0",
                "parity error ratio",
                "percentunit",
                w=8,
            )
        )
    )

    dash = dash.with_row(db.Row("Reference"))
    ratio = with_tile(f"larpix_chip_reference_rate_ratio{{{SELECTED}}}")
    shift = with_tile(f"larpix_chip_reference_pedestal_shift{{{SELECTED}}}")
    chi2 = with_tile(f"larpix_chip_reference_rate_chi2{{{SELECTED}}}")
    only_with_reference = " Only when the exporter runs with --reference FILE."
    ratio_low, ratio_high = (format_threshold(v) for v in monitoring.reference_rate_ratio_range)
    shift_low, shift_high = (format_threshold(v) for v in monitoring.reference_pedestal_shift_range)
    dash = (
        dash.with_panel(
            dashed_ok_range(
                ts_panel(
                    "Hit rate / reference by tile",
                    "Hit rate over the reference run's hit rate, averaged over the chips of each tile; dashed: the "
                    f"reference_rate_ratio warning range {ratio_low}-{ratio_high}." + only_with_reference,
                    [query(f"avg by (tile) ({ratio})", "tile {{tile}}")],
                    "none",
                    w=8,
                ),
                monitoring.reference_rate_ratio_range,
            ).no_value(NO_REFERENCE)
        )
        .with_panel(
            dashed_ok_range(
                ts_panel(
                    "Pedestal shift from reference by tile",
                    "Mean ADC minus the reference run's mean ADC, averaged over the chips of each tile; dashed: "
                    f"the reference_pedestal_shift warning range {shift_low} to {shift_high} ADC."
                    + only_with_reference,
                    [query(f"avg by (tile) ({shift})", "tile {{tile}}")],
                    "none",
                    w=8,
                ),
                monitoring.reference_pedestal_shift_range,
            ).no_value(NO_REFERENCE)
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
            merged_table(
                "Chips against the reference",
                "Rate ratio, pedestal shift and rate chi-square per channel of every selected chip against the "
                "reference run; highest chi-square first." + only_with_reference,
                {"rate ratio": ratio, "pedestal shift": shift, "rate chi2": chi2},
                "rate chi2",
            ).no_value(NO_REFERENCE)
        )
    )
    return finish(dash)
