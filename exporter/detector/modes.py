"""The run modes, apart from the run configuration's readers so that naming them (the CLI's help, the settings)
imports neither numpy nor h5py."""

from __future__ import annotations

#: Run modes: each selects a set of check thresholds; ``auto`` picks one from the data's trigger types.
RUN_MODES = ("auto", "pedestal", "self-trigger", "beam")
