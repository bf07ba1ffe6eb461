"""larpix-dqm: live data-quality monitoring of LArPix pixel data, served to Prometheus."""

__version__ = "0.1.0"
