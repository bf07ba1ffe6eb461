"""The status page's first section: what is wrong now, worst first.

io_groups, tiles and chips whose checks are not ok, each chip with its failing checks, their values
and the range they left, a link to the chip's pixel map (``PixelMap_<io_group>_<tile in io_group>``
on ``/plots/``) and to the RUNBOOK section of its status (under ``serve --runbook-url``); and, above it,
what the geometry cannot show (without one, chips that never send data).
"""

from __future__ import annotations

import html
import math

import numpy as np

from larpix_dqm.exporter.detector.geometry import Geometry, unseen_chips_warning
from larpix_dqm.exporter.quality.checks import Check
from larpix_dqm.exporter.quality.evaluation import Evaluation
from larpix_dqm.exporter.quality.status import CheckStatus

#: Chip rows shown at most; the rest are counted (a broken io_group has hundreds of chips).
MAX_CHIP_ROWS = 100
PROBLEMS_CSS = (
    ".wrong-now td,.wrong-now th{padding:0.15em 0.8em 0.15em 0;text-align:left;vertical-align:top}"
    ".status-error{color:#b00020;font-weight:bold}.status-warning{color:#a05a00;font-weight:bold}"
    ".status-other{color:#555;font-weight:bold}.allok{color:#1b7f1b;font-weight:bold}"
    ".unseen{border-left:4px solid #a05a00;padding-left:0.6em}"
)


def _rank(status: int) -> int:
    """Sort key: error first, then warning, then any other non-ok status (e.g. unknown)."""
    return {int(CheckStatus.ERROR): 0, int(CheckStatus.WARNING): 1}.get(int(status), 2)


def _status(status: int) -> str:
    name = CheckStatus(int(status)).name.lower()
    css = name if name in ("error", "warning") else "other"
    return f"<span class='status-{css}'>{name}</span>"


def _number(value: float) -> str:
    return "no data" if not math.isfinite(value) else f"{value:.3g}"


def _verdict(check: Check, value: float, status: int) -> str:
    """``hit_rate 0 Hz (error: outside 0.01 to 20)``."""
    low, high = check.error if status == CheckStatus.ERROR else check.warning
    unit = f" {check.unit}" if check.unit not in ("", "ratio") else ""
    limits = f"outside {_number(low)} to {_number(high)}" if math.isfinite(low) else f"above {_number(high)}"
    return (
        f"<b>{html.escape(check.name)}</b> {_number(value)}{html.escape(unit)} "
        f"({CheckStatus(int(status)).name.lower()}: {limits})"
    )


def _runbook(runbook_url: str, status: int) -> str:
    anchor = {int(CheckStatus.ERROR): "larpixcheckerror", int(CheckStatus.WARNING): "larpixcheckwarning"}
    target = anchor.get(int(status), "data-quality-checks")
    return f"<a href='{html.escape(runbook_url)}#{target}'>runbook</a>"


def _pixel_maps(evaluation: Evaluation) -> dict[int, str]:
    """Geometry tile number -> its pixel-map image name (tiles numbered 1.. within their io_group)."""
    snapshot = evaluation.snapshot
    names: dict[int, str] = {}
    mapped = snapshot.chip_tiles >= 0
    for group in np.unique(snapshot.chip_keys[mapped, 0]).tolist():
        tiles = np.unique(snapshot.chip_tiles[mapped & (snapshot.chip_keys[:, 0] == group)]).tolist()
        names.update({tile: f"PixelMap_{group}_{i + 1}" for i, tile in enumerate(tiles)})
    return names


def geometry_notice_html(geometry: Geometry | None) -> str:
    """A notice for the status page when the geometry cannot show chips that never send data; else nothing."""
    unseen = unseen_chips_warning(geometry)
    return f"<p class='unseen'>{html.escape(unseen[0].upper() + unseen[1:])}.</p>" if unseen else ""


def problems_html(evaluation: Evaluation, runbook_url: str, plots: bool) -> str:
    """The 'what is wrong now' section; ``plots`` says whether pixel maps are served on /plots/."""
    snapshot, r = evaluation.snapshot, evaluation.results
    groups = [g for g in snapshot.io_groups.tolist() if r.io_group_status[g] != CheckStatus.OK]
    tiles = [(int(t), int(s)) for t, s in zip(r.tiles.tolist(), r.tile_status.tolist()) if s != CheckStatus.OK]
    chips = np.flatnonzero(r.chip_worst != CheckStatus.OK)
    if not groups and not tiles and not len(chips):
        return "<h2>What is wrong now</h2><p class='allok'>Nothing: every check of every chip and io_group is ok.</p>"
    out = ["<h2>What is wrong now</h2><div class='wrong-now'>"]
    if groups:
        rows = []
        for g in sorted(groups, key=lambda g: (_rank(int(r.io_group_status[g])), g)):
            own = [
                _verdict(c, float(r.group_values[i, g]), int(r.group_status[i, g]))
                for i, c in enumerate(r.group_checks)
                if r.group_status[i, g] != CheckStatus.OK
            ]
            bad = int(((snapshot.chip_keys[:, 0] == g) & (r.chip_worst != CheckStatus.OK)).sum())
            rows.append(
                f"<tr><td>io_group {g}</td><td>{_status(r.io_group_status[g])}</td>"
                f"<td>{'; '.join(own) or 'its own checks ok'}; {bad} chip(s) not ok</td>"
                f"<td>{_runbook(runbook_url, r.io_group_status[g])}</td></tr>"
            )
        out.append(f"<h3>io_groups</h3><table>{''.join(rows)}</table>")
    if tiles:
        rows = [
            f"<tr><td>tile {t}</td><td>{_status(s)}</td></tr>"
            for t, s in sorted(tiles, key=lambda x: (_rank(x[1]), x[0]))
        ]
        out.append(f"<h3>Tiles</h3><table>{''.join(rows)}</table>")
    if len(chips):
        maps = _pixel_maps(evaluation)

        def order(row: int) -> tuple:
            failing = int((r.chip_status[:, row] != CheckStatus.OK).sum())
            return (_rank(r.chip_worst[row]), -failing, tuple(snapshot.chip_keys[row].tolist()))

        rows = []
        for row in sorted(chips.tolist(), key=order)[:MAX_CHIP_ROWS]:
            key = "-".join(str(int(k)) for k in snapshot.chip_keys[row])
            tile = int(snapshot.chip_tiles[row])
            verdicts = [
                _verdict(c, float(r.chip_values[i, row]), int(r.chip_status[i, row]))
                for i, c in sorted(enumerate(r.chip_checks), key=lambda ic: _rank(r.chip_status[ic[0], row]))
                if r.chip_status[i, row] != CheckStatus.OK
            ]
            pixel_map = maps.get(tile)
            link = (
                f"<a href='/plots/{pixel_map}.png'>{pixel_map}</a>"
                if plots and pixel_map
                else html.escape(pixel_map or "")
            )
            rows.append(
                f"<tr><td>chip {key}</td><td>{'tile ' + str(tile) if tile >= 0 else ''}</td>"
                f"<td>{_status(r.chip_worst[row])}</td><td>{'; '.join(verdicts)}</td><td>{link}</td>"
                f"<td>{_runbook(runbook_url, r.chip_worst[row])}</td></tr>"
            )
        more = len(chips) - MAX_CHIP_ROWS
        tail = (
            f"<p>and {more} more chip(s): <code>larpix_check_status &gt; 0</code> lists them all.</p>"
            if more > 0
            else ""
        )
        head = "<tr><th>chip</th><th>tile</th><th>status</th><th>failing checks</th><th>pixel map</th><th></th></tr>"
        out.append(f"<h3>Chips ({len(chips)})</h3><table>{head}{''.join(rows)}</table>{tail}")
    out.append("</div>")
    return "".join(out)
