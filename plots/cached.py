"""``CachedFigure``: a figure that renders its unchanging parts once and redraws only what changes.

A pixel map is mostly text (ticks, labels, legend, colour bars), which costs far more to render
than its images. Artists marked dynamic are hidden while the rest is rendered once into a
background; later Agg renders (PNG) restore that background and draw only the dynamic artists
over it. Parts that change now and then (a colour bar when its limits change, a status layer,
a title) are *groups*: each is rendered over the background once per value of its key and kept
as a patch of pixels, pasted back while the key stays the same. Other renderers (SVG, PDF)
always draw the whole figure.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg, RendererAgg
from matplotlib.figure import Figure
from matplotlib.transforms import Bbox, BboxBase


@dataclass
class _Group:
    """Artists rendered together over the background, kept as pixels for the last few keys."""

    artists: list[Artist]
    prepare: Callable[[Any], None] | None
    keep: int
    patches: dict[Any, Any] = field(default_factory=dict)  # key: pixels, oldest first


class CachedFigure(Figure):
    """A ``Figure`` whose non-dynamic artists are rendered once per size (Agg only).

    The background is what the figure shows without its dynamic artists and groups, so
    everything that changes between cycles must be marked with ``dynamic``, or be in a
    ``group`` whose key (``keys[name]``) changes with it (or the figure ``clear``-ed).
    Dynamic artists are drawn over the rest in z order, so they should not overlap static
    artists that must stay on top of them; groups must not overlap each other.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        FigureCanvasAgg(self)  # one renderer kept, instead of one per image
        self._dynamic: list[Artist] = []
        self._groups: dict[str, _Group] = {}
        #: What each group shows (hashable), set by the plot before a render: a new key renders it again.
        self.keys: dict[str, Any] = {}
        self._background: Any = None
        self._background_key: tuple | None = None

    def dynamic(self, *artists: Artist) -> None:
        """Mark artists (of this figure or its axes) as changing between renders."""
        self._dynamic.extend(artists)
        self._background = None

    def group(self, name: str, *artists: Artist, prepare: Callable[[Any], None] | None = None, keep: int = 1) -> None:
        """Artists that change together, now and then: rendered again when ``keys[name]`` changes.

        ``prepare(key)`` runs before they are rendered for a key not kept (so a colour bar is
        only updated when it is drawn); the pixels of the last ``keep`` keys are kept, so a
        value flipping between two keys (limits at a rounding boundary) costs nothing.
        """
        self._groups[name] = _Group(list(artists), prepare, keep)
        self._background = None

    def clear(self, keep_observers: bool = False) -> None:
        super().clear(keep_observers)
        self._dynamic, self._groups, self.keys, self._background = [], {}, {}, None

    def draw(self, renderer: Any) -> None:
        if not isinstance(renderer, RendererAgg) or not (self._dynamic or self._groups) or not self.get_visible():
            super().draw(renderer)
            return
        size = (renderer.width, renderer.height, renderer.dpi)
        if self._background is None or self._background_key != size:
            changing = [*self._dynamic, *(a for group in self._groups.values() for a in group.artists)]
            shown = [artist.get_visible() for artist in changing]
            for artist in changing:
                artist.set_visible(False)
            super().draw(renderer)
            self._background, self._background_key = renderer.copy_from_bbox(self.bbox), size
            for group in self._groups.values():
                group.patches = {}
            for artist, visible in zip(changing, shown):
                artist.set_visible(visible)
        else:
            renderer.restore_region(self._background)
        for name, group in self._groups.items():
            self._draw_group(group, self.keys.get(name), renderer)
        for artist in sorted(self._dynamic, key=lambda a: a.get_zorder()):
            artist.draw(renderer)
        self.stale = False

    def _draw_group(self, group: _Group, key: Any, renderer: RendererAgg) -> None:
        """Paste the group's pixels for ``key``, or render them over the background and keep them."""
        pixels = group.patches.pop(key, None)
        if pixels is not None:
            renderer.restore_region(pixels)
        else:
            if group.prepare is not None:
                group.prepare(key)
            for artist in sorted(group.artists, key=lambda a: a.get_zorder()):
                artist.draw(renderer)
            pixels = renderer.copy_from_bbox(self._extent(group.artists, renderer))  # this key's: a title's length
        group.patches[key] = pixels  # newest last
        while len(group.patches) > group.keep:
            del group.patches[next(iter(group.patches))]

    def _extent(self, artists: list[Artist], renderer: RendererAgg) -> BboxBase:
        """Pixels the artists cover as drawn now, two more around, within the figure; axes with their labels and
        a quarter inch more at the sides (a colour bar's end labels reach past its frame)."""
        boxes = []
        for artist in artists:
            if isinstance(artist, Axes):
                box = artist.get_tightbbox(renderer)
                if box is not None:
                    boxes.append(Bbox.from_extents(box.x0 - self.dpi / 4, box.y0, box.x1 + self.dpi / 4, box.y1))
            else:
                boxes.append(artist.get_window_extent(renderer))
        box = Bbox.union(boxes).padded(2)
        return Bbox.intersection(box, self.bbox) or self.bbox
