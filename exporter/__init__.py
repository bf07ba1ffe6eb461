"""larpix-dqm: live data-quality monitoring of LArPix pixel data, served to Prometheus."""

__version__ = "0.1.0"

from exporter.monitor import Evaluation, Monitor, StatusChange  # noqa: E402  (after __version__, which modules import)

__all__ = ["Monitor", "Evaluation", "StatusChange", "__version__"]
