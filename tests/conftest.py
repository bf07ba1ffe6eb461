"""Session fixtures: the packaged geometries."""

from __future__ import annotations

import pytest

from larpix_dqm.exporter.detector.geometry import load_geometry, packaged_layout


@pytest.fixture(scope="session")
def module_geometry():
    return load_geometry(packaged_layout())


@pytest.fixture(scope="session")
def tile_geometry():
    return load_geometry(packaged_layout("layout-2.4.0.yaml"))
