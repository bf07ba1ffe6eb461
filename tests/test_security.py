"""TLS and basic auth from a web config file, a server that slow or idle clients cannot starve (plain and
TLS), and the decoder against arbitrary bytes."""

from __future__ import annotations

import base64
import contextlib
import resource
import selectors
import socket
import ssl
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import bcrypt
import numpy as np
import pytest
from helpers import free_port, running_exporter, simulate_files
from hypothesis import given, settings
from hypothesis import strategies as st

from larpix_dqm.exporter.monitor import Monitor
from larpix_dqm.exporter.reading.decode import PacmanDecodeError, decode_messages
from larpix_dqm.exporter.reading.packets import PACKET_DTYPE
from larpix_dqm.exporter.reading.tail import InputSpec
from larpix_dqm.exporter.runtime.ingest import Ingester
from larpix_dqm.exporter.web import auth
from larpix_dqm.exporter.web import server as web
from larpix_dqm.exporter.web.auth import WebConfigError, bcrypt_cost, load_web_config
from larpix_dqm.exporter.web.server import ExporterServer, MetricsApp


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1 made with the openssl command."""
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem")],
        check=True, capture_output=True,
    )  # fmt: skip
    return d / "cert.pem", d / "key.pem"


def get(
    url: str, auth: tuple[str, str] | None = None, context: ssl.SSLContext | None = None, method: str = "GET"
) -> int:
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


@pytest.mark.external
def test_basic_auth_and_tls(tmp_path, tile_geometry, certificate):
    simulate_files(tile_geometry, tmp_path / "data", 1)
    cert, key = certificate
    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(4)).decode()
    web = tmp_path / "web.yml"
    web.write_text(
        f"tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\nbasic_auth_users:\n  shift: '{hashed}'\n"
    )
    port = free_port()
    with running_exporter(["-i", str(tmp_path / "data"), "--web.config.file", str(web)], port, ready_path=None):
        trusted = ssl.create_default_context(cafile=str(cert))
        url = f"https://127.0.0.1:{port}/metrics"
        assert get(url, context=trusted) == 401
        assert get(url, ("shift", "wrong"), trusted) == 401
        assert get(url, ("nobody", "s3cret"), trusted) == 401
        assert get(url, ("shift", "s3cret"), trusted) == 200
        with pytest.raises(urllib.error.URLError):  # the certificate is not trusted by default
            get(url, ("shift", "s3cret"))
        with pytest.raises((urllib.error.URLError, ConnectionError)):  # plain HTTP on the TLS port
            get(f"http://127.0.0.1:{port}/metrics", ("shift", "s3cret"))
        # The container HEALTHCHECK: same settings as serve, so https on this port, no password needed
        probe = [
            sys.executable,
            "-m",
            "larpix_dqm.exporter.cli",
            "healthcheck",
            "--web.listen-address",
            f"127.0.0.1:{port}",
        ]
        assert subprocess.run([*probe, "--web.config.file", str(web)], capture_output=True, timeout=60).returncode == 0
        plain = subprocess.run(probe, capture_output=True, text=True, timeout=60)  # http against the TLS port
        assert plain.returncode == 1 and f"http://127.0.0.1:{port}/-/healthy" in plain.stderr


@pytest.mark.external
def test_basic_auth_without_tls(tmp_path, tile_geometry):
    simulate_files(tile_geometry, tmp_path / "data", 1)
    web = tmp_path / "web.yml"
    web.write_text(f"basic_auth_users:\n  shift: '{bcrypt.hashpw(b'pw', bcrypt.gensalt(4)).decode()}'\n")
    port = free_port()
    with running_exporter(["-i", str(tmp_path / "data"), "--web.config.file", str(web)], port, ready_path=None):
        assert get(f"http://127.0.0.1:{port}/metrics") == 401
        assert get(f"http://127.0.0.1:{port}/metrics", ("shift", "pw")) == 200
        assert get(f"http://127.0.0.1:{port}/plots/", ("shift", "nope")) == 401


@pytest.mark.external
@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tls_server_config:\n  cert_file: x.pem\n", "needs cert_file and key_file"),
        ("basic_auth_users:\n  a: plaintext\n", "basic_auth_users.a is not a bcrypt hash"),
        ("tls_config: {}\n", "unknown key tls_config"),
        ("tls_server_config:\n  cert_file: /nope.pem\n  key_file: /nope.key\n", "tls_server_config:"),
        ("tls_server_config:\n  cert_file: c\n  key_file: k\n  min_version: TLS99\n", "min_version 'TLS99'"),
        ("tls_server_config:\n  cert_file: c\n  key_file: k\n  client_auth_type: RequestClientCert\n", "not supported"),
        (
            "tls_server_config:\n  cert_file: c\n  key_file: k\n  client_auth_type: RequireAndVerifyClientCert\n",
            "RequireAndVerifyClientCert needs client_ca_file",
        ),
        ("tls_server_config:\n  cert_file: c\n  key_file: k\n  client_ca_file: ca\n", "client_ca_file is set without"),
        ("tls_server_config:\n  cert_file: c\n  key_file: k\n  curve_preferences: [X25519]\n", "curve_preferences"),
        ("tls_server_config:\n  cert_file: c\n  key_file: k\n  cipher_suites: [TLS_FAKE]\n", "unknown cipher TLS_FAKE"),
        ("http_server_config:\n  http2: true\n", "http_server_config.http2"),
        ("http_server_config:\n  headers:\n    Server: x\n", "http_server_config.headers.Server: not settable"),
    ],
)
def test_bad_web_config_is_rejected(tmp_path, text, message):
    path = tmp_path / "web.yml"
    path.write_text(text)
    with pytest.raises(WebConfigError, match=f"web config file {path}: .*{message}"):
        load_web_config(str(path))
    result = subprocess.run(
        [sys.executable, "-m", "larpix_dqm.exporter.cli", "serve", "-i", str(tmp_path), "--web.config.file", str(path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2 and str(path) in result.stderr and result.stderr.count("\n") == 1


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=120), max_size=20), st.integers(0, 255))
def test_decoder_never_fails_on_arbitrary_bytes(messages, io_group):
    msgs = [np.frombuffer(m, np.uint8) for m in messages]
    result = decode_messages(msgs, np.full(len(msgs), io_group, np.uint8))
    assert result.packets.dtype == PACKET_DTYPE
    assert result.bad_messages + (len(result.packets) > 0) <= len(msgs) + len(result.packets)
    good = [m for m in messages if len(m) >= 8 and (len(m) - 8) % 16 == 0 and m[:1] == b"D"]
    assert result.bad_messages == len(messages) - len(good)
    words = sum((len(m) - 8) // 16 for m in good)
    assert len(result.packets) == len(good) + words - result.unknown_words


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(min_size=8, max_size=8).map(lambda h: b"D" + h[1:]), max_size=5), st.data())
def test_decoder_with_valid_framing_and_random_words(headers, data):
    msgs = [h + data.draw(st.binary(min_size=16, max_size=16)) * data.draw(st.integers(0, 4)) for h in headers]
    result = decode_messages([np.frombuffer(m, np.uint8) for m in msgs], np.ones(len(msgs), np.uint8))
    assert result.bad_messages == 0
    assert (result.packets["packet_type"] <= 7).all()


def test_decoder_rejects_unusable_input_with_its_own_error():
    with pytest.raises(PacmanDecodeError):
        decode_messages([np.zeros((2, 2), np.uint8)], np.ones(1))
    with pytest.raises(PacmanDecodeError):
        decode_messages([object()], np.ones(1))


@pytest.mark.external
def test_client_certificates_headers_and_health_without_auth(tmp_path, tile_geometry, certificate):
    """client_auth_type RequireAndVerifyClientCert with client_ca_file, configured headers, TLS 1.3 only;
    /-/healthy and /-/ready answer without basic auth (an orchestrator's probe), /metrics does not."""
    simulate_files(tile_geometry, tmp_path / "data", 1)
    cert, key = certificate  # self-signed: its own CA, used as the client's certificate too
    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(4)).decode()
    web = tmp_path / "web.yml"
    web.write_text(
        f"tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n  client_ca_file: {cert}\n"
        "  client_auth_type: RequireAndVerifyClientCert\n  min_version: TLS13\n"
        "http_server_config:\n  headers:\n    Strict-Transport-Security: max-age=60\n"
        f"basic_auth_users:\n  shift: '{hashed}'\n"
    )
    port = free_port()
    with running_exporter(["-i", str(tmp_path / "data"), "--web.config.file", str(web)], port, ready_path=None):
        url = f"https://127.0.0.1:{port}"
        anonymous = ssl.create_default_context(cafile=str(cert))
        with pytest.raises((urllib.error.URLError, ConnectionError, ssl.SSLError)):  # no client certificate
            get(f"{url}/-/healthy", context=anonymous)
        client = ssl.create_default_context(cafile=str(cert))
        client.load_cert_chain(str(cert), str(key))
        assert get(f"{url}/-/healthy", context=client) == 200
        assert get(f"{url}/metrics", context=client) == 401
        assert get(f"{url}/-/draw", context=client, method="POST") == 401  # drawing needs a user too
        assert get(f"{url}/-/draw", ("shift", "pw"), client, "POST") == 404  # a user, but plots are off
        request = urllib.request.Request(f"{url}/metrics")
        request.add_header("Authorization", "Basic " + base64.b64encode(b"shift:pw").decode())
        with urllib.request.urlopen(request, timeout=10, context=client) as resp:
            assert resp.status == 200 and resp.headers["Strict-Transport-Security"] == "max-age=60"
        tls12 = ssl.create_default_context(cafile=str(cert))
        tls12.load_cert_chain(str(cert), str(key))
        tls12.maximum_version = ssl.TLSVersion.TLSv1_2
        with pytest.raises((urllib.error.URLError, ConnectionError, ssl.SSLError)):  # below min_version
            get(f"{url}/-/healthy", context=tls12)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.mark.slow
def test_an_unknown_user_is_refused_as_slowly_as_a_wrong_password(tmp_path):
    """Basic auth does not tell which users exist: an unknown user's password is checked against a dummy
    hash of the configured cost (medians of 9 attempts each, every one with a new password: none cached)."""
    web_yml = tmp_path / "web.yml"
    web_yml.write_text(f"basic_auth_users:\n  shift: '{bcrypt.hashpw(b'pw', bcrypt.gensalt(10)).decode()}'\n")
    config = load_web_config(str(web_yml))
    assert bcrypt_cost(config.dummy_hash) == 10

    def refusal_seconds(user: str, attempt: int) -> float:
        started = time.perf_counter()
        assert not config.authorized(basic(user, f"guess-{attempt}"))
        return time.perf_counter() - started

    known, unknown = [], []
    for attempt in range(9):  # interleaved, so a busy spell slows both alike
        known.append(refusal_seconds("shift", attempt))
        unknown.append(refusal_seconds("nobody", attempt))
    ratio = statistics.median(unknown) / statistics.median(known)
    print(f"refused: unknown user {statistics.median(unknown) * 1e3:.1f} ms, known user with a wrong password "
          f"{statistics.median(known) * 1e3:.1f} ms (medians of 9)")  # fmt: skip
    assert 0.5 < ratio < 2, (unknown, known)
    assert config.authorized(basic("shift", "pw"))


def test_checked_credentials_are_cached_in_a_bounded_lru(tmp_path, monkeypatch):
    """Failed attempts, known user or not, are remembered, but only the MAX_CACHED_CREDENTIALS most recently used."""
    assert auth.MAX_CACHED_CREDENTIALS == 1024  # as the README says
    monkeypatch.setattr(auth, "MAX_CACHED_CREDENTIALS", 8)
    web_yml = tmp_path / "web.yml"
    web_yml.write_text(
        f"basic_auth_users:\n  shift: '{bcrypt.hashpw(b'pw', bcrypt.gensalt(4)).decode()}'\n"
        f"  other: '{bcrypt.hashpw(b'pw', bcrypt.gensalt(5)).decode()}'\n"
    )
    config = load_web_config(str(web_yml))
    assert bcrypt_cost(config.dummy_hash) == 5, "the highest configured cost"
    assert config.authorized(basic("shift", "pw"))
    for attempt in range(30):
        assert not config.authorized(basic("shift" if attempt % 2 else "nobody", f"guess-{attempt}"))
        assert config.authorized(basic("shift", "pw"))  # used again: stays the most recent
        assert len(config._verified) <= 8
    assert len(config._verified) == 8 and list(config._verified.values()).count(True) == 1
    cached = {user for user, _ in config._verified}
    assert cached == {"shift", "nobody"}


def raise_file_limit(needed: int) -> None:
    """Raise this process's soft limit of open files to ``needed`` (the hard limit permitting)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.fail(f"{needed} open files needed, the hard limit is {hard}: raise it (ulimit -Hn)")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


class Attackers:
    """``idle`` connections that say nothing (over TLS: not even a handshake) and ``slow`` ones that send a
    request one byte a second (over TLS after the handshake), to 127.0.0.1:``port``; those the server closes
    are reopened every second, until the block ends."""

    REQUEST = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"X-Slow: a\r\n" * 1000

    def __init__(self, port: int, idle: int, slow: int, context: ssl.SSLContext | None) -> None:
        self.port, self.wanted, self.context = port, {"idle": idle, "slow": slow}, context
        self.open: dict[socket.socket, tuple[str, int]] = {}  # socket: (kind, bytes sent)
        self.selector = selectors.DefaultSelector()  # readable: the server answered (408, 503) or closed
        self.closed_by_server = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="attackers", daemon=True)

    def _connect(self, kind: str) -> None:
        try:
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
            if kind == "slow" and self.context is not None:
                sock = self.context.wrap_socket(sock, server_hostname="127.0.0.1")
        except OSError:
            self.closed_by_server += 1
            return
        sock.setblocking(False)
        self.open[sock] = (kind, 0)
        self.selector.register(sock, selectors.EVENT_READ)

    def _close(self, sock: socket.socket) -> None:
        self.selector.unregister(sock)
        del self.open[sock]
        sock.close()

    def _top_up(self) -> None:
        for kind, wanted in self.wanted.items():
            for _ in range(wanted - sum(k == kind for k, _ in self.open.values())):
                self._connect(kind)

    def _run(self) -> None:
        while not self.stopping.wait(1.0):
            for key, _ in self.selector.select(0):
                self._close(key.fileobj)  # type: ignore[arg-type]
                self.closed_by_server += 1
            for sock, (kind, sent) in list(self.open.items()):
                if kind == "slow":
                    with contextlib.suppress(OSError):  # a TLS record the server has not taken yet
                        sock.send(self.REQUEST[sent : sent + 1])
                        self.open[sock] = (kind, sent + 1)
            self._top_up()

    def __enter__(self) -> Attackers:
        self._top_up()
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join(30)
        for sock in list(self.open):
            self._close(sock)
        self.selector.close()


@contextlib.contextmanager
def in_process_server(data, geometry, web_config: auth.WebConfig | None) -> Iterator[int]:
    """An ExporterServer on a free port of 127.0.0.1 over the files in ``data``; its port, stopped afterwards."""
    ingester = Ingester([InputSpec(str(data))], Monitor(geometry), 0.1)
    ingester.poll()
    server = ExporterServer(("127.0.0.1", 0), MetricsApp(lambda: ingester.published, web=web_config))
    try:
        server.serve_in_thread()
        yield server.server_address[1]
    finally:
        server.stop()


@pytest.mark.external
@pytest.mark.parametrize("scheme", ["http", "https"])
def test_slow_and_idle_clients_cannot_starve_scrapes(tmp_path, tile_geometry, certificate, scheme):
    """500 idle connections and 70 sending their request one byte a second (more than MAX_OPEN_CONNECTIONS, and
    reopened as they are closed): every scrape for longer than a request deadline answers 200 within 5 s."""
    raise_file_limit(4096)  # both ends of every connection are in this process
    simulate_files(tile_geometry, tmp_path / "data", 2)
    context = None
    web_config = None
    if scheme == "https":
        cert, key = certificate
        (tmp_path / "web.yml").write_text(f"tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n")
        web_config = load_web_config(str(tmp_path / "web.yml"))
        context = ssl.create_default_context(cafile=str(cert))
    assert 500 + 70 > web.MAX_OPEN_CONNECTIONS
    with in_process_server(tmp_path / "data", tile_geometry, web_config) as port:
        with Attackers(port, idle=500, slow=70, context=context) as attackers:
            latencies = []
            end = time.monotonic() + web.REQUEST_SECONDS + 3  # past the deadline of the first attackers
            while time.monotonic() < end:
                started = time.perf_counter()
                with urllib.request.urlopen(f"{scheme}://127.0.0.1:{port}/metrics", timeout=10, context=context) as r:
                    assert r.status == 200 and b"larpix_exporter_up 1" in r.read()
                latencies.append(time.perf_counter() - started)
            open_at_end = len(attackers.open)
        closed = attackers.closed_by_server
    print(f"{scheme}: {len(latencies)} scrapes beside 500 idle and 70 slow connections: median "
          f"{statistics.median(latencies) * 1e3:.0f} ms, max {max(latencies) * 1e3:.0f} ms; "
          f"{closed} attacker connections closed by the server")  # fmt: skip
    assert max(latencies) < 5.0 and len(latencies) >= 10
    assert closed >= 70 and open_at_end > 400, "the attackers were cut off, and kept coming back"
