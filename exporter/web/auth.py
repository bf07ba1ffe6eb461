"""TLS and basic authentication from a Prometheus exporter-toolkit web config file.

Supports the keys exporters share (``--web.config.file``)::

    tls_server_config:
      cert_file: server.crt
      key_file: server.key
      client_ca_file: ca.crt          # optional: require client certificates
      min_version: TLS12              # optional: TLS10..TLS13
    basic_auth_users:
      alice: $2y$10$...               # bcrypt hash
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os
import ssl
import threading
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
_TLS_KNOWN = {"cert_file", "key_file", "client_ca_file", "client_auth_type", "min_version", "max_version"}


class WebConfigError(ValueError):
    """The web config file is unusable; the message names the file and the key."""


@dataclass
class WebConfig:
    """Parsed web config: an optional SSL context and bcrypt-hashed users."""

    path: str
    ssl_context: ssl.SSLContext | None = None
    users: dict[str, bytes] = field(default_factory=dict)
    _verified: dict[tuple[str, bytes], bool] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def authorized(self, header: str | None) -> bool:
        """True if no users are configured or ``header`` carries valid basic credentials.

        bcrypt is deliberately slow, so verified (user, password) pairs are cached in memory.
        """
        if not self.users:
            return True
        if not header or not header.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:], validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        hashed = self.users.get(user)
        if hashed is None:
            return False
        key = (user, hmac.new(hashed, password.encode(), "sha256").digest())
        with self._lock:
            cached = self._verified.get(key)
        if cached is None:
            cached = bcrypt.checkpw(password.encode(), hashed)
            with self._lock:
                self._verified[key] = cached
        return cached


def _resolve(base: str, name: str) -> str:
    return name if os.path.isabs(name) else os.path.join(os.path.dirname(os.path.abspath(base)), name)


def _ssl_context(path: str, tls: dict) -> ssl.SSLContext:
    unknown = set(tls) - _TLS_KNOWN
    if unknown:
        raise WebConfigError(f"web config file {path}: unknown key tls_server_config.{sorted(unknown)[0]}")
    if "cert_file" not in tls or "key_file" not in tls:
        raise WebConfigError(f"web config file {path}: tls_server_config needs cert_file and key_file")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = _TLS_VERSIONS.get(str(tls.get("min_version", "TLS12")), ssl.TLSVersion.TLSv1_2)
    if "max_version" in tls:
        context.maximum_version = _TLS_VERSIONS.get(str(tls["max_version"]), ssl.TLSVersion.TLSv1_3)
    try:
        context.load_cert_chain(_resolve(path, tls["cert_file"]), _resolve(path, tls["key_file"]))
        if tls.get("client_ca_file"):
            context.load_verify_locations(_resolve(path, tls["client_ca_file"]))
            context.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as err:
        raise WebConfigError(f"web config file {path}: tls_server_config: {err}") from None
    return context


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
    users = doc.get("basic_auth_users") or {}
    if not isinstance(users, dict):
        raise WebConfigError(f"web config file {path}: basic_auth_users must map user names to bcrypt hashes")
    for user, hashed in users.items():
        if not isinstance(hashed, str) or not hashed.startswith(("$2a$", "$2b$", "$2y$")):
            raise WebConfigError(f"web config file {path}: basic_auth_users.{user} is not a bcrypt hash")
        config.users[str(user)] = hashed.encode()
    return config
