"""Pixels on the anode plane: per-tile image grids from the geometry, snapshot values on them.

Every larpix-geometry layout shipped (single tile 2.4.0 and 3.0.0, 16-tile modules) puts
the pixels of a tile on a regular grid of the pixel pitch, so a tile is drawn as one image
(``imshow`` with its extent in mm): exact positions, one artist per tile, fast.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from larpix_dqm.exporter.detector.geometry import CHANNELS_PER_CHIP, Geometry, GeometryError
from larpix_dqm.exporter.quality.accumulator import prefer_finite
from larpix_dqm.exporter.quality.snapshot import Snapshot
from larpix_dqm.plots.base import Plot, PlotContext

#: Largest distance (in pitches) of a pixel from its grid point before a layout is rejected.
GRID_TOLERANCE = 0.05


@dataclass(frozen=True)
class TileGrid:
    """The connected pixels of one geometry tile and their cells in a (ny, nx) image."""

    tile: int
    rows: np.ndarray  # geometry chip row of each pixel
    channels: np.ndarray  # channel of each pixel
    ix: np.ndarray
    iy: np.ndarray
    shape: tuple[int, int]  # (ny, nx)
    extent: tuple[float, float, float, float]  # (left, right, bottom, top) pixel edges, mm
    pitch: float

    def image(self, values: np.ndarray, fill: float = np.nan) -> np.ndarray:
        """(ny, nx) image of per-(geometry row, channel) ``values``; ``fill`` where no pixel is."""
        out = np.full(self.shape, fill, dtype=np.result_type(values.dtype, np.asarray(fill).dtype))
        out[self.iy, self.ix] = values[self.rows, self.channels]
        return out

    def centres(self, cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """x, y (mm) of the image cells where ``cells`` (ny, nx bool) is set."""
        iy, ix = np.nonzero(cells)
        left, _, bottom, _ = self.extent
        return left + (ix + 0.5) * self.pitch, bottom + (iy + 0.5) * self.pitch


def _clean(edge: float) -> float:
    """``edge`` (mm) to the nanometre, zero as 0.0 (a view from -0.0 labels its first tick "−0")."""
    return round(edge, 6) + 0.0


def _tile_grid(geometry: Geometry, tile: int) -> TileGrid:
    sel = np.flatnonzero(geometry.tiles == tile)
    rows, channels = np.nonzero(geometry.connected[sel])
    rows = sel[rows]
    x, y, pitch = geometry.x[rows, channels], geometry.y[rows, channels], geometry.pixel_pitch
    fx, fy = (x - x.min()) / pitch, (y - y.min()) / pitch
    ix, iy = np.rint(fx).astype(np.int64), np.rint(fy).astype(np.int64)
    off_grid = max(np.abs(fx - ix).max(), np.abs(fy - iy).max())
    if off_grid > GRID_TOLERANCE:
        raise GeometryError(
            f"geometry file {geometry.path}: tile {tile} pixels are not on a regular grid of the "
            f"{pitch:.3f} mm pitch (off by {off_grid:.2f} pitch); pixel maps cannot draw this layout"
        )
    ny, nx = int(iy.max()) + 1, int(ix.max()) + 1
    left, bottom = float(x.min()) - pitch / 2, float(y.min()) - pitch / 2
    right, top = left + nx * pitch, bottom + ny * pitch
    # to the nanometre, without -0.0: tiles at one place would differ by rounding (a tick at 0 shown or not)
    extent = (_clean(left), _clean(right), _clean(bottom), _clean(top))
    return TileGrid(tile, rows, channels, ix, iy, (ny, nx), extent, pitch)


@dataclass(frozen=True)
class TileRef:
    """One tile as plots name it: ``PixelMap_<io_group>_<local>``; ``tile`` is the geometry's number."""

    io_group: int
    local: int
    tile: int

    @property
    def suffix(self) -> str:
        return f"{self.io_group}_{self.local}"


class PixelView:
    """Maps snapshot chip rows onto geometry rows and draws per-pixel values tile by tile."""

    def __init__(self, geometry: Geometry) -> None:
        self.geometry = geometry
        self.grids = {int(t): _tile_grid(geometry, int(t)) for t in np.unique(geometry.tiles)}
        self._geo_rows = np.zeros(0, np.int64)

    def geo_rows(self, snapshot: Snapshot) -> np.ndarray:
        """Geometry row of each snapshot chip row (-1 when the geometry does not know the chip)."""
        keys = snapshot.chip_keys
        known = len(self._geo_rows)
        if len(keys) > known:  # snapshot chip rows never move, so only new rows are looked up
            new = [self.geometry.row_of(*row) for row in keys[known:].tolist()]
            self._geo_rows = np.concatenate([self._geo_rows, [-1 if r is None else r for r in new]]).astype(np.int64)
        return self._geo_rows[: len(keys)]

    def tiles(self, snapshot: Snapshot) -> list[TileRef]:
        """Tiles by io_group: from the geometry's io mapping, else one tile per io_group with data."""
        geo = self.geometry
        if geo.has_io_mapping:
            refs = []
            for group in np.unique(geo.chips[:, 0]).tolist():
                tiles = np.unique(geo.tiles[geo.chips[:, 0] == group]).tolist()
                refs += [TileRef(group, i + 1, tile) for i, tile in enumerate(tiles)]
            return refs
        rows = self.geo_rows(snapshot)
        groups = np.unique(snapshot.chip_keys[rows >= 0, 0]).tolist()
        return [TileRef(g, i + 1, t) for g in groups for i, t in enumerate(sorted(self.grids))]

    def field(self, snapshot: Snapshot, values: np.ndarray, io_group: int, fill: float = np.nan) -> np.ndarray:
        """(geometry chips, 64) array of a per-channel snapshot array for one io_group's chips."""
        rows = self.geo_rows(snapshot)
        mine = (rows >= 0) & (snapshot.chip_keys[:, 0] == io_group)
        out = np.full((len(self.geometry.tiles), CHANNELS_PER_CHIP), fill, dtype=np.result_type(values, fill))
        out[rows[mine]] = values[mine]
        return out


class PixelPlot(Plot):
    """Base of the plots that draw pixels at their positions: whole-detector, need a geometry on a grid."""

    per_file = False
    needs_geometry = True

    def __init__(self) -> None:
        self._view: PixelView | None = None

    @classmethod
    def check(cls, geometry: Geometry | None) -> None:
        super().check(geometry)  # raises without a geometry
        assert geometry is not None
        PixelView(geometry)  # raises GeometryError for layouts whose pixels are not on a grid

    def pixels(self, ctx: PlotContext) -> PixelView:
        """The pixel view of the context's geometry (built once)."""
        if self._view is None or self._view.geometry is not ctx.geometry:
            assert ctx.geometry is not None  # check() refused to draw without one
            self._view = PixelView(ctx.geometry)
        return self._view


@dataclass(frozen=True)
class TileImages:
    """Snapshot values of one tile as (ny, nx) images; ``codes`` is the status, -1 where no pixel."""

    grid: TileGrid
    rate: np.ndarray  # Hz, NaN where no hit in the window (or no pixel)
    mean: np.ndarray
    std: np.ndarray
    codes: np.ndarray

    def count(self, status: int) -> int:
        return int((self.codes == status).sum())


def tile_images(view: PixelView, snapshot: Snapshot, ref: TileRef) -> TileImages:
    """The images a pixel map draws for one tile."""
    grid, group = view.grids[ref.tile], ref.io_group
    rate = grid.image(view.field(snapshot, snapshot.channel_rate_hz, group))
    return TileImages(
        grid,
        np.where(rate > 0, rate, np.nan),
        # a pedestal run's ADC is that of its periodic-trigger packets
        grid.image(
            view.field(snapshot, prefer_finite(snapshot.channel_pedestal_mean, snapshot.channel_adc_mean), group)
        ),
        grid.image(view.field(snapshot, prefer_finite(snapshot.channel_pedestal_std, snapshot.channel_adc_std), group)),
        grid.image(view.field(snapshot, snapshot.channel_status.astype(np.int16), group, fill=0), fill=-1),
    )


class ChipTiles:
    """Tile series of packets: one series per (io_group, tile) of the geometry, plus 'unknown'.

    Per io_group, a table of 65,536 entries maps ``io_channel << 8 | chip_id`` to the series,
    so a chunk is sorted into tiles without a search per packet.
    """

    def __init__(self, geometry: Geometry | None) -> None:
        self.geometry = geometry
        self._tables: dict[int, np.ndarray] = {}
        if geometry is not None and geometry.has_io_mapping:
            chips = geometry.chips.astype(np.int64)
            pairs, index = np.unique(np.stack([chips[:, 0], geometry.tiles]), axis=1, return_inverse=True)
            self.pairs = list(zip(*pairs.tolist()))
            for group in np.unique(chips[:, 0]).tolist():
                mine = chips[:, 0] == group
                table = self._tables[group] = np.full(1 << 16, len(self.pairs), np.int64)
                table[chips[mine, 1] << 8 | chips[mine, 2]] = index.reshape(-1)[mine]
        else:
            self.pairs = [(g, 1) for g in range(256)]
        self.unknown = len(self.pairs)

    @property
    def n_series(self) -> int:
        return len(self.pairs) + 1

    def series(self, io_group: np.ndarray, io_channel: np.ndarray, chip_id: np.ndarray) -> np.ndarray:
        """Series index of each packet (``unknown`` for chips outside the geometry)."""
        geo = self.geometry
        out = np.full(len(io_group), self.unknown, np.int64)
        if geo is None:
            return out
        if not geo.has_io_mapping:
            known = np.isin(chip_id, np.fromiter(geo.by_chip_id, np.int64))
            out[known] = io_group[known]
            return out
        sub = io_channel.astype(np.int64) << 8 | chip_id
        for group in np.unique(io_group).tolist():
            table = self._tables.get(group)
            if table is not None:
                mine = io_group == group
                out[mine] = table[sub[mine]]
        return out

    def label(self, series: int) -> str:
        if series == self.unknown:
            return "chips not in geometry"
        group, tile = self.pairs[series]
        if self.geometry is not None and self.geometry.has_io_mapping:
            return f"tile {tile} (io_group {group})"
        return f"io_group {group}"
