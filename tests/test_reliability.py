"""Exactness through kill -9 and restarts, concurrent larpix-control writers, load, shutdown."""

from __future__ import annotations

import json
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

import numpy as np
import pytest
from helpers import (
    START,
    check_counters,
    counted,
    free_port,
    ingested,
    parse_metrics,
    polls_done,
    running_exporter,
    sample,
    scrape,
    wait_for,
)

from larpix_dqm.exporter.detector.geometry import packaged_layout
from larpix_dqm.exporter.simulate import Faults, SimulationConfig, Simulator, Truth, write_run

FAULTS = Faults(
    silent_chips=[(1, 1, 11)], parity_error_fraction=0.002, fifo_full_chips=[(1, 2, 40)], fifo_flag_fraction=0.2
)


@pytest.mark.external
@pytest.mark.parametrize("fmt", ["raw", "packets"])
def test_kill_9_during_ingest_loses_and_repeats_nothing(tmp_path, module_geometry, fmt):
    data, state = tmp_path / "data", tmp_path / "state"
    truth = Truth()
    sim = Simulator(module_geometry, SimulationConfig(seed=4), FAULTS)
    writer = threading.Thread(
        target=write_run,
        args=(sim, data, fmt, 60),
        kwargs={"realtime": False, "start_time": START, "file_seconds": 15, "truth": truth},
    )
    writer.start()
    args = ["-i", str(data), "--interval", "0.2", "--geometry", str(packaged_layout())]
    env = {"LARPIX_DQM_STATE_DIR": str(state)}
    rng = np.random.default_rng(len(fmt))
    kills = 0
    try:
        for _ in range(4):
            port = free_port()
            with running_exporter(args, port, env) as proc:
                # Preconditions first: a checkpoint on disk and this exporter counting; then 0-3 more polls.
                wait_for(lambda p=port: list(state.glob("state-*.npz")) and ingested(p) > 0, timeout=90)
                polls = polls_done(port) + int(rng.integers(0, 4))
                wait_for(lambda p=port, n=polls: polls_done(p) >= n, timeout=90)
                proc.popen.kill()  # SIGKILL: no chance to write a last checkpoint
                proc.popen.wait()
                kills += 1
    finally:
        writer.join()
    assert kills == 4
    port = free_port()
    with running_exporter(args, port, env) as proc:
        total = sum(truth.packet_types.values())
        wait_for(lambda: ingested(port) >= total, timeout=90)
        polls = polls_done(port)
        wait_for(lambda: polls_done(port) >= polls + 3)  # a few more polls: nothing may be counted twice
        samples = parse_metrics(scrape(port))
        assert ingested(port) == total
        check_counters(samples, [truth])
        assert "Traceback" not in proc.log.read_text()


@pytest.mark.external
def test_restart_without_state_is_a_counter_reset_and_with_state_continues(tmp_path, tile_geometry):
    from helpers import simulate_files

    simulate_files(tile_geometry, tmp_path / "data", 5)
    state = tmp_path / "state"
    args = ["-i", str(tmp_path / "data"), "--interval", "0.2"]
    port = free_port()

    def data_packets() -> float:
        return sum(v for (n, lab), v in parse_metrics(scrape(port)).items() if n == "larpix_chip_packets_total")

    with running_exporter(args, port, {"LARPIX_DQM_STATE_DIR": str(state)}):
        full = wait_for(lambda: ingested(port) > 0 and data_packets())
        seen = [data_packets() for _ in range(5)]
        assert seen == sorted(seen) and seen[-1] == full, "counters never go down while running"
    with running_exporter(args, port, {"LARPIX_DQM_STATE_DIR": str(state)}):
        assert data_packets() == full, "restored from the checkpoint before the first scrape"
        polls = polls_done(port)
        wait_for(lambda: polls_done(port) >= polls + 3)
        assert data_packets() == full, "nothing re-read after the restart"
    with running_exporter([*args, "--checkpoint", "-"], port):
        first = data_packets()
        assert first <= full, "a restart without state starts again from zero (a counter reset)"
        wait_for(lambda: data_packets() == full)


WRITER = r"""
import sys, time, numpy as np
from larpix import Packet_v2, TimestampPacket, SyncPacket
from larpix.format.hdf5format import to_file
from larpix.format.rawhdf5format import to_rawfile
from larpix.format import pacman_msg_format
out, seconds = sys.argv[1], float(sys.argv[2])
rng = np.random.default_rng(0)
end, i = time.time() + seconds, 0
while time.time() < end:
    stamp = 1_700_000_000 + i
    packets = [TimestampPacket(timestamp=stamp)]
    for chip, channel, adc in zip(rng.integers(11, 111, 300), rng.integers(0, 64, 300), rng.integers(60, 100, 300)):
        p = Packet_v2()
        p.io_group, p.io_channel, p.chip_id, p.channel_id, p.dataword = 1, 1 + (int(chip) - 11) // 25, int(chip), int(channel), int(adc)
        p.assign_parity()
        packets.append(p)
    to_file(out + "/packets.h5", packets)
    words = [("DATA", int(c), 0, int(w).to_bytes(8, "little")) for c, w in zip(rng.integers(1, 5, 40), rng.integers(0, 2**63, 40, dtype=np.uint64))]
    msgs = [pacman_msg_format.format_msg("DATA", words[k:k + 5]) for k in range(0, 40, 5)]
    msgs.append(pacman_msg_format.format_msg("DATA", [("SYNC", b"S", 1, 9_999_999)]))
    to_rawfile(out + "/raw.h5", msgs=msgs, msg_headers={"io_groups": [2] * len(msgs)})
    i += 1
print(i)
"""


def reference_counts(directory) -> dict[tuple[str, str], int]:
    """Data packets per chip and packets per (io_group, type), read back without the exporter:
    the packet file with plain h5py, the raw file with larpix-control's parser."""
    import h5py
    from larpix.format import pacman_msg_format
    from larpix.format.rawhdf5format import from_rawfile

    counts: dict[tuple[str, str], int] = {}

    def add(key: tuple[str, str], n: int = 1) -> None:
        counts[key] = counts.get(key, 0) + n

    with h5py.File(directory / "packets.h5", "r") as fh:
        packets = fh["packets"][:]
    for (group, ptype), n in zip(*np.unique(packets[["io_group", "packet_type"]], return_counts=True)):
        add((str(group), str(ptype)), int(n))
    data = packets[packets["packet_type"] == 0]
    for (g, c, chip, valid), n in zip(
        *np.unique(data[["io_group", "io_channel", "chip_id", "valid_parity"]], return_counts=True)
    ):
        add((f"{g}-{c}-{chip}", "data") if valid else (f"{g}-{c}", "parity"), int(n))
    raw = from_rawfile(str(directory / "raw.h5"))
    for msg, group in zip(raw["msgs"], raw["msg_headers"]["io_groups"]):
        for p in pacman_msg_format.parse(msg, io_group=group):
            add((str(p.io_group), str(p.packet_type)))
            if p.packet_type == 0:
                add(
                    (f"{p.io_group}-{p.io_channel}-{p.chip_id}", "data")
                    if p.has_valid_parity()
                    else (f"{p.io_group}-{p.io_channel}", "parity")
                )
    return counts


@pytest.mark.external
def test_concurrent_larpix_control_writers(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    port = free_port()
    with running_exporter(["-i", str(data), "--interval", "0.2"], port) as proc:
        writer = subprocess.run(
            [sys.executable, "-c", WRITER, str(data), "5"], capture_output=True, text=True, timeout=120
        )
        assert writer.returncode == 0, f"the writer must never be disturbed by the reader: {writer.stderr[-2000:]}"
        assert int(writer.stdout) > 20, "the writer appended many times while the exporter polled"
        reference = reference_counts(data)
        total = sum(v for (g, t), v in reference.items() if t not in ("data", "parity"))
        wait_for(lambda: ingested(port) == total, timeout=30)
        samples = parse_metrics(scrape(port))
        names = ["data", "test", "config_write", "config_read", "timestamp", "message", "sync", "trigger"]
        for (key, kind), value in reference.items():
            if kind == "data":  # valid packets per chip; a chip is never created from a parity error
                g, c, chip = key.split("-")
                labels = {"io_group": g, "io_channel": c, "chip_id": chip}
                valid = sample(samples, "larpix_chip_packets_total", **labels)
                assert valid - counted(samples, "larpix_chip_parity_errors_total", **labels) == value
            elif kind == "parity":  # on the chip once it is known, else on its link
                g, c = key.split("-")
                on_chips = sum(
                    v
                    for (name, labels), v in samples.items()
                    if name == "larpix_chip_parity_errors_total" and {("io_group", g), ("io_channel", c)} <= labels
                )
                assert on_chips + sample(samples, "larpix_link_parity_errors_total", io_group=g, io_channel=c) == value
            else:
                assert sample(samples, "larpix_packets_total", io_group=key, packet_type=names[int(kind)]) == value
        log = proc.log.read_text()
        assert "Traceback" not in log and "poll failed" not in log


DATA_LINE = re.compile(r'^larpix_packets_total\{io_group="(\d+)",packet_type="data"\} (\S+)$', re.M)
CHIP_LINE = re.compile(r'^larpix_chip_packets_total\{io_group="(\d+)",[^}]*\} (\S+)$', re.M)


def consistent(text: str) -> bool:
    """Per-chip data counters of one scrape sum to the per-io_group data counter of that scrape."""
    groups = {g: float(v) for g, v in DATA_LINE.findall(text)}
    chips: dict[str, float] = {}
    for g, v in CHIP_LINE.findall(text):
        chips[g] = chips.get(g, 0.0) + float(v)
    return all(chips.get(g, 0.0) == v for g, v in groups.items())


@pytest.mark.external
def test_concurrent_scrapes_during_a_large_backlog(tmp_path, module_geometry):
    from helpers import simulate_files

    _, truth = simulate_files(module_geometry, tmp_path, 45, "packets")
    total = sum(truth.packet_types.values())
    assert total >= 2_000_000
    port = free_port()
    latencies: list[float] = []
    failures: list[str] = []
    inconsistent: list[int] = []
    clients, seconds = 20, float(os.environ.get("LARPIX_DQM_LOAD_SECONDS", "20"))
    with running_exporter(["-i", str(tmp_path), "--interval", "0.2", "--geometry", str(packaged_layout())], port):
        deadline = time.monotonic() + seconds

        def client() -> None:
            while time.monotonic() < deadline:
                started = time.perf_counter()
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as resp:
                        text = resp.read().decode()
                except OSError as err:
                    failures.append(repr(err))
                    continue
                latencies.append(time.perf_counter() - started)
                if not consistent(text):
                    inconsistent.append(len(latencies))

        threads = [threading.Thread(target=client) for _ in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wait_for(lambda: ingested(port) == total, timeout=60)
    p50, p99 = statistics.quantiles(latencies, n=100)[49], statistics.quantiles(latencies, n=100)[98]
    report = {"scrapes": len(latencies), "clients": clients, "seconds": seconds, "p50_s": p50, "p99_s": p99}
    print("load test:", json.dumps(report))
    assert not failures and len(latencies) > clients
    assert not inconsistent, f"{len(inconsistent)} scrapes saw a half-updated snapshot"


@pytest.mark.external
def test_sigterm_shuts_down_cleanly_with_a_checkpoint(tmp_path, tile_geometry):
    from helpers import simulate_files

    simulate_files(tile_geometry, tmp_path / "data", 3)
    state = tmp_path / "state"
    port = free_port()
    with running_exporter(
        ["-i", str(tmp_path / "data"), "--interval", "0.2"], port, {"LARPIX_DQM_STATE_DIR": str(state)}
    ) as proc:
        wait_for(lambda: ingested(port) > 0)
        started = time.monotonic()
        proc.popen.send_signal(signal.SIGTERM)
        assert proc.popen.wait(15) == 0
        assert time.monotonic() - started < 10
    assert list(state.glob("state-*.npz"))
    assert "stopped in" in proc.log.read_text()


@pytest.mark.external
def test_unreadable_file_is_reported_and_recovers(tmp_path, tile_geometry):
    """As root, the exporter runs without the capabilities that let root read any file (setpriv)."""
    from helpers import simulate_files

    data = tmp_path / "data"
    _, truth = simulate_files(tile_geometry, data, 2, "packets")
    secret = data / "secret.h5"
    simulate_files(tile_geometry, tmp_path / "other", 1, "packets", start=START + 100)[0][0].rename(secret)
    secret.chmod(0)
    wrapper = []
    if os.geteuid() == 0:
        caps = "-dac_override,-dac_read_search"
        wrapper = ["setpriv", "--bounding-set", caps, "--inh-caps", caps]
    port = free_port()
    with running_exporter(["-i", str(data), "--interval", "0.2"], port, wrapper=wrapper) as proc:
        wait_for(lambda: ingested(port) == sum(truth.packet_types.values()))
        samples = parse_metrics(scrape(port))
        assert sample(samples, "larpix_exporter_files_in_error", reason="permission") == 1
        secret.chmod(0o644)
        wait_for(lambda: ingested(port) > sum(truth.packet_types.values()))
        samples = parse_metrics(scrape(port))
        assert ("larpix_exporter_files_in_error", frozenset({("reason", "permission")})) not in samples
        log = proc.log.read_text()
        assert log.count("reason: permission") == 1, "logged once, not every poll"
        assert f"{secret}: readable again" in log


def test_locked_file_is_retried_and_counted(tmp_path, tile_geometry, monkeypatch):
    import errno

    from helpers import simulate_files

    from larpix_dqm.exporter.reading import files
    from larpix_dqm.exporter.reading.tail import DirectoryTail, InputSpec

    simulate_files(tile_geometry, tmp_path, 1, "packets")
    reasons: list[str] = []
    tail = DirectoryTail([InputSpec(str(tmp_path))], on_error=lambda cursor, reason, message: reasons.append(reason))
    real_open = files.open_for_reading
    attempts = {"n": 0}

    def locked_twice(*args, **kwargs):
        attempts["n"] += 1
        if attempts["n"] <= 2:
            raise OSError(
                errno.EAGAIN, "unable to lock file, errno = 11, error message = 'Resource temporarily unavailable'"
            )
        return real_open(*args, **kwargs)

    monkeypatch.setattr(files, "open_for_reading", locked_twice)
    counts = [tail.pump(lambda chunk: None) for _ in range(3)]
    assert reasons == ["locked"], "one error until the file changes or recovers, not one per poll"
    assert counts[:2] == [0, 0] and counts[2] > 0
    assert np.all(np.array(counts) >= 0)


@pytest.mark.external
def test_counters_never_go_back_across_a_kill_during_the_first_poll_of_a_backlog(tmp_path, tile_geometry):
    """Publications inside a long first poll show only checkpointed counts: after a kill -9 the restored
    counters are at least what any scrape had shown, and the run ends exact."""
    from helpers import simulate_files

    _, truth = simulate_files(tile_geometry, tmp_path / "data", 20, hit_rate_hz=20.0, file_seconds=10)
    total = sum(truth.packet_types.values())
    state = tmp_path / "state"
    args = ["-i", str(tmp_path / "data"), "--interval", "0.2", "--ingest-engine", "numpy", "--chunk-rows", "2000"]
    env = {"LARPIX_DQM_STATE_DIR": str(state)}
    shown = 0.0
    with running_exporter(args, free_port(), env) as proc:
        port = int(proc.address.rsplit(":", 1)[1])
        wait_for(lambda: 0 < ingested(port) < total, timeout=60)
        shown = max(ingested(port) for _ in range(3))
        proc.popen.kill()
        proc.popen.wait()
    assert 0 < shown < total, "killed inside the first poll"
    port = free_port()
    with running_exporter(args, port, env):
        assert ingested(port) >= shown, "a restart restores at least every count a scrape showed"
        wait_for(lambda: ingested(port) >= total, timeout=90)
        polls = polls_done(port)
        wait_for(lambda: polls_done(port) >= polls + 2)
        assert ingested(port) == total


@pytest.mark.external
def test_a_second_exporter_on_the_same_checkpoint_exits_2(tmp_path, tile_geometry):
    from helpers import larpix_dqm, simulate_files

    simulate_files(tile_geometry, tmp_path / "data", 2)
    state = tmp_path / "state.npz"
    args = ["-i", str(tmp_path / "data"), "--checkpoint", str(state)]
    with running_exporter(args, free_port()) as first:
        second = subprocess.run(
            larpix_dqm("serve", "--listen-address", "127.0.0.1", "--port", str(free_port()), *args),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 2
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and str(state) in lines[0] and "in use by another larpix-dqm" in lines[0], lines
        assert str(first.popen.pid) in lines[0]
