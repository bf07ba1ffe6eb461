"""Plots served over HTTP: output layout, /plots/ and its path safety, the landing page in Chromium,
plot metrics, and a plotted chip rate that agrees with ``larpix_chip_hit_rate_hertz``."""

from __future__ import annotations

import errno
import http.client
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from helpers import free_port, parse_metrics, running_exporter, sample, scrape, simulate_files, wait_for
from plothelpers import PNG_SIGNATURE, chromium
from test_plots_plugins import BROKEN, TEMPLATE, write_plugins

from larpix_dqm.exporter.detector.geometry import packaged_layout
from larpix_dqm.exporter.runtime.service import Service
from larpix_dqm.exporter.settings import Settings
from larpix_dqm.plots.engine import PlotSettings
from larpix_dqm.plots.store import ERROR_REASONS, PlotStore, remove_temporaries

ESCAPES = [
    "../../../../etc/passwd",
    "latest/../../../../etc/passwd",
    "..%2F..%2F..%2Fetc%2Fpasswd",
    "%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "%252e%252e/etc/passwd",
    "/etc/passwd",
    "%2Fetc%2Fpasswd",
    "latest%5c..%5c..%5cetc%5cpasswd",
    "latest\\..\\..\\etc\\passwd",
    "evil.png",
    "evil_dqm/passwd",
    ".hidden.png.123.tmp",
    "latest/%00.png",
]


def make_escape_traps(root) -> None:
    """Symlinks out of the plot folder and a hidden temporary file, none of which may be served."""
    (root / "latest").mkdir(parents=True, exist_ok=True)
    (root / "latest" / "evil.png").symlink_to("/etc/passwd")
    (root / "evil_dqm").symlink_to("/etc")
    (root / "latest" / ".hidden.png.123.tmp").write_bytes(b"half an image")


def test_store_resolves_only_files_inside_the_plot_folder(tmp_path):
    store = PlotStore(tmp_path / "plots")
    store.write("PixelMap_1_1", b"png", ["run-1"])
    make_escape_traps(store.root)
    assert store.resolve("PixelMap_1_1.png") == (store.root / "latest" / "PixelMap_1_1.png").resolve()
    assert store.resolve("run-1_dqm/run-1_PixelMap_1_1.png") is not None
    assert store.resolve("latest/PixelMap_1_1.png") is not None
    assert store.resolve_folder("run-1_dqm") is not None and store.resolve_folder("evil_dqm") is None
    assert [f.name for f in store.latest()] == ["PixelMap_1_1.png"] and [r.name for r in store.runs()] == ["run-1_dqm"]
    for path in ESCAPES + ["", "latest", "run-1_dqm", "a/b/c.png"]:
        assert store.resolve(path) is None, path
    assert not list(store.root.rglob("*.tmp.*"))


def test_a_dead_writers_temporaries_are_removed_and_no_one_elses(tmp_path):
    store = PlotStore(tmp_path / "plots")
    store.write("HotPixels", b"png", ["run-1"])
    dead, alive = 4242, 42
    left = [
        store.root / "latest" / f".HotPixels.png.{dead}.139.tmp",
        store.root / "run-1_dqm" / f".run-1_HotPixels.png.{dead}.140.tmp",
    ]
    kept = [
        store.root / "latest" / f".HotPixels.png.{alive}.139.tmp",  # another writer's, still writing
        store.root / "latest" / f".run.{dead}.png.{alive}.7.tmp",  # the dead pid in the image's name only
        store.root / "latest" / "HotPixels.png",
        store.root / "run-1_dqm" / "run-1_HotPixels.png",
    ]
    for path in left + kept[:2]:
        path.write_bytes(b"half an image")
    assert remove_temporaries(store.root, dead) == 2
    assert not any(path.exists() for path in left) and all(path.exists() for path in kept)


def test_removing_temporaries_never_raises(tmp_path, monkeypatch, caplog):
    """A folder that cannot be listed or a file that cannot be removed (a network file system's EIO, a read-only
    disk) is logged and left: the drawing goes on."""
    store = PlotStore(tmp_path / "plots")
    half = store.root / "latest" / ".HotPixels.png.4242.1.tmp"
    half.parent.mkdir()
    half.write_bytes(b"half an image")

    def fails(*args, **kwargs):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(Path, "unlink", fails)
    assert remove_temporaries(store.root, 4242) == 0 and half.exists()
    monkeypatch.setattr(Path, "glob", fails)
    assert remove_temporaries(store.root, 4242) == 0
    assert caplog.text.count("Input/output error") == 2


def raw_get(port: int, path: str, method: str = "GET") -> tuple[int, dict, bytes]:
    """A request with the path sent exactly as given (no client-side normalisation)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        conn.endheaders()
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory, tile_geometry):
    """``serve -o`` on a finished run of the single-tile layout, with a predecessor plugin and a broken one."""
    tmp = tmp_path_factory.mktemp("served")
    paths, _ = simulate_files(tile_geometry, tmp / "data", 12, "raw", hit_rate_hz=1.0)
    plugins = write_plugins(tmp / "plugins", {"template.py": TEMPLATE, "raises.py": BROKEN["raises.py"]})
    plotdir = tmp / "plots"
    port = free_port()
    args = ["-i", str(tmp / "data"), "--interval", "0.2", "--geometry", str(packaged_layout("layout-2.4.0.yaml"))]
    args += ["-o", str(plotdir), "--plot-interval", "1", "--plugin-dir", str(plugins)]
    with running_exporter(args, port) as proc:
        wanted = ["AnodeOverview", "PixelMap_1_1", "HotPixels", "PacketRate", "TemplatePlot"]
        wait_for(lambda: all((plotdir / "latest" / f"{n}.png").exists() for n in wanted), timeout=90)
        wait_for(
            lambda: 'larpix_exporter_plot_errors_total{plot="RaisesInCall",reason="draw"} 1' in scrape(port), timeout=30
        )
        yield {"port": port, "plotdir": plotdir, "stem": paths[0].stem, "proc": proc}


@pytest.mark.external
def test_serve_writes_plots_per_file_and_latest(served):
    plotdir, stem = served["plotdir"], served["stem"]
    latest = sorted(p.stem for p in (plotdir / "latest").glob("*.png"))
    assert latest == sorted(
        ["AnodeOverview", "PixelMap_1_1", "HotPixels", "PacketRate", "TileRate", "FIFOFlags"]
        + ["TimestampHistograms", "TriggerHistograms", "BeamTriggers", "TemplatePlot"]
    )
    for name in latest:
        per_file = plotdir / f"{stem}_dqm" / f"{stem}_{name}.png"
        assert per_file.read_bytes()[:8] == PNG_SIGNATURE, name
    assert not [p for p in plotdir.rglob("*") if p.name.startswith(".")]  # atomic writes leave no temporaries


@pytest.mark.external
def test_plots_are_served_and_nothing_outside(served):
    port, plotdir, stem = served["port"], served["plotdir"], served["stem"]
    status, headers, body = raw_get(port, "/plots/PixelMap_1_1.png?t=1700000000")
    assert status == 200 and headers["Content-Type"] == "image/png" and body[:8] == PNG_SIGNATURE
    assert headers["Cache-Control"] == "no-cache"
    status, _, body = raw_get(port, f"/plots/{stem}_dqm/{stem}_HotPixels.png")
    assert status == 200 and body[:8] == PNG_SIGNATURE
    assert raw_get(port, "/plots/AnodeOverview.png", "HEAD")[0] == 200
    listing = scrape(port, "/plots/")
    assert "PixelMap_1_1.png" in listing and f"{stem}_dqm/" in listing and "RaisesInCall" in listing
    assert f"{stem}_HotPixels.png" in scrape(port, f"/plots/{stem}_dqm/")
    assert raw_get(port, "/plots")[0] == 301
    make_escape_traps(plotdir)
    for path in ESCAPES + ["evil_dqm/", "..%2F/", "NoSuchPlot.png"]:
        status, _, body = raw_get(port, "/plots/" + path)
        assert status == 404 and b"root:" not in body, path
    assert raw_get(port, "/plots/../../etc/passwd")[0] == 404


@pytest.mark.external
def test_draw_now_is_a_post_to_draw_that_returns_to_the_page_that_asked(served):
    port = served["port"]
    assert raw_get(port, "/-/draw", "POST")[:3:2] == (200, b"drawn\n")  # nothing new: answered at once
    status, headers, _ = raw_get(port, "/-/draw?then=/plots/", "POST")  # the button on /plots/
    assert status == 303 and headers["Location"] == "/plots/"
    status, headers, body = raw_get(port, "/-/draw?then=http://elsewhere.example/", "POST")
    assert status == 200 and "Location" not in headers  # never sent off this server
    status, headers, _ = raw_get(port, "/-/draw")
    assert status == 405 and headers["Allow"] == "POST"
    status, headers, _ = raw_get(port, "/plots/", "POST")
    assert status == 405 and headers["Allow"] == "GET, HEAD"
    for page, then in (("/plots/", "/plots/"), ("/", "/")):
        assert f"<form method='post' action='/-/draw?then={then}'" in scrape(port, page)


@pytest.mark.external
def test_plot_metrics_are_valid_and_count_failures(served):
    text = scrape(served["port"])
    samples = parse_metrics(text)
    assert sample(samples, "larpix_exporter_plot_errors_total", plot="RaisesInCall", reason="draw") == 1
    assert sample(samples, "larpix_exporter_plot_renders_total", plot="PixelMap") >= 1
    for reason in ERROR_REASONS:  # every reason is there from the start, so rate() sees the first error
        assert sample(samples, "larpix_exporter_plot_errors_total", plot="PixelMap", reason=reason) == 0
    assert sample(samples, "larpix_exporter_plot_dropped_packets_total") == 0
    assert sample(samples, "larpix_exporter_plot_cycle_duration_seconds") > 0
    check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.external
def test_landing_page_gallery_loads_in_chromium(served, tmp_path):
    port = served["port"]
    url = f"http://127.0.0.1:{port}/"
    page = scrape(port, "/")
    assert "<a href='/metrics'>/metrics</a>" in page and "RaisesInCall" in page
    assert "<th>dead chips</th>" in page and " unknown" in page and "verdict thresholds" in page
    assert re.search(r"<th>dead chips</th><td>\d+ \(\d+ with no data since the run started\)</td>", page)
    result = chromium("--virtual-time-budget=15000", "--dump-dom", url)
    images = re.findall(r"<img [^>]*>", result.stdout)
    expected = len([p for p in (served["plotdir"] / "latest").glob("*.png") if not p.is_symlink()])
    assert len(images) == expected, result.stdout[-2000:] + result.stderr[-2000:]
    for tag in images:  # loaded: the browser decoded an image of non-zero width
        assert 'data-state="loaded"' in tag, tag
    assert not re.search(r"<figcaption>[^<]*\(not loaded\)", result.stdout)
    shot = tmp_path / "landing.png"
    chromium("--window-size=1280,2400", f"--screenshot={shot}", "--hide-scrollbars", url)
    assert shot.read_bytes()[:8] == PNG_SIGNATURE and shot.stat().st_size > 50_000
    (served["plotdir"] / "latest" / "HotPixels.png").write_bytes(b"not a png")  # the last test of `served`
    broken = chromium("--virtual-time-budget=15000", "--dump-dom", url).stdout
    assert re.findall(r"<figcaption>(\w+) [^<]*\(not loaded\)", broken) == ["HotPixels"]  # said, on it alone


#: A pixel map that also saves the hit-rate image it drew, so the test can read what the drawing process drew.
PROBE = """
import os
import numpy as np
from larpix_dqm.plots.builtin.pixelmap import PixelMap


class PixelMapProbe(PixelMap):
    def draw(self, name, ctx, fig=None):
        fig = super().draw(name, ctx, fig)
        image = fig.axes[0].images[1]  # [0] is the status layer under it
        rate = np.ma.filled(np.ma.asarray(image.get_array(), dtype=float), np.nan)
        path = os.path.join(os.path.dirname(__file__), name + ".npz")
        np.savez(path, rate=rate, extent=np.asarray(image.get_extent()), pid=os.getpid())
        return fig
"""


@pytest.mark.slow
def test_plotted_chip_rate_agrees_with_the_metric(tmp_path, module_geometry):
    _, truth = simulate_files(module_geometry, tmp_path / "data", 20, "packets")
    total = sum(truth.packet_types.values())
    probe = tmp_path / "probe"
    probe.mkdir()
    (probe / "probe.py").write_text(PROBE)
    port = free_port()
    settings = Settings(
        inputs=[str(tmp_path / "data")],
        port=port,
        listen_address="127.0.0.1",
        interval=0.2,
        geometry=str(packaged_layout()),
        checkpoint="-",
    )
    plots = PlotSettings(
        str(tmp_path / "plots"), plots=("PixelMapProbe_2_2",), interval=3600, plugin_dirs=(str(probe),)
    )
    service = Service(settings, plots)
    service.start()
    try:
        wait_for(lambda: sum(service.ingester.published.health.packets_ingested.values()) == total, timeout=90)
        status, _, body = raw_get(port, "/-/draw", "POST")  # all ingested: draw now (--plot-interval 3600)
        assert (status, body) == (200, b"drawn\n")
        samples = parse_metrics(scrape(port))
        drawn = np.load(probe / "PixelMapProbe_2_2.npz")
    finally:
        service.stop()
    assert int(drawn["pid"]) != os.getpid()  # drawn in the drawing process
    chip = (2, 8, 100)  # module tile 10 = the second tile of io_group 2
    row = module_geometry.row_of(*chip)
    assert module_geometry.tiles[row] == 10
    rate, (left, _, bottom, _) = drawn["rate"], drawn["extent"]
    connected = module_geometry.connected[row]
    pitch = module_geometry.pixel_pitch
    ix = np.floor((module_geometry.x[row][connected] - left) / pitch).astype(int)
    iy = np.floor((module_geometry.y[row][connected] - bottom) / pitch).astype(int)
    plotted = float(np.nansum(rate[iy, ix]))
    metric = sample(samples, "larpix_chip_hit_rate_hertz", io_group=2, io_channel=8, chip_id=100)
    assert metric > 10
    assert plotted == pytest.approx(metric, rel=1e-9)
