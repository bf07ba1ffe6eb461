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

from . import __version__
from .config import DEFAULT_PORT, ConfigError, build_settings
from .geometry import GeometryError, load_geometry, packaged_layout
from .simulate import Faults, SimulationConfig, Simulator, Truth, write_run

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
    window: Annotated[
        Optional[float], typer.Option(help="Sliding window in seconds of data time. (default: 60)")
    ] = None,
    noisy_rate_hz: Annotated[
        Optional[float], typer.Option("--noisy-rate-hz", help="Rate above which a channel is noisy. (default: 10)")
    ] = None,
    per_pixel: Annotated[
        Optional[bool],
        typer.Option(
            "--per-pixel/--no-per-pixel",
            help="Serve per-channel series on /metrics?per_pixel=1 (costly: 3 series per pixel). (default: off)",
        ),
    ] = None,
    config: Annotated[
        Optional[str],
        typer.Option(help="YAML file with any of these options (keys as option names); command-line values win."),
    ] = None,
    verbose: Annotated[bool, typer.Option("-v", "--verbose", help="Debug logging.")] = False,
) -> None:
    """Watch LArPix data directories and serve data-quality metrics on /metrics."""
    from .service import Service

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
                window=window,
                noisy_rate_hz=noisy_rate_hz,
                per_pixel=per_pixel,
            ),
        )
        if not settings.inputs:
            _fail("no input: give -i DIR (or 'inputs' in the config file)")
        service = Service(settings)
    except (ConfigError, GeometryError) as err:
        _fail(str(err))
    except OSError as err:
        _fail(f"cannot listen on {listen_address or '0.0.0.0'}:{port or DEFAULT_PORT}: {err.strerror or err}")
    service.start()
    typer.echo(f"larpix-dqm {__version__}: serving {service.url}", err=True)
    service.wait()


@app.command()
def once(
    file: Annotated[Path, typer.Argument(help="A packet or raw PACMAN HDF5 file.", exists=True, dir_okay=False)],
    output: Annotated[
        Optional[Path], typer.Option("-o", "--output", help="Directory for summary.json and metrics.prom.")
    ] = None,
    geometry: Annotated[
        Optional[str],
        typer.Option(help="Pixel geometry YAML. (default: $PIXEL_GEOMETRY_PATH, else ./layout-2.4.0.yaml if present)"),
    ] = None,
    window: Annotated[float, typer.Option(help="Sliding window in seconds of data time.")] = 60.0,
) -> None:
    """Process one whole file and print (and optionally write) its data-quality summary."""
    from .summary import summarize_file

    _setup_logging(False)
    try:
        summary, metrics_text = summarize_file(str(file), geometry, window)
    except GeometryError as err:
        _fail(str(err))
    if summary["read_errors"]:
        _fail(f"{file}: {'; '.join(summary['read_errors'])}")
    if output is not None:
        output.mkdir(parents=True, exist_ok=True)
        (output / "summary.json").write_text(json.dumps(summary, indent=1))
        (output / "metrics.prom").write_text(metrics_text)
    typer.echo(json.dumps(summary["totals"], indent=1))


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
    rate_hz: Annotated[float, typer.Option(help="Mean hit rate per channel (Poisson).")] = 0.5,
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
            geo, SimulationConfig(hit_rate_hz=rate_hz, words_per_message=words_per_message, seed=seed), faults
        )
    except ValueError as err:
        _fail(str(err))
    counts = Truth() if truth else None
    if fmt not in ("raw", "packets"):
        _fail(f"--format {fmt!r}: use raw or packets")
    try:
        paths = write_run(sim, outdir, fmt, seconds, not fast, start_time, file_seconds, truth=counts)
    except KeyboardInterrupt:
        paths = []
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
    """Simulate a live run (with a silent chip and a noisy channel) and serve its metrics."""
    from .config import Settings
    from .service import Service

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
    writer = threading.Thread(target=write_run, args=(sim, workdir, fmt), kwargs={"stop": stop}, daemon=True)
    writer.start()
    try:
        service = Service(
            Settings(inputs=[str(workdir)], port=port, listen_address=listen_address, interval=1.0, geometry=geo_path)
        )
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


def run() -> None:
    """Entry point."""
    try:
        app()
    except BrokenPipeError:
        sys.exit(1)


if __name__ == "__main__":
    run()
