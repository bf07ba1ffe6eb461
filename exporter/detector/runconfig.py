"""The run's own configuration: which chips its hydra networks read, which channels are masked, its run mode.

Inputs, each optional (with none, every chip of the geometry or seen in data is expected):

- larpix-control controller network files (``"_config_type": "controller"``, ``"network": {io_group:
  {io_channel: {"nodes": [{"chip_id": ...}, ...]}}}``); a chip in no network is not expected;
- the 2x2 DAQ's disabled-channel lists (``{"<io_group>-<tile>-<chip_id>": [channel_id, ...], "meta": {...}}``,
  tile = (io_channel - 1) // 4 + 1); a list whose ``meta.key_scheme`` names another key (the chip-keyed
  ``channels --format json``) or a CSV channel list is refused, as its keys would mask other chips;
- the ``configs`` dataset of an hdf5format 2.4 packet file (chip registers written by larpix-control's
  ``to_file(..., chip_list=...)``): its channel masks and periodic-trigger enables.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path

import h5py
import numpy as np

from larpix_dqm.exporter.detector.geometry import CHANNELS_PER_CHIP
from larpix_dqm.exporter.detector.modes import RUN_MODES

#: io_channels per pixel tile in the DAQ's numbering (a PACMAN tile connector carries four).
IO_CHANNELS_PER_TILE = 4
#: Bit ranges of the LArPix v2/v2b configuration registers (bit = 8 * register + bit in register, little-endian).
CHANNEL_MASK_BITS = (1048, 1112)
PERIODIC_TRIGGER_MASK_BITS = (1240, 1304)
ENABLE_PERIODIC_TRIGGER_BIT = 1027
#: Key schemes of the channel lists, as their ``meta.key_scheme`` names them: larpix-control's chip keys
#: (``channels --format json``, csv) and the DAQ's disabled list (``--format daq``, what --disabled-list reads).
CHIP_KEY_SCHEME = "io_group-io_channel-chip_id"
DISABLED_LIST_KEY_SCHEME = "io_group-tile-chip_id"
#: The header of ``channels --format csv``.
CSV_CHANNELS_HEADER = "io_group,io_channel,chip_id,channel_id"


class RunConfigError(ValueError):
    """A network file, disabled list or file configuration is unusable; the message names the file."""


def daq_tile(io_channel: np.ndarray | int) -> np.ndarray | int:
    """The DAQ's pixel tile of an io_channel within its io_group (2x2 layouts: four io_channels a tile)."""
    return (io_channel - 1) // IO_CHANNELS_PER_TILE + 1


def _read_json(path: str, what: str) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
    except FileNotFoundError:
        raise RunConfigError(f"{what} {path}: no such file") from None
    except OSError as err:
        raise RunConfigError(f"{what} {path}: {err.strerror or err}") from None
    except UnicodeDecodeError:
        raise RunConfigError(f"{what} {path}: not a text file (binary data), not JSON") from None
    except json.JSONDecodeError as err:
        raise RunConfigError(f"{what} {path}: not valid JSON ({err})") from None
    if not isinstance(doc, dict):
        raise RunConfigError(f"{what} {path}: expected a JSON object at the top level")
    return doc


def _int_key(path: str, value: object, where: str) -> int:
    if isinstance(value, bool) or not str(value).isdigit() or not 0 <= int(str(value)) <= 255:
        raise RunConfigError(f"network file {path}: {where}: expected a number 0-255, got {value!r}")
    return int(str(value))


def load_network(path: str) -> list[tuple[int, int, int]]:
    """Chips (io_group, io_channel, chip_id) of one controller network file; non-numeric nodes ('ext') skipped."""
    doc = _read_json(path, "network file")
    if doc.get("_config_type") != "controller" or not isinstance(doc.get("network"), dict):
        raise RunConfigError(
            f'network file {path}: not a larpix-control controller network (needs "_config_type": "controller" '
            'and a "network" object)'
        )
    chips = []
    for group_key, channels in doc["network"].items():
        if not isinstance(channels, dict):  # miso_uart_map and the like, inherited by the groups
            continue
        group = _int_key(path, group_key, "network io_group")
        for channel_key, spec in channels.items():
            if not isinstance(spec, dict):
                continue
            channel = _int_key(path, channel_key, f"network.{group_key} io_channel")
            nodes = spec.get("nodes")
            if not isinstance(nodes, list):
                raise RunConfigError(f"network file {path}: network.{group_key}.{channel_key}: expected a 'nodes' list")
            for node in nodes:
                chip_id = node.get("chip_id") if isinstance(node, dict) else None
                if isinstance(chip_id, int) and not isinstance(chip_id, bool):
                    chips.append(
                        (group, channel, _int_key(path, chip_id, f"network.{group_key}.{channel_key} chip_id"))
                    )
                elif not isinstance(chip_id, str):  # a string names a PACMAN node ('ext'), not a chip
                    raise RunConfigError(
                        f"network file {path}: network.{group_key}.{channel_key}: node without a chip_id: {node!r}"
                    )
    return chips


def network_files(path: str) -> list[str]:
    """The network files named by ``path``: the file itself, or every controller *.json in a directory."""
    if not os.path.isdir(path):
        return [path]
    found = []
    for candidate in sorted(Path(path).glob("*.json")):
        try:
            doc = json.loads(candidate.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(doc, dict) and doc.get("_config_type") == "controller":
            found.append(str(candidate))
    if not found:
        raise RunConfigError(f"network directory {path}: no larpix-control controller network (*.json) in it")
    return found


def _refuse_other_lists(path: str, doc: dict | None) -> None:
    """RunConfigError for a channel list keyed otherwise than io_group-tile-chip_id (``doc`` None: not JSON)."""
    fix = f"--disabled-list takes {DISABLED_LIST_KEY_SCHEME} lists ('larpix-dqm channels --format daq')"
    if doc is None:
        try:
            with open(path, encoding="utf-8") as fh:
                csv_list = fh.readline().strip() == CSV_CHANNELS_HEADER
        except (OSError, UnicodeDecodeError):
            return
        if csv_list:
            raise RunConfigError(f"disabled list {path}: a CSV channel list keyed {CHIP_KEY_SCHEME}; {fix}")
        return
    meta = doc.get("meta", {})
    if not isinstance(meta, dict):
        raise RunConfigError(f"disabled list {path}: 'meta': expected a JSON object")
    scheme = meta.get("key_scheme", DISABLED_LIST_KEY_SCHEME)
    if scheme != DISABLED_LIST_KEY_SCHEME:
        raise RunConfigError(f"disabled list {path}: keyed {scheme} (its meta.key_scheme); {fix}")


def load_disabled_list(path: str) -> dict[tuple[int, int, int], np.ndarray]:
    """Masked channels of a disabled list: (io_group, tile, chip_id) -> (64,) bool.

    Lists without ``meta.key_scheme`` (the DAQ's own) are taken as keyed io_group-tile-chip_id.
    """
    try:
        doc = _read_json(path, "disabled list")
    except RunConfigError:
        _refuse_other_lists(path, None)
        raise
    _refuse_other_lists(path, doc)
    masks: dict[tuple[int, int, int], np.ndarray] = {}
    for key, channels in doc.items():
        if key == "meta":
            continue
        parts = key.split("-")
        if len(parts) != 3 or not all(p.isdigit() for p in parts):
            raise RunConfigError(f"disabled list {path}: key {key!r}: expected '<io_group>-<tile>-<chip_id>'")
        if not isinstance(channels, list) or not all(
            isinstance(c, int) and not isinstance(c, bool) and 0 <= c < CHANNELS_PER_CHIP for c in channels
        ):
            raise RunConfigError(f"disabled list {path}: key {key!r}: expected a list of channel ids 0-63")
        g, tile, chip = (int(p) for p in parts)
        mask = masks.setdefault((g, tile, chip), np.zeros(CHANNELS_PER_CHIP, bool))
        mask[channels] = True
    return masks


@dataclass(frozen=True)
class FileConfiguration:
    """What a packet file's ``configs`` dataset says, the newest row per chip."""

    chips: np.ndarray  # (n, 3) io_group, io_channel, chip_id
    channel_mask: np.ndarray  # (n, 64) bool, True = masked
    periodic_trigger: np.ndarray  # (n, 64) bool, True = periodic trigger enabled on the channel


def read_file_configuration(path: str, opened: h5py.File | None = None) -> FileConfiguration | None:
    """The chip configurations stored in a packet file (hdf5format 2.4 ``configs``), None if it has none
    (or cannot be opened); RunConfigError when its configs dataset is malformed. From ``opened``, the file
    open already, when given and still open."""
    try:
        fh = opened if opened else h5py.File(path, "r", swmr=True, locking=False)
    except OSError:
        return None  # not (yet) an HDF5 file: the packet reader reports that
    try:
        with nullcontext() if fh is opened else fh:
            if "configs" not in fh:
                return None
            rows = fh["configs"][...]
    except (OSError, KeyError, ValueError, RuntimeError) as err:
        raise RunConfigError(f"packet file {path}: cannot read its configs dataset ({err})") from None
    names = rows.dtype.names or ()
    if not {"io_group", "io_channel", "chip_id", "registers"} <= set(names):
        raise RunConfigError(f"packet file {path}: configs dataset lacks io_group/io_channel/chip_id/registers")
    if len(rows) == 0:
        return None
    registers = rows["registers"]
    if registers.shape[1] * 8 < PERIODIC_TRIGGER_MASK_BITS[1]:
        raise RunConfigError(f"packet file {path}: configs rows hold {registers.shape[1]} registers, too few for v2")
    keys = np.column_stack([rows["io_group"], rows["io_channel"], rows["chip_id"]]).astype(np.uint8)
    order = np.argsort(rows["timestamp"], kind="stable") if "timestamp" in names else np.arange(len(rows))
    newest: dict[tuple[int, ...], int] = {tuple(keys[i].tolist()): int(i) for i in order}  # later rows win
    index = np.array(list(newest.values()), np.int64)
    bits = np.unpackbits(registers[index].astype(np.uint8), axis=1, bitorder="little").astype(bool)
    enabled = bits[:, ENABLE_PERIODIC_TRIGGER_BIT]
    periodic = ~bits[:, slice(*PERIODIC_TRIGGER_MASK_BITS)] & enabled[:, None]
    return FileConfiguration(keys[index], bits[:, slice(*CHANNEL_MASK_BITS)], periodic)


@dataclass(frozen=True)
class RunConfig:
    """Expected chips, masked channels and the run mode of a run; empty means "no constraint"."""

    #: Chips in the run's hydra networks, None when no network was given (every chip expected).
    network: frozenset[tuple[int, int, int]] | None = None
    #: Masked channels keyed (io_group, DAQ tile, chip_id) -> (64,) bool.
    masked: dict[tuple[int, int, int], np.ndarray] = field(default_factory=dict)
    #: Channels with periodic triggers enabled, keyed like ``masked``.
    periodic: dict[tuple[int, int, int], np.ndarray] = field(default_factory=dict)
    run_mode: str = "auto"
    sources: tuple[str, ...] = ()

    @classmethod
    def load(
        cls, networks: Iterable[str] = (), disabled_lists: Iterable[str] = (), run_mode: str = "auto"
    ) -> RunConfig:
        """Read network files or directories and disabled lists; RunConfigError names the first bad one."""
        if run_mode not in RUN_MODES:
            raise RunConfigError(f"run mode {run_mode!r}: use one of {', '.join(RUN_MODES)}")
        sources: list[str] = []
        chips: set[tuple[int, int, int]] | None = None
        for path in networks:
            for file in network_files(str(path)):
                chips = (chips or set()) | set(load_network(file))
                sources.append(file)
        masked: dict[tuple[int, int, int], np.ndarray] = {}
        for path in disabled_lists:
            for key, mask in load_disabled_list(str(path)).items():
                masked[key] = masked.get(key, np.zeros(CHANNELS_PER_CHIP, bool)) | mask
            sources.append(str(path))
        return cls(None if chips is None else frozenset(chips), masked, {}, run_mode, tuple(sources))

    def with_file(self, path: str, opened: h5py.File | None = None) -> RunConfig:
        """This configuration plus the channel masks and periodic triggers the packet file at ``path`` stores
        (``configs``), itself if it stores none; RunConfigError if its configs dataset is malformed. The one
        read of a file's configuration (serve, once and the Python API apply it through ``Monitor``); from
        ``opened``, the file open already, when given."""
        found = read_file_configuration(path, opened)
        if found is None:
            return self
        masked = dict(self.masked)
        periodic = dict(self.periodic)
        for (g, c, chip), mask, trig in zip(found.chips.tolist(), found.channel_mask, found.periodic_trigger):
            tile = int(daq_tile(c))
            key = (g, tile, chip)
            masked[key] = masked.get(key, np.zeros(CHANNELS_PER_CHIP, bool)) | mask
            periodic[key] = periodic.get(key, np.zeros(CHANNELS_PER_CHIP, bool)) | trig
        return replace(self, masked=masked, periodic=periodic, sources=(*self.sources, path))

    def in_network(self, keys: np.ndarray) -> np.ndarray:
        """(n,) bool: each chip (rows of io_group, io_channel, chip_id) is in a network (all True without one)."""
        if self.network is None:
            return np.ones(len(keys), bool)
        return np.array([tuple(k) in self.network for k in keys.tolist()], bool)

    def _per_chip(self, table: dict[tuple[int, int, int], np.ndarray], keys: np.ndarray) -> np.ndarray:
        out = np.zeros((len(keys), CHANNELS_PER_CHIP), bool)
        if table:
            for row, (g, c, chip) in enumerate(keys.tolist()):
                found = table.get((g, int(daq_tile(c)), chip))
                if found is not None:
                    out[row] = found
        return out

    def masked_channels(self, keys: np.ndarray) -> np.ndarray:
        """(n, 64) bool: masked channels of each chip row."""
        return self._per_chip(self.masked, keys)
