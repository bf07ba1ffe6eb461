"""The ``larpix-dqm`` command line: serve, once, simulate, demo."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import tempfile
import threading
from pathlib import Path
from typing import Annotated, Optional

import typer

from exporter import __version__
from exporter.detector.geometry import GeometryError, load_geometry, packaged_layout
from exporter.detector.runconfig import RUN_MODES, RunConfig, RunConfigError
from exporter.quality.checks import ChecksConfigError
from exporter.quality.reference import ReferenceFileError
from exporter.runtime.checkpoint import CheckpointError
from exporter.settings import DEFAULT_PORT, ConfigError, build_settings
from exporter.simulate import Faults, SimulationConfig, Simulator, Truth, write_run
from exporter.web.auth import WebConfigError

app = typer.Typer(
    help="Live data-quality monitoring of LArPix pixel data, served to Prometheus.",
    no_args_is_help=True,
    add_completion=False,
)
log = logging.getLogger("larpix_dqm")


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def _fail(message: str) -> None:
    typer.echo(f"larpix-dqm: {message}", err=True)
    raise typer.Exit(2)


def _version(value: bool) -> None:
    if value:
        typer.echo(__version__)
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Live data-quality monitoring of LArPix pixel data, served to Prometheus."""


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
    "'channels --format daq' writes); its channels are masked: no silent/noisy verdict; repeatable."
)
RUN_MODE_HELP = (
    f"Run mode selecting the check thresholds: {', '.join(RUN_MODES)} (auto: from the data's trigger types)."
)

PLOTS_HELP = (
    "Plots to draw: class or image names or shell patterns (PixelMap, PixelMap_2_1, 'PixelMap_1_*'); "
    "repeatable, or several separated by commas. (default: all)"
)


def _plot_settings(
    output: Path | None, ext: str, plots: list[str], interval: float, plugin_dirs: list[str], latest: bool = True
):
    """PlotSettings from the plot options, None without -o; exits on options that need -o."""
    if output is None:
        if plots or plugin_dirs:
            _fail("--plots and --plugin-dir need -o PLOTDIR (where the images go)")
        return None
    from plots.engine import PlotSettings

    names = tuple(name for value in plots for name in value.replace(",", " ").split())
    return PlotSettings(str(output), ext, names, interval, tuple(plugin_dirs), latest)


@app.command()
def serve(
    inputs: Annotated[list[str], typer.Option("-i", "--input", help="Directory (or file) to watch; repeatable.")] = [],  # noqa: B006
    pattern: Annotated[
        Optional[str], typer.Option(help="Glob selecting files in each directory. (default: *.h5)")
    ] = None,
    port: Annotated[Optional[int], typer.Option(help=f"TCP port for /metrics. (default: {DEFAULT_PORT})")] = None,
    listen_address: Annotated[
        Optional[str],
        typer.Option(
            "--listen-address", "--web.listen-address", help="Address to listen on. (default: 0.0.0.0, all interfaces)"
        ),
    ] = None,
    interval: Annotated[
        Optional[float], typer.Option(help="Polling period in seconds, fractions allowed. (default: 2)")
    ] = None,
    flush_interval: Annotated[
        Optional[float],
        typer.Option(
            help="Seconds after which an idle file's per-file state is dropped; its counts stay. (default: 1800)"
        ),
    ] = None,
    geometry: Annotated[
        Optional[str],
        typer.Option(
            help="Pixel geometry YAML. (default: $PIXEL_GEOMETRY_PATH, else ./layout-2.4.0.yaml if present, else none)"
        ),
    ] = None,
    state_file: Annotated[
        Optional[str],
        typer.Option(
            help="Checkpoint file, rewritten atomically after every poll that counted something; '-' disables. "
            "(default: $LARPIX_DQM_STATE_DIR, else ~/.local/state/larpix-dqm, /state-<hash of the resolved inputs>.npz)"
        ),
    ] = None,
    window_checkpoint_interval: Annotated[
        Optional[float],
        typer.Option(
            help="Write the window arrays (the bulk of the checkpoint) at most every this many seconds, and on "
            "shutdown; counters and cursors go every poll. (default: 60)"
        ),
    ] = None,
    window: Annotated[
        Optional[float], typer.Option(help="Sliding window in seconds of data time. (default: 60)")
    ] = None,
    noisy_rate_hz: Annotated[
        Optional[float], typer.Option("--noisy-rate-hz", help="Rate above which a channel is noisy. (default: 10)")
    ] = None,
    false_alarm_probability: Annotated[
        Optional[float],
        typer.Option(
            "--false-alarm-probability",
            help="Probability of at least one false channel or chip verdict per evaluation. (default: 0.01)",
        ),
    ] = None,
    per_pixel: Annotated[
        Optional[bool],
        typer.Option(
            "--per-pixel/--no-per-pixel",
            help="Serve per-channel series on /metrics?per_pixel=1 (costly: 3 series per pixel). (default: off)",
        ),
    ] = None,
    output: Annotated[
        Optional[str],
        typer.Option(
            "-o",
            "--output",
            help="Folder for plot images, served on /plots/: <file stem>_dqm/<file stem>_<Plot><ext> and "
            "latest/<Plot><ext>. (default: no plots)",
        ),
    ] = None,
    ext: Annotated[Optional[str], typer.Option(help="Plot image format, as a file extension. (default: .png)")] = None,
    plots: Annotated[list[str], typer.Option("--plots", help=PLOTS_HELP)] = [],  # noqa: B006
    plot_interval: Annotated[
        Optional[float],
        typer.Option(help="Redraw plots at most every this many seconds (only when data came). (default: 30)"),
    ] = None,
    plugin_dir: Annotated[
        list[str], typer.Option("--plugin-dir", help="Folder with more plot plugins (*.py); repeatable.")
    ] = [],  # noqa: B006
    checks: Annotated[
        Optional[str],
        typer.Option(help="YAML file overriding check thresholds (schema in the README). (default: built-in)"),
    ] = None,
    reference: Annotated[
        Optional[str],
        typer.Option(help="Reference run (.npz from 'larpix-dqm baseline') to compare rates and pedestals with."),
    ] = None,
    web_config_file: Annotated[
        Optional[str],
        typer.Option(
            "--web.config.file",
            "--web-config-file",
            help="Prometheus exporter web config (tls_server_config, basic_auth_users). (default: plain HTTP, no auth)",
        ),
    ] = None,
    network: Annotated[list[str], typer.Option("--network", help=NETWORK_HELP)] = [],  # noqa: B006
    disabled_list: Annotated[list[str], typer.Option("--disabled-list", help=DISABLED_LIST_HELP)] = [],  # noqa: B006
    run_mode: Annotated[Optional[str], typer.Option("--run-mode", help=RUN_MODE_HELP + " (default: auto)")] = None,
    config: Annotated[
        Optional[str],
        typer.Option(help="YAML file with any of these options (keys as option names); command-line values win."),
    ] = None,
    verbose: Annotated[bool, typer.Option("-v", "--verbose", help="Debug logging.")] = False,
) -> None:
    """Watch LArPix data directories and serve data-quality metrics on /metrics (and plots with -o)."""
    from exporter.runtime.service import Service
    from plots.engine import PlotConfigError

    _setup_logging(verbose)
    try:
        settings = build_settings(
            config,
            dict(
                inputs=inputs,
                pattern=pattern,
                port=port,
                listen_address=listen_address,
                interval=interval,
                flush_interval=flush_interval,
                geometry=geometry,
                state_file=state_file,
                window_checkpoint_interval=window_checkpoint_interval,
                window=window,
                noisy_rate_hz=noisy_rate_hz,
                false_alarm_probability=false_alarm_probability,
                per_pixel=per_pixel,
                checks=checks,
                reference=reference,
                web_config_file=web_config_file,
                output=output,
                ext=ext,
                plots=plots,
                plot_interval=plot_interval,
                plugin_dirs=plugin_dir,
                networks=network,
                disabled_lists=disabled_list,
                run_mode=run_mode,
            ),
        )
        if not settings.inputs:
            _fail("no input: give -i DIR (or 'inputs' in the config file)")
        plot_settings = _plot_settings(
            Path(settings.output) if settings.output else None,
            settings.ext,
            settings.plots,
            settings.plot_interval,
            settings.plugin_dirs,
        )
        service = Service(settings, plot_settings)
    except (
        ConfigError,
        GeometryError,
        CheckpointError,
        PlotConfigError,
        ChecksConfigError,
        ReferenceFileError,
        WebConfigError,
        RunConfigError,
    ) as err:
        _fail(str(err))
    except OSError as err:
        _fail(f"cannot listen on {listen_address or '0.0.0.0'}:{port or DEFAULT_PORT}: {err.strerror or err}")
    service.start()
    typer.echo(f"larpix-dqm {__version__}: serving {service.url}", err=True)
    service.wait()
    # Checkpoint written, server stopped: exit now. Tearing down the interpreter while an abandoned
    # drawing still holds the GIL could take longer than the 10 s promised for SIGTERM.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


@app.command()
def once(
    file: Annotated[Path, typer.Argument(help="A packet or raw PACMAN HDF5 file.", exists=True, dir_okay=False)],
    output: Annotated[
        Optional[Path],
        typer.Option(
            "-o", "--output", help="Directory for summary.json, metrics.prom and the plots (<file stem>_dqm/)."
        ),
    ] = None,
    geometry: Annotated[
        Optional[str],
        typer.Option(help="Pixel geometry YAML. (default: $PIXEL_GEOMETRY_PATH, else ./layout-2.4.0.yaml if present)"),
    ] = None,
    window: Annotated[
        float, typer.Option(help="Sliding window in seconds of data time (statistics and pixel maps cover its end).")
    ] = 60.0,
    ext: Annotated[str, typer.Option(help="Plot image format, as a file extension.")] = ".png",
    plots: Annotated[list[str], typer.Option("--plots", help=PLOTS_HELP)] = [],  # noqa: B006
    plugin_dir: Annotated[
        list[str], typer.Option("--plugin-dir", help="Folder with more plot plugins (*.py); repeatable.")
    ] = [],  # noqa: B006
    no_plots: Annotated[bool, typer.Option("--no-plots", help="Write the summary only.")] = False,
    network: Annotated[list[str], typer.Option("--network", help=NETWORK_HELP)] = [],  # noqa: B006
    disabled_list: Annotated[list[str], typer.Option("--disabled-list", help=DISABLED_LIST_HELP)] = [],  # noqa: B006
    run_mode: Annotated[str, typer.Option("--run-mode", help=RUN_MODE_HELP)] = "auto",
) -> None:
    """Process one whole file: print its summary; with -o also write it, its metrics and its plots.

    A packet file's own chip configurations (``configs``) mask channels without further options.
    """
    from exporter.runtime.service import resolve_geometry
    from plots.engine import PlotConfigError

    _setup_logging(False)
    try:
        geo = resolve_geometry(geometry)
        run_config = RunConfig.load(network, disabled_list, run_mode)
        settings = None if no_plots else _plot_settings(output, ext, plots, 0.0, plugin_dir, latest=False)
    except (GeometryError, PlotConfigError, RunConfigError) as err:
        _fail(str(err))
    try:
        result, written = _once_with_progress(file, geo, window, settings, run_config)
    except PlotConfigError as err:
        _fail(str(err))
    summary, metrics_text = result.summary()
    if summary["read_errors"]:
        _fail(f"{file}: {'; '.join(summary['read_errors'])}")
    if output is not None:
        output.mkdir(parents=True, exist_ok=True)
        (output / "summary.json").write_text(json.dumps(summary, indent=1))
        (output / "metrics.prom").write_text(metrics_text)
    if written is not None:
        images, failures = written
        typer.echo(f"wrote {images} plot image(s) to {output / (file.stem + '_dqm')}", err=True)
        for failure in failures:
            typer.echo(f"larpix-dqm: plot {failure}", err=True)
    typer.echo(json.dumps(summary["totals"], indent=1))


def _once_with_progress(file: Path, geo, window: float, settings, run_config: RunConfig):
    """Read the file (progress bar on a terminal), then draw its plots; returns (result, (images, failures))."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from exporter.quality.accumulator import Accumulator
    from exporter.runtime.once import file_rows, process_file
    from plots.engine import PlotEngine

    engine = PlotEngine(settings, geo) if settings is not None else None
    console = Console(stderr=True)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, disable=not console.is_terminal) as progress:
        reading = progress.add_task(f"reading {file.name} (rows)", total=file_rows(str(file)) or None)
        on_chunk = None
        if engine is not None:
            empty = Accumulator(geometry=geo).snapshot()  # the plots' update() reads packets, not statistics
            key = (str(file), 0)

            def on_chunk(chunk) -> None:
                engine.update(key, chunk.packets, empty)

        result = process_file(
            str(file), geo, window, on_chunk, lambda rows: progress.update(reading, completed=rows), run_config
        )
        if engine is None or result.errors:  # nothing to draw, or a file that could not be read
            return result, None
        drawing = progress.add_task("drawing plots (images)", total=None)
        images = engine.draw(result.snapshot, between=lambda: progress.advance(drawing))
    failures = [f"{name} failed: {h.last_error}" for name, h in engine.health.items() if h.failures]
    failures += [f"{name} skipped: {reason}" for name, reason in engine.skipped.items()]
    failures += [f"plugin {where} skipped: {error}" for where, error in engine.catalog.errors.items()]
    return result, (images, failures)


@app.command()
def simulate(
    outdir: Annotated[Path, typer.Argument(help="Directory to write the run into.")],
    fmt: Annotated[
        str,
        typer.Option("--format", help="raw (PACMAN messages, SWMR, as the DAQ writes) or packets (hdf5format 2.4)."),
    ] = "raw",
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
        Optional[str], typer.Option(help="Geometry to simulate. (default: the packaged 16-tile module layout)")
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
    words_per_message: Annotated[int, typer.Option(help="PACMAN words per message (2023 data: 1-6).")] = 6,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    truth: Annotated[
        Optional[Path], typer.Option(help="Write the exact counts of what was written to this JSON file.")
    ] = None,
) -> None:
    """Write a simulated live LArPix run (appends every second), optionally with faults."""
    try:
        geo = load_geometry(geometry or packaged_layout())
    except GeometryError as err:
        _fail(str(err))
    faults = Faults(
        silent_chips=_parse_ids(silent_chip, 3, "--silent-chip"),
        noisy_channels=_parse_ids(noisy_channel, 4, "--noisy-channel"),
        noisy_rate_hz=noisy_rate_hz,
        parity_error_fraction=parity_error_fraction,
        fifo_full_chips=_parse_ids(fifo_full_chip, 3, "--fifo-full-chip"),
    )
    try:
        sim = Simulator(
            geo,
            SimulationConfig(
                hit_rate_hz=rate_hz,
                periodic_trigger_hz=periodic_trigger_hz,
                words_per_message=words_per_message,
                seed=seed,
            ),
            faults,
        )
    except ValueError as err:
        _fail(str(err))
    counts = Truth() if truth else None
    if fmt not in ("raw", "packets"):
        _fail(f"--format {fmt!r}: use raw or packets")
    stop = threading.Event()  # SIGINT or SIGTERM (docker stop): finish the second, close the file
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    paths = write_run(sim, outdir, fmt, seconds, not fast, start_time, file_seconds, stop=stop, truth=counts)
    if truth and counts is not None:
        truth.write_text(json.dumps(counts.to_dict()))
    typer.echo(f"wrote {len(paths)} file(s) to {outdir}", err=True)


@app.command()
def demo(
    port: Annotated[int, typer.Option(help="TCP port for /metrics.")] = DEFAULT_PORT,
    listen_address: Annotated[str, typer.Option("--listen-address", help="Address to listen on.")] = "127.0.0.1",
    fmt: Annotated[str, typer.Option("--format", help="Simulated file format: raw or packets.")] = "raw",
    seconds: Annotated[int, typer.Option(help="Stop after this many seconds; 0 runs until Ctrl-C.")] = 0,
) -> None:
    """Simulate a live module run (a silent chip, a noisy channel, FIFO flags) and serve its metrics and plots."""
    from exporter.runtime.service import Service
    from exporter.settings import Settings

    _setup_logging(False)
    workdir = Path(tempfile.mkdtemp(prefix="larpix-dqm-demo-"))
    geo_path = str(packaged_layout())
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
    stop = threading.Event()
    writer = threading.Thread(target=write_run, args=(sim, workdir / "data", fmt), kwargs={"stop": stop}, daemon=True)
    writer.start()
    settings = Settings(
        inputs=[str(workdir / "data")],
        port=port,
        listen_address=listen_address,
        interval=1.0,
        geometry=geo_path,
        state_file=str(workdir / "state.npz"),
    )
    try:
        service = Service(settings, _plot_settings(workdir / "plots", ".png", [], 10.0, []))
    except OSError as err:
        _fail(f"cannot listen on {listen_address}:{port}: {err.strerror or err} (use --port)")
    service.start()
    typer.echo(
        f"larpix-dqm demo: simulated run in {workdir}\nmetrics: {service.url}\nstatus page: {service.url.rsplit('/', 1)[0]}/\nCtrl-C to stop."
    )
    if seconds:
        threading.Timer(seconds, os.kill, (os.getpid(), signal.SIGINT)).start()
    try:
        service.wait()
    finally:
        stop.set()
        writer.join(5)


@app.command()
def baseline(
    files: Annotated[
        list[Path],
        typer.Argument(
            help="Files of one continuous reference run (pedestal or cosmics).", exists=True, dir_okay=False
        ),
    ],
    output: Annotated[Path, typer.Option("-o", "--output", help="Reference file to write (.npz).")],
    geometry: Annotated[
        Optional[str],
        typer.Option(help="Pixel geometry YAML. (default: $PIXEL_GEOMETRY_PATH, else ./layout-2.4.0.yaml if present)"),
    ] = None,
) -> None:
    """Make a reference (.npz: per-channel rate, pedestal mean and spread) for serve --reference."""
    from exporter.monitor import Monitor
    from exporter.quality.reference import Reference
    from exporter.runtime.service import resolve_geometry

    _setup_logging(False)
    try:
        monitor = Monitor(resolve_geometry(geometry), window=1e9, window_bins=1)  # one window over the whole run
    except GeometryError as err:
        _fail(str(err))
    errors: list[str] = []
    monitor.add_log_handler(lambda record: record["level"] == "error" and errors.append(record["message"]))
    packets = sum(monitor.add_file(path) for path in files)
    if errors:
        _fail("; ".join(errors))
    snap = monitor.update().snapshot
    if not snap.chip_packets.sum():
        _fail(f"no data packets in {', '.join(map(str, files))}: nothing to make a reference from")
    Reference.from_snapshot(snap, [str(p) for p in files]).save(output)
    typer.echo(
        f"{output}: {len(snap.chip_keys)} chips, {int((snap.channel_rate_hz > 0).sum())} channels with data, "
        f"{snap.covered_seconds:.0f} s of data, {packets} packets"
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
        str,
        typer.Option(
            "--format",
            help="json ({'io_group-io_channel-chip_id': [channels]}), csv, or daq (the DAQ's disabled list "
            "{'io_group-tile-chip_id': [channels], 'meta': {...}}, which --disabled-list reads back).",
        ),
    ] = "json",
    output: Annotated[
        Optional[Path], typer.Option("-o", "--output", help="Write here instead of standard output.")
    ] = None,
    geometry: Annotated[Optional[str], typer.Option(help="Pixel geometry YAML, for files.")] = None,
    window: Annotated[float, typer.Option(help="Sliding window in seconds of data time, for files.")] = 60.0,
    network: Annotated[list[str], typer.Option("--network", help=NETWORK_HELP)] = [],  # noqa: B006
    disabled_list: Annotated[list[str], typer.Option("--disabled-list", help=DISABLED_LIST_HELP)] = [],  # noqa: B006
) -> None:
    """List bad channels (io_group, io_channel, chip_id, channel_id) for the DAQ's channel mask."""
    import urllib.error
    import urllib.parse
    import urllib.request

    from exporter.monitor import Monitor, channel_list
    from exporter.quality.channels import CHANNEL_MEDIA_TYPES, DEFAULT_STATUSES, disabled_list_meta, format_channels
    from exporter.runtime.service import resolve_geometry

    if fmt not in CHANNEL_MEDIA_TYPES:
        _fail(f"--format {fmt!r}: use {', '.join(CHANNEL_MEDIA_TYPES)}")
    statuses = [s.strip() for s in status.split(",") if s.strip()] if status else list(DEFAULT_STATUSES[fmt])
    if bool(url) == bool(files):
        _fail("give either --url of a running exporter or FILE arguments")
    if url:
        query = urllib.parse.urlencode({"status": ",".join(statuses), "format": fmt})
        try:
            with urllib.request.urlopen(f"{url.rstrip('/')}/api/channels?{query}", timeout=30) as resp:
                body = resp.read()
        except (urllib.error.URLError, OSError) as err:
            _fail(f"{url}: {getattr(err, 'reason', err)}")
    else:
        try:
            monitor = Monitor(resolve_geometry(geometry), window=window, networks=network, disabled_lists=disabled_list)
        except (GeometryError, RunConfigError) as err:
            _fail(str(err))
        for path in files:
            monitor.add_file(path)
        snap = monitor.update().snapshot
        try:
            meta = disabled_list_meta(snap, statuses, [str(p) for p in files]) if fmt == "daq" else None
            body = format_channels(channel_list(snap, statuses), fmt, meta)
        except ValueError as err:
            _fail(str(err))
    if output is not None:
        output.write_bytes(body)
    else:
        sys.stdout.write(body.decode())


def run() -> None:
    """Entry point."""
    try:
        app()
    except BrokenPipeError:
        sys.exit(1)


if __name__ == "__main__":
    run()
