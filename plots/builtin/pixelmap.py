"""``PixelMap_<io_group>_<tile>``: one tile's pixels at their positions, three quantities."""

from __future__ import annotations

from matplotlib.figure import Figure

from exporter.quality.status import ChannelStatus
from plots.base import PlotContext
from plots.draw import (
    MEAN_CMAP,
    RATE_CMAP,
    STD_CMAP,
    colour_bar,
    draw_tile,
    map_layout,
    new_figure,
    rate_norm,
    robust_norm,
    status_legend,
    titles,
    window_text,
)
from plots.pixels import PixelPlot, TileRef, tile_images


class PixelMap(PixelPlot):
    """Hit rate (log colour scale), mean ADC and ADC standard deviation of every pixel of a tile.

    One image per tile, named ``PixelMap_<io_group>_<tile>`` with the tile counted within its
    io_group (1..8 on a module: module tile 9 is ``PixelMap_2_1``). Values are the window
    statistics of ``/metrics``; silent pixels are grey, unknown ones (not enough data yet)
    blue-grey, noisy ones ringed in red, inefficient ones in orange.
    """

    def tiles(self, ctx: PlotContext) -> dict[str, TileRef]:
        if ctx.geometry is None:
            return {}
        return {f"{self.plot_name()}_{ref.suffix}": ref for ref in self.pixels(ctx).tiles(ctx.stats)}

    def outputs(self, ctx: PlotContext) -> list[str]:
        return list(self.tiles(ctx))

    def draw(self, name: str, ctx: PlotContext, fig: Figure | None = None) -> Figure:
        ref = self.tiles(ctx)[name]
        stats = ctx.stats
        images = tile_images(self.pixels(ctx), stats, ref)
        grid = images.grid
        ny, nx = grid.shape
        fig = new_figure(fig, 6.0)
        maps, bars = map_layout(fig, [1, 1, 1], ny / nx)
        panels = (
            (images.rate, rate_norm(stats, images.rate), RATE_CMAP, "hit rate", "hit rate [Hz]", "neither"),
            (images.mean, robust_norm(images.mean), MEAN_CMAP, "mean ADC", "mean ADC [ADC counts]", "both"),
            (
                images.std,
                robust_norm(images.std, floor=0.0),
                STD_CMAP,
                "ADC standard deviation",
                "ADC standard deviation [ADC counts]",
                "both",
            ),
        )
        for (ax,), bar, (values, norm, cmap, title, label, extend) in zip(maps, bars, panels):
            image = draw_tile(ax, grid, values, images.codes, norm, cmap)
            ax.set_title(title, fontsize=11)
            colour_bar(fig, image, bar, label, extend)
        where = f"io_group {ref.io_group}, tile {ref.local}"
        if ctx.geometry is not None and ctx.geometry.has_io_mapping:
            where += f" (module tile {ref.tile})"
        pixels = int((images.codes >= 0).sum())
        counts = ", ".join(
            f"{images.count(code)} {label}"
            for code, label in (
                *((s, s.label) for s in ChannelStatus.judged()),
                (ChannelStatus.NONE, "not expected"),
            )
        )
        titles(fig, f"{name}: {where}", f"{window_text(stats)}  ·  {pixels} pixels: {counts}")
        status_legend(fig, stats.config.noisy_rate_hz)
        return fig
