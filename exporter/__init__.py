"""larpix-dqm: live data-quality monitoring of LArPix pixel data, served to Prometheus."""

__version__ = "0.1.0"

from exporter.monitor import Monitor, MonitorState, StatusChange  # noqa: E402  (after __version__, which modules import)

__all__ = ["Monitor", "MonitorState", "StatusChange", "__version__"]
