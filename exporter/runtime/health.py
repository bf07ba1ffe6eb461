"""The exporter's own health figures: ``Health`` lives in ``exporter.metrics.health``, beside the families that
render it; this name stays for the scripts that build one (the tests, the benchmarks)."""

from exporter.metrics.health import Health as Health

__all__ = ["Health"]
