"""``PixelMap_<io_group>_<tile>``: one tile's pixels at their positions, three quantities."""

from __future__ import annotations

from dataclasses import dataclass

from matplotlib.figure import Figure
from matplotlib.text import Text

from larpix_dqm.exporter.quality.status import ChannelStatus
from larpix_dqm.plots.base import PlotContext
from larpix_dqm.plots.cached import CachedFigure
from larpix_dqm.plots.draw import (
    MEAN_CMAP,
    RATE_CMAP,
    STD_CMAP,
    TilePanel,
    colour_bar,
    map_layout,
    new_figure,
    rate_norm,
    robust_norm,
    status_legend,
    titles,
    window_text,
)
from larpix_dqm.plots.pixels import PixelPlot, TileGrid, TileImages, TileRef, tile_images

#: The three panels: colour map, panel title, colour bar label, colour bar extension.
PANELS = (
    (RATE_CMAP, "hit rate", "hit rate [Hz]", "neither"),
    (MEAN_CMAP, "mean ADC", "mean ADC [ADC counts]", "both"),
    (STD_CMAP, "ADC standard deviation", "ADC standard deviation [ADC counts]", "both"),
)


@dataclass
class _TileFigure:
    """A drawn pixel map kept for the next cycle, and for the tiles at the same place in other io_groups: its
    figure, panels and title texts."""

    fig: Figure
    noisy_rate_hz: float
    panels: list[TilePanel]
    title: Text
    subtitle: Text


def _place(grid: TileGrid) -> tuple:
    """Where a tile's map lies: its shape and extent."""
    return grid.shape, grid.extent


class PixelMap(PixelPlot):
    """Hit rate (log colour scale), mean ADC and ADC standard deviation of every pixel of a tile.

    One image per tile, named ``PixelMap_<io_group>_<tile>`` with the tile counted within its
    io_group (1..8 on a module: module tile 9 is ``PixelMap_2_1``). Values are the window
    statistics of ``/metrics``; silent pixels are grey, unknown ones (not enough data yet)
    blue-grey, noisy ones ringed in red, inefficient ones in orange. A figure is built once per
    place (the tiles at the same place in other io_groups share it: the same axes and ticks, the
    costliest part of a first render) and later cycles only change its data; colour bars, status
    layers and the title are rendered again only when they change, kept for each tile of the place.
    """

    def __init__(self) -> None:
        super().__init__()
        self._figures: dict[tuple, _TileFigure] = {}  # by ``_place``

    def tiles(self, ctx: PlotContext) -> dict[str, TileRef]:
        if ctx.geometry is None:
            return {}
        return {f"{self.plot_name()}_{ref.suffix}": ref for ref in self.pixels(ctx).tiles(ctx.snapshot)}

    def outputs(self, ctx: PlotContext) -> list[str]:
        return list(self.tiles(ctx))

    def draw(self, name: str, ctx: PlotContext, fig: Figure | None = None) -> Figure:
        refs, view = self.tiles(ctx), self.pixels(ctx)
        ref = refs[name]
        snapshot = ctx.snapshot
        images = tile_images(view, snapshot, ref)
        norms = (rate_norm(snapshot, images.rate), robust_norm(images.mean), robust_norm(images.std, floor=0.0))
        place = _place(images.grid)
        kept = self._figures.get(place)
        noisy_rate_hz = snapshot.config.noisy_rate_hz
        if kept is None or kept.noisy_rate_hz != noisy_rate_hz:  # a figure of its own: ``fig`` may be shared
            sharing = sum(_place(view.grids[r.tile]) == place for r in refs.values())
            kept = self._figures[place] = self._build(images.grid, norms, noisy_rate_hz, sharing)
        for panel, values, norm in zip(kept.panels, (images.rate, images.mean, images.std), norms):
            panel.update(values, images.codes, norm)
        kept.title.set_text(f"{name}: {self._where(ref, ctx)}")
        kept.subtitle.set_text(f"{window_text(snapshot)}  ·  {self._counts(images)}")
        assert isinstance(kept.fig, CachedFigure)
        kept.fig.keys["title"] = kept.title.get_text()
        for i, panel in enumerate(kept.panels):
            kept.fig.keys[f"status {i}"] = panel.status_key
            kept.fig.keys[f"colour bar {i}"] = panel.values.get_clim()
        return kept.fig

    @staticmethod
    def _build(grid: TileGrid, norms: tuple, noisy_rate_hz: float, sharing: int) -> _TileFigure:
        """The figure of the ``sharing`` tiles at ``grid``'s place: three map panels with colour bars, titles
        and the legend."""
        ny, nx = grid.shape
        fig = new_figure(None, 6.0, cached=True)
        assert isinstance(fig, CachedFigure)
        maps, bars = map_layout(fig, [1, 1, 1], ny / nx)
        panels = []
        for i, ((ax,), bar, norm, (cmap, panel_title, label, extend)) in enumerate(zip(maps, bars, norms, PANELS)):
            panel = TilePanel(ax, grid, norm, cmap)
            ax.set_title(panel_title, fontsize=11)
            colour_bar(fig, panel.scale, bar, label, extend)
            fig.dynamic(*panel.artists, *ax.spines.values())  # the frame stays over the images
            fig.group(f"status {i}", panel.status, keep=sharing)
            fig.group(f"colour bar {i}", bar, prepare=panel.show_scale, keep=2 * sharing)
            panels.append(panel)
        title, subtitle = titles(fig, "", "")
        fig.group("title", title, keep=sharing)
        fig.dynamic(subtitle)
        status_legend(fig, noisy_rate_hz)
        return _TileFigure(fig, noisy_rate_hz, panels, title, subtitle)

    @staticmethod
    def _where(ref: TileRef, ctx: PlotContext) -> str:
        where = f"io_group {ref.io_group}, tile {ref.local}"
        if ctx.geometry is not None and ctx.geometry.has_io_mapping:
            where += f" (module tile {ref.tile})"
        return where

    @staticmethod
    def _counts(images: TileImages) -> str:
        """How many pixels the map covers, how many sent hits in the window, and how many have each status that
        some have (all eight did not fit the figure's width)."""
        pixels = int((images.codes >= 0).sum())
        seen = int(((images.codes >= 0) & (images.rate > 0)).sum())
        statuses = (*((s, s.label) for s in ChannelStatus.judged()), (ChannelStatus.NONE, "not expected"))
        counts = ", ".join(f"{n:,} {label}" for n, label in ((images.count(s), label) for s, label in statuses) if n)
        return f"{pixels:,} pixels, {seen:,} seen" + (f": {counts}" if counts else "")
