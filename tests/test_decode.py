"""The vectorised PACMAN decoder agrees packet for packet with larpix-control's parser."""

from __future__ import annotations

import numpy as np
import pytest
from larpix.format import hdf5format, pacman_msg_format
from larpix.format.rawhdf5format import from_rawfile, to_rawfile

from larpix_dqm.exporter.reading.decode import PacmanDecodeError, decode_messages
from larpix_dqm.exporter.reading.packets import PACKET_DTYPE


def reference_decode(msgs: list[bytes], io_groups: list[int]) -> np.ndarray:
    """larpix-control's parse, stored the way hdf5format 2.4 stores packets."""
    rows = []
    for msg, group in zip(msgs, io_groups):
        rows += [hdf5format._encode_packet(p, "2.4", "packets") for p in pacman_msg_format.parse(msg, io_group=group)]
    return np.array(rows, dtype=PACKET_DTYPE)


def random_messages(rng: np.random.Generator, n: int, max_words: int) -> tuple[list[bytes], list[int]]:
    msgs, groups = [], []
    for _ in range(n):
        words = []
        for _ in range(int(rng.integers(0, max_words + 1))):
            r = rng.random()
            if r < 0.8:
                word = int(rng.integers(0, 2**63, dtype=np.uint64)) * 2 + int(rng.integers(0, 2))
                words.append(
                    ("DATA", int(rng.integers(0, 256)), int(rng.integers(0, 2**32)), word.to_bytes(8, "little"))
                )
            elif r < 0.9:
                words.append(("TRIG", bytes([int(rng.integers(0, 256))]), int(rng.integers(0, 2**32))))
            else:
                kind = b"SHC"[int(rng.integers(0, 3))].to_bytes(1, "little")
                words.append(("SYNC", kind, int(rng.integers(0, 256)), int(rng.integers(0, 2**32))))
        msgs.append(pacman_msg_format.format_msg("DATA", words))
        groups.append(int(rng.integers(1, 256)))
    return msgs, groups


@pytest.mark.parametrize("max_words", [1, 6, 200])
def test_random_messages_match_larpix_control(max_words):
    rng = np.random.default_rng(max_words)
    msgs, groups = random_messages(rng, 300 if max_words < 200 else 20, max_words)
    expected = reference_decode(msgs, groups)
    result = decode_messages([np.frombuffer(m, np.uint8) for m in msgs], np.array(groups))
    assert result.bad_messages == 0 and result.unknown_words == 0
    types = np.bincount(expected["packet_type"], minlength=8)
    assert types[0] > 0 and types[4] == len(msgs)
    assert (expected["valid_parity"][expected["packet_type"] < 4] == 0).any(), "sample must include parity errors"
    for field in PACKET_DTYPE.names:
        np.testing.assert_array_equal(result.packets[field], expected[field], err_msg=field)


@pytest.mark.slow
def test_simulated_raw_file_matches_larpix_control(tmp_path, module_geometry):
    from larpix_dqm.exporter.simulate import Faults, RawFileWriter, SimulationConfig, Simulator

    sim = Simulator(
        module_geometry,
        SimulationConfig(seed=3, trigger_rate_hz=5),
        Faults(parity_error_fraction=0.01, fifo_full_chips=[(1, 1, 12)], fifo_flag_fraction=0.5),
    )
    writer = RawFileWriter(tmp_path / "run.h5")
    for t in range(2):
        writer.append(*sim.second(1_700_000_000 + t))
    writer.close()
    data = from_rawfile(str(tmp_path / "run.h5"))
    expected = reference_decode(data["msgs"], data["msg_headers"]["io_groups"])
    msgs = [np.frombuffer(m, np.uint8) for m in data["msgs"]]
    result = decode_messages(msgs, np.array(data["msg_headers"]["io_groups"]))
    assert np.array_equal(result.packets, expected)
    types = set(np.unique(expected["packet_type"]).tolist())
    assert {0, 4, 6, 7} <= types
    assert (expected["valid_parity"][expected["packet_type"] == 0] == 0).any()
    assert (expected["local_fifo"] == 2).any()


def test_larpix_written_raw_file_decodes(tmp_path):
    rng = np.random.default_rng(7)
    msgs, groups = random_messages(rng, 50, 6)
    to_rawfile(str(tmp_path / "lc.h5"), msgs=msgs, msg_headers={"io_groups": groups})
    data = from_rawfile(str(tmp_path / "lc.h5"))
    result = decode_messages(
        [np.frombuffer(m, np.uint8) for m in data["msgs"]], np.array(data["msg_headers"]["io_groups"])
    )
    assert np.array_equal(result.packets, reference_decode(msgs, groups))


def test_malformed_messages_are_skipped_and_counted():
    good = pacman_msg_format.format_msg("DATA", [("DATA", 1, 5, b"\x01" * 8)])
    msgs = [
        good,
        b"D\x00",
        good[:-3],
        b"?" + good[1:],
        good + b"T" + b"\x00" * 15,
        b"D" + good[1:24] + b"X" + b"\x00" * 15,
    ]
    result = decode_messages([np.frombuffer(m, np.uint8) for m in msgs], np.ones(len(msgs)))
    assert result.bad_messages == 3
    assert result.unknown_words == 1
    assert np.array_equal(result.packets[:2], reference_decode([good], [1]))
    assert len(result.packets) == 2 + 3 + 2  # good; good + trigger; good (unknown word dropped)


def test_decode_errors_are_documented_errors():
    with pytest.raises(PacmanDecodeError):
        decode_messages([np.zeros(8, np.uint8)], np.ones(2))
    empty = decode_messages([], np.zeros(0))
    assert len(empty.packets) == 0 and empty.packets.dtype == PACKET_DTYPE


def test_equal_length_messages_write_and_read_back(tmp_path):
    from larpix_dqm.exporter.simulate import RawFileWriter

    msgs = [np.frombuffer(pacman_msg_format.format_msg("DATA", [("DATA", 1, i, bytes(8))]), np.uint8) for i in range(3)]
    writer = RawFileWriter(tmp_path / "same.h5")
    writer.append(msgs, np.ones(3, np.uint8))
    writer.close()
    assert [bytes(m) for m in from_rawfile(str(tmp_path / "same.h5"))["msgs"]] == [m.tobytes() for m in msgs]
