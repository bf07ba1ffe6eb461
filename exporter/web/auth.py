"""TLS and basic authentication from a Prometheus exporter-toolkit web config file.

Honours the exporter-toolkit keys that Python's ssl and http.server can honour (``--web.config.file``)::

    tls_server_config:
      cert_file: server.crt
      key_file: server.key
      client_auth_type: RequireAndVerifyClientCert   # or VerifyClientCertIfGiven, NoClientCert (default)
      client_ca_file: ca.crt                         # needed by the two verifying types, refused with NoClientCert
      min_version: TLS12                             # TLS10..TLS13
      max_version: TLS13
      cipher_suites: [TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256]   # Go's names; TLS 1.2 and below
      prefer_server_cipher_suites: true
    http_server_config:
      http2: false                                   # HTTP/1.1 only
      headers: {Strict-Transport-Security: max-age=31536000}
    basic_auth_users:
      alice: $2y$10$...                              # bcrypt hash

Anything else the toolkit knows but this server cannot do (RequestClientCert, RequireAnyClientCert,
client_allowed_sans, curve_preferences, inline cert/key, HTTP/2) is refused by name, never ignored.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os
import re
import ssl
import threading
from collections import OrderedDict
from dataclasses import dataclass, field

import bcrypt
import yaml

_TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
_KNOWN = {"tls_server_config", "basic_auth_users", "http_server_config"}
_TLS_KNOWN = {
    "cert_file",
    "key_file",
    "client_ca_file",
    "client_auth_type",
    "min_version",
    "max_version",
    "cipher_suites",
    "prefer_server_cipher_suites",
}
#: Toolkit keys this server cannot honour, with the reason given when a file sets them.
_TLS_UNSUPPORTED = {
    "cert": "inline certificates are not supported: use cert_file",
    "key": "inline keys are not supported: use key_file",
    "client_ca": "an inline client CA is not supported: use client_ca_file",
    "client_allowed_sans": "not supported",
    "curve_preferences": "not supported (OpenSSL's defaults are used)",
}
#: client_auth_type values: Python's ssl verifies every certificate it asks for, so the toolkit's
#: "ask but do not verify" types cannot be honoured.
_CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
_CLIENT_AUTH_UNSUPPORTED = ("RequestClientCert", "RequireAnyClientCert", "RequireClientCert")
#: The cipher suites Go's crypto/tls offers for TLS 1.0-1.2 (the toolkit's names), by IANA number.
_CIPHER_SUITES = {
    "TLS_RSA_WITH_AES_128_CBC_SHA": 0x002F,
    "TLS_RSA_WITH_AES_256_CBC_SHA": 0x0035,
    "TLS_RSA_WITH_AES_128_GCM_SHA256": 0x009C,
    "TLS_RSA_WITH_AES_256_GCM_SHA384": 0x009D,
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": 0xC009,
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": 0xC00A,
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": 0xC013,
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": 0xC014,
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": 0xC02B,
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": 0xC02C,
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": 0xC02F,
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": 0xC030,
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": 0xCCA8,
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": 0xCCA9,
}
#: Response headers the toolkit lets a web config set.
_HEADERS = (
    "Content-Security-Policy",
    "X-Frame-Options",
    "X-Content-Type-Options",
    "X-XSS-Protection",
    "Strict-Transport-Security",
)


class WebConfigError(ValueError):
    """The web config file is unusable; the message names the file and the key."""


#: Checked credentials remembered (the most recently used), so bcrypt runs once per pair, not per request.
MAX_CACHED_CREDENTIALS = 1024


#: A bcrypt hash: variant, cost (log2 rounds, 04-31), then 22 characters of salt and 31 of hash.
BCRYPT_HASH = re.compile(r"\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}")


def bcrypt_cost(hashed: bytes) -> int:
    """The cost (log2 rounds) of a bcrypt hash ``$2b$12$...``."""
    return int(hashed[4:6])


@dataclass
class WebConfig:
    """Parsed web config: an optional SSL context and bcrypt-hashed users."""

    path: str
    ssl_context: ssl.SSLContext | None = None
    users: dict[str, bytes] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    #: What an unknown user's password is checked against: a hash of a random secret at the highest
    #: configured cost, so an unknown user is refused as slowly as a known one with a wrong password.
    dummy_hash: bytes = b""
    _verified: OrderedDict[tuple[str, bytes], bool] = field(default_factory=OrderedDict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def authorized(self, header: str | None) -> bool:
        """True if no users are configured or ``header`` carries valid basic credentials.

        The time taken does not tell whether the user exists: an unknown user's password is checked
        against ``dummy_hash``. bcrypt is deliberately slow, so checked pairs, known user or not, are
        cached in memory (the MAX_CACHED_CREDENTIALS most recently used).
        """
        if not self.users:
            return True
        if not header or not header.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:], validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        known = user in self.users
        hashed = self.users[user] if known else self.dummy_hash
        key = (user, hmac.new(hashed, password.encode(), "sha256").digest())
        with self._lock:
            cached = self._verified.get(key)
            if cached is not None:
                self._verified.move_to_end(key)
        if cached is None:
            cached = bcrypt.checkpw(password.encode(), hashed) and known
            with self._lock:
                self._verified[key] = cached
                while len(self._verified) > MAX_CACHED_CREDENTIALS:
                    self._verified.popitem(last=False)
        return cached


def _resolve(base: str, name: str) -> str:
    return name if os.path.isabs(name) else os.path.join(os.path.dirname(os.path.abspath(base)), name)


def _tls_version(path: str, tls: dict, key: str, default: ssl.TLSVersion) -> ssl.TLSVersion:
    name = tls.get(key)
    if name is None:
        return default
    if name not in _TLS_VERSIONS:
        raise WebConfigError(
            f"web config file {path}: tls_server_config.{key} {name!r}: expected one of {', '.join(_TLS_VERSIONS)}"
        )
    return _TLS_VERSIONS[name]


def _openssl_ciphers(path: str, names: object) -> str:
    """The OpenSSL cipher string for a list of the toolkit's (Go's) cipher suite names."""
    if not isinstance(names, list) or not names:
        raise WebConfigError(f"web config file {path}: tls_server_config.cipher_suites: expected a list of names")
    available = {c["id"] & 0xFFFF: c["name"] for c in ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).get_ciphers()}
    chosen = []
    for name in names:
        number = _CIPHER_SUITES.get(str(name))
        if number is None:
            raise WebConfigError(f"web config file {path}: tls_server_config.cipher_suites: unknown cipher {name}")
        if number not in available:
            raise WebConfigError(
                f"web config file {path}: tls_server_config.cipher_suites: {name} is not available in this OpenSSL"
            )
        chosen.append(available[number])
    return ":".join(chosen)


def _ssl_context(path: str, tls: dict) -> ssl.SSLContext:
    for key, reason in _TLS_UNSUPPORTED.items():
        if key in tls:
            raise WebConfigError(f"web config file {path}: tls_server_config.{key}: {reason}")
    unknown = set(tls) - _TLS_KNOWN
    if unknown:
        raise WebConfigError(f"web config file {path}: unknown key tls_server_config.{sorted(unknown)[0]}")
    if "cert_file" not in tls or "key_file" not in tls:
        raise WebConfigError(f"web config file {path}: tls_server_config needs cert_file and key_file")
    auth = str(tls.get("client_auth_type") or "NoClientCert")
    if auth in _CLIENT_AUTH_UNSUPPORTED:
        raise WebConfigError(
            f"web config file {path}: tls_server_config.client_auth_type {auth}: not supported (Python verifies "
            "every client certificate it asks for): use VerifyClientCertIfGiven or RequireAndVerifyClientCert"
        )
    if auth not in _CLIENT_AUTH:
        raise WebConfigError(
            f"web config file {path}: tls_server_config.client_auth_type {auth!r}: expected one of {', '.join(_CLIENT_AUTH)}"
        )
    ca = tls.get("client_ca_file")
    if ca and auth == "NoClientCert":
        raise WebConfigError(
            f"web config file {path}: tls_server_config.client_ca_file is set without a client_auth_type that uses it"
        )
    if not ca and auth != "NoClientCert":
        raise WebConfigError(f"web config file {path}: tls_server_config.client_auth_type {auth} needs client_ca_file")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = _tls_version(path, tls, "min_version", ssl.TLSVersion.TLSv1_2)
    context.maximum_version = _tls_version(path, tls, "max_version", ssl.TLSVersion.MAXIMUM_SUPPORTED)
    if "cipher_suites" in tls:
        context.set_ciphers(_openssl_ciphers(path, tls["cipher_suites"]))
    if tls.get("prefer_server_cipher_suites", True):
        context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    try:
        context.load_cert_chain(_resolve(path, tls["cert_file"]), _resolve(path, tls["key_file"]))
        if ca:
            context.load_verify_locations(_resolve(path, ca))
        context.verify_mode = _CLIENT_AUTH[auth]
    except (OSError, ssl.SSLError) as err:
        raise WebConfigError(f"web config file {path}: tls_server_config: {err}") from None
    return context


def _http_headers(path: str, http: object) -> dict[str, str]:
    """The response headers of http_server_config (only the ones the toolkit allows); HTTP/2 is refused."""
    if not isinstance(http, dict):
        raise WebConfigError(f"web config file {path}: http_server_config: expected a mapping")
    unknown = set(http) - {"http2", "headers"}
    if unknown:
        raise WebConfigError(f"web config file {path}: unknown key http_server_config.{sorted(unknown)[0]}")
    if http.get("http2", False) is not False:
        raise WebConfigError(f"web config file {path}: http_server_config.http2: HTTP/2 is not supported (set false)")
    headers = http.get("headers") or {}
    if not isinstance(headers, dict):
        raise WebConfigError(f"web config file {path}: http_server_config.headers: expected a mapping")
    for name, value in headers.items():
        if name not in _HEADERS:
            raise WebConfigError(
                f"web config file {path}: http_server_config.headers.{name}: not settable (allowed: {', '.join(_HEADERS)})"
            )
        if not isinstance(value, str) or "\n" in value or "\r" in value:
            raise WebConfigError(
                f"web config file {path}: http_server_config.headers.{name}: expected one line of text"
            )
    return {str(k): v for k, v in headers.items()}


def load_web_config(path: str) -> WebConfig:
    """Parse and check a web config file; raise WebConfigError naming the file and key."""
    try:
        with open(path, encoding="utf-8") as fh:
            doc = yaml.safe_load(fh) or {}
    except OSError as err:
        raise WebConfigError(f"web config file {path}: {err.strerror or err}") from None
    except yaml.YAMLError as err:
        raise WebConfigError(f"web config file {path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(doc, dict):
        raise WebConfigError(f"web config file {path}: expected a mapping")
    unknown = set(doc) - _KNOWN
    if unknown:
        raise WebConfigError(f"web config file {path}: unknown key {sorted(unknown)[0]}")
    config = WebConfig(path)
    if doc.get("tls_server_config"):
        config.ssl_context = _ssl_context(path, doc["tls_server_config"])
    if doc.get("http_server_config"):
        config.headers = _http_headers(path, doc["http_server_config"])
    users = doc.get("basic_auth_users") or {}
    if not isinstance(users, dict):
        raise WebConfigError(f"web config file {path}: basic_auth_users must map user names to bcrypt hashes")
    for user, hashed in users.items():
        if not isinstance(hashed, str) or not BCRYPT_HASH.fullmatch(hashed):
            raise WebConfigError(f"web config file {path}: basic_auth_users.{user} is not a bcrypt hash")
        config.users[str(user)] = hashed.encode()
    if config.users:
        cost = max(bcrypt_cost(hashed) for hashed in config.users.values())
        config.dummy_hash = bcrypt.hashpw(os.urandom(16), bcrypt.gensalt(cost))
    return config
