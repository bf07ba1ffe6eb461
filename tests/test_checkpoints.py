"""Checkpoint identity and damage: nothing read twice however the inputs are named, foreign or broken states
refused with one line, stale temporaries removed, the window restored from its own file."""

from __future__ import annotations

import errno
import json
import os
import struct
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest
from helpers import free_port, ingested, running_exporter, simulate_files, wait_for

from larpix_dqm.exporter.detector.geometry import load_geometry, packaged_layout
from larpix_dqm.exporter.monitor import Monitor
from larpix_dqm.exporter.quality.slots import slot_names
from larpix_dqm.exporter.quality.state import FIELDS, LEARNING
from larpix_dqm.exporter.reading.tail import InputSpec
from larpix_dqm.exporter.runtime import checkpoint
from larpix_dqm.exporter.runtime.checkpoint import CheckpointError, default_checkpoint, window_file
from larpix_dqm.exporter.runtime.ingest import Ingester


def ingester(inputs: list[str], state, geometry, **kw) -> Ingester:
    """An ingester over ``inputs`` with a checkpoint at ``state``, restored if there is one."""
    ing = Ingester([InputSpec(p) for p in inputs], Monitor(geometry, **kw), 0.1, str(state))
    ing.restore()
    return ing


def total(ing: Ingester) -> int:
    return sum(ing.health.packets_ingested.values())


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "larpix_dqm.exporter.cli", *args], capture_output=True, text=True, timeout=60
    )


def test_relative_then_absolute_inputs_read_nothing_twice(tmp_path, tile_geometry, monkeypatch):
    data = tmp_path / "data"
    _, truth = simulate_files(tile_geometry, data, 3, file_seconds=1)
    monkeypatch.chdir(tmp_path)
    assert default_checkpoint(["data"]) == default_checkpoint([str(data)]) == default_checkpoint([f"{data}/."])
    state = tmp_path / "state.npz"
    first = ingester(["data"], state, tile_geometry)
    first.poll()
    first.checkpoint(final=True)
    assert total(first) == sum(truth.packet_types.values())
    second = ingester([str(data)], state, tile_geometry)
    assert total(second) == total(first)
    second.poll()
    second.poll()
    assert total(second) == total(first), "the same files by another name are the same files"


def test_a_file_found_by_several_names_is_read_once(tmp_path, tile_geometry):
    """Hard links, and a name through a linked folder (``run*/*.h5`` with one run folder a link to another's
    data) are the same file: counted once, also when a name that sorts first appears later."""
    data = tmp_path / "data"
    paths, truth = simulate_files(tile_geometry, data / "run1", 3, file_seconds=1)
    for path in paths:
        os.link(path, path.with_name(f"z-{path.name}"))  # sorts after its first name
    (data / "run2").symlink_to(data / "run1")
    state = tmp_path / "state.npz"
    ing = Ingester([InputSpec(str(data), "run*/*.h5")], Monitor(tile_geometry), 0.1, str(state))
    ing.poll()
    assert total(ing) == sum(truth.packet_types.values())
    os.link(paths[0], data / "run1" / f"a-{paths[0].name}")  # sorts first: the cursor follows it
    ing.poll()
    ing.poll()
    assert total(ing) == sum(truth.packet_types.values()), "the same files by another name are the same files"


def test_moved_directory_with_explicit_checkpoint(tmp_path, tile_geometry, caplog):
    data = tmp_path / "data"
    _, truth = simulate_files(tile_geometry, data, 3, file_seconds=1)
    state = tmp_path / "state.npz"
    first = ingester([str(data)], state, tile_geometry)
    first.poll()
    first.checkpoint(final=True)
    moved = tmp_path / "archive" / "run7"
    moved.parent.mkdir()
    data.rename(moved)
    second = ingester([str(moved)], state, tile_geometry)
    assert "found again by device and inode" in caplog.text
    second.poll()
    second.poll()
    assert total(second) == sum(truth.packet_types.values())
    assert {os.path.dirname(path) for path in second.tail.cursors} == {str(moved)}
    assert "moved or renamed" in caplog.text


def test_renamed_file_keeps_its_cursor(tmp_path, tile_geometry):
    paths, truth = simulate_files(tile_geometry, tmp_path, 2, "packets")
    ing = Ingester([InputSpec(str(tmp_path))], Monitor(tile_geometry))
    ing.poll()
    paths[0].rename(tmp_path / "renamed.h5")
    ing.poll()
    assert total(ing) == sum(truth.packet_types.values())


@pytest.mark.external
def test_unrelated_inputs_and_other_geometry_are_refused(tmp_path, tile_geometry, module_geometry):
    simulate_files(tile_geometry, tmp_path / "a", 1)
    simulate_files(tile_geometry, tmp_path / "b", 1)
    state = tmp_path / "state.npz"
    first = ingester([str(tmp_path / "a")], state, tile_geometry)
    first.poll()
    first.checkpoint()
    with pytest.raises(CheckpointError, match=r"checkpoint .*state.npz: written for .*/a, not .*/b \(none of its"):
        ingester([str(tmp_path / "b")], state, tile_geometry)
    with pytest.raises(CheckpointError, match=r"written for geometry .*layout-2.4.0.yaml \(digest \w+\), this run"):
        ingester([str(tmp_path / "a")], state, module_geometry)
    # the command line: exit 2 and one line naming the file
    other = tmp_path / "other.yaml"
    other.write_text(open(packaged_layout()).read())
    result = run_cli("serve", "-i", str(tmp_path / "a"), "--geometry", str(other), "--checkpoint", str(state))
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0, result.stderr
    assert f"checkpoint {state}: written for geometry" in result.stderr


def damage(kind: str, state, window) -> None:
    """Break a good checkpoint the way a full disk, a wrong copy or an old version would."""
    if kind == "empty":
        state.write_bytes(b"")
        return
    if kind == "not a zip":
        state.write_bytes(b"PK\x03\x04 not really")
        return
    with np.load(state) as data:
        arrays = {name: data[name] for name in data.files}
    meta = json.loads(arrays["meta_json"].tobytes())
    if kind == "missing array":
        del arrays["hits_total"]
    elif kind == "short arrays":
        arrays["chip_packets"] = arrays["chip_packets"][:3]
    elif kind == "missing metadata":
        del arrays["meta_json"]
    elif kind == "old version":
        meta["version"] = 1
    elif kind == "missing key":
        del meta["health"]
    arrays.get("meta_json") is not None and arrays.update(meta_json=np.frombuffer(json.dumps(meta).encode(), np.uint8))
    np.savez(state, **arrays)


@pytest.mark.parametrize(
    "kind, message",
    [
        ("empty", "unreadable (ValueError: empty file (0 bytes))"),
        ("not a zip", "unreadable (BadZipFile"),
        ("missing array", "'hits_total' is missing"),
        ("short arrays", "arrays do not fit"),
        ("missing metadata", "no metadata"),
        ("old version", "checkpoint version 1, this exporter writes 2"),
        ("missing key", "'health' is missing"),
    ],
)
def test_damaged_states_are_one_line(tmp_path, tile_geometry, kind, message):
    simulate_files(tile_geometry, tmp_path / "data", 1)
    state = tmp_path / "state.npz"
    ing = ingester([str(tmp_path / "data")], state, tile_geometry)
    ing.poll()
    ing.checkpoint(final=True)
    damage(kind, state, window_file(state))
    with pytest.raises(CheckpointError) as err:
        ingester([str(tmp_path / "data")], state, tile_geometry)
    assert str(err.value).startswith(f"checkpoint {state}: ") and message in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.external
def test_damaged_state_on_the_command_line(tmp_path):
    state = tmp_path / "state.npz"
    state.write_bytes(b"")
    result = run_cli("serve", "-i", str(tmp_path), "--checkpoint", str(state), "--port", str(free_port()))
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().count("\n") == 0 and f"checkpoint {state}: unreadable" in result.stderr
    assert "Traceback" not in result.stderr and "Aborted" not in result.stderr


def test_disk_full_leaves_no_temporary_and_stale_ones_are_removed(tmp_path, tile_geometry, monkeypatch):
    simulate_files(tile_geometry, tmp_path / "data", 1)
    state = tmp_path / "state.npz"
    ing = ingester([str(tmp_path / "data")], state, tile_geometry)
    real_savez = np.savez

    def disk_full(fh, **arrays):
        real_savez(fh, chip_keys=arrays["chip_keys"])  # part of it reached the disk
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.np, "savez", disk_full)
    ing.poll()
    assert ing.health.checkpoint_errors == 1 and total(ing) > 0
    assert not list(tmp_path.glob(".*.tmp")), "a failed write removes its temporary file"
    monkeypatch.setattr(checkpoint.np, "savez", real_savez)
    # a crash mid-write (kill -9: no cleanup) leaves one behind; the next start removes it
    stale = tmp_path / f".{state.name}.999999999.tmp"
    stale.write_bytes(b"\0" * 4096)
    stale_window = tmp_path / f".{window_file(state).name}.999999999.tmp"
    stale_window.write_bytes(b"\0" * 4096)
    assert total(ingester([str(tmp_path / "data")], state, tile_geometry)) == 0, "no checkpoint was written"
    assert not stale.exists() and not stale_window.exists()


def window(ing: Ingester) -> tuple:
    snap = ing.monitor.update().snapshot
    return snap.chip_window_packets.tolist(), snap.data_time


@pytest.mark.slow
def test_window_is_written_rarely_and_restored_whole_after_a_clean_stop(tmp_path, tile_geometry):
    data = tmp_path / "data"
    simulate_files(tile_geometry, data, 20, file_seconds=5)
    state = tmp_path / "state.npz"
    geometry = load_geometry(packaged_layout("layout-2.4.0.yaml"))
    ing = Ingester([InputSpec(str(data))], Monitor(geometry), 0.1, str(state), window_checkpoint_interval=3600)
    ing.tail.pump(ing.ingest)
    ing.checkpoint()
    written = os.stat(window_file(state)).st_mtime_ns
    first_window = window(ing)
    simulate_files(tile_geometry, data, 20, start=1_700_000_020, seed=2, file_seconds=5)
    ing.poll()
    assert os.stat(window_file(state)).st_mtime_ns == written, "the window waits for its interval"
    crashed = ingester([str(data)], state, geometry)
    assert total(crashed) == total(ing), "the counters of every poll are in the checkpoint"
    assert window(crashed) != window(ing) and sum(window(crashed)[0]) < sum(window(ing)[0])
    ing.checkpoint(final=True)  # a clean stop writes the window too
    restored = ingester([str(data)], state, geometry)
    assert window(restored) == window(ing) != first_window
    window_file(state).unlink()
    empty = ingester([str(data)], state, geometry)
    assert sum(window(empty)[0]) == 0 and total(empty) == total(ing)


def test_a_restored_window_waits_for_its_interval(tmp_path, tile_geometry):
    """A restart does not write back the window it has just read (803 MB at 50 io_groups): the first poll after it
    writes the counters only, until the interval has passed or the exporter stops; a damaged window file, whose
    window starts empty, is written at the first poll."""
    data, state, _ = stopped_cleanly(tmp_path, tile_geometry, 5)
    written = os.stat(window_file(state)).st_mtime_ns
    restarted = ingester([str(data)], state, tile_geometry)
    simulate_files(tile_geometry, data, 2, start=1_700_000_005, seed=3)
    counters = os.stat(state).st_mtime_ns
    restarted.poll()
    assert os.stat(state).st_mtime_ns != counters and os.stat(window_file(state)).st_mtime_ns == written
    restarted.checkpoint(final=True)
    assert os.stat(window_file(state)).st_mtime_ns != written
    window_file(state).write_bytes(b"damaged")
    ingester([str(data)], state, tile_geometry).checkpoint(final=True)  # nothing new: written all the same
    with np.load(window_file(state)) as arrays:
        assert "chip_keys" in arrays.files
    window_file(state).write_bytes(b"damaged")
    damaged = ingester([str(data)], state, tile_geometry)
    simulate_files(tile_geometry, data, 2, start=1_700_000_007, seed=4)
    damaged.poll()
    with np.load(window_file(state)) as arrays:
        assert "chip_keys" in arrays.files


def test_a_poll_publishes_before_it_writes_the_window(tmp_path, tile_geometry):
    """The window file (803 MB at 50 io_groups) is written after the poll's publications, so that being ready and
    what scrapes see wait for the counters only; both files are there when the poll returns."""
    simulate_files(tile_geometry, tmp_path / "data", 2)
    state = tmp_path / "state.npz"
    ing = ingester([str(tmp_path / "data")], state, tile_geometry)
    seen: list[tuple[bool, bool, bool]] = []
    ing.publish_listeners.append(lambda p: seen.append((p.checkpointed, state.exists(), window_file(state).exists())))
    ing.poll()
    assert seen and set(seen) == {(True, True, False)}, seen
    assert window_file(state).exists() and ing.health.checkpoint_errors == 0


def test_a_window_write_after_the_counters_writes_the_window_only(tmp_path, tile_geometry, monkeypatch):
    """The window's write at the end of a poll comes after the publication's counters: those on disk are current,
    and are not written (107 MB at 50 io_groups) a second time; counted data since bring them along again."""
    data, state = tmp_path / "data", tmp_path / "state.npz"
    simulate_files(tile_geometry, data, 2)
    ing = ingester([str(data)], state, tile_geometry)
    ing.tail.pump(ing.ingest)
    assert ing.checkpoint(window=False)
    written: list[str] = []
    write = checkpoint._write_npz
    monkeypatch.setattr(checkpoint, "_write_npz", lambda path, arrays: written.append(path.name) or write(path, arrays))
    assert ing.checkpoint(final=True)
    assert written == [window_file(state).name]
    simulate_files(tile_geometry, data, 2, start=1_700_000_002, seed=2)
    ing.tail.pump(ing.ingest)
    assert ing.checkpoint(final=True)
    assert written == [window_file(state).name, state.name, window_file(state).name]
    restored = ingester([str(data)], state, tile_geometry)
    assert total(restored) == total(ing) and window(restored) == window(ing)


def stopped_cleanly(tmp_path, geometry, seconds: int) -> tuple:
    """``seconds`` of simulated data read by an ingester that then stopped cleanly (its window written): the data
    folder, the checkpoint and the ingester."""
    data, state = tmp_path / "data", tmp_path / "state.npz"
    simulate_files(geometry, data, seconds)
    ing = ingester([str(data)], state, geometry)
    ing.poll()
    ing.checkpoint(final=True)
    return data, state, ing


def read_straight(monkeypatch, reads: dict[tuple[int, str], int] | None = None) -> set[str]:
    """The names of the arrays a restore then reads straight into the state (``_Arrays.read_into``), each counted in
    ``reads`` by file; one the window file's arrays leave to the counters' is asked twice, and counted once."""
    straight: set[str] = set()
    read_into = checkpoint._Arrays.read_into

    def counted_into(self, name, out):
        done = read_into(self, name, out)
        if done and name in self._names:
            straight.add(name)
            if reads is not None:
                reads[id(self._data), name] = reads.get((id(self._data), name), 0) + 1
        return done

    monkeypatch.setattr(checkpoint._Arrays, "read_into", counted_into)
    return straight


def test_a_restore_reads_each_array_once(tmp_path, tile_geometry, monkeypatch):
    """Asking whether a checkpoint holds an array does not read it: a restore reads each array of both files
    once (the window file of 50 io_groups is 803 MB), but the chip keys (3 bytes a chip), checked against the
    geometry first; the state's arrays straight from the file, none read as a new array and copied."""
    data, state, ing = stopped_cleanly(tmp_path, tile_geometry, 4)
    reads: dict[tuple[int, str], int] = {}
    read = np.lib.npyio.NpzFile.__getitem__

    def counted(self, name):
        reads[id(self), name] = reads.get((id(self), name), 0) + 1
        return read(self, name)

    monkeypatch.setattr(np.lib.npyio.NpzFile, "__getitem__", counted)
    straight = read_straight(monkeypatch, reads)
    restored = ingester([str(data)], state, tile_geometry)
    assert window(restored) == window(ing)
    names = {name for _, name in reads}
    assert {"chip_keys", "slot0_channel", "slot0_adc_sq", "cusum"} <= names | straight, names | straight
    again = {name: n for (_, name), n in reads.items() if n > 1 and name != "chip_keys"}
    assert not again, again
    assert {"win_flags", "cusum", "hits_total", "newest_bin"} <= straight, straight


def test_a_state_with_rows_to_spare_reads_the_window_slot_by_slot_and_restores_it_whole(tmp_path, monkeypatch):
    """Chips outside the geometry grow the state's rows by a quarter (1,600 + 80 chips: 2,000 rows), so a window
    array's block of chip rows is not one contiguous piece: it is read from the file one slot at a time, straight
    into the state, and every array (the slots' entries too) comes back as it was."""
    geometry = load_geometry(packaged_layout())
    data, state = tmp_path / "data", tmp_path / "state.npz"
    simulate_files(geometry, data, 4)
    ing = ingester([str(data)], state, geometry)
    extra = np.array([(5, c, i) for c in (1, 2) for i in range(11, 51)], np.uint8)
    ing.monitor.accumulator.state.register(extra)
    ing.poll()
    ing.checkpoint(final=True)
    straight = read_straight(monkeypatch)
    restored = ingester([str(data)], state, geometry)
    after = restored.monitor.accumulator
    assert len(after.chips) == 1_680 and after.state.capacity > len(after.chips)
    assert {"win_flags", "window_io_group", "hits_total"} <= straight, straight
    before, now = ing.monitor.accumulator.export_state(), after.export_state()
    assert before.keys() == now.keys()
    for name, value in before.items():
        np.testing.assert_array_equal(now[name], value, err_msg=name)
    assert sum(before[slot_names(slot)[1]].sum() for slot in range(after.config.window_bins)) > 1_000


def damage_window(kind: str, path) -> str:
    """Break a window file; the problem the restore names."""
    if kind == "not a zip":
        path.write_bytes(b"PK\x03\x04 not really")
        return "BadZipFile"
    if kind == "a flipped byte":  # in win_flags' data, past its .npy header: only its checksum tells
        with zipfile.ZipFile(path) as z:
            offset = z.getinfo("win_flags.npy").header_offset
        raw = bytearray(path.read_bytes())
        name_length, extra_length = struct.unpack("<HH", raw[offset + 26 : offset + 30])
        raw[offset + 30 + name_length + extra_length + 200] ^= 0x01
        path.write_bytes(bytes(raw))
        return "win_flags.npy does not match its checksum"
    with np.load(path) as data:
        arrays = {name: data[name] for name in data.files}
    arrays["meta_json"] = np.frombuffer(json.dumps({"version": 2, "lineage": "another"}).encode(), np.uint8)
    np.savez(path, **arrays)
    return "belongs to another checkpoint"


@pytest.mark.parametrize("kind", ["not a zip", "a flipped byte", "another lineage"])
def test_a_damaged_window_file_restores_the_counters_and_starts_the_window_empty(tmp_path, tile_geometry, kind, caplog):
    data, state, ing = stopped_cleanly(tmp_path, tile_geometry, 2)
    assert window(ingester([str(data)], state, tile_geometry)) == window(ing), "whole, the window is restored"
    problem = damage_window(kind, window_file(state))
    restored = ingester([str(data)], state, tile_geometry)
    assert total(restored) == total(ing) > 0
    assert sum(window(restored)[0]) == 0 < sum(window(ing)[0])
    assert any(problem in r.getMessage() and "the window starts empty" in r.getMessage() for r in caplog.records)


LEARNT = [f.name for f in FIELDS if f.checkpoint == LEARNING]


def learnt(ing: Ingester) -> dict[str, np.ndarray]:
    n = len(ing.accumulator.chips)
    return {name: getattr(ing.accumulator.state, name)[:n].copy() for name in LEARNT}


def test_what_evaluations_learnt_goes_with_the_window_and_catches_up_after_a_crash(tmp_path, tile_geometry):
    """Every poll's checkpoint leaves out the sequential tests and learnt rates (most of its bytes); the window file
    has them. After a clean stop they are restored as they were; after a crash, from the window file's older write,
    caught up by the next evaluation (the restore's), which takes the arrivals counted since in one step."""
    data = tmp_path / "data"
    simulate_files(tile_geometry, data, 20, file_seconds=5)
    state = tmp_path / "state.npz"
    ing = Ingester([InputSpec(str(data))], Monitor(tile_geometry), 0.1, str(state), window_checkpoint_interval=3600)
    ing.poll()
    with np.load(state) as counters, np.load(window_file(state)) as window:
        assert not set(LEARNT) & set(counters.files) and set(LEARNT) <= set(window.files)
        at_window = {name: window[name] for name in LEARNT}
    simulate_files(tile_geometry, data, 20, start=1_700_000_020, seed=2, file_seconds=5)
    ing.poll()  # counted and evaluated; the window file waits for its interval
    crashed = ingester([str(data)], state, tile_geometry)  # its restore evaluates once
    arrivals = crashed.accumulator.state.arrivals_total[: len(crashed.accumulator.chips)]
    np.testing.assert_array_equal(arrivals, ing.accumulator.state.arrivals_total[: len(ing.accumulator.chips)])
    np.testing.assert_array_equal(learnt(crashed)["cusum_seen"], arrivals)
    assert arrivals.sum() > at_window["cusum_seen"].sum()
    ing.checkpoint(final=True)
    restored = ingester([str(data)], state, tile_geometry)
    for name, value in learnt(restored).items():
        np.testing.assert_array_equal(value, learnt(ing)[name], err_msg=name)


def test_an_older_checkpoint_with_what_evaluations_learnt_among_its_counters_restores_it(tmp_path, tile_geometry):
    data, state, ing = stopped_cleanly(tmp_path, tile_geometry, 5)
    with np.load(state) as c, np.load(window_file(state)) as w:  # rewritten as checkpoints were written before
        counters, window = {k: c[k] for k in c.files}, {k: w[k] for k in w.files}
    counters.update({name: window.pop(name) for name in LEARNT})
    np.savez(state, **counters)
    np.savez(window_file(state), **window)
    restored = ingester([str(data)], state, tile_geometry)
    for name, value in learnt(restored).items():
        np.testing.assert_array_equal(value, learnt(ing)[name], err_msg=name)


@pytest.mark.external
def test_checkpoint_is_refused_on_the_command_line_for_another_input(tmp_path, tile_geometry):
    simulate_files(tile_geometry, tmp_path / "a", 1)
    simulate_files(tile_geometry, tmp_path / "b", 1)
    state = tmp_path / "state.npz"
    port = free_port()
    with running_exporter(["-i", str(tmp_path / "a"), "--checkpoint", str(state), "--interval", "0.2"], port):
        wait_for(lambda: ingested(port) > 0)
    result = run_cli("serve", "-i", str(tmp_path / "b"), "--checkpoint", str(state), "--port", str(free_port()))
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0, result.stderr
    assert f"checkpoint {state}: written for {tmp_path / 'a'}, not {tmp_path / 'b'}" in result.stderr


def test_a_poll_longer_than_the_window_interval_writes_the_window_inside(tmp_path, tile_geometry):
    """A backlog poll (hours, at a first start) writes the window when due after its publications once it has lasted
    the window's interval (here 1.5 s), so a crash in it restores the window; before that only the counters (its first
    publication, at ~1 s, writes no window). The poll's last publication comes before its own window write."""
    simulate_files(tile_geometry, tmp_path / "data", 50, fmt="packets", file_seconds=1)
    state = tmp_path / "state.npz"
    ing = Ingester(
        [InputSpec(str(tmp_path / "data"))], Monitor(tile_geometry), 0.1, str(state), window_checkpoint_interval=1.5
    )
    seen: list[tuple[float, bool]] = []  # at each chunk: seconds since the start, whether the window file is there
    published: list[bool] = []  # at each publication: whether the window file is there
    started = time.monotonic()

    def chunk_counted(chunk) -> None:
        seen.append((time.monotonic() - started, window_file(state).exists()))
        time.sleep(0.1)

    ing.listeners.append(chunk_counted)
    ing.publish_listeners.append(lambda p: published.append(window_file(state).exists()))
    ing.poll()
    assert state.exists() and all(not written for at, written in seen if at < 1.5), seen
    assert published[-1], (published, seen)
