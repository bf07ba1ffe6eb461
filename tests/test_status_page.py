"""The status page leads with what is wrong now: worst first, failing checks and values, pixel map and runbook links.

The screenshot in docs/status-page.png is this test's (copy it from the path the test prints).
"""

from __future__ import annotations

import re
import urllib.request

import pytest
from helpers import free_port, scrape, simulate_files, wait_for
from plothelpers import PNG_SIGNATURE, chromium

from larpix_dqm.exporter.detector.geometry import packaged_layout
from larpix_dqm.exporter.runtime.service import Service
from larpix_dqm.exporter.settings import Settings
from larpix_dqm.exporter.simulate import Faults
from larpix_dqm.plots.engine import PlotSettings

FAULTS = Faults(silent_chips=[(1, 1, 11)], fifo_full_chips=[(1, 2, 40)], fifo_flag_fraction=0.2)


@pytest.mark.external
def test_status_page_says_what_is_wrong_worst_first(tmp_path, module_geometry):
    _, truth = simulate_files(module_geometry, tmp_path / "data", 20, "packets", FAULTS)
    total = sum(truth.packet_types.values())
    port = free_port()
    settings = Settings(
        inputs=[str(tmp_path / "data")],
        port=port,
        listen_address="127.0.0.1",
        interval=0.2,
        geometry=str(packaged_layout()),
        checkpoint="-",
    )
    service = Service(settings, PlotSettings(str(tmp_path / "plots"), plots=("PixelMap_1_*",), interval=3600))
    service.start()
    try:
        wait_for(lambda: sum(service.ingester.published.health.packets_ingested.values()) == total, timeout=90)
        assert service.plots is not None and service.plots.draw_now(timeout=90)
        page = scrape(port, "/")
        shot = tmp_path / "status-page.png"
        result = chromium(
            "--window-size=1280,1400", f"--screenshot={shot}", "--hide-scrollbars", f"http://127.0.0.1:{port}/"
        )
        dom = chromium("--dump-dom", f"http://127.0.0.1:{port}/").stdout
        links = re.findall(r"href='(/plots/PixelMap_[0-9_]+\.png)'", page)
        served = {link: urllib.request.urlopen(f"http://127.0.0.1:{port}{link}", timeout=10).status for link in links}
    finally:
        service.stop()
    wrong = page.index("What is wrong now")
    assert wrong < page.index("<h2>Exporter</h2>") < page.index("<img "), "the problems lead the page"
    chips = re.findall(r"<tr><td>chip (\d+-\d+-\d+)</td><td>tile (\d+)</td><td><span class='status-(\w+)'>", page)
    statuses = [status for _, _, status in chips]
    assert statuses == sorted(statuses, key=["error", "warning", "other"].index), "worst first"
    found = {key: status for key, _, status in chips}
    assert found["1-1-11"] == "error" and found["1-2-40"] == "error"
    silent_row = page[page.index("<td>chip 1-1-11</td>") :].split("</tr>")[0]
    assert "<b>hit_rate_ratio</b> 0 (error: outside" in silent_row  # no hit where hits were expected
    assert "<b>silent_fraction</b> 1 (error: above 0.5)" in silent_row
    assert "RUNBOOK.md#larpixcheckerror'>runbook</a>" in silent_row
    fifo_row = page[page.index("<td>chip 1-2-40</td>") :].split("</tr>")[0]
    assert "<b>fifo_full_ratio</b>" in fifo_row
    assert "<td>io_group 1</td><td><span class='status-error'>error</span>" in page
    assert re.search(r"href='/plots/PixelMap_1_\d\.png'>PixelMap_1_\d</a>", silent_row)
    assert served and set(served.values()) == {200}, served
    assert "<td>chip 1-1-11</td>" in dom  # rendered by the browser, not only sent
    assert result.returncode == 0 and shot.read_bytes()[:8] == PNG_SIGNATURE and shot.stat().st_size > 20_000
    print(f"screenshot: {shot}")
