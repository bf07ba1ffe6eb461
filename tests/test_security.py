"""TLS and basic auth from a web config file, and the decoder against arbitrary bytes."""

from __future__ import annotations

import base64
import ssl
import subprocess
import sys
import urllib.error
import urllib.request

import bcrypt
import numpy as np
import pytest
from helpers import free_port, running_exporter, simulate_files
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.reading.decode import PacmanDecodeError, decode_messages
from exporter.reading.packets import PACKET_DTYPE
from exporter.web.auth import WebConfigError, load_web_config


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


def get(url: str, auth: tuple[str, str] | None = None, context: ssl.SSLContext | None = None) -> int:
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


@pytest.mark.e2e
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
        probe = [sys.executable, "-m", "exporter.cli", "healthcheck", "--web.listen-address", f"127.0.0.1:{port}"]
        assert subprocess.run([*probe, "--web.config.file", str(web)], capture_output=True, timeout=60).returncode == 0
        plain = subprocess.run(probe, capture_output=True, text=True, timeout=60)  # http against the TLS port
        assert plain.returncode == 1 and f"http://127.0.0.1:{port}/-/healthy" in plain.stderr


@pytest.mark.e2e
def test_basic_auth_without_tls(tmp_path, tile_geometry):
    simulate_files(tile_geometry, tmp_path / "data", 1)
    web = tmp_path / "web.yml"
    web.write_text(f"basic_auth_users:\n  shift: '{bcrypt.hashpw(b'pw', bcrypt.gensalt(4)).decode()}'\n")
    port = free_port()
    with running_exporter(["-i", str(tmp_path / "data"), "--web.config.file", str(web)], port, ready_path=None):
        assert get(f"http://127.0.0.1:{port}/metrics") == 401
        assert get(f"http://127.0.0.1:{port}/metrics", ("shift", "pw")) == 200
        assert get(f"http://127.0.0.1:{port}/plots/", ("shift", "nope")) == 401


@pytest.mark.e2e
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
        [sys.executable, "-m", "exporter.cli", "serve", "-i", str(tmp_path), "--web.config.file", str(path)],
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


@pytest.mark.e2e
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
        request = urllib.request.Request(f"{url}/metrics")
        request.add_header("Authorization", "Basic " + base64.b64encode(b"shift:pw").decode())
        with urllib.request.urlopen(request, timeout=10, context=client) as resp:
            assert resp.status == 200 and resp.headers["Strict-Transport-Security"] == "max-age=60"
        tls12 = ssl.create_default_context(cafile=str(cert))
        tls12.load_cert_chain(str(cert), str(key))
        tls12.maximum_version = ssl.TLSVersion.TLSv1_2
        with pytest.raises((urllib.error.URLError, ConnectionError, ssl.SSLError)):  # below min_version
            get(f"{url}/-/healthy", context=tls12)
