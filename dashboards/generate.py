#!/usr/bin/env python3
"""Generate the larpix-dqm Grafana dashboards from code.

The dashboards are built with the Grafana Foundation SDK (``grafana-foundation-sdk`` on
PyPI, pinned below), one module per dashboard (``overview``, ``chips``, ``exporter_health``,
``pixelmaps``) over the shared builders in ``panels``, from the monitoring configuration
``larpix_dqm.exporter.monitoring.MixinConfig`` that the alert generator reads too. They are written as
``dashboards/json/<uid>.json`` with sorted keys and an indent of 2, so the committed output
is stable and reviewable. Never edit the JSON by hand: change the modules and run::

    pip install 'grafana-foundation-sdk==1769699379!11.6.0'
    python dashboards/generate.py            # rewrite dashboards/json/
    python dashboards/generate.py --check    # exit 1 if dashboards/json/ is stale

Every PromQL expression may only use the metric names listed in ``docs/metrics.md`` (plus
Prometheus' own ``up`` and ``ALERTS``); ``tests/test_dashboards.py`` checks that, parses
every expression with ``promtool`` and checks that the committed JSON is up to date.
"""

from __future__ import annotations

import argparse
import json
import sys
from importlib import metadata
from pathlib import Path

# The SDK is versioned as "<build epoch>!<Grafana version>"; the Grafana part (11.6) is the
# dashboard schema the generated JSON targets. Pin it exactly: another build may serialise
# differently and make the committed JSON look stale.
SDK_DISTRIBUTION = "grafana-foundation-sdk"
SDK_VERSION = "1769699379!11.6.0"

try:
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models import dashboard as dm
except ImportError as err:  # pragma: no cover - exercised only without the SDK
    sys.exit(
        f"dashboards/generate.py needs {SDK_DISTRIBUTION}: pip install '{SDK_DISTRIBUTION}=={SDK_VERSION}' ({err})"
    )

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "json"

# Run as a script, import the dashboards and the exporter of this checkout (not an installed copy):
# the dashboards must show this checkout's checks.
if str(HERE.parent) not in sys.path:
    sys.path.insert(0, str(HERE.parent))

from dashboards import chips, exporter_health, overview, pixelmaps  # noqa: E402
from larpix_dqm.exporter.monitoring import MixinConfig  # noqa: E402

#: Every dashboard, in the order they are written; each file is named after its uid.
DASHBOARDS = (overview.build, chips.build, exporter_health.build, pixelmaps.build)


# --------------------------------------------------------------------------- output


def render(model: dm.Dashboard) -> str:
    """Serialise a dashboard model: sorted keys, indent 2, trailing newline."""
    return json.dumps(model, cls=JSONEncoder, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def build_all(monitoring: MixinConfig) -> dict[str, str]:
    """Return ``{file name: JSON text}`` for every dashboard built from ``monitoring``."""
    models = [build(monitoring) for build in DASHBOARDS]
    return {f"{model.uid}.json": render(model) for model in models}


def check_sdk_version() -> None:
    """Exit with the install command unless the pinned SDK build is installed (others serialise differently)."""
    try:
        installed = metadata.version(SDK_DISTRIBUTION)
    except metadata.PackageNotFoundError:  # pragma: no cover - import above would fail first
        installed = None
    if installed != SDK_VERSION:
        sys.exit(
            f"{SDK_DISTRIBUTION} {installed} is installed but dashboards are generated with "
            f"{SDK_VERSION}: pip install '{SDK_DISTRIBUTION}=={SDK_VERSION}'"
        )


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: write (or with --check, compare) every dashboard; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory (default: dashboards/json)")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if the output directory is stale")
    args = parser.parse_args(argv)
    check_sdk_version()

    files = build_all(MixinConfig())
    if args.check:
        stale = [
            name
            for name, body in files.items()
            if not (args.out / name).is_file() or (args.out / name).read_text() != body
        ]
        extra = sorted(p.name for p in args.out.glob("*.json") if p.name not in files)
        for name in stale:
            print(f"stale: {args.out / name}", file=sys.stderr)
        for name in extra:
            print(f"not generated (delete it or add its module to DASHBOARDS): {args.out / name}", file=sys.stderr)
        if stale or extra:
            print("run: python dashboards/generate.py", file=sys.stderr)
            return 1
        return 0

    args.out.mkdir(parents=True, exist_ok=True)
    for name, body in files.items():
        (args.out / name).write_text(body)
        print(f"wrote {args.out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
