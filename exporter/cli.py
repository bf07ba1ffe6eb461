"""The ``larpix-dqm`` command line: serve, once, simulate, demo, baseline, channels, geometries, mixin.

Every command checks its options, its input files and that its outputs can be written before it
does any work; a problem is one line naming the option or file, exit 2.
"""

from __future__ import annotations

import atexit
import enum
import gc
import inspect
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn, Optional

import typer

from larpix_dqm.exporter import __version__
from larpix_dqm.exporter.detector.modes import RUN_MODES
from larpix_dqm.exporter.quality.config import COMPILED, ENGINES
from larpix_dqm.exporter.runtime.logs import setup_logging
from larpix_dqm.exporter.settings import (
    DEFAULT_RUNBOOK_URL,
    ENV_PREFIX,
    ConfigError,
    build_settings,
    check_value,
    shown_default,
)
from larpix_dqm.exporter.settings import envvar as setting_envvar
from larpix_dqm.exporter.settings import envvars as setting_envvars
from larpix_dqm.exporter.settings import flag as setting_flag
from larpix_dqm.exporter.settings import flags as setting_flags
from larpix_dqm.exporter.settings import options as settings_options
from larpix_dqm.exporter.settings import types as setting_types

# Each command imports what it runs (numpy, h5py, the monitor, matplotlib) itself: --help, completion and a
# command that fails on its options load none of it (bench/startup.py).
if typing.TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from larpix_dqm.exporter.detector.geometry import Geometry
    from larpix_dqm.exporter.detector.runconfig import RunConfig
    from larpix_dqm.exporter.monitor import Monitor
    from larpix_dqm.exporter.quality.snapshot import Snapshot
    from larpix_dqm.exporter.reading.files import Chunk
    from larpix_dqm.exporter.registry.writer import RegistryWriter
    from larpix_dqm.exporter.runtime.once import FileResult
    from larpix_dqm.plots.engine import PlotSettings

app = typer.Typer(
    help="Live data-quality monitoring of LArPix pixel data, served to Prometheus.",
    rich_markup_mode=None,  # help texts are plain: '[channels]' and '[host][:port]' are not markup
)
log = logging.getLogger("larpix_dqm")


class FileFormat(str, enum.Enum):
    """Simulated file formats."""

    raw = "raw"
    packets = "packets"


class RunsFormat(str, enum.Enum):
    """Formats of the run registry's listings (exporter/registry/reader.py FORMATS)."""

    table = "table"
    json = "json"
    csv = "csv"


class ListFormat(str, enum.Enum):
    """Formats of the bad-channel list."""

    json = "json"
    csv = "csv"
    daq = "daq"


def _fail(message: str) -> NoReturn:
    typer.echo(f"larpix-dqm: {message}", err=True)
    raise typer.Exit(2)


def _text_file(where: str, path: str) -> None:
    """Exit naming ``where`` when ``path`` is binary, not the YAML or JSON text it should be (a loader that
    cannot open it says why itself)."""
    try:
        with open(path, "rb") as fh:
            fh.read().decode("utf-8")
    except UnicodeDecodeError:
        _fail(f"{where} {path}: not a text file (binary data), not YAML")
    except OSError:
        pass


def _writable_dir(where: str, path: Path) -> None:
    """Exit naming ``where`` unless ``path`` is, or can be made, a directory this process can write files into."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        _fail(f"{where} {path}: cannot write there ({err.strerror or err})")


def _writable_file(where: str, path: Path) -> None:
    """Exit naming ``where`` unless ``path`` can be written: not a directory, in an existing writable directory."""
    if path.is_dir():
        _fail(f"{where} {path}: is a directory")
    if not path.parent.is_dir():
        _fail(f"{where} {path}: no directory {path.parent}")
    if path.exists() and not os.access(path, os.W_OK):
        _fail(f"{where} {path}: not writable")
    _writable_dir(where, path.parent)


def _plugin_dirs(plugin_dirs: list[str]) -> None:
    """Exit naming the first --plugin-dir that is not a directory."""
    for folder in plugin_dirs:
        if not os.path.isdir(folder):
            _fail(f"--plugin-dir {folder}: {'not a directory' if os.path.exists(folder) else 'no such directory'}")


def _checked(name: str, value: Any) -> Any:
    """A value of an option that shares a setting's declaration (e.g. --window), checked like the setting."""
    try:
        return check_value(name, value)
    except ValueError as err:
        _fail(f"{setting_flag(name)} {value}: {err}")


def _collect_errors(monitor: Monitor) -> list[str]:
    """A list that collects the messages of the monitor's error log records (files it could not read)."""
    errors: list[str] = []

    def keep(record: dict) -> None:
        if record["level"] == "error":
            errors.append(record["message"])

    monitor.add_log_handler(keep)
    return errors


def _version(value: bool) -> None:
    if value:
        typer.echo(__version__)
        raise typer.Exit()


@app.callback(invoke_without_command=True)
def main(
    ctx: typer.Context,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Live data-quality monitoring of LArPix pixel data, served to Prometheus."""
    if ctx.invoked_subcommand is None:  # no command: the help, as a usage error
        typer.echo(ctx.get_help(), err=True)
        raise typer.Exit(2)


def _parse_ids(values: list[str], width: int, what: str) -> list[tuple[int, ...]]:
    out = []
    for value in values:
        parts = value.split("-")
        if len(parts) != width or not all(p.isdigit() for p in parts):
            _fail(f"{what} {value!r}: expected {width} numbers joined by '-', e.g. {'-'.join(['1'] * width)}")
        out.append(tuple(int(p) for p in parts))
    return out


NETWORK_HELP = (
    "larpix-control controller network file (hydra network), or a directory of them; repeatable. Chips in no "
    "network are not expected and get no verdict. (default: every chip of the geometry or seen in data)"
)
DISABLED_LIST_HELP = (
    "Disabled-channel list in the DAQ's format {'<io_group>-<tile>-<chip_id>': [channels]} (what "
    "'channels --format daq' writes; lists keyed otherwise are refused); its channels are masked: no silent/noisy "
    "verdict; repeatable."
)
GEOMETRY_HELP = (
    "Pixel geometry YAML, or a packaged layout's name ('larpix-dqm geometries'). "
    "(default: $PIXEL_GEOMETRY_PATH, else ./layout-2.4.0.yaml if present)"
)
RUN_MODE_HELP = (
    f"Run mode selecting the check thresholds: {', '.join(RUN_MODES)} (auto: from the data's trigger types)."
)

PLOTS_HELP = (
    "Plots to draw: class or image names or shell patterns (PixelMap, PixelMap_2_1, 'PixelMap_1_*'); "
    "repeatable, or several separated by commas."
)


def _plot_options(
    output: Path | None, ext: str, plots: list[str], interval: float, plugin_dirs: list[str], latest: bool = True
) -> dict[str, Any] | None:
    """The ``PlotSettings`` arguments of the plot options, None without -o; exits on options that need -o. Plain
    values: ``once`` hands them to its drawing process, which checks them with matplotlib loaded."""
    if output is None:
        if plots or plugin_dirs:
            _fail("--plots and --plugin-dir need -o PLOTDIR (where the images go)")
        return None
    _plugin_dirs(plugin_dirs)
    names = tuple(name for value in plots for name in value.replace(",", " ").split())
    return {
        "output": str(output),
        "ext": ext,
        "plots": names,
        "interval": interval,
        "plugin_dirs": tuple(plugin_dirs),
        "latest": latest,
    }


def _plot_settings(
    output: Path | None, ext: str, plots: list[str], interval: float, plugin_dirs: list[str], latest: bool = True
) -> PlotSettings | None:
    """PlotSettings from the plot options, None without -o; exits on options that need -o."""
    options = _plot_options(output, ext, plots, interval, plugin_dirs, latest)
    if options is None:
        return None
    from larpix_dqm.plots.engine import PlotSettings

    return PlotSettings(**options)


def _setting_parameter(name: str) -> inspect.Parameter:
    """A typer option for one setting, from its declaration in exporter/settings.py."""
    opt, kind = settings_options()[name], setting_types()[name]
    decls = setting_flags(name)
    cli_type: Any = Optional[str]  # numbers too: check_value parses them, so every bad value gets the same message
    if typing.get_origin(kind) is list:
        cli_type = Optional[list[str]]
    elif kind is bool:
        cli_type = Optional[bool]
        decls = (f"{decls[0]}/{opt.negation}",)
    elif opt.choices:
        names = {c: c for c in (*opt.choices, *opt.aliases)}
        cli_type = Optional[enum.Enum(name.title().replace("_", ""), names, type=str)]  # type: ignore[misc]
    info = typer.Option(
        *decls,
        help=f"{opt.help[0].upper()}{opt.help[1:]}. [default: {shown_default(name)}]",
        metavar=opt.metavar or None,
        envvar=list(setting_envvars(name)),
        show_default=False,
        show_envvar=True,
    )
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[cli_type, info])


def _given_settings(ctx: typer.Context, values: dict[str, Any]) -> dict[str, Any]:
    """The settings given on the command line or in the environment, checked; exits naming the flag or variable."""
    given = {}
    for name, value in values.items():
        source = ctx.get_parameter_source(name)
        if source is None or source.name not in ("COMMANDLINE", "ENVIRONMENT") or value is None:
            continue
        value = value.value if isinstance(value, enum.Enum) else value
        where = setting_flag(name)
        if source.name == "ENVIRONMENT":  # the variable it came from: the setting's own or its former name's
            where = next((v for v in setting_envvars(name) if v in os.environ), setting_envvar(name))
        try:
            given[name] = check_value(name, list(value) if isinstance(value, tuple) else value)
        except ValueError as err:
            _fail(f"{where} {value if not isinstance(value, (list, tuple)) else ' '.join(value)}: {err}")
    return given


def serve(ctx: typer.Context, config: Optional[str] = None, verbose: bool = False, **values: Any) -> None:
    """Watch LArPix data directories and serve data-quality metrics on /metrics (and plots with -o)."""
    from larpix_dqm.exporter.detector.geometry import GeometryError, unseen_chips_warning
    from larpix_dqm.exporter.detector.runconfig import RunConfigError
    from larpix_dqm.exporter.quality.checks import ChecksConfigError
    from larpix_dqm.exporter.quality.reference import ReferenceFileError
    from larpix_dqm.exporter.registry.schema import RegistryError
    from larpix_dqm.exporter.runtime.checkpoint import CheckpointError
    from larpix_dqm.exporter.runtime.service import ListenError, Service, resolve_checkpoint_path, resolve_registry_path
    from larpix_dqm.exporter.web.auth import WebConfigError, load_web_config
    from larpix_dqm.plots.errors import PlotConfigError

    try:
        settings = build_settings(config, _given_settings(ctx, values))
    except ConfigError as err:
        _fail(str(err))
    setup_logging("debug" if verbose else settings.log_level, settings.log_format)
    if not settings.inputs:
        _fail("no input: give -i DIR (or 'inputs' in the config file)")
    for name in ("checks", "web_config_file"):  # loaded elsewhere, which takes any text
        if getattr(settings, name):
            _text_file(setting_flag(name), getattr(settings, name))
    try:
        if settings.web_config_file:  # the service reads it after restoring the checkpoint: check it first
            load_web_config(settings.web_config_file)
    except WebConfigError as err:
        _fail(str(err))
    checkpoint, checkpoint_flag = resolve_checkpoint_path(settings), setting_flag("checkpoint")
    if checkpoint is not None:
        _writable_dir(checkpoint_flag, Path(checkpoint).parent)  # the checkpoint makes its directory too
        if os.path.isdir(checkpoint):
            _fail(f"{checkpoint_flag} {checkpoint}: is a directory")
    registry = resolve_registry_path(settings)
    if registry is not None:
        if checkpoint is None:
            _fail(
                f"--registry {registry}: needs a checkpoint (with {checkpoint_flag} '-' a restart reads every file again)"
            )
        _writable_file("--registry", Path(registry))
    if settings.output:
        _writable_dir("-o", Path(settings.output))
    try:
        plot_settings = _plot_settings(
            Path(settings.output) if settings.output else None,
            settings.ext,
            settings.plots,
            settings.plot_interval,
            settings.plugin_dirs,
        )
        service = Service(settings, plot_settings)
    except (
        GeometryError,
        CheckpointError,
        PlotConfigError,
        ChecksConfigError,
        ReferenceFileError,
        WebConfigError,
        RunConfigError,
        ListenError,
        RegistryError,
    ) as err:
        _fail(str(err))
    unseen = unseen_chips_warning(service.geometry)
    if unseen:
        log.warning(unseen)
    service.start()
    typer.echo(f"larpix-dqm {__version__}: serving {', '.join(service.urls)}", err=True)
    service.wait()
    _exit_without_teardown()  # checkpoint written, server stopped


def _exit_without_teardown() -> NoReturn:
    """End the process now, its logs and output flushed, without tearing the interpreter down: an abandoned
    drawing that still holds the GIL could make that take longer than the 10 s promised for SIGTERM, and a
    background thread still compiling kernels (numba, a first run) can abort inside LLVM while the interpreter
    is torn down under it (exit 134, seen once in CI when a fresh install's demo was stopped)."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


_CONFIG_PARAMETERS = [
    inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context),
    inspect.Parameter(
        "config",
        inspect.Parameter.KEYWORD_ONLY,
        default=None,
        annotation=Annotated[
            Optional[str],
            typer.Option(
                metavar="FILE",
                envvar=ENV_PREFIX + "CONFIG",
                help="YAML file with any of these settings (the config keys in the README); "
                "the command line and the environment win.",
            ),
        ],
    ),
    inspect.Parameter(
        "verbose",
        inspect.Parameter.KEYWORD_ONLY,
        default=False,
        annotation=Annotated[bool, typer.Option("-v", "--verbose", help="Debug logging (--log.level debug).")],
    ),
]


def _settings_command(func: Callable[..., None]) -> Callable[..., None]:
    """Register ``func(ctx, config, verbose, **settings)`` as a command taking every setting's option."""
    signature = inspect.Signature([*_CONFIG_PARAMETERS, *(_setting_parameter(name) for name in settings_options())])
    func.__signature__ = signature  # type: ignore[attr-defined]
    func.__annotations__ = {p.name: p.annotation for p in signature.parameters.values()}
    return app.command()(func)


_settings_command(serve)


def healthcheck(ctx: typer.Context, config: Optional[str] = None, verbose: bool = False, **values: Any) -> None:
    """Exit 0 if the exporter configured by the same options, environment or --config answers /-/healthy.

    For container HEALTHCHECKs: it follows the configured port, address and scheme (https when the
    web config has tls_server_config; the certificate is not verified: this is a local probe).
    """
    import ssl
    import urllib.error
    import urllib.request

    from larpix_dqm.exporter.web.auth import WebConfigError, load_web_config

    try:
        settings = build_settings(config, _given_settings(ctx, values))
        if settings.web_config_file:
            _text_file("--web.config.file", settings.web_config_file)
        web = load_web_config(settings.web_config_file) if settings.web_config_file else None
    except (ConfigError, WebConfigError) as err:
        _fail(str(err))
    host, port = settings.addresses()[0]
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    shown = f"[{host}]" if ":" in host else host
    context = None
    if web is not None and web.ssl_context is not None:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    url = f"{'https' if context else 'http'}://{shown}:{port}/-/healthy"
    try:
        with urllib.request.urlopen(url, timeout=4, context=context) as resp:
            healthy = resp.status == 200
    except (urllib.error.URLError, OSError) as err:
        typer.echo(f"larpix-dqm: {url}: {getattr(err, 'reason', err)}", err=True)
        raise typer.Exit(1) from None
    raise typer.Exit(0 if healthy else 1)


_settings_command(healthcheck)


@app.command()
def once(
    file: Annotated[Path, typer.Argument(help="A packet or raw PACMAN HDF5 file.", exists=True, dir_okay=False)],
    output: Annotated[
        Optional[Path],
        typer.Option(
            "-o", "--output", help="Directory for summary.json, metrics.prom and the plots (<file stem>_dqm/)."
        ),
    ] = None,
    geometry: Annotated[Optional[str], typer.Option(help=GEOMETRY_HELP)] = None,
    window: Annotated[
        float, typer.Option(help="Sliding window in seconds of data time (statistics and pixel maps cover its end).")
    ] = 60.0,
    ext: Annotated[str, typer.Option(help="Plot image format, as a file extension.")] = ".png",
    plots: Annotated[list[str], typer.Option("--plots", help=PLOTS_HELP)] = [],  # noqa: B006
    plugin_dir: Annotated[
        list[str], typer.Option("--plugin-dir", help="Folder with more plot plugins (*.py); repeatable.")
    ] = [],  # noqa: B006
    no_plots: Annotated[bool, typer.Option("--no-plots", help="Write the summary only.")] = False,
    channels: Annotated[
        bool,
        typer.Option(
            "--channels",
            help="List the channels of every status in summary.json, active and unknown too (by default only the "
            "other statuses' lists: active and unknown are most channels, and their counts are in the totals).",
        ),
    ] = False,
    network: Annotated[list[str], typer.Option("--network", help=NETWORK_HELP)] = [],  # noqa: B006
    disabled_list: Annotated[list[str], typer.Option("--disabled-list", help=DISABLED_LIST_HELP)] = [],  # noqa: B006
    run_mode: Annotated[str, typer.Option("--run-mode", help=RUN_MODE_HELP)] = "auto",
    ingest_engine: Annotated[
        str, typer.Option("--ingest-engine", help=f"How packets are counted: {' or '.join(ENGINES)} (the reference).")
    ] = COMPILED,
    registry: Annotated[
        Optional[Path],
        typer.Option(
            "--registry",
            metavar="PATH",
            help="Run registry (SQLite, created if missing) to add the file's run to, closed at the file's end.",
        ),
    ] = None,
    run_pattern: Annotated[
        Optional[str],
        typer.Option(
            "--run-pattern", metavar="REGEX", help="Names the run, as serve's --run-pattern (with --registry)."
        ),
    ] = None,
) -> None:
    """Process one whole file: print its totals; with -o also write its summary, its metrics and its plots; with
    --registry add its run to a run registry.

    A packet file's own chip configurations (``configs``) mask channels without further options.
    """
    from larpix_dqm.exporter.detector.geometry import GeometryError, resolve_geometry
    from larpix_dqm.exporter.detector.runconfig import RunConfig, RunConfigError
    from larpix_dqm.exporter.registry.schema import RegistryError
    from larpix_dqm.plots.errors import PlotConfigError

    setup_logging("info", "logfmt")
    try:
        geo = resolve_geometry(geometry)
        run_config = RunConfig.load(network, disabled_list, run_mode)
        if ingest_engine not in ENGINES:
            raise RunConfigError(f"--ingest-engine {ingest_engine!r}: expected one of {', '.join(ENGINES)}")
        options = None if no_plots else _plot_options(output, ext, plots, 0.0, plugin_dir, latest=False)
    except (GeometryError, PlotConfigError, RunConfigError) as err:
        _fail(str(err))
    window = _checked("window", window)
    if output is not None:
        _writable_dir("-o", output)
    configuration = {
        "geometry": geometry,
        "networks": network,
        "disabled_lists": disabled_list,
        "window_seconds": window,
    }
    runs = _once_registry(registry, run_pattern, file, configuration, run_mode)
    try:
        result, written = _once_with_progress(file, geo, window, options, run_config, ingest_engine, runs)
        if result.errors:
            _fail(f"{file}: {'; '.join(result.errors)}")
        if runs is not None:
            added = runs.current
            runs.record(result.evaluation)
            runs.end_run()
            typer.echo(f"added {file} to run {added} in {registry}", err=True)
    except (PlotConfigError, RegistryError) as err:
        _fail(str(err))
    finally:
        if runs is not None:
            runs.close()
    from larpix_dqm.exporter.runtime.once import snapshot_totals, summary_json

    totals = None
    if output is not None:  # the summary and the metrics only where they are written (1,600 chips: ~0.1 s)
        summary, metrics_text = result.summary(every_list=channels)
        output.mkdir(parents=True, exist_ok=True)
        (output / "summary.json").write_bytes(summary_json(summary))
        (output / "metrics.prom").write_text(metrics_text)
        totals = summary["totals"]
    if written is not None and output is not None:
        images, failures = written
        typer.echo(f"wrote {images} plot image(s) to {output / (file.stem + '_dqm')}", err=True)
        for failure in failures:
            typer.echo(f"larpix-dqm: plot {failure}", err=True)
    typer.echo(json.dumps(snapshot_totals(result.snapshot, result.health) if totals is None else totals, indent=1))


def _once_registry(
    registry: Path | None, run_pattern: str | None, file: Path, configuration: dict, run_mode: str
) -> RegistryWriter | None:
    """The registry writer ``once`` adds the file's run with (None without --registry); one line, exit 2, when
    the pattern or the registry is unusable, or the registry already counts the file."""
    if registry is None:
        if run_pattern is not None:
            _fail(f"--run-pattern {run_pattern!r}: names a run for --registry, which is not given")
        return None
    from larpix_dqm.exporter.registry.runs import RunNamer
    from larpix_dqm.exporter.registry.schema import RegistryError
    from larpix_dqm.exporter.registry.writer import RegistryWriter, RunContext

    try:
        namer = RunNamer(run_pattern)
    except ValueError as err:
        _fail(f"--run-pattern {run_pattern!r}: {err}")
    _writable_file("--registry", registry)
    try:
        writer = RegistryWriter(
            registry, namer, RunContext(configuration, None, run_mode), resume=False
        )  # an open run of serve's is not once's
    except RegistryError as err:
        _fail(str(err))
    found = writer.holds(os.path.realpath(file))
    if found is not None:
        writer.close()
        _fail(f"--registry {registry}: {file} is already in run {found}; adding it again would count it twice")
    return writer


class _NoProgress:
    """The progress display off a terminal: shows nothing, and spares ``once`` importing rich (60-90 ms)."""

    def __enter__(self) -> _NoProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def add_task(self, description: str, total: float | None = None) -> TaskID:
        return typing.cast("TaskID", 0)

    def update(self, task_id: TaskID, **changes: Any) -> None:
        return None

    def refresh(self) -> None:
        return None


def _progress() -> Progress | _NoProgress:
    """A rich progress display on stderr, refreshed only when told (no refresh thread), where rich would show one:
    stderr a terminal, or rich's ``TTY_COMPATIBLE=1`` or ``FORCE_COLOR`` set (a CI log that shows colours); else
    none."""
    forced = os.environ.get("TTY_COMPATIBLE") == "1" or bool(os.environ.get("FORCE_COLOR"))
    if not (sys.stderr.isatty() or forced):
        return _NoProgress()
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    return Progress(*columns, console=console, disable=not console.is_terminal, auto_refresh=False)


def _once_with_progress(
    file: Path,
    geo: Geometry | None,
    window: float,
    options: dict[str, Any] | None,
    run_config: RunConfig,
    ingest_engine: str,
    runs: RegistryWriter | None = None,
) -> tuple[FileResult, tuple[int, list[str]] | None]:
    """Read the file (progress bar on a terminal; ``runs`` notes each chunk and records the state as the file is
    read), and with plot ``options`` draw its plots; returns (result, (images, failures)).

    The plots are set up, fed and drawn by a drawing process forked before the read (``plots.once``): it imports
    matplotlib and takes the packets on a second core while this process reads, and draws with a helper of its
    own. Not a spawned process as ``serve``'s: nothing is served meanwhile, and spawning would only add start-up
    time. Plot options it rejects end the command with their message (exit 2) at the next chunk, or before the
    read with ``runs``, which writes while the file is read. The progress display is refreshed by this thread
    only (no refresh thread).
    """
    drawing = None
    if options is not None:  # forked first: the imports below are the reading's, not the drawing's
        from larpix_dqm.plots.once import OnceDrawing

        try:
            drawing = OnceDrawing(options, geo, (str(file), 0))
        except OSError as err:
            log.warning("plots: cannot start the drawing process (%s); the plots are drawn here after the read", err)
    from larpix_dqm.exporter.reading.files import CHUNK_ROWS, RAW_CHUNK_MESSAGES, FileReader
    from larpix_dqm.exporter.runtime.once import file_rows, process_file

    try:
        if options is not None and runs is not None and (drawing is None or not drawing.settle()):
            from larpix_dqm.plots.once import plot_engine

            plot_engine(options, geo)  # no verdict from a drawing process: the options are checked here
        with _progress() as progress:
            reading = progress.add_task(f"reading {file.name} (rows)", total=file_rows(str(file)) or None)
            noted = runs.on_chunk if runs is not None else None
            on_chunk = noted
            if drawing is not None:
                feed = drawing.feed

                def on_chunk(chunk: Chunk) -> None:
                    feed(chunk.packets)
                    if noted is not None:
                        noted(chunk)

            result = process_file(
                str(file),
                geo,
                window,
                on_chunk,
                lambda rows: progress.update(reading, completed=rows, refresh=True),
                run_config,
                ingest_engine,
                runs.record if runs is not None else None,
                None if drawing is None else FileReader(CHUNK_ROWS // 2, RAW_CHUNK_MESSAGES // 2),
            )
            if options is None or result.errors:  # nothing to draw, or a file not read
                return result, None
            task = progress.add_task("drawing plots (images)", total=None)
            progress.refresh()

            def advance() -> None:
                progress.update(task, advance=1, refresh=True)

            written = None if drawing is None else drawing.finish(result.snapshot, advance)
            if written is None:
                if drawing is not None:
                    log.warning(
                        "plots: the drawing process (pid %d) %s without reporting; the plots are drawn here",
                        drawing.pid,
                        drawing.ending,
                    )
                written = _draw_here(file, geo, window, options, run_config, ingest_engine, result.snapshot, advance)
            progress.update(task, completed=written[0], refresh=True)  # the helper's too
        return result, written
    finally:
        if drawing is not None:
            drawing.stop()


def _draw_here(
    file: Path,
    geo: Geometry | None,
    window: float,
    options: dict[str, Any],
    run_config: RunConfig,
    ingest_engine: str,
    snapshot: Snapshot,
    on_image: Callable[[], None],
) -> tuple[int, list[str]]:
    """Draw the file's plots in this process, reading the file again to feed them (its drawing process ended
    without reporting, or could not be started: that costs time, never an image); (images, failures)."""
    from larpix_dqm.exporter.runtime.once import process_file
    from larpix_dqm.plots.once import empty_snapshot, failures, plot_engine

    engine = plot_engine(options, geo)
    empty = empty_snapshot(geo)
    key = (str(file), 0)
    again = process_file(
        str(file), geo, window, lambda chunk: engine.update(key, chunk.packets, empty), None, run_config, ingest_engine
    )
    lost = [f"images drawn from a second read of the file, which failed: {error}" for error in again.errors]
    return engine.draw(snapshot, on_image), failures(engine) + lost


@app.command()
def simulate(
    outdir: Annotated[Path, typer.Argument(help="Directory to write the run into.")],
    fmt: Annotated[
        FileFormat,
        typer.Option("--format", help="raw (PACMAN messages, SWMR, as the DAQ writes) or packets (hdf5format 2.4)."),
    ] = FileFormat.raw,
    seconds: Annotated[int, typer.Option(help="Seconds of data to write; 0 runs until interrupted.")] = 0,
    fast: Annotated[
        bool,
        typer.Option(help="Write as fast as possible with data time from --start-time (a backlog) instead of live."),
    ] = False,
    start_time: Annotated[
        Optional[int], typer.Option(help="Unix time of the first second with --fast. (default: now)")
    ] = None,
    file_seconds: Annotated[int, typer.Option(help="Start a new file every N seconds of data; 0 keeps one file.")] = 0,
    geometry: Annotated[
        Optional[str],
        typer.Option(
            help="Geometry to simulate: a YAML file or a packaged layout's name. "
            "(default: the packaged 16-tile module layout)"
        ),
    ] = None,
    rate_hz: Annotated[float, typer.Option(help="Mean self-trigger hit rate per channel (Poisson).")] = 0.5,
    periodic_trigger_hz: Annotated[
        float,
        typer.Option(
            help="Periodic triggers per second on every channel (trigger type 3), e.g. 30 with --rate-hz 0 for a "
            "pedestal run; 0 for none."
        ),
    ] = 0.0,
    silent_chip: Annotated[
        list[str], typer.Option(help="Inject a chip that never sends data: IOGROUP-IOCHANNEL-CHIP; repeatable.")
    ] = [],  # noqa: B006
    noisy_channel: Annotated[
        list[str], typer.Option(help="Inject a noisy channel: IOGROUP-IOCHANNEL-CHIP-CHANNEL; repeatable.")
    ] = [],  # noqa: B006
    noisy_rate_hz: Annotated[float, typer.Option(help="Rate of injected noisy channels.")] = 50.0,
    parity_error_fraction: Annotated[
        float, typer.Option(help="Fraction of data packets with a wrong parity bit.")
    ] = 0.0,
    fifo_full_chip: Annotated[
        list[str], typer.Option(help="Inject FIFO full flags on a chip: IOGROUP-IOCHANNEL-CHIP; repeatable.")
    ] = [],  # noqa: B006
    trigger_rate_hz: Annotated[
        Optional[float],
        typer.Option(
            help="Random external triggers (trigger words, type 2) per second per io_group. "
            "(default: 0.2, or 0 with --beam-period-s: every trigger word is then a beam trigger)"
        ),
    ] = None,
    beam_period_s: Annotated[
        float,
        typer.Option(
            help="Seconds between beam spills: spill k at unix time k x this, a trigger word on --beam-io-group and "
            "its charge on every io_group within a drift time (10-190 µs) after it; 0: no beam trigger.",
            min=0.0,
        ),
    ] = 0.0,
    beam_hits: Annotated[
        float,
        typer.Option(
            help="Mean self-triggered hits of a spill that brings charge (Poisson), spread over every io_group with a "
            "250 mm Gaussian profile around the anode's centre; hits on missed tiles or silent chips are lost."
        ),
    ] = 50.0,
    beam_io_group: Annotated[
        int, typer.Option(help="The io_group whose PACMAN receives the beam's trigger words.")
    ] = 1,
    beam_charge_fraction: Annotated[
        float, typer.Option(help="Fraction of spills that bring charge; the others are a trigger word alone.")
    ] = 1.0,
    beam_miss_tile: Annotated[
        list[str],
        typer.Option(
            help="A tile that gets no beam charge (e.g. its HV off): IO_GROUP-TILE, the tile as the geometry "
            "numbers it; repeatable."
        ),
    ] = [],  # noqa: B006
    words_per_message: Annotated[int, typer.Option(help="PACMAN words per message (2023 data: 1-6).")] = 6,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    truth: Annotated[
        Optional[Path], typer.Option(help="Write the exact counts of what was written to this JSON file.")
    ] = None,
    scenario: Annotated[
        Optional[str],
        typer.Option(
            help="Activity the way a detector makes it, with or without one fault, instead of --rate-hz and the "
            "fault options: poisson, spread, detector (noise with a channel spread and edge pixels, cosmic tracks "
            "flat and steep), beam (NuMI-like spills with a profile, 5 min on/off), pause (10 min without data), "
            "runs (new runs and files), parity, hv-trip, hot-tile, inefficient-channel, intermittent-noise, "
            "dead-chip, dead-io-channel, dead-tile, bad-parity-chip. Faults start at a third of --seconds "
            "(of an hour if 0) unless they are there from the start."
        ),
    ] = None,
) -> None:
    """Write a simulated live LArPix run (appends every second), optionally with faults or a detector scenario."""
    from larpix_dqm.exporter.detector.geometry import GeometryError, load_geometry, packaged_layout
    from larpix_dqm.exporter.simulate import Faults, SimulationConfig, Simulator, Truth, write_run
    from larpix_dqm.exporter.simulation.scenarios import DESCRIPTIONS
    from larpix_dqm.exporter.simulation.scenarios import scenario as build_scenario

    try:
        geo = load_geometry(geometry or packaged_layout())
    except GeometryError as err:
        _fail(str(err))
    config = SimulationConfig(
        hit_rate_hz=rate_hz,
        trigger_rate_hz=trigger_rate_hz,
        periodic_trigger_hz=periodic_trigger_hz,
        words_per_message=words_per_message,
        seed=seed,
        beam_period_s=beam_period_s,
        beam_hits=beam_hits,
        beam_io_group=beam_io_group,
        beam_charge_fraction=beam_charge_fraction,
        beam_missed_tiles=[(io_group, tile) for io_group, tile in _parse_ids(beam_miss_tile, 2, "--beam-miss-tile")],
    )
    faults = Faults(
        silent_chips=_parse_ids(silent_chip, 3, "--silent-chip"),
        noisy_channels=_parse_ids(noisy_channel, 4, "--noisy-channel"),
        noisy_rate_hz=noisy_rate_hz,
        parity_error_fraction=parity_error_fraction,
        fifo_full_chips=_parse_ids(fifo_full_chip, 3, "--fifo-full-chip"),
    )
    activity = None
    if scenario is not None:
        if scenario not in DESCRIPTIONS:
            _fail(f"--scenario {scenario!r}: unknown; one of {', '.join(DESCRIPTIONS)}")
        chosen = build_scenario(scenario, geo, seconds or 3600, seed)
        config.hit_rate_hz = chosen.config.hit_rate_hz
        faults, activity = chosen.faults, chosen.activity
    try:
        sim = Simulator(geo, config, faults, activity)
    except ValueError as err:
        _fail(str(err))
    if truth is not None:
        _writable_file("--truth", truth)
    _writable_dir("OUTDIR", outdir)
    counts = Truth() if truth else None
    stop = threading.Event()  # SIGINT or SIGTERM (docker stop): finish the second, close the file
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    paths = write_run(sim, outdir, fmt.value, seconds, not fast, start_time, file_seconds, stop=stop, truth=counts)
    if truth and counts is not None:
        truth.write_text(json.dumps(counts.to_dict()))
    typer.echo(f"wrote {len(paths)} file(s) to {outdir}", err=True)


#: How long demo waits at exit for a plot drawing under way (a full module cycle takes ~15 s).
DEMO_PLOTS_EXIT_SECONDS = 60.0


@app.command()
def demo(
    port: Annotated[int, typer.Option(help="TCP port for /metrics (0: any free port).")] = 9767,
    listen_address: Annotated[str, typer.Option("--listen-address", help="Address to listen on.")] = "127.0.0.1",
    fmt: Annotated[FileFormat, typer.Option("--format", help="Simulated file format.")] = FileFormat.raw,
    seconds: Annotated[int, typer.Option(help="Stop after this many seconds; 0 runs until Ctrl-C.")] = 0,
) -> None:
    """Simulate a live module run (a silent chip, a noisy channel, FIFO flags) and serve its metrics and plots."""
    from larpix_dqm.exporter.detector.geometry import load_geometry, packaged_layout
    from larpix_dqm.exporter.runtime.service import ListenError, Service
    from larpix_dqm.exporter.settings import Settings
    from larpix_dqm.exporter.simulate import Faults, SimulationConfig, Simulator, write_run

    setup_logging("info", "logfmt")
    workdir = Path(tempfile.mkdtemp(prefix="larpix-dqm-demo-"))
    stop = threading.Event()
    writer: threading.Thread | None = None
    service: Service | None = None
    deadline: threading.Timer | None = None
    try:
        geo_path = str(packaged_layout())
        try:
            settings = Settings(
                inputs=[str(workdir / "data")],
                port=port,
                listen_address=[listen_address],
                interval=1.0,
                geometry=geo_path,
                checkpoint=str(workdir / "state.npz"),
            )
        except ConfigError as err:
            _fail(str(err))
        sim = Simulator(
            load_geometry(geo_path),
            SimulationConfig(),
            Faults(
                silent_chips=[(1, 1, 11)],
                noisy_channels=[(2, 5, 20, 12)],
                parity_error_fraction=1e-4,
                fifo_full_chips=[(1, 2, 40)],
            ),
        )
        writer = threading.Thread(
            target=write_run, args=(sim, workdir / "data", fmt.value), kwargs={"stop": stop}, daemon=True
        )
        writer.start()
        try:
            service = Service(settings, _plot_settings(workdir / "plots", ".png", [], 10.0, []))
        except ListenError as err:
            _fail(f"{err} (use --port)")
        service.start()
        typer.echo(
            f"larpix-dqm demo: simulated run in {workdir} (removed at exit)\nmetrics: {service.urls[0]}\n"
            f"status page: {service.urls[0].rsplit('/', 1)[0]}/\nCtrl-C to stop."
        )
        if seconds:
            deadline = threading.Timer(seconds, os.kill, (os.getpid(), signal.SIGINT))
            deadline.start()
        service.wait()
    finally:
        if deadline is not None:  # stopped earlier (SIGTERM, Ctrl-C): the exit must not wait for the timer
            deadline.cancel()
        stop.set()
        if writer is not None:
            writer.join()  # finishes the second it is writing
        if service is not None and service.plots is not None and service.plots.process is not None:
            service.plots.process.join(DEMO_PLOTS_EXIT_SECONDS)  # a drawing under way would write into workdir
        shutil.rmtree(workdir, ignore_errors=True)
    _exit_without_teardown()


@app.command()
def baseline(
    files: Annotated[
        list[Path],
        typer.Argument(
            help="Files of one continuous reference run (pedestal or cosmics).", exists=True, dir_okay=False
        ),
    ],
    output: Annotated[Path, typer.Option("-o", "--output", help="Reference file to write (.npz).")],
    geometry: Annotated[Optional[str], typer.Option(help=GEOMETRY_HELP)] = None,
) -> None:
    """Make a reference (.npz: per-channel rate, pedestal mean and spread) for serve --reference."""
    from larpix_dqm.exporter.detector.geometry import GeometryError, resolve_geometry
    from larpix_dqm.exporter.monitor import Monitor
    from larpix_dqm.exporter.quality.reference import Reference

    setup_logging("info", "logfmt")
    try:
        monitor = Monitor(resolve_geometry(geometry), window=1e9, window_bins=1)  # one window over the whole run
    except GeometryError as err:
        _fail(str(err))
    _writable_file("-o", output)
    errors = _collect_errors(monitor)
    packets = sum(monitor.add_file(path) for path in files)
    if errors:
        _fail("; ".join(errors))
    snapshot = monitor.update().snapshot
    if not snapshot.chip_packets.sum():
        _fail(f"no data packets in {', '.join(map(str, files))}: nothing to make a reference from")
    Reference.from_snapshot(snapshot, [str(p) for p in files]).save(output)
    typer.echo(
        f"{output}: {len(snapshot.chip_keys)} chips, {int((snapshot.channel_rate_hz > 0).sum())} channels with data, "
        f"{snapshot.covered_seconds:.0f} s of data, {packets} packets"
    )


@app.command()
def channels(
    files: Annotated[
        list[Path], typer.Argument(help="Files to judge (instead of --url).", exists=True, dir_okay=False)
    ] = [],  # noqa: B006
    url: Annotated[Optional[str], typer.Option(help="A running exporter, e.g. http://localhost:9767.")] = None,
    status: Annotated[
        Optional[str],
        typer.Option(
            help="Comma-separated channel statuses: noisy, silent, active, masked. "
            "(default: noisy,silent; with --format daq: noisy, as the DAQ masks noisy channels only)"
        ),
    ] = None,
    fmt: Annotated[
        ListFormat,
        typer.Option(
            "--format",
            help="json ({'io_group-io_channel-chip_id': [channels], 'meta': {...}}), csv, or daq (the DAQ's "
            "disabled list {'io_group-tile-chip_id': [channels], 'meta': {...}}, which --disabled-list reads back; "
            "it refuses the others). Each JSON form names its keys in meta.key_scheme.",
        ),
    ] = ListFormat.json,
    output: Annotated[
        Optional[Path], typer.Option("-o", "--output", help="Write here instead of standard output.")
    ] = None,
    geometry: Annotated[
        Optional[str], typer.Option(help="Pixel geometry YAML or packaged layout name, for files.")
    ] = None,
    window: Annotated[float, typer.Option(help="Sliding window in seconds of data time, for files.")] = 60.0,
    network: Annotated[list[str], typer.Option("--network", help=NETWORK_HELP)] = [],  # noqa: B006
    disabled_list: Annotated[list[str], typer.Option("--disabled-list", help=DISABLED_LIST_HELP)] = [],  # noqa: B006
) -> None:
    """List bad channels (io_group, io_channel, chip_id, channel_id) for the DAQ's channel mask."""
    import urllib.error
    import urllib.parse
    import urllib.request

    from larpix_dqm.exporter.detector.geometry import GeometryError, resolve_geometry
    from larpix_dqm.exporter.detector.runconfig import RunConfigError
    from larpix_dqm.exporter.monitor import Monitor
    from larpix_dqm.exporter.quality.channels import DEFAULT_STATUSES, channel_list, disabled_list_meta, format_channels
    from larpix_dqm.exporter.quality.status import ChannelStatus

    statuses = [s.strip() for s in status.split(",") if s.strip()] if status else list(DEFAULT_STATUSES[fmt.value])
    for name in statuses:
        try:
            ChannelStatus.from_label(name)
        except ValueError as err:
            _fail(f"--status {status}: {err}")
    if bool(url) == bool(files):
        _fail("give either --url of a running exporter or FILE arguments")
    if output is not None:
        _writable_file("-o", output)
    if url:
        query = urllib.parse.urlencode({"status": ",".join(statuses), "format": fmt.value})
        try:
            with urllib.request.urlopen(f"{url.rstrip('/')}/api/channels?{query}", timeout=30) as resp:
                body = resp.read()
        except (urllib.error.URLError, OSError) as err:
            _fail(f"{url}: {getattr(err, 'reason', err)}")
    else:
        window = _checked("window", window)
        try:
            monitor = Monitor(
                resolve_geometry(geometry),
                window=window,
                networks=network,
                disabled_lists=disabled_list,
            )
        except (GeometryError, RunConfigError) as err:
            _fail(str(err))
        errors = _collect_errors(monitor)
        for path in files:
            monitor.add_file(path)
        if errors:
            _fail("; ".join(errors))
        snapshot = monitor.update().snapshot
        try:
            meta = disabled_list_meta(snapshot, statuses, [str(p) for p in files])
            body = format_channels(channel_list(snapshot, statuses), fmt.value, meta)
        except ValueError as err:
            _fail(str(err))
    if output is not None:
        output.write_bytes(body)
    else:
        sys.stdout.write(body.decode())


@app.command()
def geometries() -> None:
    """List the packaged pixel layouts, which --geometry takes by name (with or without .yaml)."""
    from larpix_dqm.exporter.detector.geometry import GeometrySummary, load_geometry, packaged_layouts

    rows = [GeometrySummary.of(load_geometry(path)) for path in packaged_layouts()]
    width = max(len(row.name) for row in rows)
    typer.echo(f"{'name':<{width}}  tiles  chips  channels")
    for row in rows:
        typer.echo(f"{row.name:<{width}}  {row.tiles:>5}  {row.chips:>5}  {row.channels:>8}")


@app.command()
def mixin(
    output: Annotated[Path, typer.Option("-o", "--output", help="Folder to write the site files into.")],
    job_selector: Annotated[
        str,
        typer.Option(help="RE2 regex over the Prometheus job names that scrape the exporter (fully anchored)."),
    ] = ".*larpix.*",
    runbook_url: Annotated[
        str, typer.Option(help="URL of RUNBOOK.md as your browser opens it; alerts link <url>#<alert name>.")
    ] = DEFAULT_RUNBOOK_URL,
) -> None:
    """Write the alert rules, dashboards, runbook and example configs, for your job selector and runbook URL."""
    import re

    from larpix_dqm.exporter.mixin import MixinError, write_mixin
    from larpix_dqm.exporter.monitoring import MixinConfig

    try:
        re.compile(job_selector)
    except re.error as err:
        _fail(f"--job-selector {job_selector!r}: not a regular expression ({err})")
    if not runbook_url.startswith(("http://", "https://")):
        _fail(f"--runbook-url {runbook_url!r}: expected an http(s) URL")
    _writable_dir("-o", output)
    try:
        written = write_mixin(output, MixinConfig(job_regex=job_selector, runbook_url=runbook_url))
    except (MixinError, OSError) as err:
        _fail(f"-o {output}: {err}")
    typer.echo(f"wrote {len(written)} files to {output}", err=True)


runs_app = typer.Typer(rich_markup_mode=None)
app.add_typer(runs_app, name="runs")
REGISTRY_HELP = (
    "Run registry (SQLite) as 'serve --registry' writes it (default there: <checkpoint stem>.runs.sqlite beside "
    "the checkpoint). Repeat to merge the registries of several exporters into one view (read-only)."
)
RegistryOption = Annotated[
    list[Path], typer.Option("--registry", metavar="PATH", envvar=ENV_PREFIX + "REGISTRY", help=REGISTRY_HELP)
]
RunsFormatOption = Annotated[RunsFormat, typer.Option("--format", help="table (for people), json or csv.")]


def _registries(registry: list[Path]) -> list[Path]:
    """The registries to read: given, existing files; else one line naming the problem, exit 2."""
    if not registry:
        _fail("no registry: give --registry PATH (or LARPIX_DQM_REGISTRY)")
    for path in registry:
        if not path.is_file():
            _fail(f"--registry {path}: {'not a file' if path.exists() else 'no such file'}")
    return registry


def _read_runs(registry: list[Path]) -> list[dict]:
    from larpix_dqm.exporter.registry.reader import read_runs
    from larpix_dqm.exporter.registry.schema import RegistryError

    try:
        return read_runs(_registries(registry))
    except RegistryError as err:
        _fail(str(err))


@runs_app.callback(invoke_without_command=True)
def runs(ctx: typer.Context, registry: RegistryOption = [], fmt: RunsFormatOption = RunsFormat.table) -> None:  # noqa: B006
    """List the runs of a run registry, or of several merged: data-time span, packets, files, run mode, time
    in each status, certification. 'runs show RUN' shows one in full; 'runs certify' certifies one."""
    if ctx.invoked_subcommand is None:
        from larpix_dqm.exporter.registry.reader import format_runs

        typer.echo(format_runs(_read_runs(registry), fmt.value), nl=False)


@runs_app.command("show")
def runs_show(
    run: Annotated[str, typer.Argument(help="The run's name, as 'runs' lists it.")],
    registry: RegistryOption = [],  # noqa: B006
    fmt: RunsFormatOption = RunsFormat.table,
) -> None:
    """Show one run in full: files, span, packets, time in each status per io_group, the chips that failed each
    check and for how long, the bad channels at its end, configuration, reference and certification (csv: the
    failing chips)."""
    from larpix_dqm.exporter.registry.reader import find_run, format_run

    record = find_run(_read_runs(registry), run)
    if record is None:
        _fail(f"no run {run!r} in {', '.join(map(str, registry))}")
    typer.echo(format_run(record, fmt.value), nl=False)


@runs_app.command("certify")
def runs_certify(
    run: Annotated[str, typer.Argument(help="The run's name, as 'runs' lists it.")],
    verdict: Annotated[str, typer.Argument(metavar="good|bad", help="The shift crew's verdict.")],
    reason: Annotated[str, typer.Option(help="Why (kept with the certification).")],
    author: Annotated[str, typer.Option(help="Who certifies.")],
    io_group: Annotated[
        list[int], typer.Option("--io-group", help="io_group certified; repeatable (default: every one the run saw).")
    ] = [],  # noqa: B006
    registry: Annotated[
        Optional[Path], typer.Option("--registry", metavar="PATH", envvar=ENV_PREFIX + "REGISTRY", help="Run registry.")
    ] = None,
) -> None:
    """Certify a run good or bad for physics, per io_group, with a reason and an author. Kept apart from the
    automatic verdicts; the newest certification of an io_group stands, the older ones stay as its history."""
    from larpix_dqm.exporter.registry.reader import VERDICTS, certify
    from larpix_dqm.exporter.registry.schema import RegistryError

    if verdict not in VERDICTS:
        _fail(f"verdict {verdict!r}: expected good or bad")
    (path,) = _registries([registry] if registry is not None else [])
    try:
        certified = certify(path, run, io_group, verdict, reason, author)
    except (RegistryError, ValueError) as err:
        _fail(str(err))
    typer.echo(f"run {run}: {verdict} on io_group {', '.join(map(str, certified))} ({author}: {reason})", err=True)


#: numpy's advice of transparent huge pages on its large arrays, off unless the environment asks for it (numpy reads
#: the variable when imported, after this): where the kernel compacts memory to serve that advice (THP ``defrag``
#: set to ``madvise``, the Debian and Ubuntu default) a first start of 50 io_groups spent 3.4-5.4 s of system time
#: in page faults against 2.1-2.5 s, was ready in 15.6-17.3 s against 12.1-13.2 s and peaked 70-80 MB higher
#: (``bench/serve_large.py``); a 5 M-packet ``once`` was no slower without.
HUGE_PAGES_VARIABLE = "NUMPY_MADVISE_HUGEPAGE"


def run() -> None:
    """Entry point: usage errors are one line naming the option, exit 2."""
    os.environ.setdefault(HUGE_PAGES_VARIABLE, "0")
    # the interpreter's exit collects garbage over every object still alive before freeing them: after a `once` with
    # plots (the figures' artists) that took 0.16-0.21 s of the command's 2.5-2.9 s. Frozen at exit, the collector
    # skips them (every object is still freed; a reference cycle is left to the system); a caller that goes on in
    # this process keeps its collector as it was. Registered once however often this runs in one process.
    atexit.unregister(gc.freeze)
    atexit.register(gc.freeze)
    try:
        code = app(standalone_mode=False)
    except typer.TyperException as err:
        typer.echo(f"larpix-dqm: {err.format_message()}", err=True)
        sys.exit(err.exit_code)
    except typer.Abort:
        sys.exit(1)
    except BrokenPipeError:
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    run()
