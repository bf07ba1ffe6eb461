"""Log lines as the Prometheus exporters write them: logfmt (the default) or JSON, one line per record."""

from __future__ import annotations

import json
import logging
import time

_LEVELS = {"DEBUG": "debug", "INFO": "info", "WARNING": "warn", "ERROR": "error", "CRITICAL": "error"}
#: The levels ``setup_logging`` takes, by their Prometheus names (the ones the lines print), and ``warning``.
_THRESHOLDS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def _timestamp(record: logging.LogRecord) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"


def _fields(record: logging.LogRecord) -> dict[str, str]:
    fields = {
        "ts": _timestamp(record),
        "level": _LEVELS.get(record.levelname, record.levelname.lower()),
        "logger": record.name,
        "msg": record.getMessage(),
    }
    if record.exc_info:
        fields["err"] = logging.Formatter().formatException(record.exc_info)
    elif record.exc_text:  # a record from the drawing process comes with its traceback as text
        fields["err"] = record.exc_text
    return fields


def _logfmt_value(value: str) -> str:
    if value and not any(c in value for c in ' ="\\\n\t'):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t") + '"'


class LogfmtFormatter(logging.Formatter):
    """``ts=... level=info logger=... msg="..."``, values quoted when they need it."""

    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{key}={_logfmt_value(value)}" for key, value in _fields(record).items())


class JsonFormatter(logging.Formatter):
    """One JSON object per line with ts, level, logger, msg (and err for exceptions)."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(_fields(record))


def setup_logging(level: str, fmt: str) -> None:
    """Send the process's log records to stderr at ``level`` (debug, info, warn or warning, error) in ``fmt``
    (logfmt, json)."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else LogfmtFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(_THRESHOLDS[level])
