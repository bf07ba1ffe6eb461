"""Sharding (issue 22 item 2): exporters that split one directory by io_group (``--io-groups``) each count and
judge only their own io_groups' chips, drop the others' packets into ``larpix_foreign_packets_total`` and say
what they serve in ``larpix_exporter_io_group_served``; together they count what one exporter counts."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
from helpers import larpix_dqm, parse_metrics, sample, simulate_files

from larpix_dqm.exporter.metrics.exposition import render
from larpix_dqm.exporter.metrics.families import FamilyBuilder
from larpix_dqm.exporter.metrics.health import Health
from larpix_dqm.exporter.monitor import Monitor
from larpix_dqm.exporter.quality.checks import CheckStatus


@pytest.fixture(scope="module")
def run_files(module_geometry, tmp_path_factory):
    """60 s of a two-io_group module, chip 2-5-11 silent from the start."""
    from larpix_dqm.exporter.simulate import Faults

    paths, _ = simulate_files(
        module_geometry,
        tmp_path_factory.mktemp("shards"),
        60,
        hit_rate_hz=0.5,
        faults=Faults(silent_chips=[(2, 5, 11)]),
    )
    return paths


def read(geometry, paths, io_groups=()) -> Monitor:
    monitor = Monitor(geometry, io_groups=io_groups)
    for path in paths:
        monitor.add_file(path)
    return monitor


def test_two_shards_count_what_one_exporter_counts(module_geometry, run_files):
    whole = read(module_geometry, run_files).update().snapshot
    shards = {g: read(module_geometry, run_files, (g,)).update() for g in (1, 2)}
    assert set(whole.io_groups.tolist()) == {1, 2}
    for g, state in shards.items():
        snap, other = state.snapshot, 3 - g
        assert set(snap.chip_keys[:, 0].tolist()) == {g}, "only its own chips, the geometry's included"
        assert snap.io_groups.tolist() == [g]
        np.testing.assert_array_equal(snap.packet_type_counts[g], whole.packet_type_counts[g])
        assert snap.packet_type_counts[other].sum() == 0
        assert snap.io_group_foreign_packets[other] == whole.packet_type_counts[other].sum()
        # the verdicts of its chips are those one exporter gives them
        rows = np.flatnonzero(whole.chip_keys[:, 0] == g)
        np.testing.assert_array_equal(snap.chip_keys, whole.chip_keys[rows])
        np.testing.assert_array_equal(snap.chip_dead, whole.chip_dead[rows])
    assert shards[2].snapshot.chip_dead.sum() == 1 and shards[1].snapshot.chip_dead.sum() == 0
    assert shards[1].results.detector_status <= CheckStatus.OK < shards[2].results.detector_status


def test_a_shard_says_what_it_serves_and_what_it_dropped(module_geometry, run_files):
    state = read(module_geometry, run_files, (2,)).update()
    builder = FamilyBuilder(module_geometry)
    text = render(builder.detector_families(state.snapshot, False, evaluation=state))
    text += render(builder.exporter_families(state.snapshot, Health()))
    samples = parse_metrics(text)
    assert sample(samples, "larpix_exporter_io_group_served", io_group=2) == 1
    assert not [k for k in samples if k[0] == "larpix_exporter_io_group_served" and ("io_group", "1") in k[1]]
    assert sample(samples, "larpix_foreign_packets_total", io_group=1) == state.snapshot.io_group_foreign_packets[1] > 0
    assert not [k for k in samples if k[0] == "larpix_chip_packets_total" and ("io_group", "1") in k[1]]


@pytest.mark.parametrize("value", ["1,x", "0", "256", "1,,2", ""])
def test_a_bad_io_groups_option_exits_2_naming_it(tmp_path, value):
    result = subprocess.run(
        larpix_dqm("serve", "-i", str(tmp_path), "--io-groups", value), capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"larpix-dqm: --io-groups {value!r}: expected io_group numbers")
