"""The geometry builders and their cache: every packaged layout gives what the YAML says, channel by channel,
whether built from the YAML or loaded from the cache, and a cache that is stale or broken is never believed."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from larpix_dqm.exporter.detector.geometry import (
    CHANNELS_PER_CHIP,
    GeometryError,
    GeometrySummary,
    cache_path,
    load_geometry,
    packaged_layouts,
)

#: What ``larpix-dqm geometries`` has listed since the layouts were added: (tiles, chips, connected channels).
KNOWN_COUNTS = {
    "layout-2.4.0.yaml": (1, 100, 4900),
    "layout-3.0.0.yaml": (1, 160, 10240),
    "multi_tile_layout-2.3.16.yaml": (16, 1600, 78400),
    "multi_tile_layout-2.4.16.yaml": (16, 1600, 78400),
}


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """Each test starts with an empty geometry cache of its own."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def reference(doc: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(chips, tiles, x, y) of a multi-tile layout, computed channel by channel the way larpix-geometry
    describes it: chip rows sorted by tile and chip_id, each pixel centred on its tile and turned by the
    tile's orientation (the builder before the array version, kept here as the reference)."""
    pitch = float(doc["pixel_pitch"])
    positions = {int(k): (float(v[0]), float(v[1])) for k, v in doc["chip_channel_to_position"].items()}
    x_size = (max(p[0] for p in positions.values()) - min(p[0] for p in positions.values()) + 1) * pitch
    y_size = (max(p[1] for p in positions.values()) - min(p[1] for p in positions.values()) + 1) * pitch
    chips, tiles, xs, ys = [], [], [], []
    for tile in sorted(int(t) for t in doc["tile_chip_to_io"]):
        orient, offset = doc["tile_orientations"][tile], doc["tile_positions"][tile]
        for chip, io in sorted((int(c), int(io)) for c, io in doc["tile_chip_to_io"][tile].items()):
            chips.append((io // 1000, io % 1000, chip))
            tiles.append(tile)
            x, y = [np.nan] * CHANNELS_PER_CHIP, [np.nan] * CHANNELS_PER_CHIP
            for channel in range(CHANNELS_PER_CHIP):
                pos = positions.get(chip * 1000 + channel)
                if pos is not None:
                    x[channel] = (pos[0] * pitch + pitch / 2 - x_size / 2) * orient[2] + offset[2]
                    y[channel] = (pos[1] * pitch + pitch / 2 - y_size / 2) * orient[1] + offset[1]
            xs.append(x)
            ys.append(y)
    return np.array(chips), np.array(tiles), np.array(xs), np.array(ys)


def same(a, b) -> None:
    assert a.x.tobytes() == b.x.tobytes() and a.y.tobytes() == b.y.tobytes()
    for name in ("chips", "tiles", "connected"):
        assert getattr(a, name).dtype == getattr(b, name).dtype
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert (a.path, a.pixel_pitch, a.by_chip_id) == (b.path, b.pixel_pitch, b.by_chip_id)


@pytest.mark.slow
@pytest.mark.parametrize("layout", packaged_layouts(), ids=lambda p: p.name)
def test_every_packaged_layout_matches_its_yaml_and_its_cached_copy(layout):
    built = load_geometry(layout)
    assert cache_path(layout.read_bytes()).exists()
    summary = GeometrySummary.of(built)
    assert (summary.tiles, summary.chips, summary.channels) == KNOWN_COUNTS[layout.name]
    assert built.chips.dtype == np.uint8 and built.x.shape == (summary.chips, CHANNELS_PER_CHIP)
    doc = yaml.safe_load(layout.read_text())
    if "tile_chip_to_io" in doc:
        chips, tiles, x, y = reference(doc)
        np.testing.assert_array_equal(built.chips, chips)
        np.testing.assert_array_equal(built.tiles, tiles)
        np.testing.assert_array_equal(built.x, x)  # NaN where the reference has none, bit for bit elsewhere
        np.testing.assert_array_equal(built.y, y)
        assert built.by_chip_id == {}
    else:
        pixels = {int(p[0]): (p[1], p[2]) for p in doc["pixels"]}
        assert built.by_chip_id == {int(c[0]): row for row, c in enumerate(doc["chips"])}
        for row in (0, len(doc["chips"]) // 2, len(doc["chips"]) - 1):
            for channel, pixel in enumerate(doc["chips"][row][1]):
                expected = pixels[pixel] if pixel is not None else (np.nan, np.nan)
                np.testing.assert_array_equal((built.x[row, channel], built.y[row, channel]), expected)
    same(load_geometry(layout), built)  # the second load comes from the cache


def small_layout(orientations: dict) -> dict:
    """Two tiles of two chips, with one channel missing (not connected), another chip's channels only."""
    return {
        "pixel_pitch": 4.4,
        "tile_chip_to_io": {1: {11: 1001, 12: 1002}, 2: {11: 2003, 30: 2004}},
        "tile_positions": {1: [0.0, 10.0, 20.0], 2: [0.0, -10.0, 50.5]},
        "tile_orientations": orientations,
        "chip_channel_to_position": {
            **{11 * 1000 + c: [c % 8, c // 8] for c in range(CHANNELS_PER_CHIP) if c != 7},
            **{12 * 1000 + c: [8 + c % 8, c // 8] for c in range(CHANNELS_PER_CHIP)},
        },
    }


def test_a_layout_with_gaps_and_turned_tiles_matches_the_reference(tmp_path):
    doc = small_layout({1: [0, 1, -1], 2: [0, -1, 1]})
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(doc))
    geometry = load_geometry(path)
    chips, tiles, x, y = reference(doc)
    np.testing.assert_array_equal(geometry.chips, chips)
    np.testing.assert_array_equal(geometry.tiles, tiles)
    np.testing.assert_array_equal(geometry.x, x)
    np.testing.assert_array_equal(geometry.y, y)
    assert geometry.connected.sum(axis=1).tolist() == [63, 64, 63, 0]  # chip 30 has no positions
    assert geometry.row_of(2, 3, 11) == 2


def test_an_edited_layout_is_built_anew_not_taken_from_the_cache(tmp_path):
    path = tmp_path / "layout.yaml"
    path.write_text(yaml.safe_dump(small_layout({1: [0, 1, 1], 2: [0, 1, 1]})))
    before = load_geometry(path)
    path.write_text(yaml.safe_dump(small_layout({1: [0, 1, 1], 2: [0, -1, -1]})))
    after = load_geometry(path)
    np.testing.assert_array_equal(after.x[:2], before.x[:2])
    assert not np.array_equal(after.x[2:], before.x[2:], equal_nan=True)


def test_a_broken_cache_file_is_rebuilt_and_an_unwritable_cache_only_costs_time(tmp_path, monkeypatch):
    path = tmp_path / "layout.yaml"
    path.write_text(yaml.safe_dump(small_layout({1: [0, 1, 1], 2: [0, 1, 1]})))
    built = load_geometry(path)
    cache = cache_path(path.read_bytes())
    cache.write_bytes(b"PK\x03\x04 not a zip file")
    same(load_geometry(path), built)
    same(load_geometry(path), built)  # rewritten by the load before
    blocked = tmp_path / "file"
    blocked.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocked))  # a file where the cache directory would be
    same(load_geometry(path), built)


def test_malformed_layouts_are_refused_naming_the_file(tmp_path):
    bad = small_layout({1: [0, 1, 1], 2: [0, 1, 1]})
    bad["chip_channel_to_position"][11000] = [1]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(GeometryError, match=r"bad\.yaml: malformed multi-tile layout"):
        load_geometry(path)
    del bad["chip_channel_to_position"][11000]
    bad["tile_chip_to_io"][2][30] = 300_004  # io_group 300
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(GeometryError, match="outside 0-255"):
        load_geometry(path)
