"""``AnodeOverview``: every tile of the module in one image, hit rate and mean ADC."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from matplotlib.figure import Figure
from matplotlib.text import Text

from larpix_dqm.exporter.quality.status import ChannelStatus
from larpix_dqm.plots.base import PlotContext
from larpix_dqm.plots.cached import CachedFigure
from larpix_dqm.plots.draw import (
    MEAN_CMAP,
    RATE_CMAP,
    TilePanel,
    colour_bar,
    map_layout,
    new_figure,
    rate_norm,
    robust_norm,
    status_legend,
    tile_outline,
    titles,
    window_text,
)
from larpix_dqm.plots.pixels import PixelPlot, PixelView, TileRef, tile_images

#: The two quantities: TileImages field, colour map, panel title, colour bar label, colour bar extension.
FIELDS = (
    ("rate", RATE_CMAP, "hit rate", "hit rate [Hz]", "neither"),
    ("mean", MEAN_CMAP, "mean ADC", "mean ADC [ADC counts]", "both"),
)


@dataclass
class _AnodeFigure:
    """The drawn overview kept for the next cycle: figure, one panel per (quantity, tile), titles."""

    fig: Figure
    key: tuple  # the tiles drawn and the noisy threshold in the legend: a change rebuilds the figure
    panels: list[tuple[str, TileRef, TilePanel]]  # (TileImages field, tile, panel)
    title: Text
    subtitle: Text


class AnodeOverview(PixelPlot):
    """The whole anode plane: one panel per io_group (anode) and quantity, tiles outlined and numbered.

    Left: hit rate (log colour scale) of each io_group; right: mean ADC. Colour scales are
    shared between io_groups so the anodes compare directly. The figure is built once and
    later cycles only change its data; colour bars and status layers are rendered again only
    when they change.
    """

    def __init__(self) -> None:
        super().__init__()
        self._kept: _AnodeFigure | None = None

    def outputs(self, ctx: PlotContext) -> list[str]:
        return [self.plot_name()] if ctx.geometry is not None else []

    def draw(self, name: str, ctx: PlotContext, fig: Figure | None = None) -> Figure:
        view, snapshot = self.pixels(ctx), ctx.snapshot
        refs = view.tiles(snapshot)
        images = {ref: tile_images(view, snapshot, ref) for ref in refs}
        everything = list(images.values())
        rates = np.concatenate([i.rate.ravel() for i in everything]) if everything else np.zeros(0)
        means = np.concatenate([i.mean.ravel() for i in everything]) if everything else np.zeros(0)
        norms = {"rate": rate_norm(snapshot, rates), "mean": robust_norm(means)}
        key = (tuple(refs), snapshot.config.noisy_rate_hz)
        kept = self._kept
        if kept is None or kept.fig is not fig or kept.key != key:
            kept = self._kept = self._build(fig, view, refs, norms, key)
        for field, ref, panel in kept.panels:
            panel.update(getattr(images[ref], field), images[ref].codes, norms[field])
        silent = sum(i.count(ChannelStatus.SILENT) for i in everything)
        unknown = sum(i.count(ChannelStatus.UNKNOWN) for i in everything)
        noisy = sum(i.count(ChannelStatus.NOISY) for i in everything)
        pixels = sum(int((i.codes >= 0).sum()) for i in everything)
        kept.title.set_text(f"{name}: {len(refs)} tiles, {pixels} pixels (tile numbers as in the geometry)")
        kept.subtitle.set_text(f"{window_text(snapshot)}  ·  {silent} silent, {noisy} noisy, {unknown} unknown pixels")
        assert isinstance(kept.fig, CachedFigure)
        statuses: dict[str, list] = {}
        for field, ref, panel in kept.panels:
            statuses.setdefault(f"status {field} {ref.io_group}", []).append(panel.status_key)
            kept.fig.keys[f"colour bar {field}"] = panel.values.get_clim()
        kept.fig.keys.update((name, tuple(keys)) for name, keys in statuses.items())
        return kept.fig

    @staticmethod
    def _build(fig: Figure | None, view: PixelView, refs: list[TileRef], norms: dict, key: tuple) -> _AnodeFigure:
        """The overview figure: per quantity a row of io_group panels with every tile, and a colour bar."""
        groups = sorted({ref.io_group for ref in refs}) or [0]
        extents = np.array([view.grids[t].extent for t in view.grids])
        width = extents[:, 1].max() - extents[:, 0].min()
        height = extents[:, 3].max() - extents[:, 2].min()
        fig = new_figure(fig, 8.0, cached=True)
        assert isinstance(fig, CachedFigure)
        rows, bars = map_layout(fig, [len(groups), len(groups)], height / width)
        panels: list[tuple[str, TileRef, TilePanel]] = []
        for (field, cmap, title, label, extend), axes, bar in zip(FIELDS, rows, bars):
            panel = None
            for ax, group in zip(axes, groups):
                for ref in (ref for ref in refs if ref.io_group == group):
                    grid = view.grids[ref.tile]
                    panel = TilePanel(ax, grid, norms[field], cmap)
                    fig.group(f"status {field} {group}", panel.status)  # one group per axes: no overlaps
                    panels.append((field, ref, panel))
                    outline = tile_outline(ax, grid, str(ref.tile) if view.geometry.has_io_mapping else None)
                    fig.dynamic(*panel.artists, *outline)  # outlines and numbers stay over the images
                fig.dynamic(*ax.spines.values())
                ax.set_xlim(extents[:, 0].min(), extents[:, 1].max())
                ax.set_ylim(extents[:, 2].min(), extents[:, 3].max())
                ax.set_title(f"io_group {group}: {title}", fontsize=11)
            if panel is not None:  # every panel of the row has the same limits: the last one's scale
                colour_bar(fig, panel.scale, bar, label, extend)
                fig.group(f"colour bar {field}", bar, prepare=panel.show_scale, keep=2)
        title_text, subtitle = titles(fig, "", "")
        fig.dynamic(title_text, subtitle)
        status_legend(fig, key[1])
        return _AnodeFigure(fig, key, panels, title_text, subtitle)
