"""Publications follow the data: an idle poll publishes its evaluation again instead of judging the same data
once more, and while a backlog is read, publications take a bounded share of the time (``PUBLISH_COST_SHARE``)."""

from __future__ import annotations

import time

import pytest
from helpers import parse_metrics, sample, simulate_files

from larpix_dqm.exporter.detector.geometry import CHANNELS_PER_CHIP
from larpix_dqm.exporter.monitor import Monitor
from larpix_dqm.exporter.reading.files import FileReader
from larpix_dqm.exporter.reading.tail import InputSpec
from larpix_dqm.exporter.runtime import ingest
from larpix_dqm.exporter.runtime.ingest import PUBLISH_COST_SHARE, Ingester, Published
from larpix_dqm.exporter.web.server import MetricsApp


def polls(app: MetricsApp) -> float:
    """The polls a scrape of ``app`` shows."""
    return sample(parse_metrics(app.metrics_body(False, False).decode()), "larpix_exporter_polls_total")


def test_an_idle_poll_publishes_the_same_evaluation_with_fresh_health(tmp_path, tile_geometry):
    simulate_files(tile_geometry, tmp_path, 20, fmt="packets")
    ingester = Ingester([InputSpec(str(tmp_path))], Monitor(tile_geometry), 0.1)
    updates = 0
    update = ingester.monitor.update

    def counted_update():
        nonlocal updates
        updates += 1
        return update()

    ingester.monitor.update = counted_update  # type: ignore[method-assign]
    assert ingester.poll() > 0 and updates == 1
    first = ingester.published
    app = MetricsApp(lambda: ingester.published)
    assert polls(app) == 1
    assert ingester.poll() == 0, "nothing new"
    assert updates == 1 and ingester.published.evaluation is first.evaluation
    assert ingester.published.health.polls == 2
    # the detector families are not rendered again, the exporter's own follow the new publication
    assert polls(app) == 2
    simulate_files(tile_geometry, tmp_path / "more", 5, fmt="packets", start=1_700_000_020)
    ingester.tail = type(ingester.tail)([InputSpec(str(tmp_path / "more"))], FileReader(), 1800.0)
    assert ingester.poll() > 0 and updates == 2 and ingester.published.evaluation is not first.evaluation


def slow_ingester(folder, geometry, seconds: float) -> Ingester:
    """An ingester of ``folder`` whose every evaluated publication takes ``seconds`` more."""
    ingester = Ingester([InputSpec(str(folder))], Monitor(geometry), 0.1)
    update = ingester.monitor.update

    def slow_update():
        time.sleep(seconds)
        return update()

    ingester.monitor.update = slow_update  # type: ignore[method-assign]
    return ingester


@pytest.mark.slow
def test_publications_inside_a_backlog_poll_take_a_bounded_share(tmp_path, tile_geometry):
    """Each publication made slow (0.2 s): inside a poll of a backlog read in ~40 chunks of 0.1 s each,
    publications come at least 0.2 / PUBLISH_COST_SHARE = 2 s apart, not every second."""
    simulate_files(tile_geometry, tmp_path, 40, fmt="packets", file_seconds=1)
    ingester = slow_ingester(tmp_path, tile_geometry, 0.2)
    ingester.listeners.append(lambda chunk: time.sleep(0.1))
    published: list[Published] = []
    ingester.publish_listeners.append(published.append)
    started = time.monotonic()
    ingester.poll()
    elapsed = time.monotonic() - started
    inside = len(published) - 1  # the poll's last publication comes after it
    assert elapsed > 4.0
    assert 1 <= inside <= 1 + elapsed / (0.2 / PUBLISH_COST_SHARE), (inside, elapsed)


def test_a_poll_waits_for_the_cost_of_the_publication_before_it(tmp_path, tile_geometry):
    """The last publication's cost spaces a poll's first publication too: after a poll whose publication took 0.3 s,
    a backlog's poll publishes inside no sooner than 0.3 / PUBLISH_COST_SHARE = 3 s after it, not after a second."""
    data = tmp_path / "data"
    simulate_files(tile_geometry, data, 1, fmt="packets", file_seconds=1)  # one chunk: published at the end only
    ingester = slow_ingester(data, tile_geometry, 0.3)
    published: list[float] = []
    ingester.publish_listeners.append(lambda p: published.append(time.monotonic()))
    ingester.poll()
    first = len(published)
    assert first == 1
    simulate_files(tile_geometry, data, 40, fmt="packets", file_seconds=1, start=1_700_000_100, seed=2)
    ingester.listeners.append(lambda chunk: time.sleep(0.1))
    ingester.poll()
    before, inside = published[first - 1], published[first:-1]  # the first poll's last publication, the second's
    assert inside and inside[0] - before >= 0.3 / PUBLISH_COST_SHARE, [t - before for t in published]


def test_a_first_poll_reckons_its_first_publication_from_the_chips(tmp_path, tile_geometry, monkeypatch):
    """Before any publication was timed (a first start), a backlog poll's first publication waits for the cost reckoned
    from the chips seen (``PUBLISH_SECONDS_PER_CHANNEL``), counted from the ingester's start: reckoned at 0.5 s for the
    tile's chips (5 s apart), a backlog poll of ~2 s publishes only at its end, not at its second chunk."""
    simulate_files(tile_geometry, tmp_path, 20, fmt="packets", file_seconds=1)
    channels = len(tile_geometry.by_chip_id) * CHANNELS_PER_CHIP
    monkeypatch.setattr(ingest, "PUBLISH_SECONDS_PER_CHANNEL", 0.5 / channels)
    ingester = Ingester([InputSpec(str(tmp_path))], Monitor(tile_geometry), 0.1)
    ingester.listeners.append(lambda chunk: time.sleep(0.1))
    published: list[Published] = []
    ingester.publish_listeners.append(published.append)
    started = time.monotonic()
    ingester.poll()
    assert time.monotonic() - started > 2.0
    assert len(published) == 1, "published inside the poll"
