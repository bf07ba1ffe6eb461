"""``HotPixels``: the channels with the largest share of the data, and the rate distribution."""

from __future__ import annotations

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from larpix_dqm.exporter.quality.status import ChannelStatus
from larpix_dqm.plots.base import Plot, PlotContext
from larpix_dqm.plots.draw import NOISY_COLOUR, KeptFigure, log_scale, no_data, window_text

TOP = 20


def top_channels(rates: np.ndarray, chip_keys: np.ndarray) -> np.ndarray:
    """The flat indices in ``rates`` (chips x channels) of the ``TOP`` channels with the highest finite positive
    rates, highest first; equal rates in the order of their chips' keys and channels, so that the list does not
    depend on the order chips were first seen in (which follows how the data were cut into chunks)."""
    flat = rates.ravel()
    shown = np.flatnonzero(np.isfinite(flat) & (flat > 0))
    if shown.size > TOP:
        values = flat[shown]
        shown = shown[values >= np.partition(values, shown.size - TOP)[shown.size - TOP]]
    chips, channels = np.divmod(shown, rates.shape[1])
    key = chip_keys[chips]
    return shown[np.lexsort((channels, key[:, 2], key[:, 1], key[:, 0], -flat[shown]))][:TOP]


class HotPixels(Plot):
    """Left: the top channels by share of all data packets in the window. Right: how the
    channel hit rates are distributed, with the noisy threshold; the window is that of
    ``/metrics`` (``larpix_channel_hit_rate_hertz``).
    """

    per_file = False

    def __init__(self) -> None:
        self._kept = KeptFigure()

    def draw(self, name: str, ctx: PlotContext, fig: Figure | None = None) -> Figure:
        snapshot = ctx.snapshot
        rates = snapshot.channel_rate_hz.ravel()
        status = snapshot.channel_status.ravel()
        total = float(rates.sum())
        top_ax, dist_ax = self._kept.axes(fig, 6.0, total > 0, lambda new: self._build(new, total > 0))
        threshold = snapshot.config.noisy_rate_hz
        if total > 0:
            order = top_channels(snapshot.channel_rate_hz, snapshot.chip_keys)
            share = rates[order] / total * 100
            chips, channels = np.divmod(order, snapshot.channel_rate_hz.shape[1])
            labels = [
                f"{'-'.join(map(str, snapshot.chip_keys[c].tolist()))} ch {ch}"
                for c, ch in zip(chips.tolist(), channels.tolist())
            ]
            colours = [NOISY_COLOUR if status[i] == ChannelStatus.NOISY else "#4c72b0" for i in order]
            bars = top_ax.barh(range(len(order)), share, color=colours)
            top_ax.bar_label(bars, [f"{r:.3g} Hz" for r in rates[order]], padding=3, fontsize=8)
            top_ax.set_yticks(range(len(order)), labels, fontsize=9)
            if not top_ax.yaxis_inverted():  # top down (a kept axes stays inverted)
                top_ax.invert_yaxis()
            top_ax.set_xlim(0, share.max() * 1.25)
            positive = rates[rates > 0]
            low = min(positive.min(), 1.0 / snapshot.covered_seconds)
            edges = np.geomspace(low / 1.5, max(positive.max(), threshold) * 1.5, 60)
            # one filled outline, not a bar patch a bin: the same area drawn, a fraction of the artists
            dist_ax.stairs(np.histogram(positive, edges)[0], edges, fill=True, color="#4c72b0")
            dist_ax.axvline(threshold, color=NOISY_COLOUR, linestyle="--", label=f"noisy above {threshold:g} Hz")
            dist_ax.legend(fontsize=9, loc="upper right")  # "best" scans the data for a free place: slow
        else:
            no_data(top_ax)
            no_data(dist_ax)
        silent = int((status == ChannelStatus.SILENT).sum())
        dist_ax.set_title(f"channels with hits ({silent} silent not shown)", fontsize=11)
        noisy = int((status == ChannelStatus.NOISY).sum())
        return self._kept.finish(
            f"{name}: {noisy} noisy channels", f"{window_text(snapshot)}  ·  {total:.4g} Hz in all"
        )

    @staticmethod
    def _build(fig: Figure, data: bool) -> tuple[Axes, Axes]:
        """The two panels with their labels; log scales for the distribution when there are data."""
        top_ax, dist_ax = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1]})
        fig.subplots_adjust(left=0.17, right=0.98, top=0.85, bottom=0.12, wspace=0.25)
        top_ax.set_xlabel("share of data packets in the window [%]")
        top_ax.set_ylabel("channel (io_group-io_channel-chip_id ch channel)")
        top_ax.set_title(f"top {TOP} channels (red: noisy)", fontsize=11)
        top_ax.grid(alpha=0.3, axis="x")
        dist_ax.set_xlabel("channel hit rate [Hz]")
        dist_ax.set_ylabel("channels")
        dist_ax.grid(alpha=0.3)
        if data:
            log_scale(dist_ax, "x")
            log_scale(dist_ax, "y")
        return top_ax, dist_ax
