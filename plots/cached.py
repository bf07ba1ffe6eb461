"""``CachedFigure``: a figure that renders its unchanging parts once and redraws only what changes.

A pixel map is mostly text (ticks, labels, legend, colour bars), which costs far more to render
than its images. Artists marked dynamic are hidden while the rest is rendered once into a
background; later Agg renders (PNG) restore that background and draw only the dynamic artists
over it. Parts that change now and then (colour limits, a status layer) stay in the background
and are named by ``static_key``: the background is rendered again when it changes. Other
renderers (SVG, PDF) always draw the whole figure.
"""

from __future__ import annotations

from typing import Any

from matplotlib.artist import Artist
from matplotlib.backends.backend_agg import FigureCanvasAgg, RendererAgg
from matplotlib.figure import Figure


class CachedFigure(Figure):
    """A ``Figure`` whose non-dynamic artists are rendered once per size (Agg only).

    The background is what the figure shows without its dynamic artists, so everything that
    changes between cycles must be marked with ``dynamic``, or be summarised in ``static_key``
    (or the figure ``clear``-ed).
    Dynamic artists are drawn over the background in z order, so they should not overlap
    static artists that must stay on top of them.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        FigureCanvasAgg(self)  # savefig to PNG then keeps one renderer instead of making one per image
        self._dynamic: list[Artist] = []
        self._background: Any = None
        self._background_key: tuple | None = None
        #: What the non-dynamic artists show, set by the plot: a change re-renders the background.
        self.static_key: tuple = ()

    def dynamic(self, *artists: Artist) -> None:
        """Mark artists (of this figure or its axes) as changing between renders."""
        self._dynamic.extend(artists)
        self._background = None

    def clear(self, keep_observers: bool = False) -> None:
        super().clear(keep_observers)
        self._dynamic, self._background = [], None

    def draw(self, renderer: Any) -> None:
        if not isinstance(renderer, RendererAgg) or not self._dynamic or not self.get_visible():
            super().draw(renderer)
            return
        key = (renderer.width, renderer.height, renderer.dpi, self.static_key)
        if self._background is None or self._background_key != key:
            shown = [artist.get_visible() for artist in self._dynamic]
            for artist in self._dynamic:
                artist.set_visible(False)
            super().draw(renderer)
            self._background, self._background_key = renderer.copy_from_bbox(self.bbox), key
            for artist, visible in zip(self._dynamic, shown):
                artist.set_visible(visible)
        else:
            renderer.restore_region(self._background)
        for artist in sorted(self._dynamic, key=lambda a: a.get_zorder()):
            artist.draw(renderer)
        self.stale = False
