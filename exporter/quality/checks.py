"""Data-quality checks: warning and error ranges on per-chip and per-io_group quantities, rolled up the detector tree.

Each check turns one quantity per chip (or per io_group) into a status: 0 ok (inside the
warning range), 1 warning (outside it), 2 error (outside the error range), -1 unknown (nothing
to judge yet: a NaN quantity). A counting check (``poisson``) judges a hit count against its
expected count: it is outside a range only when the count is significantly so, within the
false-alarm budget of ``larpix_dqm.exporter.quality.verdicts``, and unknown while even no hit at all could
not be told from the lower limit. The parity and FIFO-full ratios are counting checks too: the
flagged packets against the allowed ratio times the packets (a Poisson tail, never below the
binomial one where it can be significant), so a chip at a benign ratio over a few hundred
packets is not outside a limit ten times higher.

Region checks judge a chip's tile (``tile_rate``) or io_channel (``io_channel_rate``) as a whole:
its hits in the window against its chips' expected rates before the tile's occupancy scale,
times the module's occupancy (the median of the ratios of the tiles with hits), one test per region; so an HV
trip or a hot tile, which the channel verdicts take as the tile's occupancy, is flagged here.
``io_channel_never_seen`` flags an io_channel that has not sent one packet since the run started
while its io_group's data and the module's rate prove it should have. Every chip of a region
carries the region's value and status. Chip statuses roll up, worst case, to tiles, io_groups
and the detector; a roll-up of ok and unknown statuses is unknown.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from larpix_dqm.exporter.detector.modes import RUN_MODES
from larpix_dqm.exporter.quality.accumulator import IO_GROUPS, prefer_finite
from larpix_dqm.exporter.quality.reference import Reference
from larpix_dqm.exporter.quality.snapshot import Snapshot
from larpix_dqm.exporter.quality.status import ChannelStatus, CheckStatus
from larpix_dqm.exporter.quality.verdicts import (
    per_test_probability,
    robust_ratio,
    tail_below,
)
from larpix_dqm.exporter.reading.packets import EXTERNAL_TRIGGER, PERIODIC_TRIGGER

if TYPE_CHECKING:  # imported where a checks file is read, not at every start-up (20 ms)
    import yaml

INF = math.inf
#: Share of the window's data packets from periodic triggers that makes ``auto`` a pedestal run.
PEDESTAL_MODE_FRACTION = 0.5
#: Share from external triggers that makes ``auto`` a beam run (the chips read out on the beam/light trigger).
BEAM_MODE_FRACTION = 0.1


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
    region: str = ""  # "tile" or "io_channel": judged per region, every chip showing its region's (docstring)


DEFAULT_CHECKS: tuple[Check, ...] = (
    Check(
        "hit_rate_ratio",
        "chip",
        "ratio",
        "counting check: data packets in the window (failing parity too) / hits expected (learnt or reference rate, tile occupancy)",
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
        "counting check: data packets failing parity / all data packets (failing ones included) over the window",
        (-INF, 1e-3),
        (-INF, 1e-2),
        poisson=True,
    ),
    Check(
        "fifo_full_ratio",
        "chip",
        "ratio",
        "counting check: packets with a FIFO full flag / valid data packets over the window",
        (-INF, 1e-3),
        (-INF, 1e-2),
        poisson=True,
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
    Check(
        "tile_rate",
        "chip",
        "ratio",
        "counting check of the chip's tile: its hits in the window / what the module's occupancy predicts",
        (0.5, 2.0),
        (0.2, 5.0),
        poisson=True,
        region="tile",
    ),
    Check(
        "io_channel_rate",
        "chip",
        "ratio",
        "counting check of the chip's io_channel: its hits in the window / what the module's occupancy predicts",
        (0.5, 2.0),
        (0.2, 5.0),
        poisson=True,
        region="io_channel",
    ),
    Check(
        "io_channel_never_seen",
        "chip",
        "packets",
        "packets of the chip's io_channel since the run started; below the range only when the module's rate "
        "proves it should have sent them",
        (1.0, INF),
        (1.0, INF),
        region="io_channel",
    ),
    Check(
        "periodic_rate",
        "chip",
        "Hz",
        "periodic-trigger packets per second per expected channel (on in pedestal runs)",
        (10.0, 200.0),
        (1.0, 1000.0),
        enabled=False,
    ),
)

#: Changes to the default checks in each run mode (the defaults are the self-trigger set). A pedestal run
#: (periodic triggers at tens of Hz on every channel, self-triggers off) is judged on its periodic-trigger
#: rate, not on a self-trigger rate it does not have. A beam run needs no change: rates are judged against
#: what each tile did, scaled by its current occupancy, so spills that raise every channel are not faults.
MODE_CHANGES: dict[str, dict[str, dict]] = {
    "self-trigger": {},
    "pedestal": {
        "hit_rate_ratio": {"enabled": False},
        "tile_rate": {"enabled": False},
        "io_channel_rate": {"enabled": False},
        "io_channel_never_seen": {"enabled": False},
        "silent_fraction": {"enabled": False},
        "inefficient_fraction": {"enabled": False},
        "periodic_rate": {"enabled": True},
    },
    "beam": {},
}


class ChecksConfigError(ValueError):
    """The checks file is wrong; the message names the file, line and key."""


def _ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(b > 0, a / np.where(b > 0, b, 1), np.nan)


def chip_counts(snapshot: Snapshot, reference: Reference | None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Observed and expected counts in the window, per chip, of each chip counting check (the parity and
    FIFO-full ratios: flagged packets and the packets the ratio is of)."""
    # a chip whose packets fail parity still sends them: its rate is not what its link corrupts
    packets = snapshot.chip_window_packets.astype(float)
    sent = packets + snapshot.chip_window_parity_errors
    counts = {
        # judged on independent arrivals (a steep track's ~100 re-triggers of a pixel are one), shown in hits
        "hit_rate_ratio": (
            snapshot.chip_window_arrivals + snapshot.chip_window_parity_errors,
            snapshot.chip_expected_arrivals,
        ),
        "parity_error_ratio": (snapshot.chip_window_parity_errors.astype(float), sent),
        "fifo_full_ratio": (snapshot.chip_window_fifo_full.astype(float), packets),
    }
    if reference is not None:
        rates = reference.aligned_rates(snapshot.chip_keys)
        known = np.isfinite(rates).any(axis=1)
        counts["reference_rate_ratio"] = (
            sent,
            np.where(known, np.nansum(rates, axis=1) * snapshot.chip_span_seconds, np.nan),
        )
    return counts


def chip_regions(snapshot: Snapshot, region: str) -> np.ndarray:
    """Per chip, the index of its region (``tile``: its tile, else its io_group; ``io_channel``)."""
    groups = snapshot.chip_keys[:, 0].astype(np.int64)
    keys = np.where(snapshot.chip_tiles >= 0, snapshot.chip_tiles, -1 - groups) if region == "tile" else groups * 256
    keys = keys + (snapshot.chip_keys[:, 1] if region == "io_channel" else 0)
    return np.unique(keys, return_inverse=True)[1].reshape(-1)


def region_counts(snapshot: Snapshot) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per region check: each chip's region index, and per region the observed and the expected count.

    The rates: hits in the window of the expected channels not masked and under the noisy cut
    (``chip_quiet_window_hits``: one loud channel does not make its region hot) against their unscaled expected
    rates times the module's occupancy, the median of the ratios of the tiles with hits (a faulty tile does not move
    it, a dead one is left out). The never-seen check: packets since the run started against those rates over the
    io_group's run time, at an occupancy capped at 1.
    """
    judged = snapshot.chip_in_geometry & snapshot.chip_judged
    span = snapshot.chip_span_seconds
    observed = np.where(judged, snapshot.chip_quiet_window_hits, 0.0)
    base = np.where(judged, snapshot.chip_base_hz, 0.0)
    regions = {region: chip_regions(snapshot, region) for region in ("tile", "io_channel")}
    tiles = regions["tile"]
    size = int(tiles.max()) + 1 if len(tiles) else 0
    # a tile without a hit in the window (dead, or not heard yet) is no sample of the module's occupancy:
    # its ratio would read 1 (robust_ratio keeps a silent group's expectation) and pull the median there
    sampled = (np.bincount(tiles, base, size) > 0) & (np.bincount(tiles, observed, size) > 0)
    ratios = robust_ratio(observed, base * span, tiles, size)[sampled]
    module = float(np.median(ratios)) if len(ratios) else 1.0
    # heard since the run started (a link dead from a new run's start was heard in the last one); a chip
    # whose every packet fails parity is heard through its window's parity errors
    heard = np.where(judged, snapshot.chip_run_hits + snapshot.chip_window_parity_errors, 0).astype(float)
    out = {}
    for name, region, obs, predicted in (
        ("tile_rate", "tile", observed, module * base * span),
        ("io_channel_rate", "io_channel", observed, module * base * span),
        ("io_channel_never_seen", "io_channel", heard, min(module, 1.0) * base * snapshot.chip_run_seconds),
    ):
        inverse = regions[region]
        size = int(inverse.max()) + 1 if len(inverse) else 0
        out[name] = (inverse, np.bincount(inverse, obs, size), np.bincount(inverse, predicted, size))
    return out


def chip_quantities(
    snapshot: Snapshot,
    reference: Reference | None,
    counts: dict[str, tuple[np.ndarray, np.ndarray]],
    regions: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
) -> dict[str, np.ndarray]:
    """The quantity each chip-scope check judges, one value per chip row of the snapshot, from the channels'
    statuses, the ``chip_counts`` and the ``region_counts``.

    Masked channels are not expected (they count in no fraction); chips outside the run's networks get NaN.
    """
    # the expected channels not masked, each with a status other than masked (each answers a periodic trigger)
    unmasked = [i for i, s in enumerate(ChannelStatus.judged()) if s is not ChannelStatus.MASKED]
    expected = snapshot.chip_status_counts[:, unmasked].sum(axis=1).astype(float)
    column = {status: i for i, status in enumerate(ChannelStatus.judged())}

    def fraction(status: ChannelStatus) -> np.ndarray:
        """Channels of a verdict / expected channels; NaN for a chip whose data cannot decide yet."""
        return np.where(snapshot.chip_unknown, np.nan, _ratio(snapshot.chip_status_counts[:, column[status]], expected))

    values = {
        "silent_fraction": fraction(ChannelStatus.SILENT),
        "noisy_fraction": fraction(ChannelStatus.NOISY),
        "inefficient_fraction": fraction(ChannelStatus.INEFFICIENT),
        # periodic-trigger packets measure the pedestal where the run has them; else all self-triggered data
        "pedestal": prefer_finite(snapshot.chip_pedestal_mean, snapshot.chip_adc_mean),
        "adc_spread": prefer_finite(snapshot.chip_pedestal_std, snapshot.chip_adc_std),
        "periodic_rate": _ratio(
            prefer_finite(snapshot.chip_periodic_rate_hz, np.zeros(len(snapshot.chip_keys))), expected
        ),
    }
    if reference is not None:
        values["reference_pedestal_shift"] = reference.compare(snapshot).pedestal_shift
    for name, (observed, predicted) in counts.items():
        values[name] = _ratio(observed, predicted)
    for name, (inverse, observed, predicted) in regions.items():
        values[name] = (observed if name == "io_channel_never_seen" else _ratio(observed, predicted))[inverse]
    if len(snapshot.chip_judged) == len(snapshot.chip_keys) and not snapshot.chip_judged.all():
        values = {name: np.where(snapshot.chip_judged, v, np.nan) for name, v in values.items()}
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
            outside |= tail_below(observed, low * mu, log_level)
        if math.isfinite(high):
            outside |= tail_below(observed, high * mu, log_level, upper=True)
        status[outside] = level
    undecidable = ~judged | ((check.warning[0] > 0) & (mu * check.warning[0] < -log_level) & (status == 0))
    status[undecidable] = CheckStatus.UNKNOWN
    return status


def shortfall_status(observed: np.ndarray, predicted: np.ndarray, check: Check, alpha: float) -> np.ndarray:
    """0/1/2/-1 per region of a count with a lower limit (``io_channel_never_seen``): below a range's low
    end only when significantly below ``predicted`` (one test per region judged); unknown while below
    the warning range's low end without proof, and where nothing is predicted of a silent region."""
    judged = np.isfinite(predicted) & (predicted > 0)
    log_level = math.log(per_test_probability(alpha, int(judged.sum())))
    mu = np.where(judged, predicted, 1.0)
    status = np.zeros(observed.shape, np.int8)
    for level, (low, _) in ((CheckStatus.WARNING, check.warning), (CheckStatus.ERROR, check.error)):
        status[judged & (observed < low) & tail_below(observed, mu, log_level)] = level
    status[(observed < check.warning[0]) & (status == CheckStatus.OK)] = CheckStatus.UNKNOWN
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


def evaluate(snapshot: Snapshot, checks: tuple[Check, ...], reference: Reference | None = None) -> CheckResults:
    """Run the enabled checks on a snapshot and roll the statuses up."""
    active = [c for c in checks if c.enabled and (reference is not None or not c.needs_reference)]
    chip_checks = tuple(c for c in active if c.scope == "chip")
    group_checks = tuple(c for c in active if c.scope == "io_group")
    counts = chip_counts(snapshot, reference)
    regions = region_counts(snapshot)
    quantities = chip_quantities(snapshot, reference, counts, regions)
    alpha = snapshot.config.false_alarm_probability
    n = len(snapshot.chip_keys)

    def judged(check: Check, values: np.ndarray) -> np.ndarray:
        """The statuses of one chip-scope check: by region, by counting or by range."""
        if check.name in regions:
            inverse, observed, predicted = regions[check.name]
            judge = counting_status if check.poisson else shortfall_status
            return judge(observed, predicted, check, alpha)[inverse]
        if check.poisson and check.name in counts:
            return counting_status(*counts[check.name], check, alpha)
        return status_of(values, check)

    chip_values = np.array([quantities[c.name] for c in chip_checks]).reshape(len(chip_checks), n)
    chip_status = np.array([judged(c, v) for v, c in zip(chip_values, chip_checks)], np.int8).reshape(
        len(chip_checks), n
    )
    group_quantities = {"sync": np.where(snapshot.packet_type_counts.sum(axis=1) > 0, snapshot.sync_rate_hz, np.nan)}
    group_values = np.array([group_quantities[c.name] for c in group_checks]).reshape(len(group_checks), IO_GROUPS)
    group_status = np.array([status_of(v, c) for v, c in zip(group_values, group_checks)], np.int8).reshape(
        len(group_checks), IO_GROUPS
    )
    # chips outside the geometry (listed as unexpected) and outside the run's networks get no verdict
    chip_status[:, ~(snapshot.chip_in_geometry & snapshot.chip_judged)] = CheckStatus.OK
    chip_worst = roll_up(chip_status) if len(chip_checks) else np.zeros(n, np.int8)
    own_status = roll_up(group_status) if len(group_checks) else np.zeros(IO_GROUPS, np.int8)
    io_group_status = _group_roll_up(own_status, snapshot.chip_keys[:, 0].astype(np.int64), chip_worst)
    mapped = snapshot.chip_tiles >= 0
    tiles = np.unique(snapshot.chip_tiles[mapped])
    tile_status = _group_roll_up(
        np.zeros(len(tiles), np.int8), np.searchsorted(tiles, snapshot.chip_tiles[mapped]), chip_worst[mapped]
    )
    groups = snapshot.io_groups
    detector = int(roll_up(io_group_status[groups])) if len(groups) else CheckStatus.UNKNOWN
    return CheckResults(
        chip_checks, chip_values, chip_status, group_checks, group_values, group_status,
        chip_worst, tiles, tile_status, io_group_status, detector,
    )  # fmt: skip


def rates_good(results: CheckResults) -> np.ndarray:
    """Per chip: its rate checks (counting and region) ok or unknown, so its data may teach the learnt rates."""
    rows = [i for i, c in enumerate(results.chip_checks) if c.poisson or c.region]
    return np.asarray((results.chip_status[rows] <= CheckStatus.OK).all(axis=0))


def _range(path: str, node: yaml.Node, where: str) -> tuple[float, float]:
    import yaml  # loaded by _sections already, as a checks file is read

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


def _apply_overrides(path: str, node: yaml.Node, by_name: dict[str, Check], where: str) -> None:
    """Apply a mapping of check name -> warning/error/enabled overrides (``where`` prefixes the messages)."""
    import yaml  # loaded by _sections already, as a checks file is read

    if not isinstance(node, yaml.MappingNode):
        raise ChecksConfigError(
            f"checks file {path} line {node.start_mark.line + 1}: {where}: expected a mapping of check names"
        )
    for name_node, body in node.value:
        name, line = name_node.value, name_node.start_mark.line + 1
        if name not in by_name:
            raise ChecksConfigError(
                f"checks file {path} line {line}: unknown check '{name}' (known: {', '.join(by_name)})"
            )
        if not isinstance(body, yaml.MappingNode):
            raise ChecksConfigError(f"checks file {path} line {line}: {where}.{name}: expected warning/error/enabled")
        changes: dict = {}
        for field_node, field_value in body.value:
            field, key = field_node.value, f"{where}.{name}.{field_node.value}"
            if field in ("warning", "error"):
                changes[field] = _range(path, field_value, key)
            elif field == "enabled":
                enabled = yaml.safe_load(yaml.serialize(field_value))
                if not isinstance(enabled, bool):
                    raise ChecksConfigError(
                        f"checks file {path} line {field_node.start_mark.line + 1}: {key}: expected true or false"
                    )
                changes[field] = enabled
            else:
                raise ChecksConfigError(
                    f"checks file {path} line {field_node.start_mark.line + 1}: unknown key '{key}' (warning, error, enabled)"
                )
        by_name[name] = _validated(replace(by_name[name], **changes), f"checks file {path} line {line}: {where}")


def _validated(check: Check, where: str) -> Check:
    if not (check.error[0] <= check.warning[0] and check.warning[1] <= check.error[1]):
        raise ChecksConfigError(f"{where}.{check.name}: the error range must contain the warning range")
    return check


def _sections(path: str) -> tuple[yaml.Node | None, dict[str, yaml.Node]]:
    """The file's ``checks`` mapping and its ``modes`` (run mode -> mapping of checks)."""
    import yaml  # only with a checks file: 20 ms of every start-up otherwise

    try:
        with open(path, encoding="utf-8") as fh:
            root = yaml.compose(fh, Loader=yaml.SafeLoader)
    except OSError as err:
        raise ChecksConfigError(f"checks file {path}: {err.strerror or err}") from None
    except yaml.YAMLError as err:
        raise ChecksConfigError(f"checks file {path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if root is None:
        return None, {}
    if not isinstance(root, yaml.MappingNode):
        raise ChecksConfigError(f"checks file {path}: expected a mapping with a 'checks' key")
    checks, modes = None, {}
    for key, value in root.value:
        line = key.start_mark.line + 1
        if key.value == "checks":
            checks = value
        elif key.value == "modes":
            if not isinstance(value, yaml.MappingNode):
                raise ChecksConfigError(f"checks file {path} line {line}: modes: expected a mapping of run modes")
            for mode, body in value.value:
                if mode.value not in RUN_MODES[1:]:
                    raise ChecksConfigError(
                        f"checks file {path} line {mode.start_mark.line + 1}: unknown run mode '{mode.value}' "
                        f"(known: {', '.join(RUN_MODES[1:])})"
                    )
                modes[mode.value] = body
        else:
            raise ChecksConfigError(
                f"checks file {path} line {line}: unknown key '{key.value}' (expected 'checks' or 'modes')"
            )
    return checks, modes


def load_checks(path: str) -> tuple[Check, ...]:
    """Defaults with the overrides of a YAML checks file's ``checks`` section (schema in the README)."""
    checks, _ = _sections(path)
    by_name = {c.name: c for c in DEFAULT_CHECKS}
    if checks is not None:
        _apply_overrides(path, checks, by_name, "checks")
    return tuple(by_name.values())


def mode_checks(base: tuple[Check, ...] = DEFAULT_CHECKS, path: str | None = None) -> dict[str, tuple[Check, ...]]:
    """The check set of each run mode: ``base``, the mode's built-in changes (``MODE_CHANGES``), then the
    checks file's ``checks`` (every mode) and ``modes.<mode>`` sections."""
    checks, modes = _sections(path) if path is not None else (None, {})
    out = {}
    for mode, changes in MODE_CHANGES.items():
        by_name = {c.name: c for c in base}
        for name, change in changes.items():
            by_name[name] = _validated(replace(by_name[name], **change), f"run mode {mode}")
        if path is not None and checks is not None:
            _apply_overrides(path, checks, by_name, "checks")
        if path is not None and mode in modes:
            _apply_overrides(path, modes[mode], by_name, f"modes.{mode}")
        out[mode] = tuple(by_name.values())
    return out


def detect_run_mode(snapshot: Snapshot) -> str:
    """The run mode the window's data show: pedestal when periodic triggers make at least half the data
    packets, beam when external triggers make at least a tenth, else self-trigger."""
    by_type = snapshot.trigger_type_rate_hz.sum(axis=0)
    total = by_type.sum()
    if total > 0 and by_type[PERIODIC_TRIGGER] >= PEDESTAL_MODE_FRACTION * total:
        return "pedestal"
    if total > 0 and by_type[EXTERNAL_TRIGGER] >= BEAM_MODE_FRACTION * total:
        return "beam"
    return "self-trigger"
