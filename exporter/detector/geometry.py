"""Pixel geometry: which chips and channels to expect, and where each pixel sits (mm).

Reads the larpix-geometry YAML files: single-tile layouts (``chips`` + ``pixels``, e.g.
layout-2.4.0.yaml) and multi-tile module layouts (``tile_chip_to_io`` +
``chip_channel_to_position``, e.g. multi_tile_layout-2.4.16.yaml). The layouts shipped in
``exporter/data`` can be given by name, with or without ``.yaml``, from any directory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import tempfile
import zipfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

CHANNELS_PER_CHIP = 64
DEFAULT_MODULE_LAYOUT = "multi_tile_layout-2.4.16.yaml"
GEOMETRY_ENV = "PIXEL_GEOMETRY_PATH"
DEFAULT_GEOMETRY_FILE = "layout-2.4.0.yaml"
#: Part of the cache key: changed whenever the builders' results change, so no stale geometry is ever loaded.
GEOMETRY_CACHE_VERSION = b"larpix-dqm geometry 1\n"

log = logging.getLogger(__name__)


class GeometryError(ValueError):
    """The geometry file is missing or not a larpix-geometry layout; the message names it."""


@dataclass(frozen=True)
class Geometry:
    """Expected chips and pixel positions.

    ``chips`` rows are (io_group, io_channel, chip_id) and are empty for single-tile layouts,
    which carry no io mapping: there, chips are matched on ``chip_id`` alone and become
    expected once they first send data. ``x``/``y`` (mm) and ``connected`` are per chip row
    and channel; ``tiles`` gives the tile number of each chip row.
    """

    path: str
    chips: np.ndarray  # (n, 3) uint8
    tiles: np.ndarray  # (n,) int
    x: np.ndarray  # (n, 64) float, NaN where not connected
    y: np.ndarray
    connected: np.ndarray  # (n, 64) bool
    pixel_pitch: float
    by_chip_id: dict[int, int]  # single-tile: chip_id -> row; empty for module layouts

    @property
    def has_io_mapping(self) -> bool:
        """True when chips are known by (io_group, io_channel, chip_id)."""
        return not self.by_chip_id

    def only_io_groups(self, io_groups: tuple[int, ...]) -> Geometry:
        """The chips of these io_groups (one shard's); a layout without io mapping has no io_group to select."""
        if not self.has_io_mapping:
            return self
        keep = np.isin(self.chips[:, 0], io_groups)
        return dataclasses.replace(
            self,
            chips=self.chips[keep],
            tiles=self.tiles[keep],
            x=self.x[keep],
            y=self.y[keep],
            connected=self.connected[keep],
        )

    def row_of(self, io_group: int, io_channel: int, chip_id: int) -> int | None:
        """Row of a chip in the per-chip arrays, or None if the geometry does not know it."""
        if self.by_chip_id:
            return self.by_chip_id.get(int(chip_id))
        return self._index.get((int(io_group), int(io_channel), int(chip_id)))

    @property
    def _index(self) -> dict[tuple[int, int, int], int]:
        cached = self.__dict__.get("_index_cache")
        if cached is None:
            cached = {tuple(int(v) for v in row): i for i, row in enumerate(self.chips)}
            object.__setattr__(self, "_index_cache", cached)
        return cached


def _fail(path: str, problem: str) -> GeometryError:
    return GeometryError(f"geometry file {path}: {problem}")


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        known = ", ".join(layout.stem for layout in packaged_layouts())
        raise _fail(path, f"no such file, nor a packaged layout ({known}; 'larpix-dqm geometries')") from None
    except OSError as err:
        raise _fail(path, err.strerror or str(err)) from None


def _load_yaml(path: str, data: bytes) -> dict:
    """The layout document, parsed by libyaml's loader where PyYAML has it (ten times the pure-Python one's speed)."""
    import yaml  # only to parse a layout: a cached one is read without it

    try:
        doc = yaml.load(data.decode("utf-8"), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except UnicodeDecodeError:
        raise _fail(path, "not a text file (binary data), not YAML") from None
    except yaml.YAMLError as err:
        raise _fail(path, f"not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(doc, dict):
        raise _fail(path, "expected a mapping at the top level")
    return doc


def _single_tile(path: str, doc: dict) -> Geometry:
    try:
        pixels = {int(p[0]): (float(p[1]), float(p[2])) for p in doc["pixels"]}
        chip_rows = [(int(c[0]), list(c[1])) for c in doc["chips"]]
    except (KeyError, TypeError, ValueError, IndexError) as err:
        raise _fail(path, f"malformed 'chips'/'pixels' entries ({err!r})") from None
    n = len(chip_rows)
    x = np.full((n, CHANNELS_PER_CHIP), np.nan)
    y = np.full((n, CHANNELS_PER_CHIP), np.nan)
    for row, (_, channel_pixels) in enumerate(chip_rows):
        if len(channel_pixels) > CHANNELS_PER_CHIP:
            raise _fail(path, f"chip row {row} lists more than {CHANNELS_PER_CHIP} channels")
        for channel, pixel in enumerate(channel_pixels):
            if pixel is None:
                continue
            if pixel not in pixels:
                raise _fail(path, f"chip row {row} channel {channel} names unknown pixel {pixel}")
            x[row, channel], y[row, channel] = pixels[pixel]
    xs = np.array(sorted({p[0] for p in pixels.values()}))
    pitch = float(np.median(np.diff(xs))) if len(xs) > 1 else 1.0
    return Geometry(
        path=path,
        chips=np.zeros((0, 3), np.uint8),
        tiles=np.ones(n, int),
        x=x,
        y=y,
        connected=~np.isnan(x),
        pixel_pitch=pitch,
        by_chip_id={chip_id: row for row, (chip_id, _) in enumerate(chip_rows)},
    )


def _multi_tile(path: str, doc: dict) -> Geometry:
    """Chip rows sorted by (tile, chip_id), each channel at its tile's position (``chip_channel_to_position``
    keys are chip_id * 1000 + channel), built with array operations: 409,600 channels take milliseconds."""
    try:
        pitch = float(doc["pixel_pitch"])
        to_position = doc["chip_channel_to_position"]
        keys = np.fromiter(map(int, to_position), np.int64, len(to_position))
        grid = np.array(list(to_position.values()), float)
        tile_io = {int(t): {int(c): int(io) for c, io in m.items()} for t, m in doc["tile_chip_to_io"].items()}
        tile_pos = {int(t): [float(v) for v in p] for t, p in doc["tile_positions"].items()}
        tile_orient = {int(t): [float(v) for v in o] for t, o in doc["tile_orientations"].items()}
        if grid.ndim != 2 or grid.shape[1] < 2:
            raise ValueError("chip_channel_to_position values must be [x, y] pairs")
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as err:
        raise _fail(path, f"malformed multi-tile layout ({err!r})") from None
    missing = set(tile_io) - set(tile_pos) - set(tile_orient)
    if missing:
        raise _fail(path, f"tiles {sorted(missing)} have no position or orientation")
    x_size = (grid[:, 0].max() - grid[:, 0].min() + 1) * pitch
    y_size = (grid[:, 1].max() - grid[:, 1].min() + 1) * pitch
    rows = np.array(
        [(tile, chip, io) for tile in sorted(tile_io) for chip, io in sorted(tile_io[tile].items())], np.int64
    ).reshape(-1, 3)
    tiles, chip_ids, io = rows[:, 0], rows[:, 1], rows[:, 2]
    chips = np.stack([io // 1000, io % 1000, chip_ids], axis=1)
    if chips.size and (chips.min() < 0 or chips.max() > 255):
        raise _fail(path, "an io_group, io_channel or chip_id in 'tile_chip_to_io' is outside 0-255")
    try:
        orient = np.array([tile_orient[t][1:3] for t in tiles.tolist()], float).reshape(-1, 2)
        offset = np.array([tile_pos[t][1:3] for t in tiles.tolist()], float).reshape(-1, 2)
    except (KeyError, ValueError) as err:
        raise _fail(path, f"malformed multi-tile layout ({err!r})") from None
    order = np.argsort(keys, kind="stable")
    keys, grid = keys[order], grid[order]
    wanted = chip_ids[:, None] * 1000 + np.arange(CHANNELS_PER_CHIP)
    at = np.minimum(np.searchsorted(keys, wanted), max(len(keys) - 1, 0))
    connected = keys[at] == wanted if len(keys) else np.zeros(wanted.shape, bool)
    local_x = grid[at, 0] * pitch + pitch / 2 - x_size / 2
    local_y = grid[at, 1] * pitch + pitch / 2 - y_size / 2
    x = np.where(connected, local_x * orient[:, 1:2] + offset[:, 1:2], np.nan)
    y = np.where(connected, local_y * orient[:, 0:1] + offset[:, 0:1], np.nan)
    return Geometry(path, chips.astype(np.uint8), tiles.astype(int), x, y, ~np.isnan(x), pitch, {})


def load_geometry(path: str | os.PathLike) -> Geometry:
    """Load a larpix-geometry YAML layout, a file or a packaged layout's name; GeometryError names the file and problem.

    A layout once built is kept in the user's cache (``cache_path``), keyed by the file's digest: parsing the
    YAML is most of the cost (0.1-0.4 s), loading the arrays a few milliseconds.
    """
    path = find_geometry(str(path))
    data = _read(path)
    cache = cache_path(data)
    cached = _from_cache(path, cache) if cache is not None else None
    if cached is not None:
        return cached
    doc = _load_yaml(path, data)
    if "tile_chip_to_io" in doc:
        geometry = _multi_tile(path, doc)
    elif "chips" in doc and "pixels" in doc:
        geometry = _single_tile(path, doc)
    else:
        raise _fail(path, "neither a single-tile ('chips', 'pixels') nor a multi-tile ('tile_chip_to_io') layout")
    if cache is not None:
        _to_cache(geometry, cache)
    return geometry


def resolve_geometry(explicit: str | None) -> Geometry | None:
    """Load the configured geometry (``default_geometry_path``), or None when there is none."""
    resolved = default_geometry_path(explicit)
    return load_geometry(resolved) if resolved else None


def cache_path(data: bytes) -> Path | None:
    """Where the layout whose file holds ``data`` is cached: ``$XDG_CACHE_HOME/larpix-dqm`` (else
    ``~/.cache/larpix-dqm``), named by the digest of the file and of this builder's version; None without a home."""
    try:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "larpix-dqm"
    except RuntimeError:  # no home directory to be found
        return None
    digest = hashlib.sha256(GEOMETRY_CACHE_VERSION + data).hexdigest()[:32]
    return root / f"geometry-{digest}.npz"


def _from_cache(path: str, cache: Path) -> Geometry | None:
    """The geometry cached at ``cache``, or None when there is none or it cannot be read (it is then rebuilt)."""
    try:
        with np.load(cache, allow_pickle=False) as arrays:
            x = arrays["x"]
            return Geometry(
                path,
                arrays["chips"],
                arrays["tiles"],
                x,
                arrays["y"],
                ~np.isnan(x),
                float(arrays["pixel_pitch"]),
                dict(zip(arrays["chip_ids"].tolist(), arrays["chip_rows"].tolist())),
            )
    except (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile):
        return None


def _to_cache(geometry: Geometry, cache: Path) -> None:
    """Write the built geometry to ``cache`` (atomically: another process may read it meanwhile); a cache that
    cannot be written (read-only home) only costs the next start the parse."""
    written = None
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=cache.parent, suffix=".npz", delete=False) as fh:
            written = fh.name
            np.savez(
                fh,
                chips=geometry.chips,
                tiles=geometry.tiles,
                x=geometry.x,
                y=geometry.y,
                pixel_pitch=geometry.pixel_pitch,
                chip_ids=np.array(list(geometry.by_chip_id), np.int64),
                chip_rows=np.array(list(geometry.by_chip_id.values()), np.int64),
            )
        os.replace(written, cache)
    except OSError as err:
        if written is not None:
            Path(written).unlink(missing_ok=True)
        log.debug("geometry cache %s not written: %s", cache, err)


def packaged_layout(name: str = DEFAULT_MODULE_LAYOUT) -> Path:
    """Path of a layout file shipped inside the package (``exporter/data``)."""
    path = Path(str(resources.files("larpix_dqm.exporter") / "data" / name))
    if not path.exists():
        raise GeometryError(f"geometry file {path}: not shipped with this package")
    return path


def packaged_layouts() -> list[Path]:
    """The layout files shipped inside the package, by name."""
    return sorted(Path(str(resources.files("larpix_dqm.exporter") / "data")).glob("*.yaml"))


def find_geometry(name: str) -> str:
    """``name`` if such a file exists, else the packaged layout of that name (``.yaml`` optional), else ``name``.

    A file in the working directory wins, so a site's own copy of a layout is never shadowed.
    """
    if os.path.exists(name) or os.sep in name:
        return name
    for layout in packaged_layouts():
        if name in (layout.name, layout.stem):
            return str(layout)
    return name


@dataclass(frozen=True)
class GeometrySummary:
    """What a geometry holds, as ``larpix-dqm geometries``, the log and ``larpix_exporter_geometry_info`` say it."""

    name: str  # the file name, "none" without a geometry
    tiles: int
    chips: int
    channels: int  # connected channels

    @classmethod
    def of(cls, geometry: Geometry | None) -> GeometrySummary:
        """The summary of ``geometry``; None (no geometry) has no name and no chips."""
        if geometry is None:
            return cls("none", 0, 0, 0)
        return cls(
            Path(geometry.path).name,
            len(np.unique(geometry.tiles)),
            len(geometry.tiles),
            int(geometry.connected.sum()),
        )


def unseen_chips_warning(geometry: Geometry | None) -> str | None:
    """Why chips that never send data cannot be seen with this geometry (none, or one without an io
    mapping), for the log and the status page; None when every expected chip is known from the start."""
    if geometry is not None and geometry.has_io_mapping:
        return None
    why = (
        "no geometry (--geometry PATH or NAME; 'larpix-dqm geometries' lists the packaged layouts)"
        if geometry is None
        else f"geometry {Path(geometry.path).name} maps no io_group/io_channel to its chips"
    )
    return f"{why}: chips are known only once they send data, so a chip that never sends any cannot be seen"


def default_geometry_path(explicit: str | None) -> str | None:
    """Resolve the geometry: the explicit path or name, else $PIXEL_GEOMETRY_PATH, else ./layout-2.4.0.yaml if present."""
    if explicit:
        return explicit
    if os.environ.get(GEOMETRY_ENV):
        return os.environ[GEOMETRY_ENV]
    return DEFAULT_GEOMETRY_FILE if os.path.exists(DEFAULT_GEOMETRY_FILE) else None
