"""larpix-dqm: live data-quality monitoring of LArPix pixel data, served to Prometheus.

The public names are imported on first use (PEP 562), so that importing one module of a low layer
(``larpix_dqm.exporter.reading.packets``) loads neither the layers above it nor h5py.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from larpix_dqm.exporter.monitor import Monitor, StatusChange
    from larpix_dqm.exporter.quality.evaluation import Evaluation

#: Each public name and the module it is imported from on first use.
_PUBLIC = {
    "Monitor": "larpix_dqm.exporter.monitor",
    "StatusChange": "larpix_dqm.exporter.monitor",
    "Evaluation": "larpix_dqm.exporter.quality.evaluation",
}

__all__ = ["Monitor", "Evaluation", "StatusChange", "__version__"]


def __getattr__(name: str) -> Any:
    """Import a public name on first use and keep it, so that later look-ups are plain attributes."""
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value
    return value
