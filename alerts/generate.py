#!/usr/bin/env python3
"""Generate the LArPix DQM Prometheus alerting rules from documented thresholds.

Reads ``alerts/thresholds.yaml`` (the alert-specific defaults: ``for:``, windows),
takes the job selector, the runbook URL and the thresholds shared with the exporter's checks
from ``larpix_dqm.exporter.monitoring.MixinConfig`` (which the dashboard generator reads too), optionally
merges a site override file over both, validates every key, and writes the rule file
Prometheus loads::

    python alerts/generate.py                       # defaults -> alerts/larpix.rules.yml
    python alerts/generate.py --thresholds site.yaml --output site.rules.yml
    python alerts/generate.py --check               # exit 1 if the committed file is stale

Errors in a thresholds file (unknown key, wrong type) are reported on one line naming the
file and the key, with exit status 2. An override of a shared threshold is accepted (the site's
exporter may run other checks) with a note saying which check it no longer matches.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
DEFAULTS_FILE = HERE / "thresholds.yaml"
OUTPUT_FILE = HERE / "larpix.rules.yml"
GROUP_NAME = "larpix"
#: The recording rules' group: one detector out of several exporters (shards), evaluated before the alerts.
DETECTOR_GROUP_NAME = "larpix-detector"

# Run as a script, import the exporter of this checkout (not an installed copy): the rules must
# follow this checkout's checks.
if str(HERE.parent) not in sys.path:
    sys.path.insert(0, str(HERE.parent))

from larpix_dqm.exporter.monitoring import MixinConfig, format_threshold  # noqa: E402
from larpix_dqm.exporter.quality.status import ChannelStatus, CheckStatus  # noqa: E402

#: Labels that identify one exporter target and one chip.
TARGET = "job, instance"
CHIP = "job, instance, io_group, io_channel, chip_id"
#: Labels that identify one exporter across scrape jobs: a Prometheus may scrape the same
#: exporter under two jobs (per-chip series, and per-pixel series at a slower interval), so
#: joins between an exporter's own series use ``instance`` (its address), not ``job``.
EXPORTER = "instance"
EXPORTER_CHIP = "instance, io_group, io_channel, chip_id"

#: Keys whose default is not in thresholds.yaml but the exporter's (via larpix_dqm.exporter.monitoring):
#: (section, key) -> (what the value is, how to read it). A site override may still set them.
SHARED: dict[tuple[str, str], tuple[str, Callable[[MixinConfig], float]]] = {
    ("chip_silent_channels", "max_fraction"): (
        "the silent_fraction check's error limit",
        lambda m: m.silent_channels_max_fraction,
    ),
    ("chip_noisy_channels", "rate_hertz"): ("the exporter's noisy_rate_hz default", lambda m: m.noisy_rate_hz),
    ("parity_errors", "max_ratio"): ("the parity_error_ratio check's warning limit", lambda m: m.parity_max_ratio),
    ("sync_missing", "min_rate_hertz"): ("the sync check's error limit", lambda m: m.sync_min_rate_hz),
}

#: Every key a thresholds file may hold, with its kind (see ``_check_value``).
SCHEMA: dict[str, dict[str, str]] = {
    "exporter_down": {"for": "duration"},
    "data_stale": {"max_age_seconds": "positive", "for": "duration"},
    "ingest_lag": {"max_lag_seconds": "positive", "for": "duration"},
    "read_errors": {"window": "window", "for": "duration"},
    "chip_silent": {"for": "duration"},
    "chip_silent_channels": {"max_fraction": "fraction", "for": "duration"},
    "chip_noisy_channels": {
        "rate_hertz": "positive",
        "min_count": "count",
        "for": "duration",
    },
    "tile_silent_chips": {"max_fraction": "fraction", "for": "duration"},
    "tile_rate": {"for": "duration"},
    "io_channel_never_seen": {"for": "duration"},
    "parity_errors": {
        "max_ratio": "fraction",
        "rate_window": "window",
        "for": "duration",
    },
    "fifo_full": {"window": "window", "for": "duration"},
    "sync_missing": {"min_rate_hertz": "positive", "for": "duration"},
    "sync_offset": {
        "max_abs_seconds": "positive",
        "quantile": "quantile",
        "rate_window": "window",
        "for": "duration",
    },
    "clock_offset": {"max_abs_seconds": "positive", "for": "duration"},
    "detector_status": {"for": "duration"},
    "check_error": {"for": "duration"},
    "check_warning": {"for": "duration"},
    "shard_overlap": {"for": "duration"},
    "io_group_unserved": {"for": "duration"},
    "shard_missing": {"window": "window", "for": "duration"},
    "beam_charge": {
        "min_fraction": "fraction",
        "window": "window",
        "min_trigger_rate_hertz": "positive",
        "for": "duration",
    },
    "beam_triggers_stopped": {"window": "window", "beam_window": "window", "for": "duration"},
}

_DURATION = re.compile(r"^(\d+y)?(\d+w)?(\d+d)?(\d+h)?(\d+m)?(\d+s)?(\d+ms)?$")


class ThresholdError(Exception):
    """A thresholds file is unreadable or holds an unknown key or a bad value."""


# --------------------------------------------------------------------------- thresholds


def _load_yaml(path: Path) -> dict[str, Any]:
    """Parse a thresholds file into a mapping (an empty file is an empty mapping)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ThresholdError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ThresholdError(f"{path}: {problem}{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ThresholdError(f"{path}: top level must be a mapping of sections")
    return data


def _is_duration(value: str) -> bool:
    """True for a Prometheus duration such as ``0s``, ``90s``, ``1h30m``."""
    return value != "" and _DURATION.match(value) is not None


def _check_value(kind: str, value: Any) -> Any:
    """Return ``value`` normalised for ``kind``, or raise ValueError with the expectation."""
    if kind in ("duration", "window"):
        if not isinstance(value, str) or not _is_duration(value):
            raise ValueError("expected a Prometheus duration like 5m")
        if kind == "window" and not any(ch in "123456789" for ch in value):
            raise ValueError("expected a duration longer than 0s")
        return value
    if isinstance(value, bool):
        raise ValueError("expected a number")
    if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            raise ValueError("expected a number") from None
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError("expected a number")
    if kind == "count":
        if value != int(value) or value < 1:
            raise ValueError("expected a whole number >= 1")
        return int(value)
    if kind == "positive" and value <= 0:
        raise ValueError("expected a number > 0")
    if kind == "fraction" and not 0 < value < 1:
        raise ValueError("expected a number between 0 and 1 (exclusive)")
    if kind == "quantile" and not 0.5 < value < 1:
        raise ValueError("expected a quantile between 0.5 and 1 (exclusive)")
    return value


def _validate(data: dict[str, Any], path: Path) -> dict[str, dict[str, Any]]:
    """Check the keys and values of a thresholds file against SCHEMA."""
    out: dict[str, dict[str, Any]] = {}
    for section, body in data.items():
        if section not in SCHEMA:
            raise ThresholdError(f"{path}: unknown key '{section}'")
        if body is None:
            body = {}
        if not isinstance(body, dict):
            raise ThresholdError(f"{path}: '{section}' must be a mapping")
        out[section] = {}
        for key, value in body.items():
            if key not in SCHEMA[section]:
                raise ThresholdError(f"{path}: unknown key '{section}.{key}'")
            try:
                out[section][key] = _check_value(SCHEMA[section][key], value)
            except ValueError as exc:
                raise ThresholdError(f"{path}: '{section}.{key}': {exc}, got {value!r}") from None
    return out


def _shared_value(monitoring: MixinConfig, section: str, key: str) -> Any:
    """The default of a shared key, read from ``monitoring`` and validated like a file value."""
    source, read = SHARED[(section, key)]
    value = read(monitoring)
    try:
        return _check_value(SCHEMA[section][key], value)
    except ValueError as exc:
        raise ThresholdError(f"exporter/monitoring.py: '{section}.{key}' ({source}): {exc}, got {value!r}") from None


def load_thresholds(
    monitoring: MixinConfig, defaults: Path = DEFAULTS_FILE, override: Path | None = None
) -> dict[str, dict[str, Any]]:
    """The defaults file completed with the shared thresholds of ``monitoring``, ``override`` merged over them.

    The defaults file must hold every alert-specific key and none of the SHARED ones, so a
    shared threshold has one source. ``override`` is sparse (same layout) and may set any key.
    """
    merged = _validate(_load_yaml(defaults), defaults)
    for section, keys in SCHEMA.items():
        values = merged.setdefault(section, {})
        for key in keys:
            if (section, key) in SHARED:
                if key in values:
                    raise ThresholdError(
                        f"{defaults}: '{section}.{key}' is {SHARED[(section, key)][0]} "
                        "(exporter/monitoring.py): remove it"
                    )
                values[key] = _shared_value(monitoring, section, key)
            elif key not in values:
                raise ThresholdError(f"{defaults}: missing key '{section}.{key}'")
    if override is not None:
        for section, values in _validate(_load_yaml(override), override).items():
            merged[section].update(values)
    return merged


def shared_threshold_notes(thresholds: dict[str, dict[str, Any]], monitoring: MixinConfig) -> list[str]:
    """One line per shared threshold overridden away from its source, so the site sees the rules now differ."""
    notes = []
    for (section, key), (source, read) in SHARED.items():
        value, default = thresholds[section][key], read(monitoring)
        if value != default:
            notes.append(
                f"'{section}.{key}' is {format_threshold(value)}, but {source} is {format_threshold(default)}: "
                "the alert no longer matches the exporter unless its checks file or options say the same"
            )
    return notes


# --------------------------------------------------------------------------- rules


def _pct(fraction: float) -> str:
    """Format a 0..1 threshold as a percentage for descriptions: ``0.2`` -> ``20%``."""
    return format_threshold(round(fraction * 100, 10)) + "%"


def _fill(template: str, **values: str) -> str:
    """Replace ``@name@`` placeholders (Go-template braces stay untouched)."""
    for name, value in values.items():
        template = template.replace(f"@{name}@", value)
    return template


def _alert(name: str, expr: str, for_: str, severity: str, summary: str, description: str) -> dict[str, Any]:
    """One alerting rule in monitoring-mixin layout (build_rules adds its runbook_url)."""
    rule: dict[str, Any] = {"alert": name, "expr": expr.strip()}
    if any(ch in "123456789" for ch in for_):
        rule["for"] = for_
    rule["labels"] = {"severity": severity}
    rule["annotations"] = {"summary": summary, "description": description}
    return rule


CHIP_TEXT = "chip {{ $labels.chip_id }} (io_group {{ $labels.io_group }}, io_channel {{ $labels.io_channel }})"


def build_rules(t: dict[str, dict[str, Any]], monitoring: MixinConfig) -> dict[str, Any]:
    """Build the rule-file document from merged thresholds and the job selector and runbook of ``monitoring``."""
    stale_age = format_threshold(t["data_stale"]["max_age_seconds"])
    # Stale: nothing ingested for max_age_seconds, or nothing ever (the exporter exports NaN
    # until its first packet; NaN is the only value not equal to itself).
    stale = f"""(
  time() - larpix_exporter_last_ingest_timestamp_seconds > {stale_age}
  or
  # NaN: no packet ingested since the exporter started
  larpix_exporter_last_ingest_timestamp_seconds != larpix_exporter_last_ingest_timestamp_seconds
)"""
    unless_stale = f"unless on ({EXPORTER})\n{stale}"
    job = monitoring.job_matcher
    silent = ChannelStatus.SILENT.label
    noisy = ChannelStatus.NOISY.label
    masked = ChannelStatus.MASKED.label

    rules = [
        _alert(
            "LarpixExporterDown",
            f"""
up{{{job}}} == 0
or
(
  larpix_exporter_up == 0
  # no poll completes yet packets flow: catching up on a backlog, not down
  unless on ({EXPORTER}) rate(larpix_exporter_packets_ingested_total[5m]) > 0
)
or
absent(up{{{job}}})
""",
            t["exporter_down"]["for"],
            "critical",
            "LArPix DQM exporter is down: data quality is not monitored.",
            "{{ if $labels.instance }}The LArPix exporter {{ $labels.instance }} (job "
            "{{ $labels.job }}) cannot be scraped or its ingest loop has stopped."
            "{{ else }}Prometheus has no scrape target whose job matches " + json.dumps(monitoring.job_regex) + "."
            "{{ end }} All LArPix data-quality alerts are blind while this fires.",
        ),
        _alert(
            "LarpixDataStale",
            f"""
{stale}
and on ({EXPORTER})
(
  larpix_exporter_files_tracked > 0
  or on ({EXPORTER})
  # an input directory (or file) is missing or unreadable: there is data to read but it cannot be
  larpix_exporter_files_in_error{{reason=~"missing_input|unreadable_input"}} > 0
)
""",
            t["data_stale"]["for"],
            "critical",
            "LArPix DQM exporter has ingested no new packets.",
            _fill(
                "The exporter {{ $labels.instance }} has files or inputs to read but has ingested no "
                "new packet {{ if le 0.0 $value }}for {{ $value | humanizeDuration }}"
                "{{ else }}since it started{{ end }} (threshold @age@ s). The DAQ may have "
                "stopped writing, an input may be missing or unreadable "
                "(larpix_exporter_files_in_error), or the exporter is stuck.",
                age=stale_age,
            ),
        ),
        _alert(
            "LarpixIngestLagHigh",
            f"""
larpix_exporter_ingest_lag_seconds > {format_threshold(t["ingest_lag"]["max_lag_seconds"])}
{unless_stale}
""",
            t["ingest_lag"]["for"],
            "warning",
            "LArPix DQM exporter is far behind the DAQ.",
            _fill(
                "The newest data time ingested by {{ $labels.instance }} is "
                "{{ $value | humanizeDuration }} behind the wall clock (threshold @lag@ s): "
                "the exporter is not keeping up, is replaying a backlog, or the DAQ clock is "
                "off.",
                lag=format_threshold(t["ingest_lag"]["max_lag_seconds"]),
            ),
        ),
        _alert(
            "LarpixReadErrors",
            f"""
sum by ({TARGET}, reason) (increase(larpix_exporter_read_errors_total[{t["read_errors"]["window"]}])) > 0
or
sum by ({TARGET}, reason) (larpix_exporter_files_in_error) > 0
""",
            t["read_errors"]["for"],
            "warning",
            "LArPix DQM exporter keeps failing to read data files.",
            _fill(
                "The exporter {{ $labels.instance }} keeps failing to read data files with "
                "reason {{ $labels.reason }}: {{ $value | humanize }} failed reads in the "
                "last @window@ (or, when there were none, files whose last read failed).",
                window=t["read_errors"]["window"],
            ),
        ),
        _alert(
            "LarpixChipSilent",
            f"""
(
  # the chip's tile (larpix_chip_info), so that a tile's page (LarpixTileRateError) can mute its chips'
  larpix_chip_dead * on ({CHIP}) group_left (tile) larpix_chip_info == 1
  # a chip that larpix_chip_info does not map pages too, without a tile
  or on ({CHIP})
  larpix_chip_dead == 1
)
{unless_stale}
""",
            t["chip_silent"]["for"],
            "critical",
            "A LArPix chip is dead: no hit for longer than chance allows.",
            "LArPix " + CHIP_TEXT + " is proven dead (larpix_chip_dead = {{ $value }}): none of its "
            "channels has sent a hit for longer than the exporter's false-alarm budget allows, "
            "whether it died during the run or never spoke.",
        ),
        _alert(
            "LarpixChipManySilentChannels",
            f"""
(
  sum by ({CHIP}) (larpix_chip_channels{{status="{silent}"}})
  /
  # masked channels (run configuration) are not expected to send anything
  sum by ({CHIP}) (larpix_chip_channels{{status!="{masked}"}})
) > {format_threshold(t["chip_silent_channels"]["max_fraction"])}
{unless_stale}
""",
            t["chip_silent_channels"]["for"],
            "warning",
            "Many channels of a LArPix chip are silent.",
            _fill(
                "{{ $value | humanizePercentage }} of the channels of LArPix " + CHIP_TEXT + " "
                "are proven silent (threshold @pct@).",
                pct=_pct(t["chip_silent_channels"]["max_fraction"]),
            ),
        ),
        _alert(
            "LarpixChipNoisyChannels",
            f"""
sum by ({CHIP}) (larpix_chip_channels{{status="{noisy}"}}) >= {t["chip_noisy_channels"]["min_count"]}
or on ({EXPORTER_CHIP})
count by ({CHIP}) (larpix_channel_hit_rate_hertz > {format_threshold(t["chip_noisy_channels"]["rate_hertz"])}) >= {t["chip_noisy_channels"]["min_count"]}
""",
            t["chip_noisy_channels"]["for"],
            "warning",
            "A LArPix chip has many noisy channels.",
            _fill(
                "LArPix " + CHIP_TEXT + " has {{ $value }} noisy channels (threshold "
                "@count@ channels; a channel is noisy above the exporter's cut or, with "
                "--per-pixel, above @rate@ Hz).",
                count=str(t["chip_noisy_channels"]["min_count"]),
                rate=format_threshold(t["chip_noisy_channels"]["rate_hertz"]),
            ),
        ),
        _alert(
            "LarpixTileManySilentChips",
            f"""
(
  sum by ({TARGET}, io_group, tile) (
    larpix_chip_dead
    * on ({CHIP}) group_left (tile)
    larpix_chip_info
  )
  /
  count by ({TARGET}, io_group, tile) (larpix_chip_info)
) > {format_threshold(t["tile_silent_chips"]["max_fraction"])}
{unless_stale}
""",
            t["tile_silent_chips"]["for"],
            "warning",
            "Many chips of a LArPix tile are silent.",
            _fill(
                "{{ $value | humanizePercentage }} of the chips of tile {{ $labels.tile }} "
                "(io_group {{ $labels.io_group }}) are proven dead (threshold @pct@).",
                pct=_pct(t["tile_silent_chips"]["max_fraction"]),
            ),
        ),
        _alert(
            "LarpixTileRateError",
            f"""
max by ({TARGET}, io_group, tile) (
  larpix_check_status{{check="tile_rate"}}
  * on ({CHIP}) group_left (tile)
  larpix_chip_info
) >= {int(CheckStatus.ERROR)}
{unless_stale}
""",
            t["tile_rate"]["for"],
            "critical",
            "A LArPix tile's hit rate is far from the rest of the module's: HV trip or hot tile.",
            "The hits of tile {{ $labels.tile }} (io_group {{ $labels.io_group }}) in the window are outside the "
            "tile_rate check's error range, against what the rest of the module's occupancy predicts of it "
            "(larpix_check_status = {{ $value }}): its drift HV or its noise changed as a whole.",
        ),
        _alert(
            "LarpixIoChannelNeverSeen",
            f"""
max by ({TARGET}, io_group, io_channel) (larpix_check_status{{check="io_channel_never_seen"}}) >= {int(CheckStatus.ERROR)}
{unless_stale}
""",
            t["io_channel_never_seen"]["for"],
            "critical",
            "A LArPix io_channel has sent nothing since the run started.",
            "io_channel {{ $labels.io_channel }} of io_group {{ $labels.io_group }} has sent no packet since the "
            "run started while its io_group sends data and the module's rate proves its chips should have "
            "(larpix_check_status = {{ $value }}): its link, its PACMAN port or its chips' power.",
        ),
        _alert(
            "LarpixParityErrorRatioHigh",
            f"""
rate(larpix_chip_parity_errors_total[{t["parity_errors"]["rate_window"]}])
/
rate(larpix_chip_packets_total[{t["parity_errors"]["rate_window"]}])
> {format_threshold(t["parity_errors"]["max_ratio"])}
# and significantly so (the exporter's binomial test, within its false-alarm budget): one error
# in a few hundred packets is above the ratio but no evidence of a bad link
and on ({CHIP})
larpix_check_status{{check="parity_error_ratio"}} >= {int(CheckStatus.WARNING)}
""",
            t["parity_errors"]["for"],
            "warning",
            "A LArPix chip sends many packets with parity errors.",
            _fill(
                "{{ $value | humanizePercentage }} of the data packets of LArPix " + CHIP_TEXT + " "
                "over the last @window@ failed the parity check (threshold @ratio@).",
                window=t["parity_errors"]["rate_window"],
                ratio=_pct(t["parity_errors"]["max_ratio"]),
            ),
        ),
        _alert(
            "LarpixFifoFull",
            f"""
increase(larpix_chip_fifo_flags_total{{level="full"}}[{t["fifo_full"]["window"]}]) > 0
""",
            t["fifo_full"]["for"],
            "warning",
            "A LArPix chip FIFO is full: hits are being lost.",
            _fill(
                "LArPix " + CHIP_TEXT + " flagged its {{ $labels.fifo }} FIFO full in "
                "{{ $value | humanize }} data packets over the last @window@.",
                window=t["fifo_full"]["window"],
            ),
        ),
        _alert(
            "LarpixSyncMissing",
            f"""
larpix_io_group_sync_rate_hertz < {format_threshold(t["sync_missing"]["min_rate_hertz"])}
{unless_stale}
""",
            t["sync_missing"]["for"],
            "critical",
            "LArPix io_group is missing its 1 Hz 'S' sync packets.",
            _fill(
                "io_group {{ $labels.io_group }} receives {{ $value }} 'S' syncs "
                "per second of data time (expected 1, threshold @rate@): chip timestamps "
                "cannot be trusted.",
                rate=format_threshold(t["sync_missing"]["min_rate_hertz"]),
            ),
        ),
        _sync_offset_rule(t),
        _alert(
            "LarpixClockOffset",
            f"""
(
  larpix_io_group_clock_offset_seconds > {format_threshold(t["clock_offset"]["max_abs_seconds"])}
  or
  larpix_io_group_clock_offset_seconds < -{format_threshold(t["clock_offset"]["max_abs_seconds"])}
)
# only io_groups that are alive: a stopped io_group's clock falls behind by itself
and on ({TARGET}, io_group)
larpix_io_group_sync_rate_hertz > 0
{unless_stale}
""",
            t["clock_offset"]["for"],
            "warning",
            "A LArPix io_group's PACMAN clock is offset from the other io_groups.",
            _fill(
                "The data clock (PACMAN unix time) of io_group {{ $labels.io_group }} is {{ $value }} s "
                "away from the median clock of the other io_groups (threshold @limit@ s). Its rates are "
                "unaffected; its data time is not.",
                limit=format_threshold(t["clock_offset"]["max_abs_seconds"]),
            ),
        ),
        *_check_rules(t, unless_stale),
        *_shard_rules(t),
        *_beam_rules(t, unless_stale),
    ]
    for rule in rules:
        rule["annotations"]["runbook_url"] = f"{monitoring.runbook_url}#{rule['alert'].lower()}"
    return {
        "groups": [{"name": DETECTOR_GROUP_NAME, "rules": _detector_records()}, {"name": GROUP_NAME, "rules": rules}]
    }


def _detector_records() -> list[dict[str, str]]:
    """Recording rules that make one detector out of the exporters that split it by io_group (``--io-groups``):
    the worst status, the rates and the bad-channel counts of all shards of a job, from no single exporter."""
    return [
        {"record": "job:larpix_detector_status:max", "expr": "max by (job) (larpix_detector_status)"},
        {
            "record": "job_io_group:larpix_io_group_status:max",
            "expr": "max by (job, io_group) (larpix_io_group_status)",
        },
        {
            "record": "job:larpix_io_group_hit_rate_hertz:sum",
            "expr": "sum by (job) (larpix_io_group_hit_rate_hertz)",
        },
        {
            "record": "job:larpix_chip_dead:sum",
            "expr": "sum by (job) (larpix_chip_dead) or sum by (job) (0 * larpix_exporter_up)",
        },
        {
            "record": "job_status:larpix_chip_channels:sum",
            "expr": 'sum by (job, status) (larpix_chip_channels{status=~"silent|noisy|inefficient"})',
        },
        {
            "record": "job:larpix_exporter_io_groups_served:count",
            "expr": "count by (job) (larpix_exporter_io_group_served)",
        },
    ]


def _beam_rules(t: dict[str, dict[str, Any]], unless_stale: str) -> list[dict[str, Any]]:
    """The trigger-correlated view (``exporter/quality/triggers.py``): triggers without charge, triggers gone."""
    charge, stopped = t["beam_charge"], t["beam_triggers_stopped"]
    count = f"sum by ({TARGET}) (rate(larpix_beam_trigger_hits_count[{charge['window']}]))"
    empty = f'sum by ({TARGET}) (rate(larpix_beam_trigger_hits_bucket{{le="0.0"}}[{charge["window"]}]))'
    external = 'larpix_trigger_words_total{bit="1"}'
    return [
        _alert(
            "LarpixBeamChargeLow",
            f"""
(1 - {empty} / {count}) < {format_threshold(charge["min_fraction"])}
and on ({TARGET})
{count} > {format_threshold(charge["min_trigger_rate_hertz"])}
{unless_stale}
""",
            charge["for"],
            "warning",
            "LArPix sees no charge after most beam triggers.",
            _fill(
                "Only {{ $value | humanizePercentage }} of the external triggers over the last @window@ have "
                "self-triggered charge within the drift window after them (threshold @fraction@).",
                window=charge["window"],
                fraction=_pct(charge["min_fraction"]),
            ),
        ),
        _alert(
            "LarpixBeamTriggersStopped",
            f"""
sum by ({TARGET}) (increase({external}[{stopped["beam_window"]}])) > 0
unless on ({TARGET})
sum by ({TARGET}) (increase({external}[{stopped["window"]}])) > 0
and on ({TARGET})
sum by ({TARGET}) (rate(larpix_exporter_packets_ingested_total[{stopped["window"]}])) > 0
""",
            stopped["for"],
            "warning",
            "External (beam) triggers stopped while LArPix keeps taking data.",
            _fill(
                "No external trigger word in the last @window@, after {{ $value | humanize }} in the last "
                "@beam_window@, while the exporter still reads data: the beam or its trigger is gone.",
                window=stopped["window"],
                beam_window=stopped["beam_window"],
            ),
        ),
    ]


def _shard_rules(t: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Shards that overlap (two exporters judging one io_group) or leave an io_group with data unserved."""
    return [
        _alert(
            "LarpixShardOverlap",
            """
count by (job, io_group) (larpix_exporter_io_group_served) > 1
""",
            t["shard_overlap"]["for"],
            "warning",
            "Two LArPix DQM exporters serve the same io_group.",
            "io_group {{ $labels.io_group }} is served by {{ $value }} exporters of job {{ $labels.job }} "
            "(larpix_exporter_io_group_served): their --io-groups overlap, so its chips are judged, alerted and "
            "summed by the detector-wide rules more than once.",
        ),
        _alert(
            "LarpixIoGroupUnserved",
            """
sum by (job, io_group) (rate(larpix_foreign_packets_total[5m])) > 0
unless on (job, io_group)
group by (job, io_group) (larpix_exporter_io_group_served)
""",
            t["io_group_unserved"]["for"],
            "warning",
            "A LArPix io_group with data is served by no DQM exporter.",
            "Exporters of job {{ $labels.job }} read packets of io_group {{ $labels.io_group }} "
            "({{ $value | humanize }} packets/s) and drop them as another shard's, but no exporter serves it: its "
            "chips are not monitored. Add it to one exporter's --io-groups.",
        ),
        _alert(
            "LarpixShardMissing",
            f"""
group by (job, io_group) (max_over_time(larpix_exporter_io_group_served[{t["shard_missing"]["window"]}]))
unless on (job, io_group)
group by (job, io_group) (larpix_exporter_io_group_served)
""",
            t["shard_missing"]["for"],
            "warning",
            "An io_group a LArPix DQM exporter served is served by none now.",
            _fill(
                "io_group {{ $labels.io_group }} of job {{ $labels.job }} was served by an exporter in the last "
                "@window@ (larpix_exporter_io_group_served) and is served by none now: the exporter of its shard is "
                "gone (stopped, or its target removed from Prometheus), so its chips are not monitored.",
                window=t["shard_missing"]["window"],
            ),
        ),
    ]


#: Where a check status applies: a chip, or an io_group for io_group-scope checks (no chip_id).
CHECK_TARGET_TEXT = "{{ if $labels.chip_id }}LArPix " + CHIP_TEXT + "{{ else }}io_group {{ $labels.io_group }}{{ end }}"
#: Labels that identify one check status series of one exporter (io_channel and chip_id are
#: empty for io_group-scope checks, which still match).
CHECK_SERIES = "job, instance, check, io_group, io_channel, chip_id"


def _listing(query: str, label: str, item: str) -> str:
    """A template listing the series of ``query`` (printf format over $labels.instance and $labels.io_group)."""
    return (
        f'{{{{ range $i, $s := printf "{query}" $labels.instance $labels.io_group | query | sortByLabel "{label}" }}}}'
        f"{{{{ if $i }}}}, {{{{ end }}}}{item}{{{{ else }}}}none{{{{ end }}}}"
    )


def _check_rules(t: dict[str, dict[str, Any]], unless_stale: str) -> list[dict[str, Any]]:
    """Alerts on the exporter's checks: the detector roll-up per io_group (page) and per-check statuses.

    LarpixCheckError comes before LarpixCheckWarning: the warning rule reads the error rule's
    ALERTS series, which rules evaluated later in the same group see at the same timestamp.
    """
    error, warning = int(CheckStatus.ERROR), int(CheckStatus.WARNING)
    checks = _listing(
        f"count by (check) (larpix_check_status{{instance=%q, io_group=%q}} == {error})",
        "check",
        "{{ $s.Labels.check }} ({{ $s.Value }})",
    )
    return [
        _alert(
            "LarpixDetectorStatusError",
            f"""
max by ({TARGET}, io_group) (larpix_io_group_status) >= {error}
{unless_stale}
""",
            t["detector_status"]["for"],
            "critical",
            "LArPix data-quality checks put an io_group of the detector in error.",
            "The data-quality checks of {{ $labels.instance }} report status " + CheckStatus.ERROR.name + " for "
            "io_group {{ $labels.io_group }} of the detector (larpix_io_group_status = {{ $value }}). "
            "Checks in error there (number of chips or io_groups): " + checks + ".",
        ),
        _alert(
            "LarpixCheckError",
            f"""
larpix_check_status == {error}
{unless_stale}
""",
            t["check_error"]["for"],
            "warning",
            "A LArPix data-quality check is in its error range.",
            CHECK_TARGET_TEXT + " fails check {{ $labels.check }}: its value is outside the "
            f"check's error range (larpix_check_status = {error}). Ranges: docs/metrics.md, Checks.",
        ),
        _alert(
            "LarpixCheckWarning",
            f"""
(
  larpix_check_status >= {warning}
  # already a LarpixCheckError ticket: no second alert for the same check
  unless on ({CHECK_SERIES})
  ALERTS{{alertname="LarpixCheckError", alertstate="firing"}}
)
{unless_stale}
""",
            t["check_warning"]["for"],
            "info",
            "A LArPix data-quality check has been outside its warning range for a long time.",
            _fill(
                CHECK_TARGET_TEXT + " has been outside the warning range of check "
                "{{ $labels.check }} for @for@ (larpix_check_status = {{ $value }}; @scale@). "
                "Ranges: docs/metrics.md, Checks.",
                scale=", ".join(f"{int(status)} {status.label}" for status in CheckStatus if status > CheckStatus.OK),
                **{"for": t["check_warning"]["for"]},
            ),
        ),
    ]


def _sync_offset_rule(t: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """LarpixSyncOffset: either tail of the sync-offset histogram beyond the threshold."""
    cfg = t["sync_offset"]
    upper = float(cfg["quantile"])
    lower = round(1 - upper, 12)
    limit = float(cfg["max_abs_seconds"])
    buckets = f"sum by ({TARGET}, io_group, le) (rate(larpix_sync_offset_seconds_bucket[{cfg['rate_window']}]))"
    expr = f"""
abs(histogram_quantile({format_threshold(upper)}, {buckets})) > {format_threshold(limit)}
or
abs(histogram_quantile({format_threshold(lower)}, {buckets})) > {format_threshold(limit)}
"""
    return _alert(
        "LarpixSyncOffset",
        expr,
        cfg["for"],
        "warning",
        "LArPix 'S' sync timestamps are offset from 1e7 ticks.",
        _fill(
            "A tail (quantile @lo@ or @hi@) of the 'S' sync offset (timestamp - 1e7 ticks) "
            "on io_group {{ $labels.io_group }} is {{ $value | humanize }}s away from zero "
            "(threshold @limit@ s = @ticks@ ticks of 100 ns).",
            lo=format_threshold(lower),
            hi=format_threshold(upper),
            limit=format_threshold(limit),
            ticks=format_threshold(round(limit / 1e-7, 6)),
        ),
    )


# --------------------------------------------------------------------------- output


class _Dumper(yaml.SafeDumper):
    """SafeDumper that writes multi-line strings (PromQL) as literal blocks."""


def _str_representer(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _str_representer)


def render(t: dict[str, dict[str, Any]], monitoring: MixinConfig, source: str) -> str:
    """The rule file text: a do-not-edit header and the YAML document."""
    header = (
        "# Generated by alerts/generate.py -- do not edit by hand.\n"
        f"# Thresholds: {source}\n"
        "# Regenerate: python alerts/generate.py [--thresholds FILE] [--output FILE]\n"
    )
    body = yaml.dump(build_rules(t, monitoring), Dumper=_Dumper, sort_keys=False, width=4096, allow_unicode=True)
    return header + body


def main(argv: list[str] | None = None, write: Callable[[str], Any] = sys.stdout.write) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description="Generate alerts/larpix.rules.yml from thresholds.")
    parser.add_argument(
        "--thresholds",
        type=Path,
        metavar="FILE",
        help="override file merged over alerts/thresholds.yaml (only the keys you change)",
    )
    parser.add_argument(
        "--output",
        default=str(OUTPUT_FILE),
        metavar="FILE",
        help="rule file to write, '-' for stdout (default: alerts/larpix.rules.yml)",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="do not write; exit 1 if the output file differs from what would be generated",
    )
    args = parser.parse_args(argv)
    monitoring = MixinConfig()
    try:
        thresholds = load_thresholds(monitoring, DEFAULTS_FILE, args.thresholds)
    except ThresholdError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for note in shared_threshold_notes(thresholds, monitoring):
        print(f"note: {args.thresholds}: {note}", file=sys.stderr)
    source = "exporter/monitoring.py + alerts/thresholds.yaml"
    if args.thresholds is not None:
        source += f" + {args.thresholds}"
    text = render(thresholds, monitoring, source)
    if args.output == "-":
        write(text)
        return 0
    output = Path(args.output)
    if args.check:
        current = output.read_text(encoding="utf-8") if output.exists() else None
        if current != text:
            print(f"error: {output} is stale: run python alerts/generate.py", file=sys.stderr)
            return 1
        return 0
    output.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
