"""Settings of the ``serve`` command: defaults, a YAML config file, and command-line overrides."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import yaml

DEFAULT_PORT = 9767
LIST_KEYS = ("inputs", "plots", "plugin_dirs", "networks", "disabled_lists")


class ConfigError(ValueError):
    """The config file is unreadable or wrong; the message names the file, line and key."""


@dataclass
class Settings:
    """Everything ``serve`` needs; field names are the config-file keys."""

    inputs: list[str] = field(default_factory=list)
    pattern: str = "*.h5"
    port: int = DEFAULT_PORT
    listen_address: str = "0.0.0.0"
    interval: float = 2.0
    flush_interval: float = 1800.0
    geometry: str | None = None
    state_file: str | None = None
    window_checkpoint_interval: float = 60.0
    window: float = 60.0
    window_bins: int = 12
    noisy_rate_hz: float = 10.0
    false_alarm_probability: float = 0.01
    per_pixel: bool = False
    checks: str | None = None
    reference: str | None = None
    web_config_file: str | None = None
    output: str | None = None
    ext: str = ".png"
    plots: list[str] = field(default_factory=list)
    plot_interval: float = 30.0
    plugin_dirs: list[str] = field(default_factory=list)
    chunk_rows: int = 1_000_000
    networks: list[str] = field(default_factory=list)
    disabled_lists: list[str] = field(default_factory=list)
    run_mode: str = "auto"


def _types() -> dict[str, Any]:
    return {f.name: f.type for f in dataclasses.fields(Settings)}


def _coerce(path: str, key: str, value: Any, line: int | None) -> Any:
    where = f"{path}" + (f" line {line}" if line else "")
    default = getattr(Settings(), key)
    try:
        if key in LIST_KEYS:
            value = [value] if isinstance(value, str) else [str(v) for v in value]
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                raise TypeError("expected true or false")
        elif isinstance(default, int):
            value = int(value)
        elif isinstance(default, float):
            value = float(value)
        elif value is not None:
            value = str(value)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"config file {where}: key '{key}': {err}") from None
    return value


def load_config_file(path: str) -> dict[str, Any]:
    """Read a YAML config file into Settings keys; unknown keys and bad values are errors."""
    try:
        with open(path, encoding="utf-8") as fh:
            node = yaml.compose(fh, Loader=yaml.SafeLoader)
    except FileNotFoundError:
        raise ConfigError(f"config file {path}: no such file") from None
    except OSError as err:
        raise ConfigError(f"config file {path}: {err.strerror or err}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if node is None:
        return {}
    if not isinstance(node, yaml.MappingNode):
        raise ConfigError(f"config file {path}: expected a mapping of option: value")
    known = _types()
    values: dict[str, Any] = {}
    for key_node, value_node in node.value:
        key = str(key_node.value).replace("-", "_")
        line = key_node.start_mark.line + 1
        if key not in known:
            raise ConfigError(
                f"config file {path} line {line}: unknown key '{key_node.value}' (known: {', '.join(sorted(known))})"
            )
        value = yaml.safe_load(yaml.serialize(value_node))
        values[key] = _coerce(path, key, value, line)
    return values


def build_settings(config_file: str | None, overrides: dict[str, Any]) -> Settings:
    """Defaults, then the config file, then command-line values that were given (not None)."""
    merged: dict[str, Any] = load_config_file(config_file) if config_file else {}
    merged.update({k: v for k, v in overrides.items() if v is not None and v != []})
    settings = Settings(**merged)
    if not 0 < settings.false_alarm_probability < 1:
        raise ConfigError(
            f"false_alarm_probability: expected a probability between 0 and 1, got {settings.false_alarm_probability}"
        )
    return settings
