"""The README's tables are the documented ones, verbatim: they cannot drift apart."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def tables(text: str) -> list[str]:
    """Every markdown table of a document, as one string each."""
    found, current = [], []
    for line in text.splitlines():
        if line.startswith("|"):
            current.append(line)
        elif current:
            found.append("\n".join(current))
            current = []
    if current:
        found.append("\n".join(current))
    return found


def test_readme_carries_the_metrics_checks_and_alerts_tables():
    readme = (ROOT / "README.md").read_text()
    metrics = tables((ROOT / "docs" / "metrics.md").read_text())
    alerts = [t for t in tables((ROOT / "alerts" / "README.md").read_text()) if t.startswith("| alert |")]
    assert len(metrics) == 3 and len(alerts) == 1  # families, recording rules, checks
    for table in [*metrics, *alerts]:
        assert table in readme, f"README.md lacks this table (copy it from its source):\n{table[:300]}"


def test_readme_names_the_two_commands_and_ci_runs_the_second():
    readme = (ROOT / "README.md").read_text()
    assert "pip install -e . && larpix-dqm demo" in readme
    assert "bash scripts/test.sh" in readme
    assert "scripts/test.sh" in (ROOT / ".ci" / "run").read_text()
