"""The ``larpix-pixelmaps`` dashboard: the exporter's matplotlib plots (anode overview, per-tile pixel maps)."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import text
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models.text import TextMode

from dashboards.panels import finish, new_dashboard
from larpix_dqm.exporter.monitoring import MixinConfig

UID = "larpix-pixelmaps"
# Pixel-map plugins are named PixelMap_<io_group>_<tile within the io_group> (larpix-monitor's
# naming): a module has 8 tiles per io_group.
TILES_PER_IO_GROUP = 8


def build(monitoring: MixinConfig) -> dm.Dashboard:
    """The pixel-map dashboard; the images load from ``monitoring.exporter_url`` by default."""
    dash = new_dashboard(
        UID,
        "LArPix / Pixel maps",
        "Matplotlib plots served by the exporter under /plots/: anode overview and per-tile pixel maps.",
        monitoring,
        extra_variables=[
            db.TextBoxVariable("exporter_url")
            .label("Exporter URL")
            .description("Base URL of larpix-dqm as your browser reaches it (the images load in the browser).")
            .default_value(monitoring.exporter_url)
            .current(dm.VariableOption(selected=True, text=monitoring.exporter_url, value=monitoring.exporter_url))
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
