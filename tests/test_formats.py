"""Input formats as one interface: what each format says of its files, and a format added as one class."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import ClassVar

import h5py
import numpy as np
import pytest

from larpix_dqm.exporter.metrics.health import Health
from larpix_dqm.exporter.monitor import Monitor
from larpix_dqm.exporter.quality.accumulator import Accumulator, load_kernels
from larpix_dqm.exporter.quality.config import COMPILED, NUMPY, QualityConfig
from larpix_dqm.exporter.reading import formats
from larpix_dqm.exporter.reading.formats import FORMATS, detect
from larpix_dqm.exporter.reading.formats.base import (
    InputFormat,
    OpenFile,
    Rows,
    SourceError,
    Stored,
    digest_of,
    open_for_reading,
    read_rows,
    trailing,
)
from larpix_dqm.exporter.reading.formats.packet_file import PacketFileFormat
from larpix_dqm.exporter.reading.formats.raw import RawFormat
from larpix_dqm.exporter.reading.packets import PACKET_DTYPE, REQUIRED_FIELDS
from larpix_dqm.exporter.reading.tail import DirectoryTail, InputSpec
from larpix_dqm.exporter.runtime.ingest import count_chunk
from larpix_dqm.exporter.simulate import PacketFileWriter, RawFileWriter, SimulationConfig, Simulator

START = 1_700_000_000


@pytest.fixture
def files(tmp_path, tile_geometry):
    """One second of the same data as a raw file and as a packet file: {format name: path}."""
    msgs, groups = Simulator(tile_geometry, SimulationConfig(seed=3)).second(START)
    raw = RawFileWriter(tmp_path / "raw.h5")
    raw.append(msgs, groups)
    raw.close()
    PacketFileWriter(tmp_path / "packets.h5").append(msgs, groups)
    return {"raw": tmp_path / "raw.h5", "packets": tmp_path / "packets.h5"}


def test_the_format_names_are_those_users_see():
    """The names are the ``kind`` of checkpointed cursors, the ``format`` label and ``simulate --format``."""
    assert [f.name for f in FORMATS] == ["raw", "packets"]
    assert [f.name for f in FORMATS if f.stores_run_configuration] == ["packets"]


def test_each_file_is_recognised_by_its_format_and_no_other(files, tmp_path):
    """As the reader opens them (``open_for_reading``, ``OpenFile``); a file whose 'packets' is a link to nothing and
    whose 'msgs' and 'msg_headers' are named types, not datasets, is in no format."""
    for name, path in files.items():
        with open_for_reading(path) as opened:
            fh = OpenFile(opened)
            assert detect(fh, str(path)).name == name
            assert [f.name for f in FORMATS if f.recognise(fh, str(path))] == [name]
            assert detect(fh, str(path)).created(fh) is not None
    with h5py.File(tmp_path / "other.h5", "w") as fh:
        fh.create_dataset("hits", data=np.arange(3))
        fh["packets"] = h5py.SoftLink("/nowhere")
        fh["msgs"], fh["msg_headers"] = np.dtype("u1"), np.dtype("u1")
    with open_for_reading(tmp_path / "other.h5") as opened, pytest.raises(SourceError) as err:
        detect(OpenFile(opened), "other.h5")
    assert (
        err.value.reason == "no_dataset" and "'msgs'+'msg_headers'" in str(err.value) and "'packets'" in str(err.value)
    )


def test_head_digests_are_those_checkpoints_saved_before_the_interface(files):
    """A checkpoint's cursor keeps its file's identity by content: the digests are computed as before."""
    with h5py.File(files["raw"], "r") as fh:
        sha = hashlib.blake2b(digest_size=16)
        for msg in fh["msgs"][:8]:
            sha.update(len(msg).to_bytes(8, "little"))
            sha.update(msg.tobytes())
        sha.update(fh["msg_headers"].fields("io_groups")[:8].tobytes())
        assert RawFormat().head_digest(fh, 8) == sha.hexdigest()
    with h5py.File(files["packets"], "r") as fh:
        assert (
            PacketFileFormat().head_digest(fh, 8)
            == hashlib.blake2b(fh["packets"][:8].tobytes(), digest_size=16).hexdigest()
        )


def test_unwritten_rows_are_counted_back_from_the_end(files):
    with h5py.File(files["packets"], "a") as fh:
        n = len(fh["packets"])
        fh["packets"].resize((n + 5,))  # grown, not yet filled
        assert PacketFileFormat().unwritten(fh, 0, n + 5) == 5
        assert PacketFileFormat().unwritten(fh, n + 2, n + 5) == 3
        assert PacketFileFormat().unwritten(fh, 0, n) == 0
    with h5py.File(files["raw"], "a") as fh:
        n = len(fh["msgs"])
        fh["msg_headers"][n - 1] = np.zeros(1, fh["msg_headers"].dtype)  # its header not yet written: io_group 0
        assert RawFormat().unwritten(fh, 0, n) == 1
    assert trailing(np.array([True, False, True, False, False])) == 2 and trailing(np.zeros(3, bool)) == 3


def test_raw_chunks_are_sized_by_messages_then_by_packets(files):
    raw = RawFormat()
    assert raw.rows_per_chunk(1_000_000, 100_000) == 1000  # before the first chunk: packets / 1000
    with h5py.File(files["raw"], "r") as fh:
        rows = raw.fetch(fh, 0, 10)
    per_message = rows.size_bound / 10
    assert raw.rows_per_chunk(1000, 100_000, rows, 10) == int(1000 / max(1.0, per_message))
    assert raw.rows_per_chunk(10**9, 50, rows, 10) == 50
    assert PacketFileFormat().rows_per_chunk(1000, 50, None) == 1000


class WordFormat(InputFormat):
    """A format of this test: packet records in a ``hits`` dataset, as a new format would be added."""

    name: ClassVar[str] = "hits"
    holds: ClassVar[str] = "a 'hits' dataset"

    def recognise(self, fh: h5py.File, path: str) -> bool:
        return "hits" in fh

    def created(self, fh: h5py.File) -> float | None:
        return None

    def length(self, fh: h5py.File) -> int:
        fh["hits"].id.refresh()
        return len(fh["hits"])

    def read(self, fh: h5py.File, start: int, end: int) -> Stored:
        return (fh["hits"][start:end],)

    def rows(self, stored: Stored) -> Rows:
        return stored[0]

    def unwritten_in(self, stored: Stored) -> int:
        return 0

    def digest(self, stored: Stored) -> str:
        return digest_of([stored[0].tobytes()])


def test_a_new_format_is_one_class_in_formats(files, tmp_path, monkeypatch):
    """The reader, the tail and the chunks take a format they do not know of by name."""
    monkeypatch.setattr(formats, "FORMATS", (*FORMATS, WordFormat()))
    with h5py.File(files["packets"], "r") as fh:
        packets = fh["packets"][:]
    (tmp_path / "new").mkdir()
    with h5py.File(tmp_path / "new" / "run.h5", "w") as fh:
        fh.create_dataset("hits", data=packets.astype(PACKET_DTYPE), maxshape=(None,), chunks=True)
    chunks = []
    tail = DirectoryTail([InputSpec(str(tmp_path / "new"))])
    assert tail.pump(chunks.append) == len(packets)
    assert {c.kind for c in chunks} == {"hits"} and tail.cursors[str(tmp_path / "new" / "run.h5")].kind == "hits"
    assert np.array_equal(np.concatenate([c.packets for c in chunks]), packets.astype(PACKET_DTYPE))


def test_rows_are_read_as_h5py_slices_them_whatever_the_stored_type(tmp_path):
    """``read_rows`` (into the stored type's dtype, both converted once per distinct type) gives what slicing
    gives: for packet records, a narrower type of the same field names, big-endian ones, records with gaps between
    their fields and after them, a boolean (an HDF5 enum), a variable-length field, a 12-bit field that its 16-bit
    dtype does not mirror, and ranges past the end; files of different types read one after the other keep their
    own types."""
    narrow = np.dtype([(n, "u4" if n == "timestamp" else "u1") for n in PACKET_DTYPE.names if n != "receipt_timestamp"])
    texts = np.dtype([("io_group", "u1"), ("note", h5py.string_dtype())])
    fields = {"names": ["io_group", "timestamp", "valid"], "formats": ["u1", "<u8", "?"], "offsets": [0, 8, 17]}
    gaps = np.dtype({**fields, "itemsize": 24})
    rng = np.random.default_rng(0)
    types = (PACKET_DTYPE, narrow, texts, PACKET_DTYPE.newbyteorder(">"), gaps, PACKET_DTYPE, narrow)
    for k, dtype in enumerate(types):
        rows = np.zeros(50, dtype)
        for name in dtype.names:
            rows[name] = [str(v) for v in range(50)] if dtype[name].hasobject else rng.integers(0, 200, 50)
        path = tmp_path / f"{k}.h5"
        with h5py.File(path, "w") as fh:
            fh.create_dataset("packets", data=rows)
        with h5py.File(path, "r") as fh:
            dataset = fh["packets"]
            for start, end in ((0, 50), (10, 20), (40, 70), (60, 80), (5, 5)):
                got, expected = read_rows(dataset, start, end), dataset[start:end]
                assert got.dtype == expected.dtype == dataset.dtype and got.tolist() == expected.tolist()
                if not dtype.hasobject:
                    assert got.tobytes() == rows[start:end].tobytes()
    twelve_bits = h5py.h5t.STD_U16LE.copy()  # 12 bits at bit 4 of 16: converted, not copied, into a uint16
    twelve_bits.set_precision(12)
    twelve_bits.set_offset(4)
    stored = h5py.h5t.create(h5py.h5t.COMPOUND, 2)
    stored.insert(b"dataword", 0, twelve_bits)
    values = np.array([(1,), (2,), (100,), (4095,)], [("dataword", "<u2")])
    with h5py.File(tmp_path / "bits.h5", "w") as fh:
        written = h5py.h5d.create(fh.id, b"packets", stored, h5py.h5s.create_simple((len(values),)))
        written.write(h5py.h5s.ALL, h5py.h5s.ALL, values, mtype=h5py.h5t.py_create(values.dtype))
    with h5py.File(tmp_path / "bits.h5", "r") as fh:
        assert read_rows(fh["packets"], 0, 4).tolist() == fh["packets"][:].tolist() == values.tolist()


def test_malformed_structures_are_one_error_each_and_the_other_files_are_read(files, tmp_path):
    """Datasets of the formats' names that are groups, scalars, tables or records with variable-length fields are
    each one read error by reason, never an exception that ends the poll before the files after them are read."""
    folder = tmp_path / "inputs"
    folder.mkdir()
    vlen = h5py.vlen_dtype(np.uint8)
    malformed = {
        "a_packets_group.h5": lambda fh: fh.create_group("packets"),
        "b_packets_scalar.h5": lambda fh: fh.create_dataset("packets", data=np.zeros((), PACKET_DTYPE)),
        "c_packets_table.h5": lambda fh: fh.create_dataset("packets", data=np.zeros((3, 2), PACKET_DTYPE)),
        "d_packets_null.h5": lambda fh: fh.create_dataset("packets", data=h5py.Empty(PACKET_DTYPE)),
        "e_packets_vlen.h5": lambda fh: fh.create_dataset(
            "packets", (2,), dtype=np.dtype([*((n, PACKET_DTYPE[n]) for n in PACKET_DTYPE.names), ("x", vlen)])
        ),
        "f_msgs_groups.h5": lambda fh: (fh.create_group("msgs"), fh.create_group("msg_headers")),
        "g_msgs_table.h5": lambda fh: (
            fh.create_dataset("msgs", data=np.zeros((3, 8), np.uint8)),
            fh.create_dataset("msg_headers", data=np.zeros(3, [("io_groups", "u1")])),
        ),
    }
    for name, make in malformed.items():
        with h5py.File(folder / name, "w") as fh:
            make(fh)
    (folder / "z_good.h5").write_bytes(files["packets"].read_bytes())
    errors: list[tuple[str, str]] = []
    tail = DirectoryTail(
        [InputSpec(str(folder))], on_error=lambda cursor, reason, _: errors.append((cursor.path, reason))
    )
    read = tail.pump(lambda chunk: None)
    with h5py.File(files["packets"]) as fh:
        assert read == len(fh["packets"]), "the file after the malformed ones is read whole"
    assert sorted(errors) == [(str(folder / name), "bad_dtype") for name in malformed]
    assert tail.pump(lambda chunk: None) == 0 and len(errors) == len(malformed), "one error each, not one a poll"


def test_an_error_no_format_foresaw_is_one_read_error_and_the_next_file_is_read(files, tmp_path, monkeypatch):
    """A TypeError, AttributeError or IndexError from a format reading a file (a structure nobody checked for) is
    that file's read error, as an OSError is; it does not end the poll."""
    folder = tmp_path / "inputs"
    folder.mkdir()
    (folder / "a.h5").write_bytes(files["packets"].read_bytes())
    (folder / "b.h5").write_bytes(files["raw"].read_bytes())

    def unforeseen(self, fh, start, end):
        raise TypeError("a structure nobody checked for")

    monkeypatch.setattr(PacketFileFormat, "read", unforeseen)
    errors: list[tuple[str, str, str]] = []
    tail = DirectoryTail([InputSpec(str(folder))], on_error=lambda cursor, *error: errors.append((cursor.path, *error)))
    read = tail.pump(lambda chunk: None)
    assert read > 0, "the raw file after it is read"
    assert [(path, reason) for path, reason, _ in errors] == [(str(folder / "a.h5"), "read_error")]
    assert "TypeError: a structure nobody checked for" in errors[0][2]


def _wide_copy(source: Path, path: Path) -> np.ndarray:
    """Write ``source``'s packets to ``path`` with their required fields stored as signed 16 and 64-bit integers, and
    three records more whose io_group (300), chip (-1) and timestamp (-5) fit no LArPix packet; return the packets."""
    with h5py.File(source) as fh:
        good = fh["packets"][:]
    wide = [
        (n, ("<i8" if n == "timestamp" else "<i2") if n in REQUIRED_FIELDS else good.dtype[n]) for n in good.dtype.names
    ]
    rows = np.zeros(len(good) + 3, np.dtype(wide))
    for name in good.dtype.names:
        rows[name][: len(good)] = good[name]
    rows[len(good) :] = rows[:3]
    rows["io_group"][-3], rows["chip_id"][-2], rows["timestamp"][-1] = 300, -1, -5
    path.parent.mkdir(exist_ok=True)
    with h5py.File(path, "w") as fh:
        fh.create_dataset("packets", data=rows)
    return good


@pytest.mark.parametrize("engine", [NUMPY, COMPILED])
def test_packet_records_beyond_their_larpix_ranges_are_left_out_and_counted(files, tmp_path, engine):
    """A packet file may store its fields wider or signed: records whose io_group, chip or timestamp do not fit the
    LArPix fields (an io_group of 300, a chip of -1, a negative timestamp) are left out of every count and counted as
    decode errors (``out_of_range``); the others count exactly as the same records stored in the standard types."""
    if engine == COMPILED:
        assert load_kernels(600)
    good = _wide_copy(files["packets"], tmp_path / "wide" / "wide.h5")
    states, health = [], Health()
    for path in (tmp_path / "wide" / "wide.h5", files["packets"]):
        accumulator = Accumulator(QualityConfig(engine=engine))

        def consume(chunk, accumulator=accumulator):
            accumulator.add_chunk(chunk, time.time())
            count_chunk(health, chunk, time.time())

        assert DirectoryTail([InputSpec(str(path))]).pump(consume) == len(good)
        assert accumulator.compiled == (engine == COMPILED)
        states.append(accumulator.export_state())
    assert health.decode_errors["out_of_range"] == 3
    assert states[0].keys() == states[1].keys()
    for name, array in states[0].items():
        np.testing.assert_array_equal(array, states[1][name], err_msg=name)


def test_once_prints_the_decode_errors_of_its_file(files, tmp_path):
    """``once`` prints the file's decode errors by kind among its totals, as ``summary.json`` has them."""
    _wide_copy(files["packets"], tmp_path / "wide.h5")
    command = [sys.executable, "-m", "larpix_dqm.exporter.cli", "once", str(tmp_path / "wide.h5"), "--no-plots"]
    printed = json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout)
    assert printed["decode_errors"]["out_of_range"] == 3
    assert printed["decode_errors"].keys() == Health().decode_errors.keys()
    subprocess.run([*command, "-o", str(tmp_path / "out")], capture_output=True, check=True)
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["totals"] == printed


def test_records_fed_beyond_their_larpix_ranges_are_left_out_and_logged(files, tmp_path):
    """``Monitor.feed`` (the Python API) leaves such records out as a file's reading does, and says so once."""
    good = _wide_copy(files["packets"], tmp_path / "wide.h5")
    with h5py.File(tmp_path / "wide.h5") as fh:
        wide = fh["packets"][:]
    monitors = [Monitor(ingest_engine=NUMPY), Monitor(ingest_engine=NUMPY)]
    records: list[dict] = []
    monitors[0].add_log_handler(records.append)
    monitors[0].feed(wide, wall_now=time.time())
    monitors[1].feed(good, wall_now=time.time())
    assert [(r["reason"], r["message"]) for r in records] == [
        ("out_of_range", "3 packet records left out: fields beyond a LArPix packet's")
    ]
    first, second = (m.accumulator.export_state() for m in monitors)
    for name, array in first.items():
        np.testing.assert_array_equal(array, second[name], err_msg=name)
