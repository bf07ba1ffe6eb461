"""Data-quality verdicts: checks with warning and error ranges, rolled up the detector tree.

Each check turns one quantity per chip (or per io_group) into a status: 0 ok (inside the
warning range), 1 warning (outside it), 2 error (outside the error range), -1 unknown (nothing
to judge yet: a NaN quantity). A counting check (``poisson``) judges a hit count against its
expected count: it is outside a range only when the count is significantly so, within the
false-alarm budget of ``exporter.quality.verdicts``, and unknown while even no hit at all could
not be told from the lower limit. Chip statuses roll up, worst case, to tiles, io_groups and the
detector; a roll-up of ok and unknown statuses is unknown.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import yaml

from exporter.quality.accumulator import IO_GROUPS, Snapshot
from exporter.quality.reference import Reference
from exporter.quality.status import ChannelStatus, CheckStatus
from exporter.quality.verdicts import log_lower_tail, log_upper_tail, per_test_probability

INF = math.inf


@dataclass(frozen=True)
class Check:
    """One check: a quantity, its scope and the ranges inside which it is ok / not an error."""

    name: str
    scope: str  # "chip" or "io_group"
    unit: str
    meaning: str
    warning: tuple[float, float]
    error: tuple[float, float]
    needs_reference: bool = False
    enabled: bool = True
    poisson: bool = False  # a hit count judged against its expected count (see the module docstring)


DEFAULT_CHECKS: tuple[Check, ...] = (
    Check(
        "hit_rate_ratio",
        "chip",
        "ratio",
        "counting check: hits in the window / hits expected (learnt or reference rate, tile occupancy)",
        (0.5, 2.0),
        (0.2, 5.0),
        poisson=True,
    ),
    Check("silent_fraction", "chip", "ratio", "silent channels / expected channels", (-INF, 0.1), (-INF, 0.5)),
    Check("noisy_fraction", "chip", "ratio", "noisy channels / expected channels", (-INF, 0.02), (-INF, 0.1)),
    Check(
        "inefficient_fraction",
        "chip",
        "ratio",
        "inefficient channels / expected channels",
        (-INF, 0.1),
        (-INF, 0.5),
    ),
    Check("pedestal", "chip", "ADC", "mean ADC over the window (pedestal)", (60.0, 100.0), (40.0, 120.0)),
    Check("adc_spread", "chip", "ADC", "ADC standard deviation over the window", (-INF, 12.0), (-INF, 25.0)),
    Check(
        "parity_error_ratio",
        "chip",
        "ratio",
        "parity errors / data packets over the window",
        (-INF, 1e-3),
        (-INF, 1e-2),
    ),
    Check(
        "fifo_full_ratio",
        "chip",
        "ratio",
        "packets with a FIFO full flag / data packets over the window",
        (-INF, 1e-3),
        (-INF, 1e-2),
    ),
    Check("sync", "io_group", "Hz", "'S' syncs per second of data time (expect 1)", (0.9, 1.1), (0.5, 2.0)),
    Check(
        "reference_rate_ratio",
        "chip",
        "ratio",
        "counting check: hits in the window / hits the reference rate predicts",
        (0.5, 2.0),
        (0.2, 5.0),
        needs_reference=True,
        poisson=True,
    ),
    Check("reference_pedestal_shift", "chip", "ADC", "mean ADC − reference mean ADC", (-5.0, 5.0), (-10.0, 10.0), True),
)


class ChecksConfigError(ValueError):
    """The checks file is wrong; the message names the file, line and key."""


def _ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(b > 0, a / np.where(b > 0, b, 1), np.nan)


def chip_counts(snap: Snapshot, reference: Reference | None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Observed and expected hits in the window, per chip, of each counting check."""
    counts = {"hit_rate_ratio": (snap.chip_window_packets.astype(float), snap.chip_expected_hits)}
    if reference is not None:
        rates = reference.aligned_rates(snap.chip_keys)
        known = np.isfinite(rates).any(axis=1)
        counts["reference_rate_ratio"] = (
            snap.chip_window_packets.astype(float),
            np.where(known, np.nansum(rates, axis=1) * snap.chip_span_seconds, np.nan),
        )
    return counts


def chip_quantities(snap: Snapshot, reference: Reference | None) -> dict[str, np.ndarray]:
    """The quantity each chip-scope check judges, one value per chip row of the snapshot."""
    expected = snap.chip_status_counts.sum(axis=1).astype(float)
    column = {status: i for i, status in enumerate(ChannelStatus.judged())}

    def fraction(status: ChannelStatus) -> np.ndarray:
        """Channels of a verdict / expected channels; NaN for a chip whose data cannot decide yet."""
        return np.where(snap.chip_unknown, np.nan, _ratio(snap.chip_status_counts[:, column[status]], expected))

    values = {
        "silent_fraction": fraction(ChannelStatus.SILENT),
        "noisy_fraction": fraction(ChannelStatus.NOISY),
        "inefficient_fraction": fraction(ChannelStatus.INEFFICIENT),
        "pedestal": snap.chip_adc_mean,
        "adc_spread": snap.chip_adc_std,
        "parity_error_ratio": _ratio(snap.chip_window_parity_errors.astype(float), snap.chip_window_packets),
        "fifo_full_ratio": _ratio(snap.chip_window_fifo_full.astype(float), snap.chip_window_packets),
    }
    if reference is not None:
        values["reference_pedestal_shift"] = reference.compare(snap).pedestal_shift
    for name, (observed, predicted) in chip_counts(snap, reference).items():
        values[name] = _ratio(observed, predicted)
    return values


def status_of(values: np.ndarray, check: Check) -> np.ndarray:
    """0/1/2 per value; NaN (nothing to judge) is unknown."""
    status = np.zeros(values.shape, np.int8)
    with np.errstate(invalid="ignore"):
        status[(values < check.warning[0]) | (values > check.warning[1])] = CheckStatus.WARNING
        status[(values < check.error[0]) | (values > check.error[1])] = CheckStatus.ERROR
    status[np.isnan(values)] = CheckStatus.UNKNOWN
    return status


def counting_status(observed: np.ndarray, predicted: np.ndarray, check: Check, alpha: float) -> np.ndarray:
    """0/1/2/-1 per chip of a counting check: outside a range only when significantly so.

    Each chip's count is tested against both ends of each range at the chip-rate family's
    share of ``alpha`` (two-sided); unknown where nothing is predicted, or where even no hit at
    all would not be significantly below the warning range.
    """
    judged = np.isfinite(predicted) & (predicted > 0)
    log_level = math.log(per_test_probability(alpha, int(judged.sum())) / 2)
    mu = np.where(judged, predicted, 1.0)
    status = np.zeros(observed.shape, np.int8)
    for level, (low, high) in ((CheckStatus.WARNING, check.warning), (CheckStatus.ERROR, check.error)):
        outside = np.zeros(observed.shape, bool)
        if low > 0:
            outside |= log_lower_tail(observed, low * mu) < log_level
        if math.isfinite(high):
            outside |= log_upper_tail(observed, high * mu) < log_level
        status[outside] = level
    undecidable = ~judged | ((check.warning[0] > 0) & (mu * check.warning[0] < -log_level) & (status == 0))
    status[undecidable] = CheckStatus.UNKNOWN
    return status


def roll_up(statuses: np.ndarray, axis: int = 0) -> np.ndarray:
    """Worst status along ``axis``; unknown where the worst is ok but something is unknown."""
    worst = statuses.max(axis=axis)
    return np.where(
        (worst == CheckStatus.OK) & (statuses.min(axis=axis) == CheckStatus.UNKNOWN), CheckStatus.UNKNOWN, worst
    ).astype(np.int8)


def _group_roll_up(target: np.ndarray, index: np.ndarray, statuses: np.ndarray) -> np.ndarray:
    """``target`` rolled up with ``statuses`` at ``index`` (unbuffered worst-of with the unknown rule)."""
    worst, least = target.copy(), target.copy()
    np.maximum.at(worst, index, statuses)
    np.minimum.at(least, index, statuses)
    return np.where((worst == CheckStatus.OK) & (least == CheckStatus.UNKNOWN), CheckStatus.UNKNOWN, worst).astype(
        np.int8
    )


@dataclass(frozen=True)
class CheckResults:
    """Statuses of one snapshot: per check and chip, per check and io_group, and the roll-ups."""

    chip_checks: tuple[Check, ...]
    chip_values: np.ndarray  # (checks, chips)
    chip_status: np.ndarray  # (checks, chips) int8
    group_checks: tuple[Check, ...]
    group_values: np.ndarray  # (checks, 256)
    group_status: np.ndarray  # (checks, 256)
    chip_worst: np.ndarray  # (chips,)
    tiles: np.ndarray  # tile numbers present
    tile_status: np.ndarray  # (tiles,)
    io_group_status: np.ndarray  # (256,) worst of its chips and its own checks
    detector_status: int


def evaluate(snap: Snapshot, checks: tuple[Check, ...], reference: Reference | None = None) -> CheckResults:
    """Run the enabled checks on a snapshot and roll the statuses up."""
    active = [c for c in checks if c.enabled and (reference is not None or not c.needs_reference)]
    chip_checks = tuple(c for c in active if c.scope == "chip")
    group_checks = tuple(c for c in active if c.scope == "io_group")
    quantities = chip_quantities(snap, reference)
    counts = chip_counts(snap, reference)
    alpha = snap.config.false_alarm_probability
    n = len(snap.chip_keys)
    chip_values = np.array([quantities[c.name] for c in chip_checks]).reshape(len(chip_checks), n)
    chip_status = np.array(
        [
            counting_status(*counts[c.name], c, alpha) if c.poisson and c.name in counts else status_of(v, c)
            for v, c in zip(chip_values, chip_checks)
        ],
        np.int8,
    ).reshape(len(chip_checks), n)
    group_quantities = {"sync": np.where(snap.packet_type_counts.sum(axis=1) > 0, snap.sync_rate_hz, np.nan)}
    group_values = np.array([group_quantities[c.name] for c in group_checks]).reshape(len(group_checks), IO_GROUPS)
    group_status = np.array([status_of(v, c) for v, c in zip(group_values, group_checks)], np.int8).reshape(
        len(group_checks), IO_GROUPS
    )
    chip_status[:, ~snap.chip_expected] = CheckStatus.OK  # chips outside the geometry are listed, not judged
    chip_worst = roll_up(chip_status) if len(chip_checks) else np.zeros(n, np.int8)
    own_status = roll_up(group_status) if len(group_checks) else np.zeros(IO_GROUPS, np.int8)
    io_group_status = _group_roll_up(own_status, snap.chip_keys[:, 0].astype(np.int64), chip_worst)
    mapped = snap.chip_tiles >= 0
    tiles = np.unique(snap.chip_tiles[mapped])
    tile_status = _group_roll_up(
        np.zeros(len(tiles), np.int8), np.searchsorted(tiles, snap.chip_tiles[mapped]), chip_worst[mapped]
    )
    groups = snap.io_groups
    detector = int(roll_up(io_group_status[groups])) if len(groups) else CheckStatus.UNKNOWN
    return CheckResults(
        chip_checks, chip_values, chip_status, group_checks, group_values, group_status,
        chip_worst, tiles, tile_status, io_group_status, detector,
    )  # fmt: skip


def _range(path: str, node: yaml.Node, where: str) -> tuple[float, float]:
    line = node.start_mark.line + 1
    value = yaml.safe_load(yaml.serialize(node))
    if not (isinstance(value, list) and len(value) == 2):
        raise ChecksConfigError(
            f"checks file {path} line {line}: {where}: expected [low, high] (use null for no limit)"
        )
    low, high = (-INF if value[0] is None else value[0]), (INF if value[1] is None else value[1])
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)) or low > high:
        raise ChecksConfigError(
            f"checks file {path} line {line}: {where}: expected numbers with low <= high, got {value}"
        )
    return float(low), float(high)


def load_checks(path: str) -> tuple[Check, ...]:
    """Defaults with the overrides of a YAML checks file (schema in the README)."""
    try:
        with open(path, encoding="utf-8") as fh:
            root = yaml.compose(fh, Loader=yaml.SafeLoader)
    except OSError as err:
        raise ChecksConfigError(f"checks file {path}: {err.strerror or err}") from None
    except yaml.YAMLError as err:
        raise ChecksConfigError(f"checks file {path}: not valid YAML ({str(err).splitlines()[0]})") from None
    by_name = {c.name: c for c in DEFAULT_CHECKS}
    if root is None:
        return DEFAULT_CHECKS
    if not isinstance(root, yaml.MappingNode):
        raise ChecksConfigError(f"checks file {path}: expected a mapping with a 'checks' key")
    for key, value in root.value:
        line = key.start_mark.line + 1
        if key.value != "checks":
            raise ChecksConfigError(f"checks file {path} line {line}: unknown key '{key.value}' (expected 'checks')")
        if not isinstance(value, yaml.MappingNode):
            raise ChecksConfigError(f"checks file {path} line {line}: checks: expected a mapping of check names")
        for name_node, body in value.value:
            name, line = name_node.value, name_node.start_mark.line + 1
            if name not in by_name:
                raise ChecksConfigError(
                    f"checks file {path} line {line}: unknown check '{name}' (known: {', '.join(by_name)})"
                )
            if not isinstance(body, yaml.MappingNode):
                raise ChecksConfigError(
                    f"checks file {path} line {line}: checks.{name}: expected warning/error/enabled"
                )
            changes: dict = {}
            for field_node, field_value in body.value:
                field, where = field_node.value, f"checks.{name}.{field_node.value}"
                if field in ("warning", "error"):
                    changes[field] = _range(path, field_value, where)
                elif field == "enabled":
                    enabled = yaml.safe_load(yaml.serialize(field_value))
                    if not isinstance(enabled, bool):
                        raise ChecksConfigError(
                            f"checks file {path} line {field_node.start_mark.line + 1}: {where}: expected true or false"
                        )
                    changes[field] = enabled
                else:
                    raise ChecksConfigError(
                        f"checks file {path} line {field_node.start_mark.line + 1}: unknown key '{where}' (warning, error, enabled)"
                    )
            check = replace(by_name[name], **changes)
            if not (check.error[0] <= check.warning[0] and check.warning[1] <= check.error[1]):
                raise ChecksConfigError(
                    f"checks file {path} line {line}: checks.{name}: the error range must contain the warning range"
                )
            by_name[name] = check
    return tuple(by_name.values())
