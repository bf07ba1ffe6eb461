"""Metric families and their Prometheus text exposition (format 0.0.4).

Families hold label strings and numpy value arrays, so rendering is a few vectorised
conversions and one join per family instead of one Python object per sample.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def escape_label_value(value: str) -> str:
    """Escape a label value as the text format requires (backslash, quote, newline)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def escape_help(text: str) -> str:
    """HELP text as the text format needs it: backslash and line feed escaped (a raw newline would end the line)."""
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def label_string(names: Sequence[str], values: Sequence[object]) -> str:
    """``a="1",b="x"`` for the given label names and values."""
    return ",".join(f'{n}="{escape_label_value(str(v))}"' for n, v in zip(names, values))


_SMALL_INTS = np.array([str(i) for i in range(4096)], dtype=object)


def format_values(values: np.ndarray) -> list[str]:
    """Render sample values: integers exactly, floats shortest round-trip, NaN/+Inf/-Inf."""
    values = np.asarray(values)
    if values.dtype.kind in "iub":
        if len(values) and values.min() >= 0 and values.max() < len(_SMALL_INTS):
            return _SMALL_INTS[values].tolist()
        return list(map(str, values.tolist()))
    text = list(map(repr, values.astype(np.float64).tolist()))
    special = np.flatnonzero(~np.isfinite(values))
    for i in special.tolist():
        text[i] = "NaN" if np.isnan(values[i]) else ("+Inf" if values[i] > 0 else "-Inf")
    return text


@dataclass
class Samples:
    """Samples of one series name: ``suffix`` is '', '_total', '_bucket', '_sum' or '_count'.

    ``labels`` are the rendered label strings; ``names`` and ``rows`` the same labels as
    data, for consumers that need them unrendered (the generic client_python exposition).
    """

    suffix: str
    labels: list[str]
    values: np.ndarray
    names: tuple[str, ...] = ()
    rows: list[tuple] = field(default_factory=list)


@dataclass
class Family:
    """One metric family: name (without _total for counters), type, help and samples."""

    name: str
    type: str
    help: str
    samples: list[Samples] = field(default_factory=list)

    def add(
        self,
        names: Sequence[str],
        rows: list[tuple],
        values: np.ndarray | Sequence[float],
        suffix: str = "",
        labels: list[str] | None = None,
    ) -> Family:
        """Add samples: label ``rows`` under ``names`` (pre-rendered ``labels`` may be passed)."""
        if self.type == "counter" and not suffix:
            suffix = "_total"
        if labels is None:
            labels = [label_string(names, row) for row in rows]
        self.samples.append(Samples(suffix, labels, np.asarray(values), tuple(names), rows))
        return self


def render(families: Iterable[Family]) -> str:
    """Text exposition of the families."""
    out: list[str] = []
    for fam in families:
        head = fam.name + "_total" if fam.type == "counter" else fam.name
        out.append(f"# HELP {head} {escape_help(fam.help)}\n# TYPE {head} {fam.type}\n")
        for s in fam.samples:
            if not len(s.labels):
                continue
            name = fam.name + s.suffix
            values = format_values(s.values)
            out.append(
                "".join(f"{name}{{{lab}}} {val}\n" if lab else f"{name} {val}\n" for lab, val in zip(s.labels, values))
            )
    return "".join(out)


def histogram(
    name: str,
    help_text: str,
    names: Sequence[str],
    rows: list[tuple],
    bounds: Sequence[float],
    cumulative: np.ndarray,
    sums: np.ndarray,
) -> Family:
    """A classic histogram family: ``cumulative[i, j]`` counts values <= bounds[j] (last is +Inf)."""
    fam = Family(name, "histogram", help_text)
    les = [*(repr(float(b)) for b in bounds), "+Inf"]
    bucket_rows = [(*row, le) for row in rows for le in les]
    fam.add((*names, "le"), bucket_rows, np.asarray(cumulative).reshape(-1), "_bucket")
    fam.add(names, rows, sums, "_sum")
    fam.add(names, rows, np.asarray(cumulative)[:, -1] if len(rows) else np.zeros(0), "_count")
    return fam
