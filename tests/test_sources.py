"""Directory tailing: new, growing, deleted, replaced and broken files; bounded chunks."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
from helpers import START
from larpix import Packet_v2, TimestampPacket
from larpix.format.hdf5format import to_file

from larpix_dqm.exporter.reading import files as sources
from larpix_dqm.exporter.reading.decode import decode_messages
from larpix_dqm.exporter.reading.files import FileReader
from larpix_dqm.exporter.reading.packets import REQUIRED_FIELDS
from larpix_dqm.exporter.reading.tail import DirectoryTail, FileCursor, InputSpec
from larpix_dqm.exporter.simulate import PacketFileWriter, RawFileWriter, SimulationConfig, Simulator, open_writer


class Recorder:
    """Collects what a DirectoryTail hands out, advancing cursors like the ingester does."""

    def __init__(self, tail: DirectoryTail) -> None:
        self.tail = tail
        self.errors: list[tuple[str, str]] = []
        tail.on_error = self.on_error
        self.rows: dict[str, int] = {}
        self.chunk_sizes: list[int] = []

    def on_error(self, cursor, reason: str, message: str) -> None:
        self.errors.append((os.path.basename(cursor.path), reason))

    def poll(self) -> int:
        return self.tail.pump(self.record)

    def record(self, chunk) -> None:
        name = os.path.basename(chunk.cursor.path)
        self.rows[name] = self.rows.get(name, 0) + len(chunk.packets)
        self.chunk_sizes.append(chunk.rows_end - chunk.cursor.rows_done)


@pytest.fixture
def sim(tile_geometry):
    return Simulator(tile_geometry, SimulationConfig(seed=5))


def packets_in(path) -> int:
    with h5py.File(path, "r") as fh:
        return len(fh["packets"])


def test_growing_new_and_deleted_files(tmp_path, sim):
    rec = Recorder(DirectoryTail([InputSpec(str(tmp_path))]))
    writer = PacketFileWriter(tmp_path / "a.h5")
    writer.append(*sim.second(1_700_000_000))
    assert rec.poll() == packets_in(tmp_path / "a.h5")
    assert rec.poll() == 0, "an unchanged file is not read again"
    writer.append(*sim.second(1_700_000_001))
    raw = RawFileWriter(tmp_path / "b.h5")
    raw.append(*sim.second(1_700_000_000))
    rec.poll()
    assert rec.rows["a.h5"] == packets_in(tmp_path / "a.h5")
    assert rec.rows["b.h5"] > 0
    raw.append(*sim.second(1_700_000_001))
    raw.close()
    before = rec.rows["b.h5"]
    rec.poll()
    assert rec.rows["b.h5"] > before
    os.remove(tmp_path / "a.h5")
    assert rec.poll() == 0
    assert rec.tail.tracked == 1
    assert not rec.errors


def test_replaced_file_is_read_from_the_start(tmp_path, sim):
    rec = Recorder(DirectoryTail([InputSpec(str(tmp_path))]))
    path = tmp_path / "run.h5"
    writer = PacketFileWriter(path)
    for t in range(3):
        writer.append(*sim.second(1_700_000_000 + t))
    rec.poll()
    first = rec.rows["run.h5"]
    # same name, new inode (written elsewhere, renamed over)
    other = PacketFileWriter(tmp_path / "tmp.part")
    other.append(*sim.second(1_700_000_100))
    os.replace(tmp_path / "tmp.part", path)
    rec.poll()
    assert rec.rows["run.h5"] == first + packets_in(path)
    # same inode, rewritten shorter in place
    second = rec.rows["run.h5"]
    with h5py.File(path, "r+") as fh:
        fh["packets"].resize((10,))
        fh["_header"].attrs["created"] = time.time() + 1
    rec.poll()
    assert rec.rows["run.h5"] == second + 10


def test_unwritten_tail_rows_are_held_back(tmp_path, sim, monkeypatch):
    rec = Recorder(DirectoryTail([InputSpec(str(tmp_path))]))
    path = tmp_path / "run.h5"
    PacketFileWriter(path).append(*sim.second(1_700_000_000))
    n = packets_in(path)
    with h5py.File(path, "a") as fh:
        fh["packets"].resize((n + 50,))  # grown, not yet filled: rows read back as zeros
    assert rec.poll() == n
    with h5py.File(path, "a") as fh:
        fh["packets"][n:] = fh["packets"][:50]
    assert rec.poll() == 50
    with h5py.File(path, "a") as fh:
        fh["packets"].resize((n + 60,))
    monkeypatch.setattr(sources, "HOLD_SECONDS", 0.0)
    rec.poll()  # first sight of the zero rows: held
    rec.poll()
    assert rec.rows["run.h5"] == n + 60, "zero rows that never fill are counted after the hold time"


def test_reads_are_chunked(tmp_path, sim):
    rec = Recorder(DirectoryTail([InputSpec(str(tmp_path))], FileReader(chunk_rows=1000, raw_chunk_messages=100)))
    writer = PacketFileWriter(tmp_path / "p.h5")
    raw = RawFileWriter(tmp_path / "r.h5")
    for t in range(3):
        msgs, groups = sim.second(1_700_000_000 + t)
        writer.append(msgs, groups)
        raw.append(msgs, groups)
    raw.close()
    rec.poll()
    assert rec.rows["p.h5"] == packets_in(tmp_path / "p.h5")
    assert rec.rows["r.h5"] == rec.rows["p.h5"]
    assert max(rec.chunk_sizes) <= 1000
    assert len(rec.chunk_sizes) > 10


@pytest.mark.parametrize("version", ["2.0", "2.1", "2.2", "2.3", "2.4"])
def test_packet_file_versions_written_by_larpix_control(tmp_path, version):
    packets = [TimestampPacket(timestamp=1_700_000_000)]
    for i in range(20):
        p = Packet_v2()
        p.chip_id, p.channel_id, p.dataword, p.io_group, p.io_channel = 11 + i % 3, i, 70 + i, 1, 1
        p.assign_parity()
        packets.append(p)
    to_file(str(tmp_path / f"v{version}.h5"), packets, version=version)
    rec = Recorder(DirectoryTail([InputSpec(str(tmp_path))]))
    assert rec.poll() == 21
    assert not rec.errors


def write_bad_files(directory):
    """One file per kind of bad input; returns {file name: expected reason}."""
    (directory / "empty.h5").write_bytes(b"")
    (directory / "random.h5").write_bytes(np.random.default_rng(0).bytes(4096))
    with h5py.File(directory / "nodata.h5", "w") as fh:
        fh.create_dataset("something", data=np.arange(3))
    with h5py.File(directory / "foreign.h5", "w") as fh:
        fh.create_dataset("packets", data=np.zeros(3, [("chip_id", "u1"), ("adc", "f4")]))
    with h5py.File(directory / "floats.h5", "w") as fh:
        fh.create_dataset("packets", data=np.zeros(3, [(f, "f4") for f in REQUIRED_FIELDS]))
    return {
        "empty.h5": "empty",
        "random.h5": "not_hdf5",
        "nodata.h5": "no_dataset",
        "foreign.h5": "bad_dtype",
        "floats.h5": "bad_dtype",
    }


def test_bad_files_are_reported_and_others_still_read(tmp_path, sim):
    expected = write_bad_files(tmp_path)
    good = PacketFileWriter(tmp_path / "good.h5")
    good.append(*sim.second(1_700_000_000))
    full = tmp_path / "full.h5"
    PacketFileWriter(full).append(*sim.second(1_700_000_000))
    shutil.copy(full, tmp_path / "truncated.h5")
    os.remove(full)
    with open(tmp_path / "truncated.h5", "r+b") as fh:
        fh.truncate(os.path.getsize(tmp_path / "truncated.h5") // 2)
    expected["truncated.h5"] = "truncated"
    rec = Recorder(DirectoryTail([InputSpec(str(tmp_path))]))
    rec.poll()
    assert rec.rows == {"good.h5": packets_in(tmp_path / "good.h5")}
    assert dict(rec.errors) == expected
    assert rec.tail.errors_by_reason() == {"empty": 1, "not_hdf5": 1, "no_dataset": 1, "bad_dtype": 2, "truncated": 1}
    # a fixed file recovers and is read
    os.remove(tmp_path / "random.h5")
    PacketFileWriter(tmp_path / "random.h5").append(*sim.second(1_700_000_000))
    rec.errors.clear()
    rec.poll()
    assert rec.rows["random.h5"] == packets_in(tmp_path / "random.h5")
    assert "random.h5" not in dict(rec.errors)
    assert rec.tail.errors_by_reason().get("not_hdf5") is None


def test_a_live_file_copied_in_part_is_a_truncated_error_at_once_and_read_whole_once_complete(tmp_path, sim):
    """A raw file as a live writer leaves it (SWMR, HDF5's newest format) copied into the input in part: the poll
    reports it truncated in well under a second, where HDF5 read its damaged metadata again for hours (holding the
    interpreter: the exporter stopped answering), and the completed file is read whole. The poll runs in a process
    of its own, so that a hang fails the test at its deadline instead of holding the suite."""
    source, (msgs, groups) = tmp_path / "source.h5", sim.second(START)
    writer = RawFileWriter(source)
    writer.append(msgs, groups)
    writer.close()
    folder = tmp_path / "in"
    folder.mkdir()
    poll = (
        "import sys, time; from larpix_dqm.exporter.reading.tail import DirectoryTail, InputSpec; errors = []; "
        "tail = DirectoryTail([InputSpec(sys.argv[1])], on_error=lambda cursor, reason, message: errors.append(reason)); "
        "started = time.monotonic(); packets = tail.pump(lambda chunk: None); "
        "print(packets, ','.join(errors) or '-', time.monotonic() - started)"
    )
    data = source.read_bytes()
    for cut in (800, 4000, len(data) // 2, len(data)):
        (folder / "copy.h5").write_bytes(data[:cut])
        out = subprocess.run([sys.executable, "-c", poll, str(folder)], capture_output=True, text=True, timeout=120)
        packets, errors, seconds = out.stdout.split()
        if cut < len(data):  # cut in its metadata (a checksum that never matches) or in its headers' prefixes
            assert int(packets) == 0 and errors in ("truncated", "read_error"), (cut, out.stdout, out.stderr)
            assert float(seconds) < 1.0 and (cut != 800 or errors == "truncated"), (cut, out.stdout)
        else:
            assert (int(packets), errors) == (len(decode_messages(msgs, groups).packets), "-")
            assert out.stderr == "", out.stderr


def test_missing_directory_is_not_an_error(tmp_path, sim):
    watched = tmp_path / "live"
    rec = Recorder(DirectoryTail([InputSpec(str(watched))]))
    assert rec.poll() == 0
    watched.mkdir()
    PacketFileWriter(watched / "a.h5").append(*sim.second(1_700_000_000))
    assert rec.poll() > 0
    moved = tmp_path / "away"
    watched.rename(moved)
    assert rec.poll() == 0
    moved.rename(watched)
    assert rec.poll() == 0, "a directory that comes back is not read twice"


def test_file_deleted_while_being_read(tmp_path, sim):
    rec = Recorder(DirectoryTail([InputSpec(str(tmp_path))], FileReader(chunk_rows=500)))
    writer = PacketFileWriter(tmp_path / "run.h5")
    writer.append(*sim.second(1_700_000_000))
    total = packets_in(tmp_path / "run.h5")

    def delete_on_first_chunk(chunk) -> None:
        if not rec.rows:
            os.remove(tmp_path / "run.h5")  # the open file stays readable until closed
        rec.record(chunk)

    assert rec.tail.pump(delete_on_first_chunk) == total
    assert rec.poll() == 0 and rec.tail.tracked == 0 and not rec.errors


def test_stray_directory_and_fifo_are_one_error_each_until_replaced(tmp_path, sim, caplog):
    (tmp_path / "stray.h5").mkdir()
    os.mkfifo(tmp_path / "pipe.h5")  # opening it would block: it must never be opened
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(b"not an hdf5 file\n" * 10)
    PacketFileWriter(tmp_path / "good.h5").append(*sim.second(1_700_000_000))
    rec = Recorder(DirectoryTail([InputSpec(str(tmp_path))]))
    for _ in range(4):
        rec.poll()
    assert sorted(rec.errors) == [("garbage.h5", "not_hdf5"), ("pipe.h5", "not_a_file"), ("stray.h5", "not_a_file")]
    assert rec.tail.errors_by_reason() == {"not_a_file": 2, "not_hdf5": 1}, "the gauge says what is in error now"
    for _ in range(3):  # a live file that stays unreadable: still one error
        with open(garbage, "ab") as fh:
            fh.write(b"still not hdf5\n")
        rec.poll()
    assert [e for e in rec.errors if e[0] == "garbage.h5"] == [("garbage.h5", "not_hdf5")]
    garbage.unlink()  # replaced by another file (new inode): a new event
    (tmp_path / "other").write_bytes(b"another non-hdf5 file\n")
    os.rename(tmp_path / "other", garbage)
    rec.poll()
    rec.poll()
    assert [e for e in rec.errors if e[0] == "garbage.h5"] == [("garbage.h5", "not_hdf5")] * 2
    (tmp_path / "stray.h5").rmdir()
    rec.poll()
    assert rec.tail.errors_by_reason() == {"not_a_file": 1, "not_hdf5": 1}


def test_read_warnings_are_one_line_each(tmp_path, caplog):
    (tmp_path / "garbage.h5").write_bytes(b"x" * 100)
    tail = DirectoryTail([InputSpec(str(tmp_path))])
    with caplog.at_level("WARNING"):
        for _ in range(3):
            tail.pump(lambda chunk: None)
    records = [r for r in caplog.records if "garbage.h5" in r.getMessage()]
    assert len(records) == 1 and "\n" not in records[0].getMessage()
    from larpix_dqm.exporter.reading.tail import one_line

    assert (
        one_line("unable to open file\n  (file signature not found)\n")
        == "unable to open file (file signature not found)"
    )


@pytest.mark.parametrize("fmt", ["raw", "packets"])
def test_rows_grown_but_not_yet_written_are_held_back_even_beyond_a_chunk(tmp_path, tile_geometry, fmt):
    """A writer that grows its datasets by many rows before filling them: none of the empty rows is
    consumed while held (HOLD_SECONDS), however many chunks they span; once written, all are read."""
    sim = Simulator(tile_geometry, SimulationConfig(seed=3))
    path = tmp_path / f"run.{fmt}.h5"
    writer = open_writer(path, fmt)
    msgs, groups = sim.second(START)
    writer.append(msgs, groups)
    writer.close()
    written = len(decode_messages(msgs, groups).packets)
    extra = 2_500
    dataset = "msgs" if fmt == "raw" else "packets"
    with h5py.File(path, "r+", locking=False) as fh:
        rows = len(fh[dataset])
        for name in ("msgs", "msg_headers") if fmt == "raw" else ("packets",):
            fh[name].resize((rows + extra,))
    reader = FileReader(chunk_rows=1_000, raw_chunk_messages=100)
    cursor = FileCursor(str(path), 0, 0)
    chunks = list(reader.read_new(cursor, START))
    assert sum(c.size for c in chunks) == written and cursor.held_since == START
    assert sum(c.bad_messages for c in chunks) == 0 and chunks[-1].rows_end == rows
    cursor.rows_done = chunks[-1].rows_end
    assert list(reader.read_new(cursor, START + 1)) == []  # still held
    more, more_groups = sim.second(START + 1)
    more = (list(more) * (extra // len(more) + 1))[:extra]
    with h5py.File(path, "r+", locking=False) as fh:  # the writer fills the rows it grew
        if fmt == "raw":
            fill = np.empty(extra, object)
            fill[:] = more
            fh["msgs"].write_direct(fill, dest_sel=np.s_[rows:])
            headers = np.zeros(extra, fh["msg_headers"].dtype)
            headers["io_groups"] = np.resize(more_groups, extra)
            fh["msg_headers"][rows:] = headers
            expected = len(decode_messages(more, np.resize(more_groups, extra)).packets)
        else:
            packets = decode_messages(*sim.second(START + 1)).packets
            fh["packets"][rows:] = np.resize(packets, extra)
            expected = extra
    chunks = list(reader.read_new(cursor, START + 2))
    assert sum(c.size for c in chunks) == expected and cursor.held_since is None
    assert chunks[-1].rows_end == rows + extra


RAW_WRITE_STEPS = ("resize msgs", "resize msg_headers", "write msgs", "write msg_headers")


@pytest.mark.parametrize("pause_after", range(len(RAW_WRITE_STEPS)))
def test_raw_writer_paused_between_its_writes_creates_no_io_group(tmp_path, tile_geometry, pause_after):
    """The DAQ fills ``msgs`` and ``msg_headers`` one after the other: a reader that comes while the
    writer is paused after any of its steps counts only whole messages, never an io_group 0, and the
    rest once the writer finishes (no message lost, none counted twice)."""
    sim = Simulator(tile_geometry, SimulationConfig(seed=11))
    path = tmp_path / "run.h5"
    writer = RawFileWriter(path)
    first, first_groups = sim.second(START)
    writer.append(first, first_groups)
    writer.close()
    more, more_groups = sim.second(START + 1)
    new = np.empty(len(more), object)
    new[:] = more
    headers = np.zeros(len(more), [("io_groups", "u1")])
    headers["io_groups"] = more_groups
    rows = len(first)

    def step(fh: h5py.File, name: str) -> None:
        if name == "resize msgs":
            fh["msgs"].resize((rows + len(more),))
        elif name == "resize msg_headers":
            fh["msg_headers"].resize((rows + len(more),))
        elif name == "write msgs":
            fh["msgs"].write_direct(new, dest_sel=np.s_[rows:])
        else:
            fh["msg_headers"][rows:] = headers

    reader = FileReader(chunk_rows=1_000, raw_chunk_messages=50)
    cursor = FileCursor(str(path), 0, 0)
    seen = []
    with h5py.File(path, "r+", locking=False) as fh:
        for name in RAW_WRITE_STEPS[: pause_after + 1]:
            step(fh, name)
    for chunk in reader.read_new(cursor, START):
        seen.append(chunk.packets)
        assert chunk.headerless == 0
        cursor.rows_done = chunk.rows_end
    complete = pause_after == len(RAW_WRITE_STEPS) - 1
    expected_first = decode_messages(first, first_groups).packets
    so_far = np.concatenate(seen)
    assert (so_far["io_group"] != 0).all()
    assert len(so_far) == len(expected_first) + (len(decode_messages(more, more_groups).packets) if complete else 0)
    with h5py.File(path, "r+", locking=False) as fh:
        for name in RAW_WRITE_STEPS[pause_after + 1 :]:
            step(fh, name)
    for chunk in reader.read_new(cursor, START + 1):
        seen.append(chunk.packets)
        cursor.rows_done = chunk.rows_end
    everything = np.concatenate(seen)
    truth = np.concatenate([expected_first, decode_messages(more, more_groups).packets])
    assert np.array_equal(everything, truth)
    assert cursor.rows_done == rows + len(more) and cursor.held_since is None


def test_raw_headers_never_written_are_counted_headerless_after_the_hold(tmp_path, tile_geometry):
    """A message whose ``msg_headers`` row stays unwritten past the hold is left out and counted as
    headerless, not given to an io_group 0."""
    sim = Simulator(tile_geometry, SimulationConfig(seed=12))
    path = tmp_path / "run.h5"
    writer = RawFileWriter(path)
    msgs, groups = sim.second(START)
    writer.append(msgs, groups)
    writer.close()
    more, _ = sim.second(START + 1)
    new = np.empty(len(more), object)
    new[:] = more
    with h5py.File(path, "r+", locking=False) as fh:
        rows = len(fh["msgs"])
        fh["msgs"].resize((rows + len(more),))
        fh["msg_headers"].resize((rows + len(more),))
        fh["msgs"].write_direct(new, dest_sel=np.s_[rows:])
    reader = FileReader()
    cursor = FileCursor(str(path), 0, 0)
    chunks = list(reader.read_new(cursor, START))
    assert chunks[-1].rows_end == rows and sum(c.headerless for c in chunks) == 0
    cursor.rows_done = rows
    late = list(reader.read_new(cursor, START + sources.HOLD_SECONDS + 1))
    assert sum(c.headerless for c in late) == len(more)
    assert all((c.packets["io_group"] != 0).all() for c in late)


def _rewrite_in_place(path, packets: np.ndarray, created: float) -> None:
    """Truncate ``path`` and write ``packets`` into it again: same inode, same ``created`` attribute."""
    with h5py.File(path, "w", locking=False) as fh:  # O_TRUNC on the same inode
        fh.create_group("_header").attrs["created"] = created
        fh.create_dataset("packets", data=packets, maxshape=(None,))


@pytest.mark.parametrize("seen_empty", [True, False], ids=["poll-sees-it-empty", "regrown-between-polls"])
def test_file_rewritten_in_place_is_read_again_whole(tmp_path, tile_geometry, seen_empty):
    """A file truncated and regrown in place (same inode, same ``created``) is a new file: every row of the new
    content is counted, whether a poll saw it shrink or it grew past its old length between two polls."""
    path = tmp_path / "run.h5"
    old = decode_messages(*Simulator(tile_geometry, SimulationConfig(seed=1)).second(START)).packets
    new = np.concatenate(
        [decode_messages(*Simulator(tile_geometry, SimulationConfig(seed=2)).second(START + s)).packets for s in (0, 1)]
    )
    assert len(new) > len(old)
    _rewrite_in_place(path, old, 1.0)
    inode = os.stat(path).st_ino
    rec = Recorder(DirectoryTail([InputSpec(str(tmp_path))]))
    assert rec.poll() == len(old)
    if seen_empty:
        os.truncate(path, 0)
        assert rec.poll() == 0
    _rewrite_in_place(path, new, 1.0)
    assert os.stat(path).st_ino == inode
    assert rec.poll() == len(new)
    assert rec.rows["run.h5"] == len(old) + len(new)
    assert rec.poll() == 0, "read once"


def test_restored_cursor_of_an_unchanged_file_is_not_opened_again(tmp_path, sim):
    """A checkpointed cursor carries the file's size and mtime: after a restart an unchanged file that was read
    to its end is not reopened; one that grew, or was being read when the checkpoint was taken, is."""
    for name in ("a.h5", "b.h5"):
        writer = PacketFileWriter(tmp_path / name)
        writer.append(*sim.second(START))
    tail = DirectoryTail([InputSpec(str(tmp_path))])
    rec = Recorder(tail)
    rec.poll()
    restored = DirectoryTail([InputSpec(str(tmp_path))])
    restored.cursors = {p: FileCursor.from_dict(c.to_dict()) for p, c in tail.cursors.items()}
    assert restored.scan(time.time()) == []
    PacketFileWriter(tmp_path / "c.h5").append(*sim.second(START))
    due = restored.scan(time.time())
    assert [os.path.basename(c.path) for c in due] == ["c.h5"]
    halfway = FileCursor.from_dict({**tail.cursors[str(tmp_path / "a.h5")].to_dict(), "pending": True})
    assert halfway.pending, "a cursor saved while its file was being read is read again after a restart"


def test_dangling_and_looping_symlinks_are_one_error_each_by_reason(tmp_path, sim, caplog):
    """Broken links matching the pattern are reported once each, by reason, counted in the gauge while broken,
    and read once mended."""
    PacketFileWriter(tmp_path / "good.h5").append(*sim.second(START))
    (tmp_path / "dangling.h5").symlink_to(tmp_path / "gone.h5")
    (tmp_path / "loop_a.h5").symlink_to(tmp_path / "loop_b.h5")
    (tmp_path / "loop_b.h5").symlink_to(tmp_path / "loop_a.h5")
    rec = Recorder(DirectoryTail([InputSpec(str(tmp_path))]))
    with caplog.at_level("WARNING"):
        for _ in range(3):
            rec.poll()
    assert sorted(rec.errors) == [
        ("dangling.h5", "dangling_symlink"),
        ("loop_a.h5", "symlink_loop"),
        ("loop_b.h5", "symlink_loop"),
    ]
    assert rec.tail.errors_by_reason() == {"dangling_symlink": 1, "symlink_loop": 2}
    assert rec.rows == {"good.h5": packets_in(tmp_path / "good.h5")}
    PacketFileWriter(tmp_path / "gone.h5").append(*sim.second(START))  # the link's target appears
    rec.poll()
    assert rec.tail.errors_by_reason() == {"symlink_loop": 2}
    assert rec.rows["gone.h5"] == packets_in(tmp_path / "gone.h5"), "read once, under its resolved name"
