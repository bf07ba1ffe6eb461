"""Smoke test of the benchmark scripts with tiny sizes: they run and print their figures.

The figures themselves are not asserted (timings on a shared machine are not test results);
the README's performance table comes from full-size runs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.external, pytest.mark.bench]
BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.mark.parametrize(
    ("script", "args", "expected"),
    [
        ("ingest.py", ["--packets", "100000", "--large-packets", "200000", "--repeat", "1"], "of the h5py read rate"),
        ("exposition.py", ["--repeat", "1"], "per-series cost ratio generic/this"),
        ("latency.py", ["--seconds", "3"], "append -> /metrics latency"),
        ("drawing.py", ["--repeat", "1", "--seconds", "5", "--no-serve"], "PixelMap"),
        ("verdicts.py", ["--evaluations", "2", "--occupancies", "0.5", "--seconds", "3"], "false verdicts or check"),
        ("verdicts.py", ["--scenarios", "all", "--tiles", "1", "--scenario-seconds", "40"], "| bad-parity-chip |"),
        ("checkpoint.py", ["--repeat", "1", "--files", "10", "--io-groups", "2"], "module (1,600 chips)"),
        ("soak.py", ["--minutes", "0.25", "--sample", "5"], "RSS after warm-up"),
        ("server.py", ["--seconds", "2", "--backlog", "20"], "history fetches by 2 clients"),
        ("series.py", ["--seconds", "2", "--repeat", "1"], "total /metrics"),
        ("startup.py", ["--repeat", "1"], "multi_tile_layout-2.4.16.yaml"),
        ("capacity.py", ["--minutes", "0.3", "--scrape-interval", "2s"], "extrapolation at 15 s scrapes"),
        ("predecessor.py", ["--packets", "100000", "--repeat", "1"], "once -o OUT, 8 plots"),
        (
            "serve_large.py",
            ["--io-groups", "2", "--chips", "50", "--seconds", "1", "--repeat", "1", "--small-files", "5"]
            + ["--cost-seconds", "1"],
            "each file beyond the first costs",
        ),
        (  # without the small files' part
            "serve_large.py",
            ["--io-groups", "2", "--chips", "50", "--seconds", "1", "--repeat", "1", "--small-files", "0"]
            + ["--cost-seconds", "1"],
            "load average after",
        ),
        (
            "evaluation.py",
            ["--geometry", "multi_tile_layout-2.4.16", "--seconds", "2", "--steady-seconds", "4", "--repeat", "1"],
            "steady (4 s of data",
        ),
    ],
)
def test_benchmark_runs(script, args, expected, tmp_path):
    env = {**os.environ, "TMPDIR": str(tmp_path)}  # the work folders a bench keeps for a look go with the test's
    result = subprocess.run(
        [sys.executable, str(BENCH / script), *args], capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert expected in result.stdout, result.stdout[-3000:]


@pytest.mark.parametrize(
    ("name", "page"), [("dead-tile", "LarpixTileRateError"), ("dead-io-channel", "LarpixIoChannelNeverSeen")]
)
def test_verdicts_scenarios_count_every_critical_alert_as_a_page(name, page, tmp_path):
    """A region dead from the start pages through its region alert (``for: 2m``) before its chips' LarpixChipSilent
    (``for: 3m``): the bench's pages are every critical alert of alerts/larpix.rules.yml, not only the chip,
    detector-status and sync pages."""
    args = ["--scenarios", name, "--tiles", "2", "--scenario-seconds", "200"]
    result = subprocess.run(
        [sys.executable, str(BENCH / "verdicts.py"), *args], capture_output=True, text=True, timeout=600, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"| 130 s ({page}) |" in result.stdout, result.stdout[-3000:]
