"""Detector-like activity and named scenarios for the simulator (exporter/simulate.py)."""
