"""The monitoring configuration read by both generators (alerts/generate.py, dashboards/generate.py).

It holds what the Prometheus rules and the Grafana dashboards must agree on, with each other and
with the exporter: which scrape jobs are the exporter, where the runbook is, and the thresholds
they share with the checks and the exporter's defaults. Those thresholds are not numbers of their
own: each is read from a check's range (``larpix_dqm.exporter.quality.checks``) or an exporter default
(``larpix_dqm.exporter.settings``), so a change there moves the alerts and the dashboards with it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from larpix_dqm.exporter.quality.checks import DEFAULT_CHECKS, Check
from larpix_dqm.exporter.settings import DEFAULT_PORT, DEFAULT_RUNBOOK_URL, Settings


@dataclass(frozen=True)
class MixinConfig:
    """The job selector, runbook, exporter address and check ranges the rules and dashboards use."""

    #: RE2 regex (fully anchored by Prometheus) over the scrape job names of the exporter. The
    #: shipped prometheus.yml scrapes it twice, as ``larpix`` and ``larpix-per-pixel``: both match.
    job_regex: str = ".*larpix.*"
    #: RUNBOOK.md as a browser opens it; each alert's runbook_url is this plus ``#<alert name>``, and
    #: the status page links its sections (``serve --runbook-url``, ``mixin --runbook-url``).
    runbook_url: str = DEFAULT_RUNBOOK_URL
    #: The exporter's address as the Grafana user's browser reaches it (it loads the plot PNGs).
    exporter_url: str = f"http://localhost:{DEFAULT_PORT}"
    #: The checks whose ranges the alerts and dashboards show: the exporter's defaults.
    checks: tuple[Check, ...] = DEFAULT_CHECKS
    #: Hit rate (Hz) above which the exporter calls a channel noisy: its ``noisy_rate_hz`` default.
    noisy_rate_hz: float = Settings.noisy_rate_hz

    @property
    def job_matcher(self) -> str:
        """The one PromQL label matcher selecting the exporter's targets, e.g. ``job=~".*larpix.*"``."""
        return f"job=~{json.dumps(self.job_regex)}"

    def check(self, name: str) -> Check:
        """The check called ``name``; KeyError naming the known checks otherwise."""
        for check in self.checks:
            if check.name == name:
                return check
        raise KeyError(f"no check {name!r} (known: {', '.join(c.name for c in self.checks)})")

    @property
    def sync_expected_range_hz(self) -> tuple[float, float]:
        """'S' syncs per second an io_group should see: the ``sync`` check's warning range."""
        return self.check("sync").warning

    @property
    def sync_min_rate_hz(self) -> float:
        """Sync rate below which syncs are missing: the lower end of the ``sync`` check's error range."""
        return self.check("sync").error[0]

    @property
    def parity_max_ratio(self) -> float:
        """Highest acceptable parity errors per data packet: the ``parity_error_ratio`` warning limit."""
        return self.check("parity_error_ratio").warning[1]

    @property
    def silent_channels_max_fraction(self) -> float:
        """Fraction of silent channels that makes a chip faulty: the ``silent_fraction`` error limit."""
        return self.check("silent_fraction").error[1]

    @property
    def reference_rate_ratio_range(self) -> tuple[float, float]:
        """Acceptable hit rate / reference hit rate: the ``reference_rate_ratio`` warning range."""
        return self.check("reference_rate_ratio").warning

    @property
    def reference_pedestal_shift_range(self) -> tuple[float, float]:
        """Acceptable mean ADC shift from the reference (ADC): the ``reference_pedestal_shift`` warning range."""
        return self.check("reference_pedestal_shift").warning


def format_threshold(value: float) -> str:
    """A threshold as both generators write it in PromQL and text: ``10``, ``0.5``, ``0.001``, ``1e-05``."""
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text
