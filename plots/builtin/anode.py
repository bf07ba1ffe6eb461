"""``AnodeOverview``: every tile of the module in one image, hit rate and mean ADC."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from exporter.quality.status import ChannelStatus
from plots.base import PlotContext
from plots.draw import (
    MEAN_CMAP,
    RATE_CMAP,
    colour_bar,
    draw_tile,
    map_layout,
    new_figure,
    rate_norm,
    robust_norm,
    status_legend,
    tile_outline,
    titles,
    window_text,
)
from plots.pixels import PixelPlot, TileImages, TileRef, tile_images


class AnodeOverview(PixelPlot):
    """The whole anode plane: one panel per io_group (anode) and quantity, tiles outlined and numbered.

    Left: hit rate (log colour scale) of each io_group; right: mean ADC. Colour scales are
    shared between io_groups so the anodes compare directly.
    """

    def outputs(self, ctx: PlotContext) -> list[str]:
        return [self.plot_name()] if ctx.geometry is not None else []

    def draw(self, name: str, ctx: PlotContext, fig: Figure | None = None) -> Figure:
        view, stats = self.pixels(ctx), ctx.stats
        refs = view.tiles(stats)
        groups = sorted({ref.io_group for ref in refs}) or [0]
        by_group: dict[int, list[tuple[TileRef, TileImages]]] = {g: [] for g in groups}
        for ref in refs:
            by_group[ref.io_group].append((ref, tile_images(view, stats, ref)))
        everything = [images for tiles in by_group.values() for _, images in tiles]
        rates = np.concatenate([i.rate.ravel() for i in everything]) if everything else np.zeros(0)
        means = np.concatenate([i.mean.ravel() for i in everything]) if everything else np.zeros(0)
        extents = np.array([view.grids[t].extent for t in view.grids])
        width = extents[:, 1].max() - extents[:, 0].min()
        height = extents[:, 3].max() - extents[:, 2].min()
        fig = new_figure(fig, 8.0)
        (rate_axes, mean_axes), bars = map_layout(fig, [len(groups), len(groups)], height / width)
        scales = (
            (rate_axes, rate_norm(stats, rates), RATE_CMAP, "rate", "hit rate [Hz]", "neither"),
            (mean_axes, robust_norm(means), MEAN_CMAP, "mean", "mean ADC [ADC counts]", "both"),
        )
        for (axes, norm, cmap, field, label, extend), bar in zip(scales, bars):
            image = None
            for ax, group in zip(axes, groups):
                for ref, images in by_group[group]:
                    image = draw_tile(ax, images.grid, getattr(images, field), images.codes, norm, cmap)
                    tile_outline(ax, images.grid, str(ref.tile) if view.geometry.has_io_mapping else None)
                ax.set_xlim(extents[:, 0].min(), extents[:, 1].max())
                ax.set_ylim(extents[:, 2].min(), extents[:, 3].max())
                ax.set_title(f"io_group {group}: {'hit rate' if field == 'rate' else 'mean ADC'}", fontsize=11)
            if image is not None:
                colour_bar(fig, image, bar, label, extend)
        silent = sum(i.count(ChannelStatus.SILENT) for i in everything)
        unknown = sum(i.count(ChannelStatus.UNKNOWN) for i in everything)
        noisy = sum(i.count(ChannelStatus.NOISY) for i in everything)
        pixels = sum(int((i.codes >= 0).sum()) for i in everything)
        titles(
            fig,
            f"{name}: {len(refs)} tiles, {pixels} pixels (tile numbers as in the geometry)",
            f"{window_text(stats)}  ·  {silent} silent, {noisy} noisy, {unknown} unknown pixels",
        )
        status_legend(fig, stats.config.noisy_rate_hz)
        return fig
