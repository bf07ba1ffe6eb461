"""What the HTTP server shows about plots: the gallery on ``/``, the ``/plots/`` listings, metrics.

Takes any object with ``store`` (a ``PlotStore``) and ``status()`` (a ``PlotWorker``); never
imports matplotlib, so the exporter starts fast when plots are off.
"""

from __future__ import annotations

import html
import math
import time
from pathlib import Path
from typing import Protocol
from urllib.parse import quote

from larpix_dqm.exporter.metrics.exposition import Family
from larpix_dqm.plots.store import BROWSER_IMAGES, ERROR_REASONS, PlotFile, PlotStore

#: Gallery order: the whole anode first, then the pixel maps, then the rest by name.
_FIRST = ("AnodeOverview", "PixelMap")

#: Marks each gallery image loaded or broken once the browser has tried it; a broken one is outlined red and
#: its caption says so, rather than showing an empty frame.
_IMAGE_STATE_SCRIPT = """<script>
for (const img of document.querySelectorAll('.gallery img')) {
  const mark = () => {
    img.dataset.state = img.naturalWidth > 0 ? 'loaded' : 'broken';
    if (img.naturalWidth === 0) { img.closest('figure').querySelector('figcaption').append(' (not loaded)'); }
  };
  if (img.complete) { mark(); } else { img.addEventListener('load', mark); img.addEventListener('error', mark); }
}
</script>"""


class PlotSource(Protocol):
    """What the web pages need from the plot manager."""

    @property
    def store(self) -> PlotStore: ...

    def status(self) -> dict: ...

    def draw_now(self, timeout: float) -> bool: ...


def _order(plot: PlotFile) -> tuple[int, str]:
    for rank, prefix in enumerate(_FIRST):
        if plot.plot.startswith(prefix):
            return rank, plot.plot
    return len(_FIRST), plot.plot


def _when(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "never"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(seconds))


def _problems(status: dict) -> list[str]:
    out = []
    for name, plugin in sorted(status["plugins"].items()):
        if plugin["last_error"]:
            state = "disabled" if plugin["disabled"] else f"{plugin['failures']} failures"
            out.append(f"{name} ({state}): {plugin['last_error']}")
    out += [f"{name}: {reason}" for name, reason in sorted(status["skipped"].items())]
    out += [f"{where}: {error}" for where, error in sorted(status["discovery_errors"].items())]
    if status.get("write_error"):
        out.append(status["write_error"])
    if status.get("last_exit"):
        out.append(f"{status['last_exit']}; restarted {status['restarts']} times")
    return out


def status_line(status: dict) -> str:
    """One sentence about the last draw cycle."""
    seconds = status["last_cycle_seconds"]
    took = f", took {seconds:.1f} s" if math.isfinite(seconds) else ""
    dropped = f"; {status['dropped_packets']} packets skipped by plotting" if status["dropped_packets"] else ""
    return (
        f"{len(status['plugins'])} plots, redrawn at most every {status['interval']:g} s; "
        f"last drawn {_when(status['last_cycle_wall'])}{took}{dropped}."
    )


def gallery_html(source: PlotSource | None) -> str:
    """The landing page's section with the newest image of every plot."""
    if source is None:
        return "<h2>Plots</h2><p>Plots are off: start <code>serve</code> with <code>-o PLOTDIR</code>.</p>"
    status = source.status()
    images = sorted((p for p in source.store.drawn() if p.path.suffix in BROWSER_IMAGES), key=_order)
    figures = "".join(
        f"<figure><a href='/plots/{quote(p.name)}'><img src='/plots/{quote(p.name)}?t={int(p.mtime)}' "
        f"alt='{html.escape(p.plot)}'></a><figcaption>{html.escape(p.plot)} &middot; {_when(p.mtime)}</figcaption></figure>"
        for p in images
    )
    problems = "".join(f"<li>{html.escape(p)}</li>" for p in _problems(status))
    return (
        f"<h2>Plots</h2><p>{html.escape(status_line(status))} <a href='/plots/'>All plots</a> {_draw_button('/')}</p>"
        + (f"<p>Problems:</p><ul class='problems'>{problems}</ul>" if problems else "")
        + (f"<div class='gallery'>{figures}</div>" if figures else "<p>Not drawn yet (plots follow the data).</p>")
        + _IMAGE_STATE_SCRIPT
    )


GALLERY_CSS = (
    ".gallery{display:flex;flex-wrap:wrap;gap:1em}.gallery figure{margin:0;width:30em;max-width:100%}"
    ".gallery img{width:100%;border:1px solid #ccc}.gallery figcaption{font-size:90%;color:#444}"
    ".problems{color:#a00}.gallery img[data-state=broken]{border-color:#a00;min-height:4em}"
)


def _draw_button(then: str) -> str:
    """A button that asks for a drawing cycle now and comes back to ``then`` once it is drawn."""
    return f"<form method='post' action='/-/draw?then={quote(then)}' style='display:inline'><button>Draw now</button></form>"


def _page(title: str, body: str) -> str:
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>body{{font-family:sans-serif;margin:2em}}td{{padding-right:1.5em}}{GALLERY_CSS}</style></head>"
        f"<body><p><a href='/'>larpix-dqm</a> / <a href='/plots/'>plots</a></p><h1>{html.escape(title)}</h1>{body}</body></html>"
    )


def _table(files: list[PlotFile], prefix: str) -> str:
    rows = "".join(
        f"<tr><td><a href='{prefix}{quote(f.name)}'>{html.escape(f.name)}</a></td>"
        f"<td>{f.size:,} bytes</td><td>{_when(f.mtime)}</td></tr>"
        for f in files
    )
    return f"<table>{rows}</table>" if rows else "<p>none yet</p>"


def listing_html(source: PlotSource) -> str:
    """``/plots/``: the newest image of each plot, the per-file folders, problems."""
    store = source.store
    status = source.status()
    runs = "".join(
        f"<li><a href='/plots/{quote(r.name)}/'>{html.escape(r.name)}</a> ({_when(r.mtime)})</li>" for r in store.runs()
    )
    problems = "".join(f"<li>{html.escape(p)}</li>" for p in _problems(status))
    return _page(
        "plots",
        f"<p>{html.escape(status_line(status))} {_draw_button('/plots/')}</p>"
        + (f"<ul class='problems'>{problems}</ul>" if problems else "")
        + "<h2>Newest (drawn since the exporter started)</h2>"
        + _table(sorted(store.drawn(), key=_order), "/plots/")
        + "<h2>Per input file (newest first)</h2>"
        + (f"<ul>{runs}</ul>" if runs else "<p>none yet</p>"),
    )


def folder_html(source: PlotSource, folder: Path) -> str:
    """``/plots/<stem>_dqm/``: the images drawn for one input file."""
    return _page(folder.name, _table(source.store.files(folder), f"/plots/{quote(folder.name)}/"))


def plot_families(source: PlotSource) -> list[Family]:
    """``larpix_exporter_plot_*`` families: drawing time, renders and errors (by reason) per plot, skipped packets."""
    status = source.status()
    names = sorted(status["plugins"])
    plugins = [status["plugins"][n] for n in names]
    last = status["last_cycle_seconds"]
    return [
        Family("larpix_exporter_plot_cycle_duration_seconds", "gauge", "Time the last plot drawing cycle took.").add(
            (), [()] if math.isfinite(last) else [], [last] if math.isfinite(last) else []
        ),
        Family("larpix_exporter_plot_cycles", "counter", "Plot drawing cycles completed.").add(
            (), [()], [status["cycles"]]
        ),
        Family("larpix_exporter_plot_renders", "counter", "Images written, by plot class.").add(
            ("plot",), [(n,) for n in names], [p["renders"] for p in plugins]
        ),
        Family(
            "larpix_exporter_plot_errors",
            "counter",
            "Images not drawn (reason draw: the plugin raised) or not written (write_*: by errno), by plot class.",
        ).add(
            ("plot", "reason"),
            [(n, reason) for n in names for reason in ERROR_REASONS],
            [_errors(p, reason) for p in plugins for reason in ERROR_REASONS],
        ),
        Family(
            "larpix_exporter_plot_dropped_packets",
            "counter",
            "Packets the plots did not get because drawing fell behind ingest.",
        ).add((), [()], [status["dropped_packets"]]),
        Family(
            "larpix_exporter_plot_process_restarts",
            "counter",
            "Times the drawing process died and was started again.",
        ).add((), [()], [status.get("restarts", 0)]),
    ]


def _errors(plugin: dict, reason: str) -> int:
    """A plugin's errors of one ``reason`` (``ERROR_REASONS``)."""
    return plugin["failures"] if reason == "draw" else plugin.get("write_errors", {}).get(reason, 0)


def runs_html(current: str | None, recent: list[str]) -> str:
    """The status page's runs line: the current run and the last ones, each linked to its record on /api/runs."""

    def link(run: str) -> str:
        return f"<a href='/api/runs?run={quote(run, safe='')}&amp;format=json'>{html.escape(run)}</a>"

    last = [run for run in recent if run != current]
    parts = [f"current run {link(current) if current is not None else 'none yet'}"]
    if last:
        parts.append("last runs " + ", ".join(link(run) for run in last))
    parts.append("<a href='/api/runs?format=json'>all runs (json)</a>")
    parts.append("<a href='/api/runs?format=csv'>(csv)</a>")
    return f"<p class='runs'>{' &middot; '.join(parts)}</p>"
