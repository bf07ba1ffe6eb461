"""Settings of the ``serve`` command, declared once.

Each ``Settings`` field is a config-file key; its ``option(...)`` declares the command-line flags,
the help text, the default shown in ``--help`` and the README, the allowed range or choices and
the ``LARPIX_DQM_<NAME>`` environment variable. The CLI options (exporter/cli.py), the YAML loader
and the README option table (``option_table``) are generated from it, and every value is checked
by ``check_value`` whichever way it came in. CONTRIBUTING.md says how to add a setting.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import typing
from dataclasses import dataclass, field
from typing import Any

from larpix_dqm.exporter.detector.modes import RUN_MODES
from larpix_dqm.exporter.quality.config import COMPILED, ENGINES

DEFAULT_PORT = 9767
ENV_PREFIX = "LARPIX_DQM_"
#: Log levels by their Prometheus names (what the log lines print); ``warning`` is accepted for ``warn``.
LOG_LEVELS = ("debug", "info", "warn", "error")
LOG_LEVEL_ALIASES = {"warning": "warn"}
DEFAULT_RUNBOOK_URL = "https://github.com/larpix-dqm/larpix-dqm/blob/main/RUNBOOK.md"
LOG_FORMATS = ("logfmt", "json")
PLOT_EXTENSIONS = (".png", ".svg", ".jpg", ".jpeg", ".webp", ".pdf", ".eps", ".ps")


class ConfigError(ValueError):
    """A setting is wrong; the message names the option (or the file, line and key) and the problem."""


@dataclass(frozen=True)
class Option:
    """How one setting appears on the command line, in --help and in the README, and what values it takes."""

    help: str
    flags: tuple[str, ...] = ()  # default: --<name with dashes>
    metavar: str = ""
    shown_default: str = ""  # the default as --help and the README say it, when not simply the value
    minimum: float | None = None  # inclusive
    above: float | None = None  # exclusive lower bound
    maximum: float | None = None  # inclusive
    below: float | None = None  # exclusive upper bound
    choices: tuple[str, ...] = ()
    aliases: dict[str, str] = field(default_factory=dict)  # other accepted names of choices, e.g. warning: warn
    negation: str = ""  # for flags: the --no-... form
    former: str = ""  # the setting's name before a rename: its flag, config key and variable still work


def option(default: Any, help: str, **details: Any) -> Any:
    """A Settings field with its command-line and validation details (``Option``) in its metadata."""
    meta = {"option": Option(help, **details)}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class Settings:
    """Everything ``serve`` needs; field names are the config-file keys; values are checked on creation."""

    inputs: list[str] = option(
        [],
        "directory (or one file) to watch; repeatable",
        flags=("-i", "--input"),
        metavar="DIR",
        shown_default="(required)",
    )
    pattern: str = option("*.h5", "glob selecting the files to read in each directory", metavar="GLOB")
    listen_address: list[str] = option(
        ["0.0.0.0"],
        "address to listen on, [host][:port] (':9767' and '[::1]:9767' work; without a port, --port's); repeatable. "
        "The default exposes the exporter on every interface: give 127.0.0.1 to keep it local, or use --web.config.file",
        flags=("--web.listen-address", "--listen-address"),
        metavar="[HOST][:PORT]",
    )
    port: int = option(
        DEFAULT_PORT,
        "TCP port for addresses given without one (0: any free port). 9767 collides with no exporter we know of",
        metavar="N",
        minimum=0,
        maximum=65535,
    )
    web_telemetry_path: str = option(
        "/metrics", "path under which the metrics are served", flags=("--web.telemetry-path",), metavar="PATH"
    )
    interval: float = option(2.0, "polling period in seconds, fractions allowed", metavar="S", above=0)
    flush_interval: float = option(
        1800.0, "seconds after which a file gone and idle is forgotten (its counts stay)", metavar="S", above=0
    )
    geometry: str | None = option(
        None,
        "pixel geometry YAML: expected chips and channels, tiles, pixel positions; or the name of a packaged layout "
        "('larpix-dqm geometries' lists them). Without one, chips that never send data cannot be seen",
        metavar="PATH_OR_NAME",
        shown_default="$PIXEL_GEOMETRY_PATH, else ./layout-2.4.0.yaml if present, else none",
    )
    checkpoint: str | None = option(
        None,
        "checkpoint file, rewritten atomically after every poll that counted something (the window every --window-checkpoint-interval); '-' disables",
        metavar="PATH",
        shown_default="$LARPIX_DQM_STATE_DIR (else ~/.local/state/larpix-dqm)/state-<hash of the inputs>.npz",
        former="state_file",
    )
    window_checkpoint_interval: float = option(
        60.0,
        "write the window arrays (the bulk of the checkpoint) at most every this many seconds, and on shutdown; "
        "counters and cursors go every poll",
        metavar="S",
        above=0,
    )
    registry: str | None = option(
        None,
        "run registry (SQLite): per run its files, data-time span, packets, time in each status, failing chips, "
        "bad channels, configuration and certification ('larpix-dqm runs' reads it); '' or 'none' disables",
        metavar="PATH",
        shown_default="<checkpoint without .npz>.runs.sqlite beside the checkpoint; none when --checkpoint is '-'",
    )
    run_pattern: str | None = option(
        None,
        "regular expression with a named group 'run', searched in each file's name: files whose matches agree are "
        "one run. Files it does not match are runs of their own, or of the run number in their metadata",
        metavar="REGEX",
        shown_default="each file its own run, unless its metadata has a run number",
    )
    window: float = option(60.0, "sliding window in seconds of data time; at least --interval", metavar="S", above=0)
    window_bins: int = option(12, "time bins the window slides by", metavar="N", minimum=1)
    noisy_rate_hz: float = option(
        10.0, "a channel above this rate (Hz) is noisy (the DAQ's own cuts are 10-50 Hz)", metavar="R", above=0
    )
    per_pixel: bool = option(
        False,
        "serve per-channel series on /metrics?per_pixel=1 (3 series per pixel: 235k for a module, ~0.1 s a scrape)",
        flags=("--per-pixel",),
        negation="--no-per-pixel",
        shown_default="off",
    )
    checks: str | None = option(
        None, "YAML overriding check thresholds (schema in the README)", metavar="FILE", shown_default="built-in"
    )
    reference: str | None = option(
        None, "reference run (.npz from 'larpix-dqm baseline') to compare rates and pedestals with", metavar="FILE"
    )
    web_config_file: str | None = option(
        None,
        "TLS, client certificates and basic auth, in the Prometheus exporter-toolkit format",
        flags=("--web.config.file", "--web-config-file"),
        metavar="FILE",
        shown_default="plain HTTP, no auth",
    )
    output: str | None = option(
        None,
        "folder for plot images, also served on /plots/: <file stem>_dqm/<file stem>_<Plot><ext> and latest/<Plot><ext>",
        flags=("-o", "--output"),
        metavar="DIR",
        shown_default="no plots",
    )
    ext: str = option(".png", "plot image format", choices=PLOT_EXTENSIONS)
    plots: list[str] = option(
        [],
        "plots to draw: class or image names or shell patterns (PixelMap, PixelMap_2_1, 'PixelMap_1_*'); "
        "repeatable, or several separated by commas",
        metavar="NAME",
        shown_default="all",
    )
    plot_interval: float = option(
        30.0, "redraw plots at most every this many seconds (only when data came)", metavar="S", minimum=0
    )
    plugin_dirs: list[str] = option(
        [], "folder with more plot plugins (*.py); repeatable", flags=("--plugin-dir",), metavar="DIR"
    )
    false_alarm_probability: float = option(
        0.01,
        "probability of at least one false channel or chip verdict per evaluation, over the whole detector",
        flags=("--false-alarm-probability",),
        metavar="P",
        above=0,
        below=1,
    )
    drift_window_us: float = option(
        200.0,
        "how long after an external trigger its charge may come (the drift time), in µs: the window the beam view "
        "pairs each trigger's hits in",
        flags=("--drift-window-us",),
        metavar="US",
        above=0,
    )
    io_groups: str | None = option(
        None,
        "the io_groups this exporter serves, comma-separated (e.g. 1,2): one shard of a directory several exporters "
        "read, each with its own io_groups. Packets of the others are dropped (larpix_foreign_packets_total) and "
        "their chips not expected",
        metavar="LIST",
        shown_default="every io_group",
    )
    networks: list[str] = option(
        [],
        "larpix-control controller network file (hydra network), or a folder of them; repeatable. Chips in no "
        "network are not expected and get no verdict",
        flags=("--network",),
        metavar="FILE_OR_DIR",
        shown_default="every chip of the geometry",
    )
    disabled_lists: list[str] = option(
        [],
        "the DAQ's disabled-channel list (JSON {'io_group-tile-chip_id': [channels]}); repeatable. Listed channels "
        "are masked: no silent or noisy verdict",
        flags=("--disabled-list",),
        metavar="FILE",
        shown_default="none",
    )
    run_mode: str = option(
        "auto",
        "the check set to judge with; auto: from the mix of trigger types in the window",
        flags=("--run-mode",),
        choices=RUN_MODES,
    )
    ingest_engine: str = option(
        COMPILED,
        "how packets are counted: compiled (numba kernels, loaded in the background, numpy until then) or numpy "
        "(the reference implementation, counter for counter the same)",
        flags=("--ingest-engine",),
        choices=ENGINES,
    )
    chunk_rows: int = option(500_000, "rows read from a file at a time (bounds memory)", metavar="N", minimum=1)
    log_level: str = option(
        "info",
        "only log messages at or above this level (warning is accepted for warn)",
        flags=("--log.level",),
        choices=LOG_LEVELS,
        aliases=LOG_LEVEL_ALIASES,
    )
    log_format: str = option("logfmt", "log line format", flags=("--log.format",), choices=LOG_FORMATS)
    runbook_url: str = option(
        DEFAULT_RUNBOOK_URL,
        "URL of RUNBOOK.md as your browser opens it (as 'larpix-dqm mixin --runbook-url'); the status page's "
        "runbook links go to <url>#<section>",
        metavar="URL",
    )

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            try:
                setattr(self, f.name, check_value(f.name, getattr(self, f.name)))
            except ValueError as err:
                raise ConfigError(f"{flag(f.name)} {getattr(self, f.name)!r}: {err}") from None
        if self.window < self.interval:
            raise ConfigError(
                f"--window {self.window:g}: shorter than --interval {self.interval:g}; the window must span a poll"
            )
        if not self.web_telemetry_path.startswith("/") or self.web_telemetry_path.rstrip("/") in RESERVED_PATHS:
            raise ConfigError(
                f"--web.telemetry-path {self.web_telemetry_path!r}: must start with '/' and not be one of "
                f"{', '.join(sorted(p or '/' for p in RESERVED_PATHS))}"
            )
        if self.run_pattern is not None:
            from larpix_dqm.exporter.registry.runs import compile_pattern  # h5py and numpy: not for every --help

            try:
                compile_pattern(self.run_pattern)
            except ValueError as err:
                raise ConfigError(f"--run-pattern {self.run_pattern!r}: {err}") from None
        if self.io_groups is not None:
            try:
                self.served_io_groups()
            except ValueError as err:
                raise ConfigError(f"--io-groups {self.io_groups!r}: {err}") from None
        if not self.runbook_url.startswith(("http://", "https://")):
            raise ConfigError(f"--runbook-url {self.runbook_url!r}: expected an http(s) URL")
        for address in self.listen_address:
            try:
                parse_address(address, self.port)
            except ValueError as err:
                raise ConfigError(f"--web.listen-address {address!r}: {err}") from None

    def served_io_groups(self) -> tuple[int, ...]:
        """The io_groups of ``--io-groups`` (empty: every one), or ValueError saying what is wrong."""
        if self.io_groups is None:
            return ()
        items = [item.strip() for item in self.io_groups.split(",")]
        if not all(item.isdigit() and 1 <= int(item) <= 255 for item in items):
            raise ValueError("expected io_group numbers from 1 to 255 separated by commas, e.g. 1,2")
        return tuple(sorted({int(item) for item in items}))

    def addresses(self) -> list[tuple[str, int]]:
        """The (host, port) pairs to listen on."""
        return [parse_address(address, self.port) for address in self.listen_address]


#: Paths the web server answers itself, which the metrics path must not hide.
RESERVED_PATHS = frozenset(
    {"", "/-/healthy", "/-/ready", "/-/draw", "/plots", "/api/channels", "/api/history", "/api/runs"}
)


def parse_address(address: str, default_port: int) -> tuple[str, int]:
    """``host``, ``host:port``, ``:port``, ``[v6]`` or ``[v6]:port`` as (host, port); an empty host is every interface."""
    host, port = address, ""
    if address.startswith("["):
        host, bracket, rest = address[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError("expected [IPv6 address] or [IPv6 address]:port")
        port = rest[1:]
    elif address.count(":") == 1:
        host, port = address.split(":")
    if port == "":
        return host or "0.0.0.0", default_port
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"port {port!r} is not a number from 0 to 65535")
    return host or "0.0.0.0", int(port)


@functools.cache
def options() -> dict[str, Option]:
    """Every setting's Option, in declaration order."""
    return {f.name: f.metadata["option"] for f in dataclasses.fields(Settings)}


@functools.cache
def types() -> dict[str, Any]:
    """Every setting's type (``int``, ``str | None``, ``list[str]`` ...)."""
    return typing.get_type_hints(Settings)


def defaults() -> dict[str, Any]:
    """Every setting's default value."""
    return {
        f.name: f.default_factory() if callable(f.default_factory) else f.default for f in dataclasses.fields(Settings)
    }


def flags(name: str) -> tuple[str, ...]:
    """The command-line flags of a setting (its former name's last)."""
    opt = options()[name]
    return (opt.flags or (_dashed(name),)) + ((_dashed(opt.former),) if opt.former else ())


def _dashed(name: str) -> str:
    """A setting's name as a flag: ``--name-with-dashes``."""
    return f"--{name.replace('_', '-')}"


def flag(name: str) -> str:
    """The main (first long) flag of a setting, as errors name it."""
    return next(f for f in flags(name) if f.startswith("--"))


def envvar(name: str) -> str:
    """The environment variable that sets a setting: LARPIX_DQM_<NAME>."""
    return ENV_PREFIX + name.upper()


def envvars(name: str) -> tuple[str, ...]:
    """The environment variables that set a setting: ``envvar``, then its former name's."""
    former = options()[name].former
    return (envvar(name),) + ((envvar(former),) if former else ())


def config_keys() -> dict[str, str]:
    """The setting each config-file key sets: every setting's name, and its former name."""
    keys = {name: name for name in options()}
    keys.update({opt.former: name for name, opt in options().items() if opt.former})
    return keys


def shown_default(name: str) -> str:
    """The default as --help and the README show it."""
    opt, value = options()[name], defaults()[name]
    if opt.shown_default:
        return opt.shown_default
    if value is None or value == []:
        return "none"
    if isinstance(value, list):
        return ", ".join(value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def _scalar_kind(name: str) -> type:
    kinds = [t for t in typing.get_args(types()[name]) or (types()[name],) if t is not type(None)]
    kind = kinds[0]
    return str if typing.get_origin(kind) is list else kind


def check_value(name: str, value: Any) -> Any:
    """The value in the setting's type, or ValueError saying what is wrong with it (not naming the option)."""
    kind, opt = types()[name], options()[name]
    if value is None:
        if type(None) in typing.get_args(kind):
            return None
        raise ValueError("a value is required")
    if typing.get_origin(kind) is list:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or not all(isinstance(v, (str, int, float)) for v in items):
            raise ValueError("expected a text or a list of texts")
        return [str(v) for v in items]
    scalar = _scalar_kind(name)
    if scalar is bool:
        if not isinstance(value, bool):
            raise ValueError("expected true or false")
        return value
    if isinstance(value, bool) or isinstance(value, (list, dict)):
        raise ValueError(f"expected {'a number' if scalar in (int, float) else 'a text'}")
    if scalar is int:
        if isinstance(value, float) or (isinstance(value, str) and not value.strip().lstrip("+-").isdigit()):
            raise ValueError("expected a whole number")
        value = int(value)
    elif scalar is float:
        try:
            value = float(value)
        except ValueError:
            raise ValueError("expected a number") from None
        if not math.isfinite(value):
            raise ValueError("expected a finite number")
    else:
        value = opt.aliases.get(str(value), str(value))
    if opt.choices and value not in opt.choices:
        raise ValueError(f"expected one of {', '.join(opt.choices)}")
    if opt.above is not None and not value > opt.above:
        raise ValueError(f"must be more than {opt.above:g}")
    if opt.minimum is not None and value < opt.minimum:
        raise ValueError(f"must be at least {opt.minimum:g}")
    if opt.below is not None and not value < opt.below:
        raise ValueError(f"must be less than {opt.below:g}")
    if opt.maximum is not None and value > opt.maximum:
        raise ValueError(f"must be at most {opt.maximum:g}")
    return value


def load_config_file(path: str) -> dict[str, Any]:
    """Read a YAML config file into Settings keys; unknown keys and bad values are errors naming file, line, key."""
    import yaml  # only with a config file: 20 ms of every start-up otherwise

    try:
        with open(path, encoding="utf-8") as fh:
            node = yaml.compose(fh, Loader=yaml.SafeLoader)
    except FileNotFoundError:
        raise ConfigError(f"config file {path}: no such file") from None
    except OSError as err:
        raise ConfigError(f"config file {path}: {err.strerror or err}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path}: not a text file (binary data), not YAML") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if node is None:
        return {}
    if not isinstance(node, yaml.MappingNode):
        raise ConfigError(f"config file {path}: expected a mapping of option: value")
    known = config_keys()
    values: dict[str, Any] = {}
    for key_node, value_node in node.value:
        line = key_node.start_mark.line + 1
        key = known.get(str(key_node.value).replace("-", "_").replace(".", "_"), "")
        if not key:
            raise ConfigError(
                f"config file {path} line {line}: unknown key '{key_node.value}' (known: {', '.join(sorted(options()))})"
            )
        if key in values:
            raise ConfigError(f"config file {path} line {line}: key '{key_node.value}': {key} is given twice")
        try:
            values[key] = check_value(key, yaml.safe_load(yaml.serialize(value_node)))
        except ValueError as err:
            raise ConfigError(f"config file {path} line {line}: key '{key_node.value}': {err}") from None
    return values


def build_settings(config_file: str | None, given: dict[str, Any]) -> Settings:
    """Defaults, then the config file, then the values given on the command line or in the environment."""
    merged: dict[str, Any] = load_config_file(config_file) if config_file else {}
    merged.update(given)
    return Settings(**merged)


def _cell(text: str) -> str:
    """Text safe in a markdown table cell (no column breaks, no HTML tags)."""
    return text.replace("|", "\\|").replace("<", "&lt;")


def option_table() -> str:
    """The README's markdown table of serve's options, generated from the declaration."""
    rows = ["| option | config key | environment | default | meaning |", "|---|---|---|---|---|"]
    for name, opt in options().items():
        names = ", ".join(flags(name) + ((opt.negation,) if opt.negation else ()))
        value = " " + "|".join(opt.choices) if opt.choices else f" {opt.metavar}" if opt.metavar else ""
        default = _cell(opt.shown_default) if opt.shown_default else f"`{_cell(shown_default(name))}`"
        keys, variables = (f"`{key}`" for key in (name, opt.former) if key), (f"`{v}`" for v in envvars(name))
        meaning = _cell(opt.help) + (
            f" (formerly {opt.former}: its flag, key and variable still work)" if opt.former else ""
        )
        rows.append(
            f"| `{_cell(names + value)}` | {', '.join(keys)} | {', '.join(variables)} | {default} | {meaning} |"
        )
    return "\n".join(rows)
