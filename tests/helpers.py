"""Helpers shared by the tests: simulated files, free ports, scraping, waiting, and the programs
the end-to-end tests run (the exporter, Alertmanager, any command), always stopped afterwards."""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import yaml

from larpix_dqm.exporter.detector.geometry import CHANNELS_PER_CHIP
from larpix_dqm.exporter.quality.slots import COLUMNS
from larpix_dqm.exporter.quality.state import State
from larpix_dqm.exporter.reading.packets import PACKET_TYPE_NAMES
from larpix_dqm.exporter.simulate import Faults, SimulationConfig, Simulator, Truth, write_run

START = 1_700_000_000
T = TypeVar("T")


#: Debian package providing each program the tests run.
DEBIAN_PACKAGE = {
    "prometheus": "prometheus",
    "promtool": "prometheus",
    "prometheus-alertmanager": "prometheus-alertmanager",
    "alertmanager": "prometheus-alertmanager",
    "amtool": "prometheus-alertmanager",
    "docker-compose": "docker-compose",
    "chromium": "chromium",
    "victoria-metrics": "victoria-metrics",
    "vmagent": "victoria-metrics",
    "vmalert": "victoria-metrics",
}


def require_binary(*names: str) -> str:
    """Path of the first of ``names`` on PATH; fail the test (never skip) when none is."""
    import pytest

    for name in names:
        path = shutil.which(name)
        if path is not None:
            return path
    package = DEBIAN_PACKAGE.get(names[-1], names[-1])
    pytest.fail(f"{' / '.join(names)} not found on PATH: install it (Debian: apt-get install {package})")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def simulate_files(
    geometry, outdir: Path, seconds: int, fmt: str = "raw", faults: Faults | None = None, start: int = START, **kw
) -> tuple[list[Path], Truth]:
    """Write a backlog run and return its files and the exact truth."""
    truth = Truth()
    file_seconds = kw.pop("file_seconds", 0)
    sim = Simulator(geometry, SimulationConfig(seed=kw.pop("seed", 1), **kw), faults)
    paths = write_run(
        sim, outdir, fmt, seconds, realtime=False, start_time=start, truth=truth, file_seconds=file_seconds
    )
    return paths, truth


def scrape(port: int, path: str = "/metrics", timeout: float = 10.0) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as resp:
        return resp.read().decode()


def http_get(url: str, params: Mapping[str, str | list[str]] | None = None, timeout: float = 5.0) -> bytes:
    """GET ``url`` (with query ``params``; list values repeat the key) and return the body."""
    if params:
        url += "?" + urllib.parse.urlencode(params, doseq=True)
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return resp.read()


def running(pid: int) -> bool:
    """Whether process ``pid`` is running: one that exited and is not yet reaped (a zombie) counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().split(") ")[1][0] != "Z"


def wait_for(
    predicate: Callable[[], T],
    timeout: float = 30.0,
    what: str = "condition",
    details: Callable[[], str] = str,
    interval: float = 0.2,
) -> T:
    """Call ``predicate`` until it returns something truthy; fail after ``timeout`` seconds.

    Exceptions from ``predicate`` (a server not up yet, a sample not exported yet) count as
    "not yet" and the last one is reported, except AssertionError, which propagates (a failed
    check, or a program that exited). ``details()`` is appended to the failure message.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = predicate()
            if value:
                return value
            last = value
        except AssertionError:
            raise
        except Exception as exc:
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f} s (last: {last!r})\n{details()}")
        time.sleep(interval)


# --------------------------------------------------------------------------- processes


@dataclass
class Process:
    """A program started by ``running_process``: its name, handle, output log and (servers) address."""

    name: str
    popen: subprocess.Popen
    log: Path
    address: str = ""

    def tail(self, lines: int = 25) -> str:
        """The last ``lines`` lines of the program's output, for failure messages."""
        try:
            text = self.log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def stop_process(popen: subprocess.Popen, stop_signal: int = signal.SIGTERM, timeout: float = 15.0) -> None:
    """Send ``stop_signal``, wait up to ``timeout`` seconds, then SIGKILL; always reaps the child."""
    if popen.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            popen.send_signal(stop_signal)
        try:
            popen.wait(timeout)
        except subprocess.TimeoutExpired:
            popen.kill()
    popen.wait()


@contextlib.contextmanager
def running_process(
    name: str,
    cmd: list[str],
    log: Path,
    ready: Callable[[], object] | None = None,
    ready_timeout: float = 30.0,
    stop_signal: int = signal.SIGTERM,
    stop_timeout: float = 15.0,
    env: Mapping[str, str] | None = None,
    address: str = "",
) -> Iterator[Process]:
    """Run ``cmd`` (``env`` added to the environment) with its output in ``log``; wait for
    ``ready()``; always stop it on exit."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        popen = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})}
        )
        proc = Process(name, popen, log, address)
        try:
            if ready is not None:

                def up() -> object:
                    if popen.poll() is not None:
                        raise AssertionError(f"{name} exited with status {popen.returncode}:\n{proc.tail()}")
                    return ready()

                wait_for(up, ready_timeout, f"{name} ready", proc.tail)
            yield proc
        finally:
            stop_process(popen, stop_signal, stop_timeout)


#: Runs the CLI with Ctrl-C (SIGINT) handled even when this process was started with SIGINT
#: ignored (a background job of a non-interactive shell, some CI runners): children inherit
#: the ignored disposition, and Python then never raises KeyboardInterrupt.
_CLI_WITH_SIGINT = (
    "import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "runpy.run_module('larpix_dqm.exporter.cli', run_name='__main__', alter_sys=True)"
)


def larpix_dqm(*args: str) -> list[str]:
    """Command line of the ``larpix-dqm`` CLI run with this interpreter (SIGINT handled)."""
    return [sys.executable, "-c", _CLI_WITH_SIGINT, *args]


@contextlib.contextmanager
def running_exporter(
    args: Sequence[str],
    port: int | None = None,
    env: Mapping[str, str] | None = None,
    wrapper: Sequence[str] = (),
    ready_path: str | None = "/-/healthy",
    log: Path | None = None,
) -> Iterator[Process]:
    """``larpix-dqm serve ARGS`` on 127.0.0.1:``port`` (default: a free one) until the block ends.

    Its output goes to ``log`` (default: a file in a temporary folder removed when the tests end); checkpoints
    to a fresh state directory in that folder unless ``env`` sets LARPIX_DQM_STATE_DIR; ``wrapper`` is a command prefix
    (e.g. setpriv); ``ready_path=None`` waits for the port instead of an HTTP answer (TLS, auth).
    """
    port = port or free_port()
    address = f"127.0.0.1:{port}"
    cmd = [*wrapper, *larpix_dqm("serve", "--listen-address", "127.0.0.1", "--port", str(port), *args)]
    scratch = Path(tempfile.mkdtemp(prefix="larpix-dqm-serve-"))
    atexit.register(shutil.rmtree, scratch, True)  # the log stays readable after the block, for the test's asserts
    (scratch / "state").mkdir()
    env = {"LARPIX_DQM_STATE_DIR": str(scratch / "state"), **(env or {})}
    log = log or scratch / "serve.log"

    def ready() -> bool:
        if ready_path is None:  # TLS or auth in front: wait until the port accepts connections
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        return http_get(f"http://{address}{ready_path}") == b"OK\n"

    with running_process("exporter", cmd, log, ready, env=env, address=address) as proc:
        yield proc


@contextlib.contextmanager
def running_alertmanager(config: Mapping[str, Any], workdir: Path) -> Iterator[Process]:
    """A real Alertmanager (clustering off) with ``config`` on a free port, data in ``workdir``."""
    config_file = workdir / "alertmanager.yml"
    config_file.parent.mkdir(parents=True, exist_ok=True)
    config_file.write_text(yaml.safe_dump(dict(config), sort_keys=False))
    address = f"127.0.0.1:{free_port()}"
    cmd = [
        require_binary("prometheus-alertmanager", "alertmanager"),
        f"--config.file={config_file}",
        f"--storage.path={workdir / 'data'}",
        f"--web.listen-address={address}",
        "--cluster.listen-address=",
    ]
    ready = lambda: http_get(f"http://{address}/-/ready") is not None  # noqa: E731
    with running_process("alertmanager", cmd, workdir / "alertmanager.log", ready, address=address) as proc:
        yield proc


def parse_metrics(text: str) -> dict[tuple[str, frozenset], float]:
    """Samples of an exposition keyed by (sample name, frozenset of label items)."""
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def chip_labels(key: str) -> dict[str, str]:
    """'1-2-11' -> {'io_group': '1', 'io_channel': '2', 'chip_id': '11'}."""
    g, c, chip = key.split("-")
    return {"io_group": g, "io_channel": c, "chip_id": chip}


def sample(samples: dict, name: str, **labels) -> float:
    return samples[(name, frozenset((k, str(v)) for k, v in labels.items()))]


def counted(samples: dict, name: str, **labels) -> float:
    """A sample of a family that serves no series for a zero count (parity errors, FIFO flags: issue 22's budget)."""
    return samples.get((name, frozenset((k, str(v)) for k, v in labels.items())), 0)


def ingested(port: int) -> float:
    samples = parse_metrics(scrape(port))
    return sum(v for (name, _), v in samples.items() if name == "larpix_exporter_packets_ingested_total")


def polls_done(port: int) -> float:
    """The exporter's completed polls (``larpix_exporter_polls_total``)."""
    return sample(parse_metrics(scrape(port)), "larpix_exporter_polls_total")


def check_counters(samples: dict, truths) -> None:
    chips: dict[str, dict[str, int]] = {}
    types: dict[str, int] = {}
    for truth in truths:
        for key, counts in truth.chips.items():
            for name, value in counts.items():
                chips.setdefault(key, {}).setdefault(name, 0)
                chips[key][name] += value
        for key, value in truth.packet_types.items():
            types[key] = types.get(key, 0) + value
    for key, counts in chips.items():
        labels = chip_labels(key)
        assert sample(samples, "larpix_chip_packets_total", **labels) == counts.get("packets", 0), key
        assert counted(samples, "larpix_chip_parity_errors_total", **labels) == counts.get("parity_errors", 0), key
        full = counted(samples, "larpix_chip_fifo_flags_total", **labels, fifo="local", level="full")
        assert full == counts.get("fifo_full", 0), key
    for key, value in types.items():
        group, ptype = key.split("/")
        assert (
            sample(samples, "larpix_packets_total", io_group=group, packet_type=PACKET_TYPE_NAMES[int(ptype)]) == value
        )


def dense_slots(state: State, column: str) -> np.ndarray:
    """The window slots' sum ``column`` (one of ``slots.COLUMNS``) as one (slot, chip row, channel) array, from the
    entries the state keeps (``State.slot_sums``)."""
    out = np.zeros((len(state.slot_sums), state.capacity * CHANNELS_PER_CHIP), np.int64)
    for slot in range(len(state.slot_sums)):
        channel, *values = state.slot_sums.piece(slot)
        np.add.at(out[slot], channel.astype(np.int64), values[COLUMNS.index(column)].astype(np.int64))
    return out.reshape(len(state.slot_sums), state.capacity, CHANNELS_PER_CHIP)


def assert_same_state(
    state: dict[str, np.ndarray], expected: dict[str, np.ndarray], skip: tuple[str, ...] = ()
) -> None:
    """Every checkpointed array equal, but those of ``skip``."""
    assert state.keys() == expected.keys()
    for name, value in expected.items():
        if name not in skip:
            np.testing.assert_array_equal(state[name], value, err_msg=name)
