"""Rewrites the README's table of ``serve`` options from their declaration in exporter/settings.py.

Usage: python scripts/options_table.py   (tests/test_settings.py fails while the README differs)
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from larpix_dqm.exporter.settings import option_table  # noqa: E402

#: The generated table sits between this marker line and the first line that is not a table row.
MARKER = "<!-- serve options: generated from exporter/settings.py by scripts/options_table.py -->"


def with_table(readme: str) -> str:
    """The README text with the table after MARKER replaced by the generated one."""
    pattern = re.compile(re.escape(MARKER) + r"\n(\|.*\n)*")
    if not pattern.search(readme):
        raise SystemExit(f"README.md: no line {MARKER!r}")
    return pattern.sub(lambda _: f"{MARKER}\n{option_table()}\n", readme, count=1)


if __name__ == "__main__":
    path = ROOT / "README.md"
    path.write_text(with_table(path.read_text()))
